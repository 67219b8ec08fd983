"""The command line as a newcomer meets it (issue 12): `l2 inspect` verifies what it reports, piping it into
`head` is not an error, and a user's mistake is one readable line with a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compression_core.cli import main
from compression_core.coding import read_manifest, write_l2


@pytest.fixture
def artifact(tmp_path, sample_contents):
    path = tmp_path / "model.l2"
    write_l2(sample_contents, path)
    return path


def _corrupt_payload(path: Path) -> None:
    entry = max(read_manifest(path).entries, key=lambda e: e.payload_bytes)
    data = bytearray(path.read_bytes())
    data[entry.payload_offset + entry.payload_bytes // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_inspect_fails_on_a_corrupted_payload_naming_the_tensor(artifact, capsys):
    _corrupt_payload(artifact)
    assert main(["inspect", str(artifact)]) == 1
    err = capsys.readouterr().err
    assert "corrupted" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_inspect_says_it_verified_the_checksums(artifact, capsys):
    assert main(["inspect", str(artifact)]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["inspect", str(artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True


def test_inspect_no_verify_skips_payloads_and_says_so(artifact, capsys):
    _corrupt_payload(artifact)
    assert main(["inspect", str(artifact), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "NOT verified" in out


def _l2(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    l2 = Path(sys.executable).with_name("l2")
    return subprocess.run([str(l2), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_inspect_into_a_closed_pipe_is_not_an_error(artifact, tmp_path):
    l2 = Path(sys.executable).with_name("l2")
    done = subprocess.run(
        f"'{l2}' inspect '{artifact}' | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.startswith(str(artifact))
    assert "BrokenPipeError" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_pickled_model_is_one_readable_line_and_exit_1(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "evil.pt")  # a whole pickled module: refused
    torch.save(torch.zeros(4, 2), tmp_path / "calib.pt")
    done = _l2("compress", "evil.pt", "--calibration", "calib.pt", "--target-ratio", "4", cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("l2 compress: ") and "refused" in lines[0], done.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["compress", "missing.pt", "--calibration", "c.pt", "--target-ratio", "4"], "does not exist"),
        (["compress", "m.pt", "--calibration", "c.pt", "--target-ratio", "4", "--arch-kwargs", "{"], "not valid JSON"),
        (["decompress", "missing.l2", "out.pt"], "missing.l2"),
    ],
)
def test_user_errors_are_one_line_without_a_traceback(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.zeros(2)}, tmp_path / "m.pt")
    torch.save(torch.zeros(4, 2), tmp_path / "c.pt")
    code = main(args)
    err = capsys.readouterr().err
    assert code not in (0, None)
    assert words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_an_error_reaching_the_entry_point_is_one_line_and_verbose_shows_the_traceback(artifact, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "weights.pt"  # its folder is a file
    assert main(["decompress", str(artifact), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("l2 decompress: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(OSError):
        main(["-v", "decompress", str(artifact), str(out)])


def test_compress_help_names_each_default_once_and_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in out and "CompressionConfig." not in out
    assert out.count("(default:") == out.count("(default: ")  # well-formed
    assert "calibration samples per iteration (default: 32)" in out
    for option in out.split(" --")[1:]:
        assert option.count("(default") <= 1, option
