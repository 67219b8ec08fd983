"""Presets on a GPU: wall time and quality of `paper` (the reference schedule) and the CPU presets.

    bash bench/prepare_gpu.sh      # here: wheels and photos the GPU machine cannot download (see there)
    python bench/bench_gpu.py --device cuda --out OUT [--runs efficientnet_lite0:paper:8 resnet18:paper:8 …]

Each run is ``MODEL:PRESET:TARGET``. EfficientNet-Lite0 carries its ImageNet weights and is scored on the
bench's held-out natural crops (top-1 agreement and KL against fp32, on the weights decoded from the file);
ResNet-18 is torchvision's architecture with seeded random weights (timing only: no pretrained weights install
offline), calibrated on the same crops. The paper's reference: about 10 minutes for a ResNet on a V100.
Results are written after every run (``gpu.json`` and ``gpu.md`` under ``--out``), so a run cut short
still leaves the finished ones. ``--option KEY=VALUE`` overrides a CompressionConfig field in every run (a
quick CPU check of the script: ``--option transform_iters=2 --option weight_iters=2``).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import models as bench_models  # noqa: E402
from bench.ablation import parse_overrides  # noqa: E402
from compression_core import compress  # noqa: E402
from compression_core.coding import load_l2  # noqa: E402
from compression_core.config import CompressionConfig  # noqa: E402

DEFAULT_RUNS = ("efficientnet_lite0:paper:8", "resnet18:paper:8", "efficientnet_lite0:balanced:8")


def _resnet18(calibration: torch.Tensor) -> bench_models.Subject:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    return bench_models.Subject("resnet18", model, calibration, {}, "ResNet-18, seeded random weights")


def _subjects(names: set[str], calibration_crops: int) -> dict[str, bench_models.Subject]:
    effnet = bench_models.efficientnet_lite0(
        calibration_crops=calibration_crops, eval_crops=300, crop_size=224, probe=False
    )
    subjects = {"efficientnet_lite0": effnet}
    if "resnet18" in names:
        subjects["resnet18"] = _resnet18(effnet.calibration)
    return subjects


def _peak_gpu_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_one(subject: bench_models.Subject, preset: str, target: float, options: dict, device: torch.device) -> dict:
    config = CompressionConfig.from_dict({"preset": preset, **options})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = compress(subject.model, subject.calibration, target, config=config, device=device)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.l2"
        summary = result.write(path)
        decoded = load_l2(path)
    model = copy.deepcopy(subject.model)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in decoded.items()})
    model = model.to(device).eval()
    scores = {panel: evaluate(model) for panel, (evaluate, _) in subject.evaluations.items()}
    return {
        "model": subject.name,
        "preset": preset,
        "target": target,
        "true_ratio": summary.true_ratio,
        "file_bytes": summary.file_bytes,
        "seconds": round(seconds, 1),
        "stages": {k: v["seconds"] for k, v in result.evaluation.get("stages", {}).items()},
        "selection": result.evaluation.get("selection"),
        "scores": scores,
        "peak_gpu_mib": _peak_gpu_mib(device),
        "options": options,
    }


def render(report: dict) -> str:
    lines = [
        "# Presets on a GPU",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Date: {report['date']}, commit {report['commit']}  ",
        f"Calibration: {report['calibration']}",
        "",
        "| model | preset | target | true ratio | agreement / KL (held-out crops) | wall time | peak GPU memory | "
        "kept | stages (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        crops = r["scores"].get("efficientnet_lite0 (natural crops)")
        score = f"{crops['agreement']:.3f} / {crops['kl']:.4f}" if crops else "timing only (random weights)"
        memory = f"{r['peak_gpu_mib']:.0f} MiB" if r["peak_gpu_mib"] is not None else "–"
        kept = (r["selection"] or {}).get("kept", "–")
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages"].items() if v >= 1.0)
        lines.append(
            f"| {r['model']} | {r['preset']} | {r['target']:g}× | {r['true_ratio']:.2f}× | {score} | "
            f"{r['seconds']:.0f} s | {memory} | {kept} | {stages} |"
        )
    lines += ["", report.get("note", ""), ""]
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (copy of the working tree)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), metavar="MODEL:PRESET:TARGET")
    parser.add_argument("--calibration-crops", type=int, default=1024, help="the paper calibrates on 1,024 images")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--commit", default=None, help="commit the copied tree was taken from")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    runs = [(m, p, float(t)) for m, p, t in (spec.split(":") for spec in args.runs)]
    options = parse_overrides(",".join(args.option)) if args.option else {}
    subjects = _subjects({m for m, _, _ in runs}, args.calibration_crops)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    report = {
        "command": "python bench/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{gpu}; {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads; torch {torch.__version__}, Python {platform.python_version()}",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": args.commit or _git_commit(),
        "calibration": subjects["efficientnet_lite0"].description,
        "runs": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for model, preset, target in runs:
        record = run_one(subjects[model], preset, target, options, device)
        report["runs"].append(record)
        print(json.dumps(record), flush=True)
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu.md").write_text(render(report))
    return report


if __name__ == "__main__":
    main()
