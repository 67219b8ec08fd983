"""Merge subjects from another `run_all.py` report into ``bench/results/peers.json`` and re-render it.

    .venv/bin/python bench/merge_peers.py /tmp/small/peers.json digits_cnn mnist_cnn

For when one subject is rerun with other settings (e.g. the small CNNs over the whole ratio sweep while
EfficientNet-Lite0 ran at 5–10× only): each merged subject keeps the commit, command and start of the run that
measured it, and `peers.md` prints them under its heading.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import compare_with_nncodec, render_markdown, render_plot  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="peers.json of the other run")
    parser.add_argument("subjects", nargs="+")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    target = json.loads((args.out / "peers.json").read_text())
    source = json.loads(args.source.read_text())
    for name in args.subjects:
        data = source["subjects"][name]
        # A subject the source itself merged from elsewhere keeps the run that measured it.
        data.setdefault("measured", {k: source.get(k, "not recorded") for k in ("started", "commit", "command")})
        target["subjects"][name] = data
    target["comparisons"] = compare_with_nncodec(target)
    (args.out / "peers.json").write_text(json.dumps(target, indent=1, default=float))
    (args.out / "peers.md").write_text(render_markdown(target))
    render_plot(target, args.out / "peers.png")


if __name__ == "__main__":
    main()
