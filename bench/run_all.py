"""L² against the compressors a user would pick instead, on real models, in one command.

    bash bench/setup_env.sh && .venv/bin/python bench/run_all.py   # CPU profile (2 cores: ~35–50 min)
    .venv/bin/python bench/run_all.py --full --device cuda         # heavier settings on a GPU
    .venv/bin/python bench/run_all.py --smoke --out /tmp/smoke     # tiny CI run (digits CNN, RTN + L²)

For every subject of `bench/models.py` and every method (fp32, zstd, RTN 8/6/4-bit + range coder, NNCodec qp
sweep, L² at target ratios 5–25×) it records the true ratio (fp32 bytes / every byte needed to decode), the
scores of the *decoded* weights, compression and decode time; writes ``peers.json``, ``peers.md`` and
``peers.png`` to ``--out`` (default ``bench/results``), and compares L² with NNCodec at equal accuracy.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # `python bench/run_all.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import models as bench_models  # noqa: E402
from bench import peers  # noqa: E402
from bench.compare import compare_with_nncodec, is_scalar_score, render_markdown, render_plot  # noqa: E402
from compression_core.config import CompressionConfig  # noqa: E402

log = logging.getLogger("bench")
RATIOS = (5.0, 8.0, 10.0, 15.0, 20.0, 25.0)
NNCODEC_QPS = (-38, -34, -30, -26, -22, -18, -14, -10)

# Settings per profile. "cpu" is the default and must stay well under an hour on 2 shared cores.
PROFILES: dict[str, dict] = {
    "smoke": {
        "subjects": {"digits_cnn": {"epochs": 3}},
        "l2": {"digits_cnn": dict(rounds=1, transform_iters=4, weight_iters=4, batch_size=64)},
        "ratios": (5.0, 10.0),
        "rtn_bits": (8, 4),
        "nncodec": False,
        "zstd": False,
    },
    "cpu": {
        "subjects": {
            "digits_cnn": {},
            "mnist_cnn": {"calibration_samples": 1024},
            "efficientnet_lite0": {
                "calibration_crops": 256,
                "eval_crops": 300,
                "crop_size": 224,
                "probe_train": 3000,
                "probe_test": 10000,
                "probe_size": 64,
            },
        },
        "l2": {
            "digits_cnn": dict(preset="balanced", batch_size=32),
            "mnist_cnn": dict(preset="balanced", batch_size=32),
            "efficientnet_lite0": dict(preset="balanced", batch_size=8, holdout_fraction=0.1),
        },
        "ratios": RATIOS,
        "rtn_bits": (8, 6, 4),
        "nncodec": True,
        "zstd": True,
        # qp −10 lands beyond 30× on EfficientNet, where it is long broken: not worth ~1 min of evaluation.
        "subject_qps": {"efficientnet_lite0": NNCODEC_QPS[:-1]},
    },
    "full": {
        "subjects": {
            "digits_cnn": {},
            "mnist_cnn": {"calibration_samples": 2048},
            "efficientnet_lite0": {
                "calibration_crops": 1024,
                "eval_crops": 1000,
                "crop_size": 224,
                "probe_train": 5000,
                "probe_test": 10000,
                "probe_size": 224,
            },
        },
        "l2": {
            "digits_cnn": dict(preset="paper", batch_size=32),
            "mnist_cnn": dict(preset="paper", batch_size=64),
            "efficientnet_lite0": dict(preset="paper", batch_size=16, holdout_fraction=0.1),
        },
        "ratios": RATIOS,
        "rtn_bits": (8, 6, 4),
        "nncodec": True,
        "zstd": True,
    },
}


def evaluate_run(subject: bench_models.Subject, run: peers.MethodRun, device: torch.device) -> None:
    """Load the run's decoded weights into a copy of the model and score them on every evaluation."""
    model = copy.deepcopy(subject.model)
    ref = model.state_dict()
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in run.state_dict.items()}, strict=True)
    model = model.to(device).eval()
    t0 = time.perf_counter()
    for panel, (evaluate, _) in subject.evaluations.items():
        run.scores[panel] = evaluate(model)
    run.extra["evaluation_s"] = round(time.perf_counter() - t0, 2)
    run.state_dict = None  # free memory: only the scores are kept


# Extra L² rows beside the profile's own configuration (which is the "L²" curve the comparison uses):
# presets by name, the initial allocation alone, and a peer that learns nothing at all.
VARIANTS: dict[str, tuple[str, dict]] = {
    "rounds0": ("L² (initial allocation only, --rounds 0)", {"rounds": 0, "rounding": "nearest"}),
    "fast": ("L² (preset fast)", {"preset": "fast"}),
    "balanced": ("L² (preset balanced)", {"preset": "balanced"}),
    "paper": ("L² (preset paper)", {"preset": "paper"}),
    "uniform": (
        "Global uniform step + range coder (no learning)",
        {
            "allocation": "equal_step",
            "per_channel": False,
            "rounds": 0,
            "rounding": "nearest",
            "bn_recalibration": False,
        },
    ),
}


