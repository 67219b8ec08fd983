import pickle

import pytest
import torch
import torchvision
from safetensors.torch import load_file, save_file
from torch import nn

from compression_core.loading import CheckpointError, export_decoded, load_model, register_architecture
from compression_core.loading.architectures import unregister_architecture

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream

X = torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet():
    return torchvision.models.resnet18(num_classes=10).eval()


def perturbed(state_dict):
    return {k: v + 0.5 if v.is_floating_point() else v for k, v in state_dict.items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_state_dict_pt_loads_into_torchvision_architecture(tmp_path, resnet):
    path = tmp_path / "model.pt"
    torch.save(resnet.state_dict(), path)
    loaded = load_model(path, "resnet18", {"num_classes": 10})
    assert loaded.form == "state_dict" and not loaded.model.training and len(loaded.source_sha256) == 64
    torch.testing.assert_close(loaded.model(X), resnet(X))


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_wrappers_and_module_prefix_are_unwrapped_and_restored_on_export(tmp_path, resnet, wrapper):
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: {f"module.{k}": v for k, v in resnet.state_dict().items()}, "epoch": 3}, path)
    loaded = load_model(path, "resnet18", {"num_classes": 10})
    torch.testing.assert_close(loaded.model(X), resnet(X))
    assert "conv1.weight" in loaded.model.state_dict()
    decoded = perturbed(loaded.model.state_dict())
    export_decoded(loaded, decoded, tmp_path / "out.pth")
    written = torch.load(tmp_path / "out.pth", weights_only=True)
    assert list(written) == [wrapper]
    assert_same_weights(written[wrapper], {f"module.{k}": v for k, v in decoded.items()})


def test_safetensors_round_trip_keeps_metadata(tmp_path, resnet):
    path = tmp_path / "model.safetensors"
    save_file(
        {k: v.contiguous() for k, v in resnet.state_dict().items()}, str(path), metadata={"owner": "me"}
    )
    loaded = load_model(path, "resnet18", {"num_classes": 10})
    torch.testing.assert_close(loaded.model(X), resnet(X))
    decoded = perturbed(loaded.model.state_dict())
    out = export_decoded(loaded, decoded, tmp_path / "out.safetensors")
    assert_same_weights(load_file(str(out)), decoded)
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"owner": "me"}


def test_form_is_detected_by_content_not_suffix(tmp_path, resnet):
    disguised = tmp_path / "weights.pt"  # really safetensors
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, str(disguised))
    assert load_model(disguised, "resnet18", {"num_classes": 10}).container == "safetensors"
    legacy = tmp_path / "weights.bin"  # legacy (non-zip) torch.save format
    torch.save(resnet.state_dict(), legacy, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(load_model(legacy, "resnet18", {"num_classes": 10}).model(X), resnet(X))


def test_half_precision_checkpoint_gives_float_model_and_is_written_back_in_half(tmp_path, resnet):
    path = tmp_path / "half.pt"
    torch.save(resnet.half().state_dict(), path)
    resnet.float()
    loaded = load_model(path, "resnet18", {"num_classes": 10})
    assert loaded.model.conv1.weight.dtype == torch.float32
    export_decoded(loaded, loaded.model.state_dict(), tmp_path / "out.pt")
    assert torch.load(tmp_path / "out.pt")["conv1.weight"].dtype == torch.float16


def test_state_dict_without_architecture_says_how_to_name_one(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="architecture='resnet18'"):
        load_model(tmp_path / "m.pt")


def test_mismatched_num_classes_lists_the_offending_keys(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=r"fc\.weight: checkpoint \(10, 512\) vs model \(1000, 512\)"):
        load_model(tmp_path / "m.pt", "resnet18")


def test_missing_and_unexpected_keys_are_listed(tmp_path, resnet):
    sd = dict(resnet.state_dict())
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "m.pt", "resnet18", {"num_classes": 10})
    assert "missing from the checkpoint: fc.bias" in str(info.value)
    assert "unexpected in the checkpoint: extra.weight" in str(info.value)


def test_unknown_architecture_suggests_close_names(tmp_path, resnet):
    torch.save(resnet.state_dict(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="resnet18"):
        load_model(tmp_path / "m.pt", "resnet-18")


def test_registered_architecture_is_built_with_kwargs(tmp_path):
    register_architecture(
        "tiny-mlp", lambda width=4: nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))
    )
    try:
        model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        torch.save(model.state_dict(), tmp_path / "m.pt")
        loaded = load_model(tmp_path / "m.pt", "tiny-mlp", {"width": 8})
        x = torch.randn(5, 3)
        torch.testing.assert_close(loaded.model(x), model(x))
    finally:
        unregister_architecture("tiny-mlp")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).relu().mean((2, 3)))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = Small().eval()
    model.bn.running_mean.uniform_(-1, 1)
    return model


