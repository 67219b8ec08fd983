"""The API's copies of library types stay in step with the library (the API cannot import them: they pull in
torch), and the command line offers the service commands."""

from __future__ import annotations

import ast
from pathlib import Path

from api.schemas import CalibrationSpecIn, CompressionOptions

ROOT = Path(__file__).resolve().parents[3]


def _dataclass_fields(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def test_compression_options_mirror_compression_config():
    fields = _dataclass_fields(ROOT / "compression_core" / "config.py", "CompressionConfig") - {
        "extra",
        "version",
    }
    assert set(CompressionOptions.model_fields) == fields


def test_calibration_spec_mirrors_the_loaders_spec():
    fields = _dataclass_fields(ROOT / "compression_core" / "loading" / "spec.py", "CalibrationSpec")
    assert set(CalibrationSpecIn.model_fields) == fields


def test_cli_offers_migrate_and_keys(tmp_path, monkeypatch, capsys):
    from compression_core.cli import main
    from store.settings import get_settings

    monkeypatch.setenv("L2_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("L2_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    import store.db

    monkeypatch.setattr(store.db, "_engine", None)
    monkeypatch.setattr(store.db, "_session_factory", None)
    try:
        assert main(["migrate"]) == 0
        assert main(["keys", "create", "--tenant", "acme"]) == 0
        key = capsys.readouterr().out.strip().splitlines()[-1]
        assert key.startswith("l2_")
        prefix = key.split("_")[1]
        assert main(["keys", "list"]) == 0
        assert prefix in capsys.readouterr().out
        assert main(["keys", "revoke", prefix]) == 0
        assert main(["keys", "revoke", prefix]) == 1
    finally:
        if store.db._engine is not None:
            store.db._engine.dispose()
        get_settings.cache_clear()
