"""Padded positions do not count: the distillation distance, the sensitivity probe and the held-out metrics of a
transformer see only real tokens when the inputs carry an attention mask; ``output_keys`` picks the outputs."""

import copy

import pytest
import torch

from compression_core.config import CompressionConfig, ConfigError
from compression_core.evaluation import compare_models
from compression_core.model_io import OutputsError, call_model, float_outputs
from compression_core.recon.losses import distillation_distance
from compression_core.recon.sensitivity import weight_sensitivity
from compression_core.token_mask import position_weights, token_mask

transformers = pytest.importorskip("transformers")


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.BertModel(config).eval()


@pytest.fixture(scope="module")
def batch():
    ids = torch.randint(1, 100, (4, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    mask[1, 6:] = 0
    mask[2, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _with_padding_changed(outputs, mask, value):
    """Copies of ``outputs`` whose token outputs hold ``value`` at every padded position."""
    changed = []
    for out in outputs:
        out = out.clone()
        if out.dim() >= 3:
            out[mask == 0] = value
        changed.append(out)
    return changed


def test_masked_distance_ignores_padded_positions_and_unmasked_one_does_not(batch):
    model = tiny_bert()
    with torch.no_grad():
        teacher = float_outputs(call_model(model, batch))
        noisy = copy.deepcopy(model)
        noisy.encoder.layer[0].intermediate.dense.weight.add_(0.05 * torch.randn(64, 32))
        student = float_outputs(call_model(noisy, batch))
    mask = token_mask(batch)
    assert [t.dim() for t in teacher] == [3, 2]  # last_hidden_state is masked, pooler_output is not
    masked = distillation_distance(student, teacher, mask)
    assert masked > 0

    for value in (1e3, float("inf")):  # garbage at padded positions, even non-finite, changes nothing
        moved_student = _with_padding_changed(student, batch["attention_mask"], value)
        moved_teacher = _with_padding_changed(teacher, batch["attention_mask"], -value)
        assert distillation_distance(moved_student, moved_teacher, mask) == masked
    moved = _with_padding_changed(student, batch["attention_mask"], 1e3)
    assert distillation_distance(moved, teacher) > 10 * distillation_distance(student, teacher)

    ones = torch.ones_like(mask)  # an all-ones mask is the plain average
    torch.testing.assert_close(distillation_distance(student, teacher, ones), distillation_distance(student, teacher))


def test_masked_distance_equals_the_distance_on_the_real_tokens_alone(batch):
    torch.manual_seed(0)
    teacher = [torch.randn(4, 10, 8)]
    student = [teacher[0] + 0.1 * torch.randn(4, 10, 8)]
    mask = batch["attention_mask"]
    real = mask.bool()
    by_hand = (student[0][real] - teacher[0][real]).pow(2).mean() / teacher[0][real].pow(2).mean()
    torch.testing.assert_close(distillation_distance(student, teacher, mask), by_hand)


def test_only_token_outputs_of_three_or_more_dims_are_masked():
    mask = torch.ones(2, 5)
    assert position_weights(torch.zeros(2, 5, 3), mask).shape == (2, 5, 1)
    assert position_weights(torch.zeros(2, 5, 3, 4), mask).shape == (2, 5, 1, 1)
    assert position_weights(torch.zeros(2, 5), mask) is None  # pooled (B, H) with H = seq: not masked
    assert position_weights(torch.zeros(2, 7, 3), mask) is None
    assert token_mask(torch.zeros(2, 5)) is None and token_mask({"input_ids": torch.zeros(2, 5)}) is None


def test_output_keys_select_named_outputs_and_name_what_exists(batch):
    model = tiny_bert()
    with torch.no_grad():
        out = call_model(model, batch)
    assert [tuple(t.shape) for t in float_outputs(out, ("last_hidden_state",))] == [(4, 10, 32)]
    assert [tuple(t.shape) for t in float_outputs(out, ("pooler_output", "last_hidden_state"))] == [
        (4, 32),
        (4, 10, 32),
    ]
    with pytest.raises(OutputsError, match="no output named 'logits'.*last_hidden_state"):
        float_outputs(out, ("logits",))
    with pytest.raises(OutputsError, match="named outputs"):
        float_outputs(torch.zeros(2, 3), ("logits",))
    assert CompressionConfig.from_dict({"output_keys": ["last_hidden_state"]}).output_keys == ("last_hidden_state",)
    with pytest.raises(ConfigError, match="output_keys"):
        CompressionConfig(output_keys=("",))


def test_sensitivity_probe_does_not_see_padded_positions(batch):
    """Other tokens at padded positions leave the measured sensitivities unchanged with the mask, not without."""
    model = tiny_bert()

    class MaskUnderAnotherName(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = model

        def forward(self, input_ids, pad_mask):
            return self.bert(input_ids=input_ids, attention_mask=pad_mask)

    mask = batch["attention_mask"]
    names = ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"]

    def sensitivities(pad_token, wrapped):
        ids = batch["input_ids"].clone()
        ids[mask == 0] = pad_token
        if wrapped:
            net, names_ = MaskUnderAnotherName(), ["bert." + n for n in names]
            inputs = {"input_ids": ids, "pad_mask": mask}
        else:
            net, inputs, names_ = model, {"input_ids": ids, "attention_mask": mask}, names
        h = weight_sensitivity(net, names_, inputs, 4, torch.device("cpu"), seed=0, batches=2)
        return torch.tensor(list(h.values()))

    masked_a, masked_b = sensitivities(0, False), sensitivities(77, False)
    assert (masked_a > 0).all()
    torch.testing.assert_close(masked_a, masked_b)
    unmasked_a, unmasked_b = sensitivities(0, True), sensitivities(77, True)
    assert not torch.allclose(unmasked_a, unmasked_b, rtol=1e-3)


def test_held_out_metrics_compare_real_tokens_only(batch):
    model = tiny_bert()

    class PaddingGarbage(torch.nn.Module):
        """The same model, with nonsense written at padded positions."""

        def __init__(self):
            super().__init__()
            self.inner = copy.deepcopy(model)

        def forward(self, input_ids, attention_mask):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            hidden = torch.where(attention_mask.bool().unsqueeze(-1), out.last_hidden_state, 1e4)
            return {"last_hidden_state": hidden, "pooler_output": out.pooler_output}

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = copy.deepcopy(model)

        def forward(self, input_ids, attention_mask=None):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}

    result = compare_models(Plain(), PaddingGarbage(), batch, batch_size=3)
    hidden, pooled = result["outputs"]
    assert hidden["mse"] == 0.0 and hidden["cosine"] == pytest.approx(1.0) and hidden["relative_mse"] == 0.0
    assert hidden["numel"] == int(batch["attention_mask"].sum()) * 32
    assert pooled["numel"] == 4 * 32 and result["mse"] == 0.0

    no_mask = {"input_ids": batch["input_ids"]}
    plain = compare_models(Plain(), Plain(), no_mask)
    assert plain["outputs"][0]["numel"] == 4 * 10 * 32
