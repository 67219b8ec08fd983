"""`bench/run_all.py` logs every run's scores as it goes; EfficientNet-Lite0's scores carry per-photo lists
beside the numbers (for the paired tables), and the log line must take them without failing the bench."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import peers  # noqa: E402
from bench.run_all import _log_run, score_summary  # noqa: E402

SCORES = {
    "crops": {"agreement": 0.9, "kl": 0.0125, "per_photo": {"agreement": [1.0, 0.8], "kl": [0.01, 0.015]}},
    "probe": {"probe_accuracy": 0.8272},
}


def test_score_summary_prints_the_numbers_and_leaves_out_per_photo_lists():
    line = score_summary(SCORES)
    assert line == "crops: agreement=0.9000, kl=0.0125; probe: probe_accuracy=0.8272"


def test_a_run_with_per_photo_scores_is_logged(caplog):
    run = peers.MethodRun("L²", "target 8×", 100, 800, 1.0, 0.1, scores=SCORES)
    with caplog.at_level(logging.INFO, logger="bench"):
        _log_run("efficientnet_lite0", run)
    assert "agreement=0.9000" in caplog.text and "8.00×" in caplog.text
