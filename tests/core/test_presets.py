"""Presets: named base configurations; explicit options override them; the defaults are `balanced`."""

import itertools

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


def test_each_longer_preset_runs_everything_the_shorter_one_does():
    """The selection test keeps a longer preset's extra candidate only where it beats the shorter preset's, so
    the longer preset can only be at least as good if it builds the shorter one's candidates too."""
    schedule = {"rounds", "transform_iters", "weight_iters", "batch_size"}
    presets = [CompressionConfig.from_dict({"preset": p}) for p in ("fast", "balanced", "paper")]
    for shorter, longer in itertools.pairwise(presets):
        for key in ("rounding", "allocation", "per_channel", "gptq_samples", "gptq_trellis", "gptq_asymmetric"):
            if getattr(shorter, key):
                assert getattr(longer, key) == getattr(shorter, key), key
    balanced, paper = presets[1:]
    assert paper.bn_recalibration is True and balanced.bn_recalibration is True
    assert {k for k in PRESETS["paper"] if PRESETS["paper"][k] != PRESETS["balanced"].get(k)} == schedule


def test_unknown_preset_is_refused_with_the_known_names():
    with pytest.raises(ConfigError, match="preset='turbo' is invalid: one of \\('fast', 'balanced', 'paper'\\)"):
        CompressionConfig.from_dict({"preset": "turbo"})
