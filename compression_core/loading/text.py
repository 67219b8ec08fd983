"""Text calibration from what users have: a plain UTF-8 file with one sentence (or passage) per line and the
model's tokenizer folder (what ``tokenizer.save_pretrained(DIR)`` writes). Tokenising and padding by hand is
where calibration sets go wrong (no attention mask, padding to 512 for ten-word sentences), so it happens here:
one sample per non-empty line, truncated to ``max_length`` tokens and padded to the longest sample (or to
``max_length``), giving the dict inputs a transformer takes (``input_ids``, ``attention_mask`` and, when the
tokenizer makes them, ``token_type_ids``). The attention mask is what lets the distillation distance ignore the
padding (`compression_core.token_mask`)."""

from __future__ import annotations

from pathlib import Path

import torch

from compression_core.loading.errors import CalibrationError
from compression_core.loading.spec import CalibrationSpec


def read_lines(path: Path, spec: CalibrationSpec) -> list[str]:
    """The non-empty lines of ``path`` (surrounding whitespace stripped); at most ``spec.max_samples`` of
    them, drawn in a ``spec.seed``-determined order and kept in file order."""
    size = path.stat().st_size
    if size > spec.max_total_bytes:
        raise CalibrationError(
            f"{path.name} has {size:,} bytes, over the limit of {spec.max_total_bytes:,} (max_total_bytes)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationError(
            f"{path.name} is not UTF-8 text (byte {exc.start}); give a plain text file with one sample per line"
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise CalibrationError(f"{path.name} has no non-empty lines; put one calibration sentence per line")
    if len(lines) > spec.max_samples:
        keep = torch.randperm(len(lines), generator=torch.Generator().manual_seed(spec.seed))[: spec.max_samples]
        lines = [lines[i] for i in sorted(keep.tolist())]
    return lines


def load_tokenizer(folder: str | Path):
    """A tokenizer from a local folder, never from the network. Raises `CalibrationError` with one line
    saying what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise CalibrationError(
            f"tokenizer folder {str(folder)!r} {what}; give the folder tokenizer.save_pretrained(DIR) wrote"
        )
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CalibrationError(
            "text calibration needs the 'transformers' package: pip install 'l2-compression[text]'"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CalibrationError(
            f"{str(folder)!r} holds no tokenizer this service can read ({reason[:200]}); "
            "give the folder tokenizer.save_pretrained(DIR) wrote"
        ) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CalibrationError(
                f"the tokenizer in {str(folder)!r} has neither a padding nor an end-of-sequence token, so "
                "lines of different lengths cannot be batched; give it a pad_token"
            )
        tokenizer.pad_token = tokenizer.eos_token  # padded positions are masked out anyway
    return tokenizer


def load_text(path: Path, spec: CalibrationSpec) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Dict inputs (int64, N × L) from the lines of ``path`` and the tokenizer folder ``spec.tokenizer``,
    and notes on what was done (samples, length, truncated lines, share of padding)."""
    if spec.tokenizer is None:
        raise CalibrationError(
            f"{path.name} is read as text, which needs the model's tokenizer folder: set tokenizer "
            "(--tokenizer DIR on the command line)"
        )
    tokenizer = load_tokenizer(spec.tokenizer)
    lines = read_lines(path, spec)
    max_length = spec.max_length
    notes = []
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < max_length:
        notes.append(f"max_length {max_length} lowered to the tokenizer's model_max_length {model_max}")
        max_length = model_max
    longer = tokenizer(lines, truncation=True, max_length=max_length + 1, padding=False)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in longer)
    encoded = tokenizer(
        lines,
        truncation=True,
        max_length=max_length,
        padding="max_length" if spec.padding == "max_length" else "longest",
        return_tensors="pt",
    )
    names = [n for n in tokenizer.model_input_names if n in encoded] or list(encoded)
    inputs = {n: encoded[n].to(torch.int64) for n in names}
    mask = inputs.get("attention_mask")
    length = int(inputs["input_ids"].shape[1])
    notes.insert(0, f"{len(lines)} lines tokenised to {length} tokens each ({', '.join(names)})")
    if mask is not None:
        notes.append(f"{1.0 - float(mask.float().mean()):.0%} of the positions are padding (masked out)")
    if truncated:
        notes.append(f"{truncated} lines were longer than max_length={max_length} and were truncated")
    return inputs, notes