def test_exported_program_loads_runs_in_eval_and_round_trips(tmp_path, small):
    x = torch.randn(2, 3, 8, 8)
    torch.export.save(torch.export.export(small, (x,)), tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2", architecture="ignored")
    assert loaded.form == "export" and any("ignored" in n for n in loaded.notes)
    loaded.model.eval()  # torch's unlifted module would raise here
    torch.testing.assert_close(loaded.model(x), small(x))
    assert set(loaded.model.state_dict()) == set(small.state_dict())
    decoded = perturbed(loaded.model.state_dict())
    export_decoded(loaded, decoded, tmp_path / "out.pt2")
    again = load_model(tmp_path / "out.pt2")
    assert_same_weights(dict(again.model.state_dict()), decoded)
    assert again.model(x).shape == (2, 5)
    torch.testing.assert_close(loaded.model(x), small(x))  # the loaded program itself is unchanged


@pytest.mark.parametrize(
    "make", [torch.jit.script, lambda m: torch.jit.trace(m, torch.randn(1, 3, 8, 8))], ids=["script", "trace"]
)
def test_torchscript_loads_and_round_trips(tmp_path, small, make):
    x = torch.randn(2, 3, 8, 8)
    torch.jit.save(make(small), str(tmp_path / "m.bin"))
    loaded = load_model(tmp_path / "m.bin")
    assert loaded.form == "torchscript"
    torch.testing.assert_close(loaded.model(x), small(x))
    decoded = perturbed(loaded.model.state_dict())
    export_decoded(loaded, decoded, tmp_path / "out.ts")
    assert_same_weights(dict(load_model(tmp_path / "out.ts").model.state_dict()), decoded)
    torch.testing.assert_close(loaded.model(x), small(x))


def test_export_decoded_refuses_weights_for_another_model(tmp_path, small):
    torch.save(small.state_dict(), tmp_path / "m.pt")
    register_architecture("small-test", Small, replace=True)
    try:
        loaded = load_model(tmp_path / "m.pt", "small-test")
    finally:
        unregister_architecture("small-test")
    with pytest.raises(CheckpointError, match="missing"):
        export_decoded(loaded, {"conv.weight": small.conv.weight}, tmp_path / "out.pt")


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch_save", "raw_pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if writer == "torch_save":
        torch.save({"state_dict": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(CheckpointError) as info:
        load_model(path, "resnet18")
    assert not marker.exists()
    message = str(info.value)
    assert (
        "torch.save(model.state_dict()" in message
        and "torch.export.save" in message
        and "torch.jit.save" in message
    )


def test_pickled_whole_module_is_refused_with_instructions(tmp_path, resnet):
    torch.save(resnet, tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match=r"whole model saved with torch\.save\(model\)") as info:
        load_model(tmp_path / "whole.pt", "resnet18", {"num_classes": 10})
    assert "ResNet" in str(info.value) and "torch.save(model.state_dict()" in str(info.value)


def test_unrecognised_file_lists_supported_forms(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(CheckpointError, match="Supported checkpoint forms"):
        load_model(tmp_path / "m.onnx")


def test_dict_with_non_tensor_entries_is_not_a_state_dict(tmp_path):
    torch.save({"weights": {"a": 1}, "epoch": 3}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="not tensors"):
        load_model(tmp_path / "m.pt", "resnet18")


def test_exported_resnet_with_dynamic_batch_runs_any_batch_size(tmp_path, resnet):
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(resnet, (X,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, tmp_path / "r.pt2")
    loaded = load_model(tmp_path / "r.pt2")
    assert loaded.fixed_batch_size is None and not any("fixed leading" in n for n in loaded.notes)
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), resnet(x))
    decoded = perturbed(loaded.model.state_dict())
    export_decoded(loaded, decoded, tmp_path / "out.pt2")
    assert_same_weights(dict(load_model(tmp_path / "out.pt2").model.state_dict()), decoded)


def test_exported_program_with_fixed_batch_takes_any_batch_and_says_how_to_re_export(tmp_path, small):
    torch.export.save(torch.export.export(small, (torch.randn(3, 3, 8, 8),)), tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    assert loaded.fixed_batch_size == 3
    assert any("dynamic_shapes={x: {0: torch.export.Dim('batch')}}" in n for n in loaded.notes)
    assert list(loaded.model.state_dict()) == list(small.state_dict())
    for n in (1, 3, 7):  # smaller, equal and larger than the exported batch (chunked, last chunk padded)
        x = torch.randn(n, 3, 8, 8)
        torch.testing.assert_close(loaded.model(x), small(x))


def test_compress_runs_on_a_fixed_batch_export_and_writes_back_a_program(tmp_path):
    from compression_core import CompressionConfig, compress

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 64, 10)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    config = CompressionConfig(rounds=1, transform_iters=3, weight_iters=3, batch_size=8, min_coded_numel=8)
    result = compress(loaded.model, torch.randn(20, 3, 8, 8), 4.0, config=config)
    export_decoded(loaded, result.state_dict, tmp_path / "out.pt2")
    assert_same_weights(dict(load_model(tmp_path / "out.pt2").model.state_dict()), result.state_dict)


def test_loaded_forms_can_be_compared_with_evaluation(tmp_path, small):
    from compression_core.evaluation import compare_models

    torch.export.save(torch.export.export(small, (torch.randn(4, 3, 8, 8),)), tmp_path / "m.pt2")
    torch.jit.save(torch.jit.script(small), str(tmp_path / "m.ts"))
    exported, scripted = load_model(tmp_path / "m.pt2"), load_model(tmp_path / "m.ts")
    result = compare_models(exported.model, scripted.model, torch.randn(8, 3, 8, 8), batch_size=4)
    assert result["top1_agreement"] == 1.0 and result["mse"] < 1e-10


def test_timm_architecture_reference(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", "timm:resnet10t", {"num_classes": 3})
    torch.testing.assert_close(loaded.model(X), model(X))
    with pytest.raises(CheckpointError, match="timm has no model"):
        load_model(tmp_path / "m.pt", "timm:resnet10tt")
