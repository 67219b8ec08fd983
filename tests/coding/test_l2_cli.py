"""`l2 inspect` and `l2 decompress` through the command-line entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_bit_exact
from safetensors.torch import load_file

from compression_core.cli import main
from compression_core.coding import write_l2
from compression_core.records import ArtifactContents, CodedTensor


@pytest.fixture
def artifact(tmp_path, sample_contents):
    path = tmp_path / "model.l2"
    write_l2(sample_contents, path)
    return path


def test_inspect_prints_tensors_and_totals(artifact, capsys):
    assert main(["inspect", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert "conv.weight" in out and "prune_quant" in out and "stored" in out
    assert "file bytes" in out and f"{artifact.stat().st_size:,}" in out
    assert "source_digest" in out


def test_inspect_marks_trellis_coded_tensors(tmp_path, sample_contents, capsys):
    sample_contents.records[0].trellis = True
    write_l2(sample_contents, tmp_path / "t.l2")
    assert main(["inspect", str(tmp_path / "t.l2")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("conv.weight") and "prune_quant+trellis" in line for line in lines)
    assert not any(line.startswith("fc.weight") and "trellis" in line for line in lines)
    assert main(["inspect", str(tmp_path / "t.l2"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    binned = any(t["table_bin_bits"] for t in info["tensors"])
    assert info["version"] == (3 if binned else 2) and [t["trellis"] for t in info["tensors"][:1]] == [True]


def test_inspect_shows_a_binned_tables_level_count_as_an_upper_bound(tmp_path, capsys):
    """A binned table records bins, not levels: the count of levels in its occupied bins is a bound."""
    rng = np.random.default_rng(0)
    narrow = np.round(rng.normal(0, 2, size=(64, 64))).astype(np.int32)
    wide = rng.integers(-5000, 5000, size=(96,)).astype(np.int32)
    records = [
        CodedTensor(name, s.shape, "float32", "linear", {"s": np.float32(0.01)}, s)
        for name, s in (("w", narrow), ("gamma", wide))
    ]
    write_l2(ArtifactContents(records), tmp_path / "b.l2")
    assert main(["inspect", str(tmp_path / "b.l2")]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows["gamma"][5].startswith("≤") and int(rows["gamma"][5][1:]) >= 96
    assert rows["w"][5] == str(np.unique(narrow).size)


def test_inspect_json_totals_add_up(artifact, capsys):
    assert main(["inspect", str(artifact), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    t = info["totals"]
    assert (
        t["file_bytes"]
        == artifact.stat().st_size
        == sum(
            t[k] for k in ("header_bytes", "manifest_bytes", "checks_bytes", "payload_bytes", "trailer_bytes")
        )
    )
    assert [x["name"] for x in info["tensors"]][0] == "conv.weight"
    assert info["metadata"]["target_ratio"] == 10.0


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_decompress_writes_bit_exact_weights(artifact, tmp_path, sample_contents, suffix):
    out = tmp_path / f"weights{suffix}"
    assert main(["decompress", str(artifact), str(out)]) == 0
    state = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    assert_bit_exact({r.name: state[r.name] for r in sample_contents.records}, sample_contents)


def test_decompress_refuses_unknown_suffix_and_bad_files(artifact, tmp_path, capsys):
    assert main(["decompress", str(artifact), str(tmp_path / "w.bin")]) == 2
    bad = tmp_path / "bad.l2"
    bad.write_bytes(b"PK\x03\x04 not an l2 file")
    assert main(["decompress", str(bad), str(tmp_path / "w.pt")]) == 1
    assert main(["inspect", str(bad)]) == 1
    assert "not an .l2 file" in capsys.readouterr().err
    assert not (tmp_path / "w.pt").exists()


def test_compress_preset_is_the_base_and_explicit_flags_override_it():
    import argparse

    from compression_core.cli import compress_cmd

    parser = argparse.ArgumentParser()
    compress_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["compress", "m.pt", "--calibration", "c.pt", "--target-ratio", "8",
                              "--preset", "fast", "--rounds", "2"])
    config = compress_cmd._config(args)
    assert (config.rounds, config.rounding, config.transform_iters) == (2, "gptq", 60)
    with pytest.raises(SystemExit):
        parser.parse_args(["compress", "m.pt", "--calibration", "c.pt", "--target-ratio", "8", "--preset", "x"])
