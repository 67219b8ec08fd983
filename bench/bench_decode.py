"""Benchmark of the `.l2` codec on a ResNet-18-sized artifact: encode and end-to-end `load_l2` throughput,
true-file overhead over the empirical entropy, and where the time goes.

The artifact has ResNet-18's state_dict layout: every float parameter coded (11.7 M weights; conv/fc weights
prune_quant with per-channel parameters, biases and BN affine linear per tensor), BN running statistics
stored. Symbols are Laplace-distributed (scale 3, about 4 bits of entropy); one frequency table per tensor.
Timings are the best of ``--repeats`` runs on a warm page cache. Writes bench/results/decode.md and
decode.json.

    python bench/bench_decode.py [--repeats 5] [--scale 3.0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compression_core.coding import encode_l2, encoded_size, load_l2, rangecoder, read_manifest, write_l2  # noqa: E402, I001
from compression_core.coding.reader import L2Reader  # noqa: E402
from compression_core.coding.values import gather_values, tensor_crc, value_table  # noqa: E402
from compression_core.records import ArtifactContents, CodedTensor, StoredTensor  # noqa: E402
from compression_core.report import empirical_entropy_bits  # noqa: E402
from bench.run_all import git_commit, machine_description  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def resnet18_contents(scale: float, seed: int = 0) -> ArtifactContents:
    """Records shaped like torchvision's resnet18 state_dict (weights not needed, only the layout)."""
    import torchvision

    model = torchvision.models.resnet18()
    params = {n for n, _ in model.named_parameters()}
    rng = np.random.default_rng(seed)
    records = []
    for name, t in model.state_dict().items():
        shape, dtype = tuple(t.shape), str(t.dtype).removeprefix("torch.")
        if name in params:
            symbols = np.round(rng.laplace(0.0, scale, t.numel())).astype(np.int32)
            if t.dim() >= 2:
                c = shape[0]
                p = {"e": np.full(c, 0.01, np.float32), "s": rng.uniform(0.005, 0.02, c).astype(np.float32)}
                records.append(CodedTensor(name, shape, dtype, "prune_quant", p, symbols))
            else:
                records.append(CodedTensor(name, shape, dtype, "linear", {"s": np.float32(0.01)}, symbols))
        else:
            raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            records.append(StoredTensor(name, shape, dtype, raw))
    return ArtifactContents(records, metadata={"source": "resnet18 layout, synthetic Laplace symbols"})


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def breakdown(path: Path, repeats: int) -> dict[str, float]:
    """Each stage of `load_l2` timed on its own (best of ``repeats``)."""
    with L2Reader(path) as r:
        items = list(r.payloads())
        r.finish()
    coded = [(e, p) for e, p in items if e.mode == "coded" and e.levels >= 2]

    def read_check_hash():
        with L2Reader(path) as r:
            for _ in r.payloads():
                pass
            r.finish()

    def range_decode():
        for e, p in coded:
            rangecoder.decode(p, e.counts, e.numel, e.name)

    symbols = [rangecoder.decode(p, e.counts, e.numel, e.name) for e, p in coded]

    def tables():
        for e, _ in coded:
            value_table(e, e.lo, e.hi)

    prepared = [value_table(e, e.lo, e.hi) for e, _ in coded]

    def gather():
        for (e, _), s in zip(coded, symbols, strict=True):
            gather_values(e, s.copy())

    float32_values = [
        torch.index_select(t[0], 0, torch.from_numpy(s)) for t, s in zip(prepared, symbols, strict=True)
    ]

    def value_crc():
        for v in float32_values:
            tensor_crc(v)

    def cast_after_gather_bf16():  # what a post-gather cast would cost; the codec casts the table instead
        for v in float32_values:
            v.to(torch.bfloat16)

    return {
        "read + payload CRC32 + SHA-256 (s)": best(read_check_hash, repeats),
        "range decoding (s)": best(range_decode, repeats),
        "level tables: T⁻¹ + cast to dtype (s)": best(tables, repeats),
        "gather incl. level tables (s)": best(gather, repeats),
        "decoded-value CRC32 (s)": best(value_crc, repeats),
        "for comparison: casting gathered values to bfloat16 (s)": best(cast_after_gather_bf16, repeats),
    }


