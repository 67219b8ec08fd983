"""Write the service's OpenAPI document to docs/openapi.json (or check it): the committed copy is the contract
clients are generated from, and tests/service/api/test_openapi_document.py fails when it drifts from the app.

    python scripts/export_openapi.py           # rewrite docs/openapi.json after changing a route or schema
    python scripts/export_openapi.py --check   # exit 1 when the committed document differs from the app

The app is built from default settings (L2_* variables ignored), so the document does not depend on who runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "openapi.json"


def current_document() -> dict:
    """The app's OpenAPI document, as JSON would carry it (tuples become lists)."""
    for name in [n for n in os.environ if n.startswith("L2_")]:
        del os.environ[name]
    sys.path.insert(0, str(ROOT))
    from api.app import create_app
    from store.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(_env_file=None, data_dir=Path(tmp))
        app = create_app(settings, enqueue=lambda job_id, queue: None)
        return json.loads(json.dumps(app.openapi()))


def render(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    text = render(current_document())
    if args.check:
        if not DOCUMENT.exists() or DOCUMENT.read_text() != text:
            print(f"{DOCUMENT} is out of date; run: python scripts/export_openapi.py", file=sys.stderr)
            return 1
        print(f"{DOCUMENT} is up to date")
        return 0
    DOCUMENT.write_text(text)
    print(f"wrote {DOCUMENT.relative_to(ROOT)} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
