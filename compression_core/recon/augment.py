"""Random-resized-crop and flip of image calibration batches, drawn afresh at every schedule step.

The L² reference trains on 1,000 ImageNet images with this augmentation, so its gradient phases rarely see the
same input twice. A user's few hundred calibration images are already the images the model will see; cropping
them again (scale ≥ `SCALE[0]` of the area, aspect 3/4–4/3, resized back to the batch's own size) and
flipping half of them only adds variety, which is what the gradient phases lack against over-fitting.
The teacher is run on the same augmented batch, so the targets stay exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compression_core.model_io import Inputs

SCALE = (0.25, 1.0)
ASPECT = (3 / 4, 4 / 3)


def is_image_batch(inputs: Inputs) -> bool:
    """Whether ``inputs`` is one float tensor of shape (N, C, H, W), the only form the augmentation knows."""
    return isinstance(inputs, torch.Tensor) and inputs.dim() == 4 and inputs.is_floating_point()


@torch.no_grad()
def crop_and_flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``batch`` (N, C, H, W) cropped to a random box and resized back to H × W (bilinear),
    then mirrored left–right with probability ½."""
    n, _, height, width = batch.shape
    out = torch.empty_like(batch)
    draws = torch.rand(n, 5, generator=generator)
    for i in range(n):
        area = height * width * (SCALE[0] + (SCALE[1] - SCALE[0]) * float(draws[i, 0]))
        aspect = math.exp(math.log(ASPECT[0]) + (math.log(ASPECT[1]) - math.log(ASPECT[0])) * float(draws[i, 1]))
        h = min(height, max(1, round(math.sqrt(area / aspect))))
        w = min(width, max(1, round(math.sqrt(area * aspect))))
        top = int(float(draws[i, 2]) * (height - h + 1))
        left = int(float(draws[i, 3]) * (width - w + 1))
        crop = batch[i : i + 1, :, top : top + h, left : left + w]
        crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
        out[i] = crop[0].flip(-1) if float(draws[i, 4]) < 0.5 else crop[0]
    return out
