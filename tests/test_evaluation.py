import copy
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from compression_core.evaluation import EvaluationError, compare_models


def classifier(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 4))


def test_identical_models_agree_perfectly():
    model = classifier()
    x = torch.randn(50, 6)
    result = compare_models(model, copy.deepcopy(model), x, batch_size=8)
    assert result["samples"] == 50 and result["mse"] == 0.0 and math.isinf(result["sqnr_db"])
    assert result["top1_agreement"] == 1.0 and result["kl_divergence"] == pytest.approx(0.0, abs=1e-12)


def test_metrics_match_a_direct_computation_and_do_not_depend_on_batch_size():
    ref, cand = classifier(0), classifier(1)
    x, labels = torch.randn(37, 6), torch.randint(0, 4, (37,))
    small = compare_models(ref, cand, x, batch_size=5, labels=labels)
    large = compare_models(ref, cand, x, batch_size=64, labels=labels)
    for key in (
        "mse",
        "sqnr_db",
        "top1_agreement",
        "kl_divergence",
        "reference_accuracy",
        "candidate_accuracy",
    ):
        assert small[key] == pytest.approx(large[key], rel=1e-5)  # float32 kernels differ by batch
    with torch.no_grad():
        r, c = ref.eval()(x).double(), cand.eval()(x).double()
    assert small["mse"] == pytest.approx(float((r - c).square().mean()))
    assert small["sqnr_db"] == pytest.approx(
        10 * math.log10(float(r.square().sum() / (r - c).square().sum()))
    )
    assert small["top1_agreement"] == pytest.approx(float((r.argmax(1) == c.argmax(1)).double().mean()))
    kl = torch.nn.functional.kl_div(
        c.log_softmax(1), r.log_softmax(1), log_target=True, reduction="batchmean"
    )
    assert small["kl_divergence"] == pytest.approx(float(kl))
    assert small["reference_accuracy"] == pytest.approx(float((r.argmax(1) == labels).double().mean()))


def test_training_mode_is_restored_and_dropout_is_off_during_comparison():
    model = classifier().train()
    result = compare_models(model, copy.deepcopy(model), torch.randn(20, 6))
    assert result["mse"] == 0.0 and model.training


@dataclass
class Out:
    hidden: torch.Tensor
    mask: torch.Tensor
    extra: dict


class Structured(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.scale = scale

    def forward(self, a, b):
        h = self.proj(a + b) * self.scale
        return Out(hidden=h, mask=(h > 0), extra={"pooled": h.mean(1)})


def test_dataclass_outputs_and_tuple_inputs_compare_every_float_tensor():
    ref = Structured()
    cand = copy.deepcopy(ref)
    cand.scale = 1.1
    result = compare_models(ref, cand, (torch.randn(9, 3), torch.randn(9, 3)), batch_size=4)
    assert len(result["outputs"]) == 2  # hidden and pooled; the bool mask is not compared
    assert result["mse"] > 0 and "top1_agreement" in result  # first float output (9, 3) is treated as logits


def test_dict_inputs_and_non_logit_outputs():
    class Encoder(nn.Module):
        def forward(self, input_ids, attention_mask):
            return (input_ids.float() * attention_mask).unsqueeze(-1).repeat(1, 1, 2)

    ids = torch.randint(0, 9, (5, 4))
    result = compare_models(Encoder(), Encoder(), {"input_ids": ids, "attention_mask": torch.ones(5, 4)})
    assert result["mse"] == 0.0 and "top1_agreement" not in result
    with pytest.raises(EvaluationError, match="not \\(N, classes\\) logits"):
        compare_models(
            Encoder(),
            Encoder(),
            {"input_ids": ids, "attention_mask": torch.ones(5, 4)},
            labels=torch.zeros(5, dtype=torch.long),
        )


def test_outputs_of_different_shapes_are_refused():
    with pytest.raises(EvaluationError, match="differ in structure"):
        compare_models(nn.Linear(3, 2), nn.Linear(3, 4), torch.randn(2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda_and_puts_models_back():
    ref, cand = classifier(0), classifier(1)
    result = compare_models(ref, cand, torch.randn(10, 6), device="cuda")
    assert 0.0 <= result["top1_agreement"] <= 1.0
    assert next(ref.parameters()).device.type == "cpu"
