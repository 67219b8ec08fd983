"""Where the time of one compression goes, stage by stage and inside one training iteration.

    .venv/bin/python bench/bench_profile.py --model efficientnet_lite0 --target 8 --preset balanced

Stages come from the progress events `compress` emits (the time between one phase's first event and the
next phase's); the iteration breakdown re-runs the pieces of one transform-phase step on the same state
(transforms T and T⁻¹, the entropy counter, the student's forward and backward, Adam's step) and times each
over ``--iters`` repetitions. Writes ``bench/results/profile.md`` and ``profile.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch.func import functional_call  # noqa: E402

from bench import models as bench_models  # noqa: E402
from bench.ablation import SUBJECT_ARGS, git_commit  # noqa: E402
from bench.run_all import machine_description  # noqa: E402
from compression_core import compress  # noqa: E402
from compression_core.config import CompressionConfig  # noqa: E402
from compression_core.recon.allocation import initial_bits  # noqa: E402
from compression_core.recon.losses import distillation_distance  # noqa: E402
from compression_core.recon.state import QuantizedState  # noqa: E402
from compression_core.transforms import plan_tensor  # noqa: E402


def stage_times(model, calibration, target: float, config: CompressionConfig) -> tuple[dict, float]:
    marks: list[tuple[str, float]] = []
    t0 = time.perf_counter()

    def progress(event) -> None:
        if not marks or marks[-1][0] != event.phase:
            marks.append((event.phase, time.perf_counter()))

    compress(model, calibration, target, config=config, progress=progress)
    total = time.perf_counter() - t0
    stages = {"setup + sensitivity + initial allocation": marks[0][1] - t0 if marks else total}
    for (phase, t), (_, t_next) in zip(marks, marks[1:] + [("end", t0 + total)], strict=True):
        stages[phase] = stages.get(phase, 0.0) + (t_next - t)
    return stages, total


def iteration_breakdown(model, calibration, config: CompressionConfig, iters: int) -> dict:
    work = model.float().eval()
    for p in work.parameters():
        p.requires_grad_(False)
    sd = work.state_dict()
    names = {n for n, _ in work.named_parameters()}
    plans = [plan_tensor(n, sd[n], n in names, config) for n in sd]
    coded = [p for p in plans if p.kind]
    bits = initial_bits(
        {p.name: sd[p.name] for p in coded}, {}, 4.0 * sum(sd[p.name].numel() for p in coded), "equal_bits", 4.0
    )
    state = QuantizedState(sd, plans, config, bits)
    opt = torch.optim.Adam(state.transform_parameters(), lr=config.transform_lr)
    batch = calibration[: config.batch_size]
    with torch.no_grad():
        target = [work(batch)]
    timings = dict.fromkeys(
        [
            "transforms T, T⁻¹ (+ STE)",
            "entropy counter",
            "student forward",
            "backward (model + counter + transforms)",
            "optimizer step",
            "for reference: the model's own backward alone",
        ],
        0.0,
    )
    with state.learning("transform"):  # as the schedule runs the transform phase
        for _ in range(iters):
            _time_one_step(work, state, opt, batch, target, timings, iters)
    return timings


def _time_one_step(work, state, opt, batch, target, timings: dict, iters: int) -> None:
    """Add one transform-phase step's pieces (each divided by ``iters``) to ``timings``."""
    t = time.perf_counter()
    quantized, codes = state.quantized_and_codes()
    t1 = time.perf_counter()
    rate = state.rate(codes)
    t2 = time.perf_counter()
    out = functional_call(work, quantized, (batch,))
    loss = distillation_distance([out], target) + 1e-9 * rate
    t3 = time.perf_counter()
    state.zero_grad(set_to_none=True)
    loss.backward()
    t4 = time.perf_counter()
    opt.step()
    t5 = time.perf_counter()
    leaves = {k: v.detach().requires_grad_() for k, v in quantized.items()}
    plain = distillation_distance([functional_call(work, leaves, (batch,))], target)
    t6 = time.perf_counter()
    plain.backward()
    t7 = time.perf_counter()
    for key, dt_ in zip(timings, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t7 - t6), strict=True):
        timings[key] += dt_ / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0", choices=list(SUBJECT_ARGS))
    parser.add_argument("--target", type=float, default=8.0)
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--label", default="", help="name of this measurement (e.g. before / after)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="CompressionConfig override on top of the preset (e.g. counter_samples=65536)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    bench_models.set_threads()
    subject = bench_models.SUBJECTS[args.model](**SUBJECT_ARGS[args.model])
    options = {key: json.loads(value) for key, _, value in (o.partition("=") for o in args.option)}
    config = CompressionConfig.from_dict({"preset": args.preset, "batch_size": 8, "holdout_fraction": 0.1, **options})
    stages, total = stage_times(subject.model, subject.calibration, args.target, config)
    breakdown = iteration_breakdown(subject.model, subject.calibration, config, args.iters)
    row = {
        "label": args.label,
        "model": args.model,
        "target": args.target,
        "preset": args.preset,
        "config": config.to_dict(),
        "stages_s": stages,
        "total_s": total,
        "iteration_s": breakdown,
        "commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "command": " ".join(sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "profile.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    rows.append(row)
    path.write_text(json.dumps(rows, indent=1, default=float))
    (args.out / "profile.md").write_text(render(rows))
    print(render([row]))


def render(rows: list[dict]) -> str:
    out = [
        "# Where the time of one compression goes",
        "",
        "Generated by `bench/bench_profile.py`. Stages from `compress`'s progress events; the iteration",
        "breakdown times the pieces of one transform-phase step (batch 8) on the same state.",
        "",
    ]
    for r in rows:
        out += [
            f"## {r['label'] or r['preset']}: {r['model']} at {r['target']:g}×, preset `{r['preset']}`",
            "",
            f"Commit {r['commit']}, {r['date']}, {r['machine']}; `{r['command']}`",
            "",
            f"Total {r['total_s']:.0f} s.",
            "",
            "| stage | s | share |",
            "|---|---|---|",
        ]
        for k, v in r["stages_s"].items():
            out.append(f"| {k} | {v:.1f} | {100 * v / r['total_s']:.0f} % |")
        it = dict(r["iteration_s"])
        model_backward = it.pop("for reference: the model's own backward alone")
        total_it = sum(it.values())
        model_part = it["student forward"] + model_backward
        out += [
            "",
            f"One iteration: {total_it * 1000:.0f} ms, of which the model's own forward + backward "
            f"{100 * model_part / total_it:.0f} % (the rest {100 * (1 - model_part / total_it):.0f} %).",
            "",
            "| piece | ms | share |",
            "|---|---|---|",
        ]
        for k, v in it.items():
            out.append(f"| {k} | {v * 1000:.1f} | {100 * v / total_it:.0f} % |")
        out.append(
            f"| (the model's own backward, measured alone) | {model_backward * 1000:.1f} | "
            f"{100 * model_backward / total_it:.0f} % |"
        )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
