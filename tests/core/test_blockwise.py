"""Block-wise reconstruction: which modules are blocks, the activation cache's memory bound, and that a block's
codes change only where the block's output gets closer to the teacher's."""

import pytest
import torch
from torch import nn

from compression_core import CompressionConfig, ConfigError, compress
from compression_core.recon.blockwise import (
    ActivationStore,
    BlockSettings,
    capture,
    execution_order,
    find_blocks,
    reconstruct,
)
from compression_core.recon.state import QuantizedState
from compression_core.transforms import plan_tensor


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x):
        return x + torch.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    """stem → stages (a Sequential of Sequentials of residual blocks) → head: the shape of a CNN backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stages = nn.Sequential(nn.Sequential(Residual(8), Residual(8)), nn.Sequential(Residual(8)))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stages(torch.relu(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def _coded(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.numel() >= 8]


def test_blocks_are_the_units_inside_containers_and_the_layers_around_them():
    model = Net()
    blocks = find_blocks(model, _coded(model))
    assert [b.name for b in blocks] == ["stem", "stages.0.0", "stages.0.1", "stages.1.0", "head"]
    assert blocks[1].coded == [
        "stages.0.0.conv.weight",
        "stages.0.0.conv.bias",
        "stages.0.0.bn.weight",
        "stages.0.0.bn.bias",
    ]


def test_patterns_replace_the_automatic_blocks_and_a_pattern_matching_nothing_says_what_names_look_like():
    model = Net()
    assert [b.name for b in find_blocks(model, _coded(model), ("stages.?",))] == ["stages.0", "stages.1"]
    with pytest.raises(ConfigError, match="match no module holding coded weights"):
        find_blocks(model, _coded(model), ("encoder.*",))


def test_a_module_called_twice_is_not_a_block():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

        def forward(self, x):
            return self.layers[1](self.layers[0](self.layers[0](x)))

    model = Twice()
    order = execution_order(model, find_blocks(model, _coded(model)), torch.randn(2, 4), torch.device("cpu"))
    assert [b.name for b in order] == ["layers.1"]


def test_activations_beyond_the_bound_go_to_a_file_and_read_back_the_same():
    model = Net().eval()
    x = torch.randn(10, 3, 6, 6)
    in_memory, on_disk = ActivationStore(2**30), ActivationStore(0)
    try:
        kept = capture(model, model.stages[0][1], x, 4, torch.device("cpu"), in_memory, with_outputs=True)
        spilled = capture(model, model.stages[0][1], x, 4, torch.device("cpu"), on_disk, with_outputs=True)
        assert on_disk.spilled_bytes > 0 and on_disk.peak_memory == 0
        assert in_memory.spilled_bytes == 0 and in_memory.peak_memory == 2 * 10 * 8 * 6 * 6 * 4
        index = torch.tensor([9, 0, 4])
        assert torch.equal(
            kept.batch(index, torch.device("cpu"))[0][0], spilled.batch(index, torch.device("cpu"))[0][0]
        )
        assert torch.equal(
            kept.targets(index, torch.device("cpu"))[0],
            model.stages[0][1](model.stages[0][0](torch.relu(model.stem(x[index])))),
        )
    finally:
        on_disk.close()


def _state(model: nn.Module, bits: float) -> QuantizedState:
    config = CompressionConfig(per_channel=False)
    sd = model.state_dict()
    params = {n for n, _ in model.named_parameters()}
    plans = [plan_tensor(n, sd[n], n in params, config.__class__(min_coded_numel=8)) for n in sd]
    coded = [p.name for p in plans if p.kind is not None]
    return QuantizedState(sd, plans, config, dict.fromkeys(coded, bits))


def test_blocks_keep_new_codes_only_where_their_output_gets_closer_and_end_on_their_levels():
    torch.manual_seed(0)
    model = Net().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    state = _state(model, bits=2.0)
    x = torch.randn(48, 3, 6, 6)
    settings = BlockSettings(iterations=60, lr=0.1, input_mix=0.5, batch_size=16, cache_bytes=2**30, seed=0)
    note = reconstruct(model, state, x, settings, torch.device("cpu"))
    assert [b["block"] for b in note["blocks"]] == ["stem", "stages.0.0", "stages.0.1", "stages.1.0", "head"]
    assert any(b["kept"] for b in note["blocks"]), note
    for b in note["blocks"]:
        assert (b["loss_after"] < b["loss_before"]) == b["kept"]
    for _, w, t in state.items():
        codes = t.codes(w)
        assert torch.allclose(codes, codes.round(), atol=1e-4)


def test_compress_with_blockwise_reconstruction_lands_the_ratio_and_reports_it(digits):
    model, split = digits
    config = CompressionConfig.from_dict({"preset": "fast", "block_iters": 5, "batch_size": 64})
    result = compress(model, split.train_x[:256], 10.0, config=config)
    note = result.evaluation["blockwise"]
    assert [b["block"] for b in note["blocks"]][:2] == ["features.0", "features.3"]
    assert note["cache_peak_bytes"] > 0 and note["spilled_bytes"] == 0
    assert {"start_distance", "gptq_distance", "optimized_distance"} <= set(result.evaluation["selection"])
    ratio = result.summary.original_bytes / result.summary.estimated_file_bytes
    assert 10.0 <= ratio <= 10.0 / 0.99


def test_invalid_block_options_are_refused():
    with pytest.raises(ConfigError, match="block_input_mix"):
        CompressionConfig(block_input_mix=1.5)
    with pytest.raises(ConfigError, match="block_iters"):
        CompressionConfig(block_iters=-1)
