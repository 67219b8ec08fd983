"""Ablations of the L² optimizer: which phase, setting and schedule buys quality, on the bench subjects.

    .venv/bin/python bench/ablation.py --models efficientnet_lite0 --targets 5 8 10 \
        --variant rounds0 rounds=0 --variant t60 rounds=1,transform_iters=60,weight_iters=0

Each variant is a name and comma-separated CompressionConfig overrides on top of ``--base``. Every run is
compressed, written, decoded from the file and scored by the subject's evaluations (the bench's own held-out
data). Runs are appended to ``bench/results/ablation.jsonl`` (one JSON object per run, with the commit, the
command and the machine) and ``bench/results/ablation.md`` is rendered from all recorded runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import itertools
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import models as bench_models  # noqa: E402
from bench.compare import is_scalar_score, paired_cells, paired_scores  # noqa: E402
from bench.run_all import evaluate_run, git_commit, machine_description, run_l2, score_summary  # noqa: E402
from compression_core.config import CompressionConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Lighter subjects than the peers bench: the probe is skipped unless asked for (it costs ~20 s a model).
SUBJECT_ARGS = {
    "digits_cnn": {},
    "mnist_cnn": {"calibration_samples": 1024},
    "efficientnet_lite0": {"calibration_crops": 256, "eval_crops": 300, "crop_size": 224, "probe_size": 64},
}
BASE = {
    "digits_cnn": dict(batch_size=32),
    "mnist_cnn": dict(batch_size=32),
    "efficientnet_lite0": dict(batch_size=8, holdout_fraction=0.1),
}


def load_subject(name: str, overrides: dict | None = None, probe: bool = False) -> bench_models.Subject:
    """A bench subject with this module's data arguments, its model in float eval mode; the Fashion-MNIST
    probe panel only when asked for (a subject that has one fits it when built)."""
    factory = bench_models.SUBJECTS[name]
    args = {**SUBJECT_ARGS[name], **(overrides or {})}
    if "probe" in inspect.signature(factory).parameters:
        args.setdefault("probe", probe)
    subject = factory(**args)
    subject.model = subject.model.float().eval()
    return subject


def parse_overrides(text: str) -> dict:
    """``key=value,key=value`` with JSON values; commas inside a JSON list or object do not split
    (``feature_modules=["blocks.2","blocks.4"]``)."""
    out = {}
    items, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    for item in filter(None, items):
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--targets", nargs="+", type=float, default=[5.0, 8.0, 10.0])
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), required=True)
    parser.add_argument("--probe", action="store_true", help="also run the Fashion-MNIST probe (EfficientNet)")
    parser.add_argument("--tag", default="", help="free text recorded with every run (what is being tested)")
    parser.add_argument(
        "--attribute", action="store_true",
        help="also score the model with only one family of layers decoded (classifier, depthwise, pointwise, "
        "other convolutions, 1-D parameters), the rest left at fp32: where the loss comes from",
    )
    parser.add_argument(
        "--subject-option", action="append", default=[], metavar="KEY=VALUE",
        help="override a subject's data argument (e.g. calibration_crops=1000: more calibration samples)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    subject_overrides = parse_overrides(",".join(args.subject_option))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("compression_core").setLevel(logging.WARNING)
    bench_models.set_threads()
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / "ablation.jsonl"
    machine = machine_description()
    commit = git_commit()  # the code this process loaded, not whatever HEAD is when a run ends
    for name in args.models:
        subject = load_subject(name, subject_overrides, probe=args.probe)
        for variant, overrides in args.variant:
            config = CompressionConfig.from_dict({**BASE[name], **parse_overrides(overrides)})
            for target in args.targets:
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    run = run_l2(subject, target, config, torch.device("cpu"), Path(tmp))
                    attribution = attribute(subject, run.state_dict) if args.attribute else None
                    evaluate_run(subject, run, torch.device("cpu"))
                row = {
                    "subject": name,
                    "variant": variant,
                    "overrides": overrides,
                    "target": target,
                    "ratio": run.ratio,
                    "scores": run.scores,
                    "compress_s": round(run.compress_s, 1),
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "holdout": {k: v for k, v in run.extra["holdout"].items() if not isinstance(v, dict)},
                    "selection": run.extra["holdout"].get("selection"),
                    **({"attribution": attribution} if attribution else {}),
                    "tag": args.tag,
                    "commit": commit,
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "machine": machine,
                    "command": " ".join(sys.argv),
                }
                with journal.open("a") as f:
                    f.write(json.dumps(row, default=float) + "\n")
                logging.info("%s %s %g× → %.2f× %s (%.0f s)", name, variant, target, run.ratio,
                             score_summary(run.scores), run.compress_s)
    render(journal, args.out / "ablation.md")


def layer_family(model: torch.nn.Module, name: str) -> str:
    module = dict(model.named_modules()).get(name.rpartition(".")[0])
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Conv2d) and name.endswith("weight"):
        if module.groups > 1:
            return "depthwise"
        return "pointwise" if module.kernel_size == (1, 1) else "conv"
    return "1-D and other"


def attribute(subject, decoded: dict[str, torch.Tensor]) -> dict:
    """The subject's first evaluation with one family of layers decoded and everything else original."""
    import copy

    original = subject.model.state_dict()
    families = {name: layer_family(subject.model, name) for name in original}
    evaluate = next(iter(subject.evaluations.values()))[0]
    scores = {}
    for family in dict.fromkeys(families.values()):
        model = copy.deepcopy(subject.model)
        model.load_state_dict({
            k: (decoded[k] if families[k] == family else v).to(v.dtype) for k, v in original.items()
        })
        scores[family] = evaluate(model.eval())
    return scores


