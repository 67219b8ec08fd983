"""Baselines a user would pick instead of L², each measured the same way as L²: the true ratio is the fp32
bytes of the whole state_dict (4 bytes per floating element, the own width of integer tensors; the project's
definition) divided by every byte the method needs to give the weights back, and accuracy is measured on the
weights decoded from those bytes.

- ``rtn``: round-to-nearest, symmetric, per output channel, 8/6/4 bit, on every ≥2-D floating tensor
  (1-D tensors and BN statistics stored exactly), written with the *same* `.l2` container and range coder
  as L² (`compression_core.coding.write_l2`), so the comparison isolates what L²'s learned transforms add.
- ``zstd``: the fp32 safetensors file compressed with zstandard (lossless).
- ``nncodec``: Fraunhofer HHI's NNCodec 2.1.3 (MPEG NNC: dependent quantization + DeepCABAC), run in its own
  venv through `bench/nncodec_worker.py`. It codes every floating tensor (≥2-D with ``qp``, 1-D
  near-losslessly with its default ``nonweight_qp`` -75); integer tensors (BN's num_batches_tracked) are not
  floats, so they are kept raw and their bytes added to the bitstream's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compression_core.records import ArtifactContents, CodedTensor, StoredTensor
from compression_core.report import original_bytes

BENCH = Path(__file__).resolve().parent
NNCODEC_PYTHON = BENCH / ".venv-nncodec" / "bin" / "python"
NNCODEC_WORKER = BENCH / "nncodec_worker.py"


@dataclass
class MethodRun:
    """One compressed version of a model. ``state_dict`` is what the method's decoder returned (not saved
    in the JSON); ``file_bytes`` every byte needed to rebuild it."""

    method: str
    setting: str
    file_bytes: int
    original_bytes: int
    compress_s: float
    decode_s: float
    state_dict: dict[str, torch.Tensor] | None = None
    scores: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.original_bytes / self.file_bytes

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "setting": self.setting,
            "file_bytes": self.file_bytes,
            "original_bytes": self.original_bytes,
            "ratio": self.ratio,
            "compress_s": self.compress_s,
            "decode_s": self.decode_s,
            "scores": self.scores,
            "extra": self.extra,
        }


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def fp32_bytes(sd: dict[str, torch.Tensor]) -> int:
    """The ratio's numerator (see `compression_core.report.original_bytes`)."""
    return sum(original_bytes((k, _dtype_name(v), v.numel())) for k, v in sd.items())


def _stored(name: str, t: torch.Tensor) -> StoredTensor:
    t = t.detach().cpu().contiguous()
    raw = t.view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)
    return StoredTensor(name=name, shape=tuple(t.shape), dtype=_dtype_name(t), data=raw.numpy().tobytes())


def rtn_contents(sd: dict[str, torch.Tensor], bits: int) -> ArtifactContents:
    """Symmetric per-output-channel RTN: s_c = max|w_c| / (2^(bits−1) − 1), symbols = round(w / s_c) in
    [−(2^(bits−1) − 1), 2^(bits−1) − 1]. All-zero channels get s = 1 (their symbols are all 0)."""
    qmax = 2 ** (bits - 1) - 1
    records = []
    for name, t in sd.items():
        if t.is_floating_point() and t.dim() >= 2:
            w = t.detach().cpu().double().reshape(t.shape[0], -1)
            s = w.abs().amax(1) / qmax
            s = torch.where(s > 0, s, torch.ones_like(s)).float()
            q = torch.clamp(torch.round(w / s.double()[:, None]), -qmax, qmax).to(torch.int32)
            records.append(
                CodedTensor(
                    name=name,
                    shape=tuple(t.shape),
                    dtype=_dtype_name(t),
                    kind="linear",
                    params={"s": s.numpy().astype(np.float32)},
                    symbols=q.reshape(t.shape).numpy(),
                )
            )
        else:
            records.append(_stored(name, t))
    return ArtifactContents(records=records, metadata={"method": f"rtn{bits}"})