def encode_breakdown(contents: ArtifactContents, repeats: int) -> dict[str, float]:
    coded = [r for r in contents.records if isinstance(r, CodedTensor)]
    prepared = []
    for r in coded:
        lo = int(r.symbols.min())
        shifted = (r.symbols - np.int32(lo)).astype(np.int32)
        prepared.append((shifted, np.bincount(shifted).astype(np.int64)))

    def stats():
        for r in coded:
            s = r.symbols - np.int32(r.symbols.min())
            np.bincount(s)

    def range_encode():
        for s, c in prepared:
            rangecoder.encode(s, c)

    return {
        "min/shift/bincount (s)": best(stats, repeats),
        "range encoding (s)": best(range_encode, repeats),
        "encoded_size total (s)": best(lambda: encoded_size(contents), repeats),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=float, default=3.0, help="Laplace scale of the symbols")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    contents = resnet18_contents(args.scale)
    coded = [r for r in contents.records if isinstance(r, CodedTensor)]
    n_coded = sum(r.symbols.size for r in coded)
    ideal = sum(empirical_entropy_bits(r.symbols) * r.symbols.size for r in coded) / 8
    stored = sum(len(r.data) for r in contents.records if isinstance(r, StoredTensor))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet18.l2"
        encode_s = best(lambda: encode_l2(contents), args.repeats)
        file_bytes = write_l2(contents, path)
        decoded = load_l2(path)  # warm the page cache and check once
        assert list(decoded) == [r.name for r in contents.records]
        load_s = best(lambda: load_l2(path), args.repeats)
        manifest = read_manifest(path)
        stages = breakdown(path, args.repeats)
        enc_stages = encode_breakdown(contents, args.repeats)

    overhead = file_bytes - stored
    report = {
        "environment": {
            "commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine_description": machine_description(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "cpu_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "artifact": {
            "tensors": len(contents.records),
            "coded_weights": n_coded,
            "coded_tensors": len(coded),
            "laplace_scale": args.scale,
            "entropy_bits_per_weight": 8 * ideal / n_coded,
            "ideal_payload_bytes": round(ideal),
            "stored_bytes": stored,
            "file_bytes": file_bytes,
            "payload_bytes": manifest.payload_bytes,
            "table_bytes_raw": manifest.table_bytes,
            "manifest_bytes": manifest.manifest_bytes,
            "manifest_raw_bytes": manifest.manifest_raw_bytes,
            "header_bytes": manifest.header_bytes,
            "checks_bytes": manifest.checks_bytes,
            "trailer_bytes": manifest.trailer_bytes,
            "overhead_vs_entropy_pct": 100 * (overhead - ideal) / ideal,
            "payload_overhead_vs_entropy_pct": 100 * (manifest.payload_bytes - stored - ideal) / ideal,
        },
        "encode": {"best_s": encode_s, "M_symbols_per_s": n_coded / encode_s / 1e6, **enc_stages},
        "decode": {"best_s": load_s, "M_weights_per_s": n_coded / load_s / 1e6, **stages},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(report, indent=2))
    (args.out / "decode.md").write_text(render(report, argv))
    print(render(report, argv))
    return report


def render(r: dict, argv: list[str] | None) -> str:
    a, e, d = r["artifact"], r["encode"], r["decode"]
    lines = [
        "# .l2 codec: encode / decode throughput (ResNet-18-sized artifact)",
        "",
        f"Commit {r['environment']['commit']}, {r['environment']['date']}; machine: "
        f"{r['environment']['machine_description']}.",
        "",
        f"Environment: {r['environment']}",
        "",
        f"Command: `python bench/bench_decode.py {' '.join(argv or sys.argv[1:])}`",
        "",
        f"Artifact: {a['tensors']} tensors, {a['coded_weights']:,} coded weights in {a['coded_tensors']} "
        f"tensors (Laplace scale {a['laplace_scale']}, {a['entropy_bits_per_weight']:.3f} bits/weight "
        f"empirical entropy), {a['stored_bytes']:,} bytes stored exactly (BN running statistics).",
        "",
        "| size | bytes |",
        "|---|---:|",
        f"| ideal payload (empirical entropy) | {a['ideal_payload_bytes']:,} |",
        f"| file | {a['file_bytes']:,} |",
        f"| of which payloads (coded + stored) | {a['payload_bytes']:,} |",
        f"| of which manifest (zlib; {a['manifest_raw_bytes']:,} raw, tables {a['table_bytes_raw']:,} raw) "
        f"| {a['manifest_bytes']:,} |",
        f"| of which header + checks + trailer "
        f"| {a['header_bytes'] + a['checks_bytes'] + a['trailer_bytes']:,} |",
        "",
        f"Overhead of the whole file (minus stored bytes) over the ideal payload: "
        f"**{a['overhead_vs_entropy_pct']:.3f} %** "
        f"(range coder alone: {a['payload_overhead_vs_entropy_pct']:.4f} %).",
        "",
        "| direction | best of runs (s) | throughput |",
        "|---|---:|---:|",
        f"| encode_l2 (incl. value checksums, SHA-256) | {e['best_s']:.3f} "
        f"| {e['M_symbols_per_s']:.1f} M symbols/s |",
        f"| encoded_size | {e['encoded_size total (s)']:.3f} "
        f"| {a['coded_weights'] / e['encoded_size total (s)'] / 1e6:.1f} M symbols/s |",
        f"| load_l2 end to end | {d['best_s']:.3f} | **{d['M_weights_per_s']:.1f} M weights/s** |",
        f"| range decoding alone (constriction) | {d['range decoding (s)']:.3f} "
        f"| {a['coded_weights'] / d['range decoding (s)'] / 1e6:.1f} M symbols/s |",
        "",
        "Where decode time goes (each stage timed alone, best of runs):",
        "",
        "| stage | s |",
        "|---|---:|",
    ]
    lines += [f"| {k.removesuffix(' (s)')} | {v:.4f} |" for k, v in d.items() if k.endswith("(s)")]
    lines += ["", "Encode stages:", "", "| stage | s |", "|---|---:|"]
    lines += [f"| {k.removesuffix(' (s)')} | {v:.4f} |" for k, v in e.items() if k.endswith("(s)")]
    lines += [
        "",
        "The level table is cast to the tensor's dtype before the gather (element-wise, so bit-identical to "
        "casting afterwards); the last decode row shows what a cast of the gathered values would have cost. "
        "The machine is shared (2 cores, see the load average above), so figures vary by ±30 % between "
        "runs; constriction holds the GIL, so decoding uses one core.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
