"""Runs inside bench/.venv-nncodec (NNCodec 2.1.3, numpy<2); never imported by the main venv.

    python nncodec_worker.py JOB.json

JOB.json: {"input": "weights.npz", "qps": [-38, ...], "out_dir": "...", "use_dq": true}
For each qp: encode the float32 arrays of ``input`` with ``nncodec.nn.encode`` (NNCodec's default settings for
a plain parameter dict: dependent quantization, parameter optimisation, ≥2-D tensors quantised with ``qp``,
1-D tensors with ``nonweight_qp`` = -75), decode the bitstream with ``nncodec.nn.decode`` and write the
decoded arrays to ``out_dir/decoded_qp{qp}.npz``. Prints one JSON line with bitstream sizes and timings.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time


def main() -> int:
    job = json.load(open(sys.argv[1]))
    import numpy as np
    from nncodec import nn as nnc_nn

    src = np.load(job["input"])
    params = {k: np.ascontiguousarray(src[k], dtype=np.float32) for k in src.files}
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for qp in job["qps"]:
            args = {
                "qp": int(qp),
                "use_dq": bool(job.get("use_dq", True)),
                "results": scratch,
                "verbose": False,
                "model": "bench",
            }
            quiet = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(quiet):
                bitstream = nnc_nn.encode(dict(params), args=args)
            t1 = time.perf_counter()
            with contextlib.redirect_stdout(quiet):
                decoded = nnc_nn.decode(bytearray(bitstream), args=args)
            t2 = time.perf_counter()
            missing = sorted(set(params) - set(decoded))
            if missing:
                raise SystemExit(f"NNCodec decode lost tensors: {missing[:5]}")
            out = os.path.join(job["out_dir"], f"decoded_qp{qp}.npz")
            np.savez(
                out, **{k: np.asarray(decoded[k], dtype=np.float32).reshape(params[k].shape) for k in params}
            )
            results.append(
                {
                    "qp": int(qp),
                    "bitstream_bytes": len(bitstream),
                    "encode_s": t1 - t0,
                    "decode_s": t2 - t1,
                    "decoded": out,
                }
            )
    print(json.dumps({"results": results, "numpy": np.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
