"""How good is a job's ETA? Runs `compress` on a bench subject with each preset and compares, at every progress
event, the ETA the worker would write (`worker.progress.ProgressWriter.eta_seconds`, the same code) with the
real remaining time of the run.

    .venv/bin/python bench/bench_eta.py --model efficientnet_lite0 --target 8 --presets fast balanced

The aim (issue 13): within 30 % of the real remaining time from 10 % progress on. Writes bench/results/eta.md
and eta.json (appending runs), with the commit, the command, the machine, the date and the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import models as bench_models  # noqa: E402
from bench.ablation import BASE, SUBJECT_ARGS, git_commit, parse_overrides  # noqa: E402
from bench.run_all import machine_description  # noqa: E402
from compression_core import compress  # noqa: E402
from compression_core.config import CompressionConfig  # noqa: E402
from worker.progress import ProgressWriter  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Relative errors are reported where at least this much of the run remains: near the end a second of jitter
# is a large share of almost nothing.
_MIN_REMAINING_S = 10.0


def measure(subject, target: float, preset: str, overrides: str = "") -> dict:
    """One compression's ETA trace; ``overrides`` (``key=value,…``) change the preset's configuration."""
    config = CompressionConfig.from_dict({**BASE[subject.name], "preset": preset, **parse_overrides(overrides)})
    writer = ProgressWriter(None, "bench", 0, session_factory=None)
    events: list[tuple[float, float, str]] = []

    def record(event) -> None:
        events.append((time.monotonic(), float(event.fraction), event.phase))

    started = writer.started
    result = compress(subject.model, subject.calibration, target, config=config, progress=record)
    ended = time.monotonic()
    total = ended - started
    rows = []
    for at, fraction, phase in events:
        eta = writer.eta_seconds(fraction, at)
        real = ended - at
        if fraction < 0.1 or eta is None:
            continue
        rows.append(
            {
                "elapsed_s": round(at - started, 2),
                "fraction": round(fraction, 4),
                "phase": phase,
                "eta_s": eta,
                "real_s": round(real, 2),
                "relative_error": abs(eta - real) / real if real >= _MIN_REMAINING_S else None,
                "error_of_total": abs(eta - real) / total,
            }
        )
    relative = [r["relative_error"] for r in rows if r["relative_error"] is not None]
    return {
        "preset": f"{preset} + {overrides}" if overrides else preset,
        "target": target,
        "total_s": round(total, 1),
        "events_from_10pct": len(rows),
        "max_relative_error": max(relative) if relative else None,
        "median_relative_error": sorted(relative)[len(relative) // 2] if relative else None,
        "max_error_of_total": max((r["error_of_total"] for r in rows), default=None),
        "trace": rows,
        "stages": result.evaluation.get("stages", {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(SUBJECT_ARGS))
    parser.add_argument("--target", type=float, default=8.0)
    parser.add_argument("--presets", nargs="+", default=["fast", "balanced"])
    parser.add_argument(
        "--options", default="", metavar="KEY=VALUE,…",
        help="CompressionConfig overrides on top of every preset (e.g. gptq_asymmetric=true)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    bench_models.set_threads()
    subject = bench_models.SUBJECTS[args.model](**SUBJECT_ARGS[args.model])
    subject.model = subject.model.float().eval()
    load_before = os.getloadavg()
    runs = [measure(subject, args.target, preset, args.options) for preset in args.presets]
    record = {
        "command": " ".join(sys.argv),
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "model": args.model,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / "eta.json"
    history = json.loads(journal.read_text()) if journal.exists() else []
    history.append(record)
    journal.write_text(json.dumps(history, indent=1))
    (args.out / "eta.md").write_text(render(history))
    for run in runs:
        print(run["preset"], run["total_s"], "s; max relative error", run["max_relative_error"])


def render(history: list[dict]) -> str:
    lines = [
        "# ETA accuracy",
        "",
        "Generated by `bench/bench_eta.py`: at every progress event from 10 % on, the ETA the worker writes",
        "(`ProgressWriter.eta_seconds`) against the real remaining time of the same run. Relative errors count",
        f"where ≥ {_MIN_REMAINING_S:g} s remained; 'of total' is the error as a share of the whole run. Aim: ≤ 30 %.",
        "",
        "| date | commit | model | preset | target | run s | events | max rel. error | median | max of total "
        "| load before/after | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in history:
        for run in record["runs"]:

            def pct(value):
                return "–" if value is None else f"{100 * value:.0f} %"

            lines.append(
                f"| {record['date']} | {record['commit']} | {record['model']} | {run['preset']} | "
                f"{run['target']:g}× | {run['total_s']} | {run['events_from_10pct']} | "
                f"{pct(run['max_relative_error'])} | {pct(run['median_relative_error'])} | "
                f"{pct(run['max_error_of_total'])} | {record['load_average_before_after']} | `{record['command']}` |"
            )
    lines += ["", f"Machine: {history[-1]['machine']}.", ""]
    latest = history[-1]
    for number, run in enumerate(latest["runs"], start=1):
        if not run.get("stages"):
            continue
        lines += [
            f"Stages of run {number} ({run['preset']}) of the latest command ({latest['commit']}): seconds taken "
            "against the estimate made when the stage began.",
            "",
            "| stage | seconds | estimated at its start |",
            "|---|---:|---:|",
        ]
        lines += [f"| {name} | {v['seconds']:.1f} | {v['estimated']:.1f} |" for name, v in run["stages"].items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