def run_l2(
    subject: bench_models.Subject,
    target: float,
    config: CompressionConfig,
    device: torch.device,
    workdir: Path,
    method: str = "L²",
) -> peers.MethodRun:
    from compression_core import compress
    from compression_core.coding import load_l2

    sd = subject.model.state_dict()
    t0 = time.perf_counter()
    result = compress(subject.model, subject.calibration, target, config=config, device=device)
    path = workdir / f"{subject.name}_l2_{target:g}.l2"
    summary = result.write(path)
    t1 = time.perf_counter()
    decoded = load_l2(path)
    t2 = time.perf_counter()
    mismatched = [k for k in result.state_dict if not torch.equal(result.state_dict[k], decoded[k])]
    run = peers.MethodRun(
        method, f"target {target:g}×", summary.file_bytes, peers.fp32_bytes(sd), t1 - t0, t2 - t1, dict(decoded)
    )
    run.extra.update(
        {
            "target_ratio": target,
            "compress_reported_ratio": summary.true_ratio,
            "decoded_equals_result": not mismatched,
            "holdout": result.evaluation,
            "selection": result.evaluation.get("selection"),
        }
    )
    return run


def score_summary(scores: dict[str, dict]) -> str:
    """One line of every panel's scalar scores (per-photo lists left out: they are for paired tables)."""
    return "; ".join(
        f"{panel}: " + ", ".join(f"{m}={v:.4f}" for m, v in values.items() if is_scalar_score(v))
        for panel, values in scores.items()
    )


def _log_run(subject: str, run: peers.MethodRun) -> None:
    scores = score_summary(run.scores)
    log.info(
        "%s | %s %s | %.2f× | %s | %.1f s + %.2f s",
        subject,
        run.method,
        run.setting,
        run.ratio,
        scores,
        run.compress_s,
        run.decode_s,
    )


def bench_subject(
    name: str,
    profile: dict,
    device: torch.device,
    workdir: Path,
    use_nncodec: bool,
    variants: tuple[str, ...] = (),
    seeds: tuple[int, ...] = (),
) -> dict:
    t_load = time.perf_counter()
    subject = bench_models.SUBJECTS[name](**profile["subjects"][name])
    subject.model = subject.model.float().eval()
    sd = {k: v.detach().cpu().clone() for k, v in subject.model.state_dict().items()}
    log.info(
        "%s: loaded in %.1f s (%d tensors, %d bytes fp32)",
        name,
        time.perf_counter() - t_load,
        len(sd),
        peers.fp32_bytes(sd),
    )

    runs: list[peers.MethodRun] = []

    def add(run: peers.MethodRun) -> None:
        evaluate_run(subject, run, device)
        runs.append(run)
        _log_run(name, run)

    fp32 = peers.MethodRun("fp32", "original", peers.fp32_bytes(sd), peers.fp32_bytes(sd), 0.0, 0.0, dict(sd))
    add(fp32)
    if profile["zstd"]:
        run = peers.run_zstd(sd)
        # Lossless: decoded tensors bit-identical to fp32 have the fp32 scores (saves an evaluation pass).
        if all(torch.equal(run.state_dict[k], v) for k, v in sd.items()):
            run.scores = copy.deepcopy(fp32.scores)
            run.extra["bit_identical_to_fp32"] = True
            run.state_dict = None
            runs.append(run)
            _log_run(name, run)
        else:
            add(run)
    for bits in profile["rtn_bits"]:
        add(peers.run_rtn(sd, bits, workdir))
    if use_nncodec:
        qps = profile.get("qps") or profile.get("subject_qps", {}).get(name, NNCODEC_QPS)
        for run in peers.run_nncodec(sd, list(qps), workdir):
            add(run)
    config = CompressionConfig.from_dict(profile["l2"][name])
    first, *more_seeds = seeds or (config.seed,)
    config = CompressionConfig.from_dict({**profile["l2"][name], "seed": first})
    configs = (
        [("L²", config)]
        + [(f"L² (seed {s})", CompressionConfig.from_dict({**profile["l2"][name], "seed": s})) for s in more_seeds]
        + [
            (VARIANTS[v][0], CompressionConfig.from_dict({**profile["l2"][name], **VARIANTS[v][1], "seed": first}))
            for v in variants
        ]
    )
    for method, method_config in configs:
        for target in profile["ratios"]:
            try:
                add(run_l2(subject, target, method_config, device, workdir, method))
            except Exception as exc:  # keep the other points; the report shows the failure
                log.exception("%s: %s at %g× failed", name, method, target)
                runs.append(
                    peers.MethodRun(
                        method, f"target {target:g}× FAILED: {exc}", 1, 1, 0.0, 0.0, extra={"error": repr(exc)}
                    )
                )
    return {
        "description": subject.description,
        "notes": subject.notes,
        "panels": {panel: metric for panel, (_, metric) in subject.evaluations.items()},
        "l2_config": config.to_dict(),
        "runs": [r.to_dict() for r in runs],
    }