def run_rtn(sd: dict[str, torch.Tensor], bits: int, workdir: Path) -> MethodRun:
    from compression_core.coding import load_l2, write_l2

    t0 = time.perf_counter()
    contents = rtn_contents(sd, bits)
    path = workdir / f"rtn{bits}.l2"
    file_bytes = write_l2(contents, path)
    t1 = time.perf_counter()
    decoded = load_l2(path)
    t2 = time.perf_counter()
    return MethodRun(
        "RTN per-channel + range coder",
        f"{bits}-bit",
        file_bytes,
        fp32_bytes(sd),
        t1 - t0,
        t2 - t1,
        dict(decoded),
    )


def run_zstd(sd: dict[str, torch.Tensor], level: int = 19) -> MethodRun:
    import zstandard
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    t0 = time.perf_counter()
    blob = zstandard.ZstdCompressor(level=level).compress(
        st_save({k: v.detach().cpu().contiguous() for k, v in sd.items()})
    )
    t1 = time.perf_counter()
    decoded = st_load(zstandard.ZstdDecompressor().decompress(blob))
    t2 = time.perf_counter()
    return MethodRun(
        "zstd (fp32 safetensors)", f"level {level}", len(blob), fp32_bytes(sd), t1 - t0, t2 - t1, decoded
    )


def nncodec_available() -> bool:
    return NNCODEC_PYTHON.exists()


def run_nncodec(
    sd: dict[str, torch.Tensor], qps: list[int], workdir: Path, timeout_s: float = 1800
) -> list[MethodRun]:
    """Sweep NNCodec's qp (smaller = finer). One subprocess for the whole sweep; per-qp timings are the
    worker's own encode/decode times (the subprocess start-up is not charged)."""
    if not nncodec_available():
        raise FileNotFoundError(f"{NNCODEC_PYTHON} missing: run bench/setup_env.sh")
    floats = {k: v for k, v in sd.items() if v.is_floating_point()}
    others = {k: v for k, v in sd.items() if not v.is_floating_point()}
    raw_other_bytes = sum(v.numel() * v.element_size() for v in others.values())
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "weights.npz", **{k: v.detach().cpu().float().numpy() for k, v in floats.items()})
        job = {
            "input": str(tmp / "weights.npz"),
            "qps": [int(q) for q in qps],
            "out_dir": str(tmp),
            "use_dq": True,
        }
        (tmp / "job.json").write_text(json.dumps(job))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["CUDA_VISIBLE_DEVICES"] = ""
        proc = subprocess.run(
            [str(NNCODEC_PYTHON), str(NNCODEC_WORKER), str(tmp / "job.json")],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"NNCodec worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        runs = []
        for r in report["results"]:
            dec = np.load(r["decoded"])
            decoded = {
                k: torch.from_numpy(dec[k].copy()).to(sd[k].dtype) if k in floats else others[k].clone()
                for k in sd
            }
            runs.append(
                MethodRun(
                    "NNCodec 2.1.3 (DQ + DeepCABAC)",
                    f"qp {r['qp']}",
                    r["bitstream_bytes"] + raw_other_bytes,
                    fp32_bytes(sd),
                    r["encode_s"],
                    r["decode_s"],
                    decoded,
                    extra={
                        "bitstream_bytes": r["bitstream_bytes"],
                        "raw_integer_tensor_bytes": raw_other_bytes,
                    },
                )
            )
    return runs


if __name__ == "__main__":  # quick manual check: python -m bench.peers
    torch.manual_seed(0)
    demo = {
        "conv.weight": torch.randn(16, 8, 3, 3) * 0.1,
        "conv.bias": torch.randn(16) * 0.01,
        "bn.num_batches_tracked": torch.tensor(5),
    }
    for run in run_nncodec(demo, [-38, -26], Path(tempfile.gettempdir())):
        err = float((run.state_dict["conv.weight"] - demo["conv.weight"]).abs().max())
        print(run.setting, run.file_bytes, f"{run.ratio:.2f}x", f"max err {err:.4g}", file=sys.stderr)
