"""docs/openapi.json is the app's OpenAPI document: a route or schema change without rerunning
``python scripts/export_openapi.py`` fails here, naming what moved."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _exporter():
    spec = importlib.util.spec_from_file_location("export_openapi", ROOT / "scripts" / "export_openapi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_openapi_document_matches_the_app(monkeypatch):
    exporter = _exporter()
    for name in [n for n in os.environ if n.startswith("L2_")]:
        monkeypatch.delenv(name)
    committed = json.loads(exporter.DOCUMENT.read_text())
    current = exporter.current_document()
    moved = sorted(set(committed["paths"]) ^ set(current["paths"]))
    assert not moved, f"paths added or removed: {moved}; run: python scripts/export_openapi.py"
    changed = [p for p in current["paths"] if committed["paths"][p] != current["paths"][p]]
    assert not changed, f"operations changed on {changed}; run: python scripts/export_openapi.py"
    assert committed == current, "schemas or metadata changed; run: python scripts/export_openapi.py"


def test_the_document_describes_the_resumable_upload_protocol():
    document = json.loads((ROOT / "docs" / "openapi.json").read_text())
    operations = document["paths"]["/v1/uploads/{upload_id}"]
    assert {"head", "patch", "delete", "get"} <= set(operations)
    assert "460" in operations["patch"]["responses"]
    assert not [p for p in document["paths"] if p.startswith("/ui")]
