"""`l2 decompress` and `l2 inspect`: turn a `.l2` file back into weights, or show what is inside it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "decompress",
        help="decode a .l2 file into a PyTorch state_dict (.safetensors or .pt)",
        description=(
            "Decode every tensor of MODEL.l2, bit-exact, and save the state_dict. The output format "
            "follows the suffix of OUTPUT: .safetensors (safe to load anywhere) or .pt/.pth (torch.save "
            "of a plain dict of tensors; load it with torch.load(path, weights_only=True)). "
            "Example: l2 decompress model.l2 model.safetensors"
        ),
    )
    d.add_argument("artifact", type=Path, metavar="MODEL.l2", help="the compressed file")
    d.add_argument(
        "output", type=Path, metavar="OUTPUT", help="where to write the weights (.safetensors, .pt or .pth)"
    )
    d.set_defaults(handler=run_decompress)

    i = sub.add_parser(
        "inspect",
        help="show the header, metadata and per-tensor sizes of a .l2 file",
        description=(
            "Read the header and manifest of MODEL.l2 (payloads are not decoded) and print one row per "
            "tensor: shape, dtype, whether it is range-coded or stored as is, its transform, the number "
            "of distinct levels, its payload bytes and bits per weight; then where the file's bytes go. "
            "Example: l2 inspect model.l2 --json"
        ),
    )
    i.add_argument("artifact", type=Path, metavar="MODEL.l2", help="the compressed file")
    i.add_argument(
        "--json", action="store_true", help="print everything as one JSON object instead of tables"
    )
    i.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking the payloads' CRC32s and the SHA-256 trailer (by default every byte is read once, "
        "so a corrupted file fails here rather than when it is decoded)",
    )
    i.set_defaults(handler=run_inspect)


def run_decompress(args: argparse.Namespace) -> int:
    from compression_core.coding import L2FormatError, load_l2

    suffix = args.output.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        print(
            f"l2 decompress: cannot tell the format of {args.output}: use a .safetensors, .pt or .pth suffix",
            file=sys.stderr,
        )
        return 2
    try:
        state_dict = load_l2(args.artifact)
    except (L2FormatError, OSError) as exc:
        print(f"l2 decompress: {args.artifact}: {exc}", file=sys.stderr)
        return 1
    _save_atomic(state_dict, args.output, suffix)
    log.info("wrote %d tensors to %s", len(state_dict), args.output)
    return 0


def _save_atomic(state_dict: dict, output: Path, suffix: str) -> None:
    """Write next to the destination, then rename: an interrupted run never leaves half a checkpoint."""
    import torch

    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp)
        else:
            torch.save(dict(state_dict), tmp)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_inspect(args: argparse.Namespace) -> int:
    from compression_core.coding import L2FormatError, read_manifest, verify_file

    try:
        manifest = read_manifest(args.artifact) if args.no_verify else verify_file(args.artifact)
    except (L2FormatError, OSError) as exc:
        print(f"l2 inspect: {args.artifact}: {exc}", file=sys.stderr)
        return 1
    info = {**manifest.to_dict(), "verified": not args.no_verify}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{args.artifact}: .l2 format version {info['version']}, coder {info['coder']}, "
        f"created {info['created']}"
    )
    print(
        "  checksums: NOT verified (--no-verify); 'l2 inspect' without it checks every payload"
        if args.no_verify
        else "  checksums: every payload's CRC32 and the file's SHA-256 verified"
    )
    meta = {k: v for k, v in info["metadata"].items() if k not in ("layers", "created")}
    for key, value in meta.items():
        print(f"  {key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    print()
    print(_tensor_table(info["tensors"]))
    print()
    totals = info["totals"]
    numel = sum(_numel(t["shape"]) for t in info["tensors"])
    for key in (
        "payload_bytes",
        "table_bytes",
        "header_bytes",
        "manifest_bytes",
        "checks_bytes",
        "trailer_bytes",
        "file_bytes",
    ):
        note = " (inside the manifest, before zlib)" if key == "table_bytes" else ""
        print(f"  {key.replace('_', ' '):<16} {totals[key]:>12,}{note}")
    if numel:
        print(
            f"  {'bits/weight':<16} {8 * totals['file_bytes'] / numel:>12.3f} "
            f"(whole file over {numel:,} weights)"
        )
    return 0


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _levels(tensor: dict) -> str:
    """Distinct levels used; a binned table records only the bins, so its count is an upper bound."""
    return ("≤" if tensor.get("table_bin_bits") else "") + str(tensor["levels"])


def _tensor_table(tensors: list[dict]) -> str:
    header = ("name", "shape", "dtype", "mode", "transform", "levels", "bytes", "bits/weight")
    rows = [header]
    for t in tensors:
        rows.append(
            (
                t["name"],
                "x".join(map(str, t["shape"])) or "()",
                t["dtype"],
                t["mode"],
                (t["transform"] or "-") + ("+trellis" if t.get("trellis") else ""),
                _levels(t) if t["mode"] == "coded" else "-",
                f"{t['payload_bytes']:,}",
                f"{t['bits_per_weight']:.3f}",
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    right = {5, 6, 7}
    lines = [
        "  ".join(
            cell.rjust(w) if c in right else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