def render(journal: Path, path: Path) -> None:
    rows = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    lines = [
        "# Ablations of the L² optimizer",
        "",
        "Generated by `bench/ablation.py` from `ablation.jsonl` (every run ever recorded, newest last); each row",
        "names its commit (HEAD of the tree it ran in; the first runs of 2026-11-30 ran on uncommitted optimizer",
        "changes on top of it, which their tag names), the date and the exact command. Scores are measured on",
        "the weights decoded from the",
        "written file, on the subject's held-out evaluation data (never calibration). Machine: the team's",
        "2-core CPU machine, shared with other engineers' test runs at the time (times are wall-clock).",
        "",
    ]
    for subject in dict.fromkeys(r["subject"] for r in rows):
        lines += [
            f"## {subject}",
            "",
            "| variant | overrides | target | true ratio | scores | compress s | tag | commit |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if r["subject"] != subject:
                continue
            scores = "; ".join(_score_text(s) for s in r["scores"].values())
            lines.append(
                f"| {r['variant']} | `{r['overrides']}` | {r['target']:g}× | {r['ratio']:.2f}× | {scores} | "
                f"{r['compress_s']:.0f} | {r.get('tag', '')} | {r['commit']} |"
            )
        lines.append("")
        attributed = [r for r in rows if r["subject"] == subject and r.get("attribution")]
        if attributed:
            lines += [
                "Where the loss comes from (`--attribute`): the same decoded file with only one family of layers "
                "decoded, all others at fp32.",
                "",
                "| variant | target | " + " | ".join(attributed[0]["attribution"]) + " | commit |",
                "|---|---|" + "---|" * len(attributed[0]["attribution"]) + "---|",
            ]
            for r in attributed:
                cells = [
                    _score_text(r["attribution"].get(family, {}))
                    for family in attributed[0]["attribution"]
                ]
                lines.append(f"| {r['variant']} | {r['target']:g}× | " + " | ".join(cells) + f" | {r['commit']} |")
            lines.append("")
        lines += _render_paired([r for r in rows if r["subject"] == subject])
    path.write_text("\n".join(lines))


def _score_text(scores: dict) -> str:
    """A panel's scalar scores (its per-photo lists left out)."""
    return ", ".join(f"{m} {v:.4f}" for m, v in scores.items() if is_scalar_score(v))


def paired_rows(rows: list[dict]) -> list[dict]:
    """Within each invocation (rows of one command, in a row), every variant against the invocation's first at
    the same target, on every panel both scored per photo: the photos' own difficulty cancels in the paired
    difference, which tells variants apart where each one's error bar cannot."""
    out = []
    for _, group in itertools.groupby(rows, key=lambda r: r["command"]):
        group = list(group)
        reference = group[0]["variant"]
        base = {r["target"]: r for r in group if r["variant"] == reference}
        for r in group:
            if r["variant"] == reference or r["target"] not in base:
                continue
            for panel, scores in r["scores"].items():
                paired = paired_scores(scores, base[r["target"]]["scores"].get(panel, {}))
                if paired:
                    out.append({"variant": r["variant"], "reference": reference, "target": r["target"],
                                "commit": r["commit"], **paired})
    return out


def _render_paired(rows: list[dict]) -> list[str]:
    paired = paired_rows(rows)
    if not paired:
        return []
    lines = [
        "Paired on the same evaluation photos (runs that kept per-photo means): each variant against the first "
        "variant of its invocation at the same target, the mean per-photo difference ± its standard error, "
        "z = mean / SE (|z| < 2: not distinguishable on this bench).",
        "",
        "| variant | against | target | Δ agreement | Δ KL | Δ KL relative | z (KL) | commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in paired:
        lines.append(f"| {p['variant']} | {p['reference']} | {p['target']:g}× | {paired_cells(p)} | {p['commit']} |")
    return lines + [""]


if __name__ == "__main__":
    main()
