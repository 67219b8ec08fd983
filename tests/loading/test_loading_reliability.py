"""Loader defects found by probing the service with odd but valid uploads (issue 12): a file is recognised by
its content whatever its name, and a tensor file's size limit counts the bytes it becomes in memory."""

import subprocess
import sys

import pytest
import torch

from compression_core import zoo
from compression_core.loading import CalibrationError, CalibrationSpec, load_calibration, load_model


@pytest.mark.parametrize("name", ["model.safetensors", "model.npy", "model.pt2", "weights.bin"])
def test_a_torch_save_state_dict_loads_whatever_its_suffix(tmp_path, name):
    original = zoo.DigitsCNN()
    torch.save(original.state_dict(), tmp_path / name)
    loaded = load_model(tmp_path / name, "digits_cnn")
    assert loaded.container == "torch"
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_a_torch_save_tensor_file_under_a_safetensors_name_is_calibration_data(tmp_path):
    x = torch.randn(6, 1, 8, 8)
    torch.save(x, tmp_path / "calib.safetensors")
    data = load_calibration(tmp_path / "calib.safetensors", CalibrationSpec(kind="tensors"))
    assert torch.equal(data.inputs, x)


def test_a_stride_0_tensor_is_refused_by_the_size_it_takes_in_memory(tmp_path):
    """1.6 kB on disk, 4 GB once materialised: the limit must count the latter."""
    bomb = torch.zeros(1, 1, 1, 1).expand(1024, 1, 1000, 1000)
    torch.save(bomb, tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 4096
    with pytest.raises(CalibrationError, match="max_total_bytes") as info:
        load_calibration(tmp_path / "bomb.pt", CalibrationSpec(kind="tensors"))
    assert "in memory" in str(info.value)


def test_expanded_tensors_in_a_dict_count_every_entry(tmp_path):
    one = torch.zeros(1, 1000).expand(300, 1000)  # 1.2 MB each once materialised
    torch.save({"a": one, "b": one, "labels": torch.zeros(300, dtype=torch.long)}, tmp_path / "d.pt")
    spec = CalibrationSpec(kind="tensors", labels_key="labels", max_total_bytes=2_000_000)
    with pytest.raises(CalibrationError, match="max_total_bytes"):
        load_calibration(tmp_path / "d.pt", spec)
    data = load_calibration(tmp_path / "d.pt", CalibrationSpec(kind="tensors", labels_key="labels"))
    assert data.count == 300


def test_a_small_expanded_tensor_within_the_limit_still_loads(tmp_path):
    torch.save(torch.ones(1, 3).expand(50, 3), tmp_path / "ok.pt")
    data = load_calibration(tmp_path / "ok.pt", CalibrationSpec(kind="tensors"))
    assert data.inputs.shape == (50, 3) and data.inputs.is_contiguous()


_LOAD_IN_A_FRESH_PROCESS = """
import sys
from compression_core.loading import load_model
loaded = load_model(sys.argv[1])
print(loaded.form, sorted(loaded.model.state_dict())[:1])
"""


def test_an_exported_hugging_face_bert_loads_in_a_process_that_never_imported_transformers(tmp_path):
    """Its ModelOutput classes are pytree nodes that exist only once `transformers.modeling_outputs` is
    imported; the loader has to do that itself."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 50, (2, 6))
    program = torch.export.export(model, (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    torch.export.save(program, tmp_path / "bert.pt2")
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_IN_A_FRESH_PROCESS, str(tmp_path / "bert.pt2")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("export")

    without = "import sys; sys.modules['transformers'] = None\n" + _LOAD_IN_A_FRESH_PROCESS
    done = subprocess.run(
        [sys.executable, "-c", without, str(tmp_path / "bert.pt2")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert "pip install transformers" in done.stderr and "CheckpointError" in done.stderr
