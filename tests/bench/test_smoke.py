"""Smoke run of the peer benchmark: digits CNN (3 training epochs), RTN 8/4-bit and L² at 5× and 10× with a
handful of iterations, no NNCodec. Checks the table's rows and that every ratio is a true, sane file ratio."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

pytest.importorskip("sklearn")
try:  # the figure needs the bench extra; the table and JSON do not
    import matplotlib  # noqa: F401

    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    from bench.run_all import main

    out = tmp_path_factory.mktemp("bench-smoke")
    report = main(["--smoke", "--out", str(out)] + ([] if HAVE_MPL else ["--no-plot"]))
    return report, out


def test_smoke_run_writes_table_json_and_figure(smoke_report):
    _, out = smoke_report
    for name in ("peers.md", "peers.json") + (("peers.png",) if HAVE_MPL else ()):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "peers.json").read_text())
    assert saved["profile"] == "smoke"
    md = (out / "peers.md").read_text()
    assert "| L² | target 5× |" in md and "| RTN per-channel + range coder | 4-bit |" in md


def test_smoke_rows_are_the_expected_methods(smoke_report):
    report, _ = smoke_report
    runs = report["subjects"]["digits_cnn"]["runs"]
    assert [(r["method"], r["setting"]) for r in runs] == [
        ("fp32", "original"),
        ("RTN per-channel + range coder", "8-bit"),
        ("RTN per-channel + range coder", "4-bit"),
        ("L²", "target 5×"),
        ("L²", "target 10×"),
    ]


def test_smoke_ratios_are_sane_true_file_ratios(smoke_report):
    report, _ = smoke_report
    runs = {(r["method"], r["setting"]): r for r in report["subjects"]["digits_cnn"]["runs"]}
    assert runs[("fp32", "original")]["ratio"] == 1.0
    rtn8 = runs[("RTN per-channel + range coder", "8-bit")]["ratio"]
    rtn4 = runs[("RTN per-channel + range coder", "4-bit")]["ratio"]
    # 8-bit symbols entropy-coded: better than 4× minus 1-D tensors and headers, but nowhere near 32×.
    assert 2.5 < rtn8 < 8.0
    assert rtn8 * 1.5 < rtn4 < 32.0
    for target in (5, 10):
        run = runs[("L²", f"target {target}×")]
        assert run["ratio"] == pytest.approx(target, rel=0.05), "L² must land on its target true ratio"
        assert run["file_bytes"] * run["ratio"] == pytest.approx(run["original_bytes"])
        assert run["extra"]["decoded_equals_result"], (
            "load_l2 must return exactly the weights compress reports"
        )
    for run in runs.values():
        assert 0.0 <= run["scores"]["digits_cnn"]["accuracy"] <= 1.0
    fp32 = runs[("fp32", "original")]["scores"]["digits_cnn"]["accuracy"]
    assert fp32 > 0.8  # 3 epochs are enough for a usable model
    assert runs[("L²", "target 5×")]["scores"]["digits_cnn"]["accuracy"] > fp32 - 0.1