def machine_description() -> str:
    """The machine line every results file records: cores, torch threads, platform."""
    return f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, {platform.platform()}"


def git_commit() -> str:
    """HEAD of the tree the bench runs in, marked ``+uncommitted`` when tracked files differ from it (results
    aside: a bench appending to its own journal has not changed the code it measures)."""
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, cwd=root).strip()
        changed = subprocess.check_output(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results"],
            text=True,
            cwd=root,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+uncommitted" if changed.strip() else head


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--full",
        action="store_true",
        help="heavier settings (more calibration, iterations, 224-px probe); meant for a GPU",
    )
    mode.add_argument("--smoke", action="store_true", help="tiny run for CI: digits CNN, RTN + L² only")
    parser.add_argument("--device", default="cpu", help="device for L² and evaluation (cpu, cuda)")
    parser.add_argument("--models", nargs="*", help="subset of subjects to run")
    parser.add_argument("--no-nncodec", action="store_true", help="skip NNCodec (e.g. its venv is not built)")
    parser.add_argument("--ratios", type=float, nargs="*", help="L² target ratios (default: the profile's)")
    parser.add_argument("--qps", type=int, nargs="*", help=f"NNCodec qps (default: {list(NNCODEC_QPS)})")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--only-l2", action="store_true", help="skip zstd, RTN and NNCodec (fp32 + L² only)")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=sorted(VARIANTS),
        help="extra L² rows beside the profile's configuration: presets, rounds0 (initial allocation only), "
        "uniform (a global uniform step, no learning: a peer)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="run the profile's L² configuration once per seed; the equal-accuracy headline then reads the "
        "mean curve (variants run with the first seed)",
    )
    parser.add_argument(
        "--l2-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a CompressionConfig field for every subject (e.g. transform_iters=100)",
    )
    parser.add_argument(
        "--render-only",
        type=Path,
        metavar="PEERS_JSON",
        help="only redo comparison, table and figure from an earlier peers.json",
    )
    args = parser.parse_args(argv)
    if args.render_only:
        report = json.loads(args.render_only.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        report["comparisons"] = compare_with_nncodec(report)
        (args.out / "peers.json").write_text(json.dumps(report, indent=1, default=float))
        (args.out / "peers.md").write_text(render_markdown(report))
        if args.plot:
            render_plot(report, args.out / "peers.png")
        return report

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("compression_core").setLevel(logging.WARNING)
    profile_name = "smoke" if args.smoke else "full" if args.full else "cpu"
    profile = dict(PROFILES[profile_name])
    if args.ratios:
        profile["ratios"] = tuple(args.ratios)
    if args.only_l2:
        profile.update(zstd=False, rtn_bits=(), nncodec=False)
    if args.l2_option:
        overrides = {}
        for item in args.l2_option:
            key, _, value = item.partition("=")
            try:
                overrides[key] = json.loads(value)
            except json.JSONDecodeError:
                overrides[key] = value
        profile["l2"] = {name: {**cfg, **overrides} for name, cfg in profile["l2"].items()}
    if args.qps:
        profile["qps"] = tuple(args.qps)
    device = torch.device(args.device)
    bench_models.set_threads()
    torch.manual_seed(0)
    names = args.models or list(profile["subjects"])
    unknown = [n for n in names if n not in profile["subjects"]]
    if unknown:
        parser.error(f"unknown subject(s) {unknown}; this profile has {list(profile['subjects'])}")
    use_nncodec = profile["nncodec"] and not args.no_nncodec
    if use_nncodec and not peers.nncodec_available():
        parser.error(f"{peers.NNCODEC_PYTHON} missing: run bench/setup_env.sh, or pass --no-nncodec")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "profile": profile_name,
        "device": str(device),
        "torch": torch.__version__,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        },
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": " ".join(["bench/run_all.py", *sys.argv[1:]]),
        "subjects": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="l2bench-") as tmp:
        for name in names:
            t0 = time.perf_counter()
            report["subjects"][name] = bench_subject(
                name, profile, device, Path(tmp), use_nncodec, tuple(args.variants), tuple(args.seeds or ())
            )
            report["subjects"][name]["seconds"] = round(time.perf_counter() - t0, 1)
            _write(report, args.out, started, plot=False)  # partial results survive a later failure
    return _write(report, args.out, started, plot=args.plot)


def _write(report: dict, out: Path, started: float, plot: bool) -> dict:
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["comparisons"] = compare_with_nncodec(report)
    (out / "peers.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "peers.md").write_text(render_markdown(report))
    if plot:
        render_plot(report, out / "peers.png")
    return report


if __name__ == "__main__":
    main()
