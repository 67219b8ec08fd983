"""A Hugging Face model end to end: state_dict + registered architecture, keyword calibration inputs from a
safetensors file, and `float_outputs` over its ModelOutput."""

import pytest
import torch
from safetensors.torch import save_file

from compression_core.loading import export_decoded, load_calibration, load_model, register_architecture
from compression_core.loading.architectures import unregister_architecture
from compression_core.model_io import call_model, float_outputs

transformers = pytest.importorskip("transformers")


def tiny_bert(**overrides):
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        **overrides,
    )
    return transformers.BertModel(config)


@pytest.fixture
def registered():
    register_architecture("tiny-bert", tiny_bert, replace=True)
    yield "tiny-bert"
    unregister_architecture("tiny-bert")


def test_tiny_bert_from_state_dict_with_keyword_calibration(tmp_path, registered):
    torch.manual_seed(0)
    original = tiny_bert().eval()
    torch.save({"model": original.state_dict()}, tmp_path / "bert.pt")
    ids = torch.randint(0, 100, (4, 7))
    mask = torch.ones_like(ids)
    mask[:, 5:] = 0
    save_file({"input_ids": ids, "attention_mask": mask}, str(tmp_path / "calib.safetensors"))

    loaded = load_model(tmp_path / "bert.pt", registered)
    calib = load_calibration(tmp_path / "calib.safetensors")
    assert set(calib.inputs) == {"input_ids", "attention_mask"} and calib.count == 4

    with torch.no_grad():
        outputs = float_outputs(call_model(loaded.model, calib.inputs))
        expected = float_outputs(original(input_ids=ids, attention_mask=mask))
    assert [tuple(t.shape) for t in outputs] == [(4, 7, 32), (4, 32)]  # last_hidden_state, pooler_output
    for got, want in zip(outputs, expected, strict=True):
        torch.testing.assert_close(got, want)

    decoded = {k: v * 0.5 if v.is_floating_point() else v for k, v in loaded.model.state_dict().items()}
    export_decoded(loaded, decoded, tmp_path / "out.pt")
    written = torch.load(tmp_path / "out.pt", weights_only=True)["model"]
    assert written.keys() == decoded.keys()
    assert all(torch.equal(written[k], decoded[k]) for k in decoded)
