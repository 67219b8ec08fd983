"""What each reconstruction mode buys for its compute and memory: score per minute and peak memory.

    .venv/bin/python bench/bench_modes.py --model efficientnet_lite0 --targets 8

Every mode compresses the same subject at the same target from the same calibration crops, in a fresh process
of its own (so that memory one mode freed cannot hide another's peak), and is scored on the weights decoded
from its file, on the subject's held-out evaluation data. Besides the scores it records the compression's
wall time and its peak memory: the process's resident-set high-water mark while it compresses, writes and
decodes the file, above what the process held before (Linux `VmHWM`, reset through ``/proc/self/clear_refs``).
The gains per minute are against the `start` mode (the initial allocation rounded to nearest, `--rounds 0`),
the floor every mode must beat. Writes bench/results/modes.md and modes.json (appending runs), with the
commit, the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import models as bench_models  # noqa: E402
from bench.ablation import BASE, SUBJECT_ARGS, load_subject, parse_overrides  # noqa: E402
from bench.run_all import evaluate_run, git_commit, machine_description, run_l2  # noqa: E402
from compression_core.config import CompressionConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# name → (what it runs, CompressionConfig overrides on the subject's BASE).
MODES: dict[str, tuple[str, str]] = {
    "start": ("initial sensitivity allocation rounded to nearest (`--rounds 0`)", "rounds=0,rounding=nearest"),
    "fast": ("start + GPTQ rounding (preset `fast`)", "preset=fast"),
    "balanced": ("fast + 60 end-to-end transform iterations (preset `balanced`)", "preset=balanced"),
    "end_to_end": (
        "fast + one end-to-end round of 30 transform and 30 weight iterations",
        "preset=fast,rounds=1,transform_iters=30,weight_iters=30",
    ),
    "blockwise": (
        "fast + block-wise reconstruction of the codes (100 steps a block, QDrop input mix)",
        "preset=fast,block_iters=100,block_lr=0.05",
    ),
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


@contextlib.contextmanager
def peak_memory() -> Iterator[dict]:
    """Measures the resident-set peak of the block above the resident set when it began, in MiB
    (``out["peak_extra_mib"]``): the high-water mark is reset on entry, read on exit."""
    Path("/proc/self/clear_refs").write_text("5")
    out = {"before_mib": _status_kib("VmRSS") / 1024}
    yield out
    out["peak_extra_mib"] = max(0.0, _status_kib("VmHWM") / 1024 - out["before_mib"])


def run_mode(model: str, mode: str, target: float) -> dict:
    """One compression and its scores, in this process (the parent runs each mode in a fresh one)."""
    bench_models.set_threads()
    subject = load_subject(model)
    config = CompressionConfig.from_dict({**BASE[model], **parse_overrides(MODES[mode][1])})
    with tempfile.TemporaryDirectory() as tmp, peak_memory() as memory:
        run = run_l2(subject, target, config, torch.device("cpu"), Path(tmp))
    evaluate_run(subject, run, torch.device("cpu"))
    blockwise = run.extra["holdout"].get("blockwise") or {}
    return {
        "model": model,
        "mode": mode,
        "target": target,
        "ratio": run.ratio,
        "scores": next(iter(run.scores.values())),
        "compress_s": round(run.compress_s, 1),
        "peak_extra_mib": round(memory["peak_extra_mib"], 1),
        "process_before_mib": round(memory["before_mib"], 1),
        "activation_cache_peak_mib": (
            round(blockwise["cache_peak_bytes"] / 2**20, 1) if "cache_peak_bytes" in blockwise else None
        ),
        "kept": (run.extra.get("selection") or {}).get("kept"),
    }


def with_gains(rows: list[dict]) -> list[dict]:
    """Each row with its gains over the ``start`` row of the same model and target, per minute of compression:
    agreement points, and the share of start's KL removed (percent). None where there is no start row or the
    subject has no such score."""
    starts = {(r["model"], r["target"]): r for r in rows if r["mode"] == "start"}
    out = []
    for r in rows:
        start = starts.get((r["model"], r["target"]))
        gains = {"agreement_points_per_min": None, "kl_cut_percent_per_min": None}
        if start is not None and r is not start and r["compress_s"] > 0:
            minutes = r["compress_s"] / 60
            if "agreement" in r["scores"]:
                gained = r["scores"]["agreement"] - start["scores"]["agreement"]
                gains["agreement_points_per_min"] = 100 * gained / minutes
            if r["scores"].get("kl") is not None and start["scores"].get("kl"):
                gains["kl_cut_percent_per_min"] = 100 * (1 - r["scores"]["kl"] / start["scores"]["kl"]) / minutes
        out.append({**r, **gains})
    return out


def _score(r: dict, key: str, digits: int) -> str:
    if key not in r["scores"]:
        return "–"
    se = r["scores"].get(f"{key}_se")
    return f"{r['scores'][key]:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def _maybe(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def render(report: dict) -> str:
    """modes.md from every recorded run (newest last)."""
    lines = [
        "# Reconstruction modes: quality per minute of compute, and peak memory",
        "",
        "Generated by `bench/bench_modes.py` from `modes.json`. Each mode compressed the same subject at the same",
        "target in a fresh process and was scored on the weights decoded from its file (held-out evaluation",
        "crops, ± the standard error over the evaluation photos). *Peak memory* is the process's resident-set",
        "high-water mark while it compressed, wrote and decoded the file, above what it held before (model,",
        "subject data); the activation cache is block-wise reconstruction's own account of its cached block",
        "inputs and outputs. Gains per minute are over `start` (the `--rounds 0` floor) at the same target.",
        "",
        "Modes: " + "; ".join(f"`{name}` = {what}" for name, (what, _) in MODES.items()) + ".",
        "",
    ]
    for run in report["runs"]:
        lines += [
            f"## {run['model']}, {run['date']}",
            "",
            f"Commit {run['commit']}, {run['machine']}; `{run['command']}`",
            "",
            "| mode | target | true ratio | agreement | KL | compress s | peak memory (MiB) | activation cache "
            "(MiB) | agreement pts / min | KL cut % / min | kept |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in with_gains(run["rows"]):
            lines.append(
                f"| {r['mode']} | {r['target']:g}× | {r['ratio']:.2f}× | {_score(r, 'agreement', 3)} | "
                f"{_score(r, 'kl', 4)} | {r['compress_s']:.0f} | {r['peak_extra_mib']:.0f} | "
                f"{_maybe(r['activation_cache_peak_mib'], '.0f')} | {_maybe(r['agreement_points_per_min'], '+.2f')} | "
                f"{_maybe(r['kl_cut_percent_per_min'], '+.1f')} | {r['kept'] or '–'} |"
            )
        lines.append("")
    return "\n".join(lines)


def _child(model: str, mode: str, target: float) -> dict:
    """Run one mode in a fresh interpreter and return its row (the child's last stdout line)."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", model, mode, str(target)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(SUBJECT_ARGS))
    parser.add_argument("--targets", nargs="+", type=float, default=[8.0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "MODE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model, mode, target = args.child
        print(json.dumps(run_mode(model, mode, float(target)), default=float))
        return
    rows = []
    for target in args.targets:
        for mode in args.modes:
            rows.append(_child(args.model, mode, target))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "modes.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": []}
    report["runs"].append(
        {
            "model": args.model,
            "rows": rows,
            "commit": git_commit(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_description(),
            "command": " ".join(["bench/bench_modes.py", *(argv if argv is not None else sys.argv[1:])]),
        }
    )
    path.write_text(json.dumps(report, indent=1, default=float))
    (args.out / "modes.md").write_text(render(report))


if __name__ == "__main__":
    main()
