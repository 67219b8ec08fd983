"""`l2 compress`: checkpoint + architecture + calibration data → `.l2` file and a per-layer table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from compression_core.config import CompressionConfig
from compression_core.presets import PRESETS

# Optimizer options with a flag of their own: (type, what it does). Defaults are CompressionConfig's.
_OPTION_FLAGS = {
    "rounds": (int, "alternations of a transform phase and a weight phase"),
    "transform_iters": (int, "iterations of each transform phase (transform parameters + rate term)"),
    "weight_iters": (int, "iterations of each weight phase (latent weights + rate term)"),
    "batch_size": (int, "calibration samples per iteration"),
    "transform": (str, "transform of weight tensors: prune_quant, linear, log or exp"),
    "kernel": (str, "soft-histogram kernel of the entropy counter: cosine, linear or triangle"),
    "resolution": (float, "sharpness of the soft histogram (higher: closer to the hard count, noisier)"),
    "rate_weight": (float, "λ of the rate hinge λ·ReLU(S − B)/B"),
    "transform_lr": (float, "learning rate of the transform parameters"),
    "weight_lr": (float, "learning rate of the latent weights, relative to each tensor's RMS"),
    "seed": (int, "random seed (sample order, held-out split)"),
    "holdout_fraction": (float, "share of calibration samples kept out of the optimization to report accuracy"),
}


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default once, and only when it has one (ArgumentDefaultsHelpFormatter printed
    '(default: None)' after required options and a second default after help that already named one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS, False) or action.required or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="compress a checkpoint to a .l2 file at a target ratio",
        description=(
            "Learn per layer how to prune and quantize the weights of CHECKPOINT so that the range-coded .l2 file "
            "is TARGET times smaller than the model's fp32 tensors, using unlabelled calibration inputs. "
            "Example: l2 compress model.pt --arch resnet18 --arch-kwargs '{\"num_classes\": 10}' "
            "--calibration images.tar.gz --image-size 224 --target-ratio 10 -o model.l2"
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="state_dict (.pt/.pth/.safetensors), torch.export (.pt2) or TorchScript file",
    )
    p.add_argument(
        "-o", "--output", type=Path, help="where to write the .l2 file (default: CHECKPOINT with suffix .l2)"
    )
    p.add_argument(
        "--target-ratio",
        type=float,
        required=True,
        help="wanted true ratio: fp32 bytes / .l2 file bytes; from about 2 up (a lower target is refused, "
        "naming the model's lowest reachable ratio)",
    )
    p.add_argument(
        "--arch",
        help="architecture for a plain state_dict: torchvision name (e.g. resnet18), timm:NAME, "
        "or a registered name such as digits_cnn",
    )
    p.add_argument("--arch-kwargs", default="{}", help="JSON keyword arguments for the architecture")
    p.add_argument(
        "--calibration",
        type=Path,
        required=True,
        help="image folder/archive (.tar, .tar.gz, .zip), tensor file (.pt, .npy, .npz, .safetensors) or, "
        "with --tokenizer, a UTF-8 text file with one sample per line",
    )
    p.add_argument(
        "--calibration-spec",
        default="{}",
        help="JSON calibration options (kind, resize, crop, mean, std, channels, max_samples, tokenizer, "
        "max_length, padding); flags below override it",
    )
    p.add_argument("--image-size", type=int, help="resize + center-crop images to this size")
    p.add_argument("--mean", type=float, nargs="+", help="per-channel normalisation mean for images")
    p.add_argument("--std", type=float, nargs="+", help="per-channel normalisation std for images")
    p.add_argument("--channels", type=int, choices=(1, 3), help="image channels the model expects")
    p.add_argument("--max-samples", type=int, help="use at most this many calibration samples")
    p.add_argument(
        "--tokenizer",
        type=Path,
        help="the model's tokenizer folder (tokenizer.save_pretrained(DIR)): --calibration is then a text file, "
        "one sample per non-empty line, tokenised and padded here into input_ids/attention_mask",
    )
    p.add_argument(
        "--max-length", type=int, help="text: truncate lines to this many tokens (default 128); padding goes to "
        "the longest line, or to max-length with --calibration-spec '{\"padding\": \"max_length\"}'"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="optimizer schedule: fast (GPTQ rounding, no gradient phase), balanced (the default: plus "
        "asymmetric GPTQ and the BatchNorm stage, still no gradient phase), paper (the reference "
        "3 × (300 + 1000) schedule, for a GPU); the flags below override it",
    )
    p.add_argument("--per-channel", action="store_true", help="learn transform parameters per output channel")
    p.add_argument(
        "--output-keys",
        nargs="+",
        metavar="KEY",
        help="named outputs the distillation distance compares (e.g. last_hidden_state); default: every output",
    )
    p.add_argument("--options", default="{}", help="JSON of further CompressionConfig fields")
    defaults = CompressionConfig()
    for name, (kind, text) in _OPTION_FLAGS.items():
        p.add_argument(
            "--" + name.replace("_", "-"), type=kind, help=f"{text} (default: {getattr(defaults, name)})"
        )
    p.add_argument(
        "--json", action="store_true", help="print the per-layer report as JSON instead of a table"
    )
    p.set_defaults(handler=run)


def _config(args: argparse.Namespace) -> CompressionConfig:
    values = json.loads(args.options)
    values.update({k: getattr(args, k) for k in _OPTION_FLAGS if getattr(args, k) is not None})
    if args.preset:
        values["preset"] = args.preset
    if args.per_channel:
        values["per_channel"] = True
    if args.output_keys:
        values["output_keys"] = args.output_keys
    return CompressionConfig.from_dict(values)


def _calibration_spec(args: argparse.Namespace):
    from compression_core.loading import CalibrationSpec

    values = json.loads(args.calibration_spec)
    if args.image_size:
        values.setdefault("resize", args.image_size)
        values.setdefault("crop", args.image_size)
    for key in ("mean", "std", "channels", "max_samples", "max_length"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.tokenizer is not None:
        values["tokenizer"] = str(args.tokenizer)
    return CalibrationSpec(**values)


class _ProgressBar:
    """tqdm bar over the run's fraction, showing phase, distortion and estimated ratio."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=1000, unit="‰", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, event) -> None:
        self.bar.n = int(event.fraction * 1000)
        info = {"phase": event.phase}
        if "distortion" in event.losses:
            info["D"] = f"{event.losses['distortion']:.2e}"
            info["bits/w"] = f"{event.losses['rate_bits_per_weight']:.3f}"
        if event.estimated_ratio:
            info["ratio≈"] = f"{event.estimated_ratio:.2f}"
        self.bar.set_postfix(info, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def format_layer_table(layers) -> str:
    rows = [("tensor", "shape", "mode", "transform", "levels", "bits", "entropy", "sparsity", "bytes")]
    for r in layers:
        rows.append(
            (
                r.name,
                "×".join(map(str, r.shape)) or "()",
                r.mode,
                r.transform or "-",
                str(r.levels),
                f"{r.bit_width:.2f}",
                f"{r.entropy_bits:.3f}",
                f"{r.sparsity:.3f}",
                str(r.bytes),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def run(args: argparse.Namespace) -> int:
    """Input the user can fix (files, settings, target) fails with one line on stderr and exit status 2."""
    from compression_core.config import ConfigError
    from compression_core.loading import LoadingError
    from compression_core.model_io import InputsError, OutputsError
    from compression_core.recon.budget import UnreachableTargetError

    try:
        return _compress(args)
    except (LoadingError, ConfigError, InputsError, OutputsError, UnreachableTargetError) as exc:
        print(f"l2 compress: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"l2 compress: a JSON option is not valid JSON ({exc})", file=sys.stderr)
        return 2


def _compress(args: argparse.Namespace) -> int:
    from compression_core.compressor import compress
    from compression_core.loading import load_calibration, load_model

    config = _config(args)
    arch_kwargs = json.loads(args.arch_kwargs)
    loaded = load_model(args.checkpoint, args.arch, arch_kwargs)
    data = load_calibration(args.calibration, _calibration_spec(args))
    output = args.output or args.checkpoint.with_suffix(".l2")
    bar = _ProgressBar()
    started = time.monotonic()
    try:
        result = compress(
            loaded.model,
            data.inputs,
            args.target_ratio,
            config=config,
            progress=bar,
            device=args.device,
            metadata={
                "source_sha256": loaded.source_sha256,
                "source_form": loaded.form,
                "architecture": args.arch,
                "arch_kwargs": arch_kwargs,
                "config": config.to_dict(),
            },
        )
    finally:
        bar.close()
    summary = result.write(output)
    if args.json:
        print(
            json.dumps(
                {
                    "summary": summary.to_dict(),
                    "evaluation": result.evaluation,
                    "layers": [r.to_dict() for r in result.layers],
                },
                indent=2,
                default=str,
            )
        )
    else:
        print(format_layer_table(result.layers))
        print(
            f"\nwrote {output}: {summary.file_bytes:,} bytes, true ratio {summary.true_ratio:.2f}× "
            f"(target {args.target_ratio}×) in {time.monotonic() - started:.1f} s"
        )
        if result.evaluation:
            shown = {k: v for k, v in result.evaluation.items() if isinstance(v, (int, float))}
            print(
                "held-out fidelity of the decoded model: "
                + ", ".join(f"{k}={v:.4g}" for k, v in shown.items())
            )
    return 0
