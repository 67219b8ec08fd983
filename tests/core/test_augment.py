"""Random-resized-crop + flip of image batches in the gradient phases (`recon/augment.py`)."""

import pytest
import torch

from compression_core import CompressionConfig, ConfigError, compress
from compression_core.recon.augment import crop_and_flip, is_image_batch


def test_crops_keep_the_shape_and_stay_inside_the_image():
    """A horizontal ramp: every output column is an interpolation of input columns, so values stay within the
    ramp's range, and a flipped sample runs the other way."""
    ramp = torch.linspace(0.0, 1.0, 32).expand(16, 3, 24, 32).contiguous()
    out = crop_and_flip(ramp, torch.Generator().manual_seed(0))
    assert out.shape == ramp.shape and out.dtype == ramp.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    slopes = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    assert (slopes > 0).any() and (slopes < 0).any()  # some mirrored, some not
    assert not torch.equal(out, ramp)


def test_same_generator_state_gives_the_same_batch():
    batch = torch.randn(8, 3, 16, 16)
    a = crop_and_flip(batch, torch.Generator().manual_seed(5))
    b = crop_and_flip(batch, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_only_image_tensors_are_image_batches():
    assert is_image_batch(torch.zeros(2, 3, 8, 8))
    assert not is_image_batch(torch.zeros(2, 64))
    assert not is_image_batch(torch.zeros(2, 1, 8, 8, dtype=torch.long))
    assert not is_image_batch({"input_ids": torch.zeros(2, 8, dtype=torch.long)})


def test_augmented_schedule_compresses_to_target_and_rejects_non_image_inputs(digits):
    model, split = digits
    config = CompressionConfig(rounds=1, transform_iters=5, weight_iters=5, augment=True)
    result = compress(model, split.train_x[:96], 8.0, config=config)
    assert result.summary.target_ratio == 8.0
    assert result.summary.original_bytes / result.summary.estimated_file_bytes >= 8.0
    with pytest.raises(ConfigError, match="N, C, H, W"):
        compress(torch.nn.Linear(64, 10), torch.randn(96, 64), 8.0, config=config)
