"""How close a candidate (decoded, compressed) model is to its reference, on the same inputs.

Every model gets output MSE and SQNR over all its floating-point outputs (`model_io.float_outputs`, so tuple,
dict and ModelOutput results count every tensor). When the first float output is (N, classes) logits we also
report top-1 agreement with the reference and mean KL(reference ‖ candidate) of the softmax distributions,
and with labels the top-1 accuracy of both: agreement says "does compression change the answers", accuracy
says "does it matter". With an ``attention_mask`` among dict inputs, token outputs (B, S, …) are compared on
the real tokens only (`token_mask.py`): padding is not what the model is for.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from compression_core.model_io import Inputs, batches, call_model, float_outputs, num_samples, to_device
from compression_core.token_mask import position_weights, token_mask


class EvaluationError(ValueError):
    """The two models' outputs cannot be compared (different structure or shapes, labels without logits)."""


class _Totals:
    """Running sums in float64 so the result does not depend on the batch size beyond rounding."""

    def __init__(self) -> None:
        self.err = self.ref = 0.0
        self.numel = 0
        self.per_output: list[list[float]] = []  # [err, ref, numel, cosine sum, rows] per float output
        self.agree = self.kl = 0.0
        self.correct_ref = self.correct_cand = 0
        self.rows = 0


def compare_models(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: Inputs,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    labels: torch.Tensor | None = None,
) -> dict:
    """Compare outputs of ``candidate`` with ``reference`` on ``inputs`` (see the module docstring).

    Returns a dict with ``samples``, ``mse``, ``sqnr_db`` (``inf`` when the outputs are identical),
    ``outputs`` (per float output: ``mse``, ``relative_mse`` (error / reference energy), ``sqnr_db``, mean
    ``cosine`` of the candidate's and reference's rows (per real token, or per sample), ``numel`` compared),
    and when the first float output is 2-D logits ``top1_agreement`` and ``kl_divergence`` (nats, mean over
    samples); with ``labels`` also
    ``reference_accuracy`` and ``candidate_accuracy``. Models run in eval mode under ``no_grad`` on ``device``
    and are put back in their previous mode and device afterwards.
    """
    n = num_samples(inputs)
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != n):
        raise EvaluationError(
            f"labels must have shape ({n},), one class index per sample; got {tuple(labels.shape)}"
        )
    totals = _Totals()
    logits_seen: bool | None = None
    with _prepared(reference, device), _prepared(candidate, device), torch.no_grad():
        for start, batch in zip(range(0, n, batch_size), batches(inputs, batch_size), strict=True):
            batch = to_device(batch, device)
            ref_out = float_outputs(call_model(reference, batch))
            cand_out = float_outputs(call_model(candidate, batch))
            _check_structure(ref_out, cand_out)
            _accumulate_errors(totals, ref_out, cand_out, token_mask(batch))
            is_logits = ref_out[0].dim() == 2 and ref_out[0].shape[1] >= 2
            logits_seen = is_logits if logits_seen is None else logits_seen and is_logits
            if is_logits:
                batch_labels = labels[start : start + batch_size].to(device) if labels is not None else None
                _accumulate_logits(totals, ref_out[0], cand_out[0], batch_labels)
    return _summary(totals, n, bool(logits_seen), labels is not None)


@contextmanager
def _prepared(model: nn.Module, device: str | torch.device):
    was_training = model.training
    first = next(iter(model.state_dict().values()), None)
    original = first.device if first is not None else torch.device("cpu")
    model.to(device).eval()
    try:
        yield model
    finally:
        model.to(original).train(was_training)


def _check_structure(ref: list[torch.Tensor], cand: list[torch.Tensor]) -> None:
    if not ref:
        raise EvaluationError("the reference model returned no floating-point tensors; nothing to compare")
    if [tuple(t.shape) for t in ref] != [tuple(t.shape) for t in cand]:
        raise EvaluationError(
            f"the models' outputs differ in structure: reference {[tuple(t.shape) for t in ref]} "
            f"vs candidate {[tuple(t.shape) for t in cand]}; compare a model with its own "
            "compressed version"
        )


def _accumulate_errors(
    totals: _Totals, ref_out: list[torch.Tensor], cand_out: list[torch.Tensor], mask: torch.Tensor | None
) -> None:
    if not totals.per_output:
        totals.per_output = [[0.0, 0.0, 0, 0.0, 0] for _ in ref_out]
    for slot, r, c in zip(totals.per_output, ref_out, cand_out, strict=True):
        r64, c64 = _rows(r.double(), mask), _rows(c.double(), mask)
        err, ref = float((r64 - c64).square().sum()), float(r64.square().sum())
        slot[0] += err
        slot[1] += ref
        slot[2] += r64.numel()
        slot[3] += float(torch.nn.functional.cosine_similarity(r64, c64, dim=1, eps=1e-30).sum())
        slot[4] += r64.shape[0]
        totals.err += err
        totals.ref += ref
        totals.numel += r64.numel()


def _rows(output: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """What is compared, as rows: the real tokens' vectors of a token output, else one row per sample."""
    real = position_weights(output, mask)
    if real is None:
        return output.reshape(output.shape[0], -1) if output.dim() else output.reshape(1, 1)
    return output[real.reshape(real.shape[:2]) != 0].reshape(-1, output[0, 0].numel())


def _accumulate_logits(
    totals: _Totals, ref: torch.Tensor, cand: torch.Tensor, labels: torch.Tensor | None
) -> None:
    ref_top, cand_top = ref.argmax(dim=1), cand.argmax(dim=1)
    totals.rows += ref.shape[0]
    totals.agree += float((ref_top == cand_top).sum())
    log_p, log_q = torch.log_softmax(ref.double(), dim=1), torch.log_softmax(cand.double(), dim=1)
    totals.kl += float((log_p.exp() * (log_p - log_q)).sum())
    if labels is not None:
        totals.correct_ref += int((ref_top == labels).sum())
        totals.correct_cand += int((cand_top == labels).sum())


def _sqnr_db(ref: float, err: float) -> float:
    if err == 0.0:
        return math.inf
    if ref == 0.0:
        return -math.inf
    return 10.0 * math.log10(ref / err)


def _summary(totals: _Totals, n: int, logits: bool, has_labels: bool) -> dict:
    result: dict = {
        "samples": n,
        "mse": totals.err / max(totals.numel, 1),
        "sqnr_db": _sqnr_db(totals.ref, totals.err),
        "outputs": [
            {
                "mse": e / max(k, 1),
                "relative_mse": e / r if r else (0.0 if e == 0 else math.inf),
                "sqnr_db": _sqnr_db(r, e),
                "cosine": cos / max(rows, 1),
                "numel": k,
            }
            for e, r, k, cos, rows in totals.per_output
        ],
    }
    if logits and totals.rows:
        result["top1_agreement"] = totals.agree / totals.rows
        result["kl_divergence"] = max(totals.kl / totals.rows, 0.0)
        if has_labels:
            result["reference_accuracy"] = totals.correct_ref / totals.rows
            result["candidate_accuracy"] = totals.correct_cand / totals.rows
    elif has_labels:
        raise EvaluationError(
            "labels were given but the model's first floating output is not (N, classes) "
            "logits, so top-1 accuracy is undefined; drop the labels"
        )
    return result
