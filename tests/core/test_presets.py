"""Presets: named base configurations; explicit options override them; the defaults are `balanced`."""

import pytest

from compression_core import CompressionConfig, ConfigError
from compression_core.presets import DEFAULT_PRESET, PRESETS


def test_defaults_are_the_balanced_preset():
    default = CompressionConfig()
    for key, value in PRESETS[DEFAULT_PRESET].items():
        assert getattr(default, key) == value, key


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_is_the_base_and_options_override_it(name):
    config = CompressionConfig.from_dict({"preset": name, "batch_size": 3})
    assert config.batch_size == 3
    for key, value in PRESETS[name].items():
        if key != "batch_size":
            assert getattr(config, key) == value


def test_fast_and_paper_differ_where_they_say():
    fast, paper = (CompressionConfig.from_dict({"preset": p}) for p in ("fast", "paper"))
    assert fast.rounds == 0 and fast.rounding == "gptq"
    assert paper.rounds * (paper.transform_iters + paper.weight_iters) == 3 * 1300


def test_unknown_preset_is_refused_with_the_known_names():
    with pytest.raises(ConfigError, match="preset='turbo' is invalid: one of \\('fast', 'balanced', 'paper'\\)"):
        CompressionConfig.from_dict({"preset": "turbo"})
