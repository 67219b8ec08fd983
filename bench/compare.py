"""Turning a benchmark report (see `run_all.py`) into the comparison with NNCodec, the Markdown table and the
ratio-vs-accuracy figure.

Each method's measured points are joined piecewise-linearly (score against true ratio).

Headline, at a common accuracy level: for a drop budget d (percentage points below the fp32 score), each
method's *ratio at level fp32 − d* is the ratio up to which its curve stays ≥ fp32 − d (first crossing from
the low-ratio end, so a lucky point after a failing one does not extend it). The factor is L²'s ratio /
NNCodec's; the goal is ≥ 1.3. A ratio is *censored* when the method's highest sampled ratio still meets the
level (the true value is higher): then L²'s factor is a lower bound, NNCodec's censoring makes it an upper
bound. Budgets: 0.5, 1, 2 and 5 pp; the headline uses 1 pp for accuracies and 5 pp for top-1 agreement with
fp32 (agreement is 100 % by definition for fp32 and falls faster than accuracy).

With ``run_all.py --seeds``, the profile's L² configuration runs once per seed (rows ``L²`` for the first, ``L²
(seed k)`` for the others) and its curve is the mean over the seeds at each target (mean score, mean ratio):
one seed's agreement on a few hundred crops moves by more than the difference being judged. Each seed's own
headline ratio is reported beside the mean's.

Per NNCodec point (ratio r_N, score a_N): the ratio L² reaches at score a_N (same rule) and
L²'s score at r_N (inside L²'s sampled ratio range only). Single points are noisy on small test sets; the
level-based headline is the figure to quote.

Presets against each other (`paired_presets`): where a panel keeps its per-photo means, each longer schedule
is compared with the next shorter one at the same target on the same photos. The difference of two runs on
the same photos is far less noisy than either score's own error bar (the photos' difficulty cancels), so this
is what says whether a longer preset is better, worse, or not distinguishable on the bench.
"""

from __future__ import annotations

import itertools
from pathlib import Path

DROPS = (0.005, 0.01, 0.02, 0.05)
HEADLINE_DROP = {"agreement": 0.05}
DEFAULT_HEADLINE_DROP = 0.01
GOAL = 1.3
L2 = "L²"
L2_SEED_PREFIX = "L² (seed "
NNCODEC_PREFIX = "NNCodec"
# Shortest schedule first; "L²" is the profile's own configuration (`balanced` in the cpu profile).
PRESET_CHAIN = ("L² (initial allocation only, --rounds 0)", "L² (preset fast)", L2, "L² (preset paper)")


def _points(runs: list[dict], panel: str, metric: str, method_prefix: str, exact: bool = False) -> list[dict]:
    pts = [
        {"ratio": r["ratio"], "score": r["scores"][panel][metric], "setting": r["setting"]}
        for r in runs
        if (r["method"] == method_prefix if exact else r["method"].startswith(method_prefix))
        and panel in r.get("scores", {})
    ]
    return sorted(pts, key=lambda p: p["ratio"])


def seed_points(runs: list[dict], panel: str, metric: str) -> dict[str, list[dict]]:
    """The profile's own L² points per seed run (``L²`` and every ``L² (seed k)``), by method name."""
    methods = sorted({r["method"] for r in runs if r["method"] == L2 or r["method"].startswith(L2_SEED_PREFIX)})
    return {m: _points(runs, panel, metric, m, exact=True) for m in methods}


def mean_points(curves: list[list[dict]]) -> list[dict]:
    """One curve from several seeds' curves: at each target (setting) measured by every seed, the mean ratio
    and the mean score."""
    by_setting: dict[str, list[dict]] = {}
    for curve in curves:
        for p in curve:
            by_setting.setdefault(p["setting"], []).append(p)
    points = [
        {
            "ratio": sum(p["ratio"] for p in group) / len(group),
            "score": sum(p["score"] for p in group) / len(group),
            "setting": setting,
        }
        for setting, group in by_setting.items()
        if len(group) == len(curves)
    ]
    return sorted(points, key=lambda p: p["ratio"])


def ratio_at_score(curve: list[dict], score: float) -> tuple[float | None, bool]:
    """(ratio up to which the piecewise-linear curve stays ≥ ``score``, censored?).

    Walks from the lowest ratio up to the first crossing below ``score`` (a lucky high-ratio point after a
    failing one does not count: the method's usable range ends at its first failure). None when even the
    lowest sampled ratio misses ``score``; censored when no sampled ratio does."""
    if not curve or curve[0]["score"] < score:
        return None, False
    for p, q in zip(curve, curve[1:], strict=False):
        if q["score"] < score:
            frac = (p["score"] - score) / (p["score"] - q["score"])
            return p["ratio"] + frac * (q["ratio"] - p["ratio"]), False
    return curve[-1]["ratio"], True


def score_at_ratio(curve: list[dict], ratio: float) -> float | None:
    """The curve's score at ``ratio`` (linear interpolation), or None outside its sampled range."""
    if not curve or ratio < curve[0]["ratio"] or ratio > curve[-1]["ratio"]:
        return None
    for p, q in zip(curve, curve[1:], strict=False):
        if p["ratio"] <= ratio <= q["ratio"]:
            if q["ratio"] == p["ratio"]:
                return max(p["score"], q["score"])
            frac = (ratio - p["ratio"]) / (q["ratio"] - p["ratio"])
            return p["score"] + frac * (q["score"] - p["score"])
    return curve[-1]["score"]


def compare_with_nncodec(report: dict) -> list[dict]:
    out = []
    for subject, data in report.get("subjects", {}).items():
        runs = data["runs"]
        fp32_run = next((r for r in runs if r["method"] == "fp32"), {"scores": {}})
        for panel, primary in data["panels"].items():
            # The primary score, plus top-1 agreement with fp32 where it is a secondary score (less noisy than
            # accuracy on a small or shifted test set).
            extra = ["agreement"] if primary != "agreement" and "agreement" in fp32_run["scores"].get(panel, {}) else []
            for metric in [primary, *extra]:
                item = _compare_panel(subject, panel, metric, runs, secondary=metric != primary)
                if item:
                    out.append(item)
    return out


def _compare_panel(subject: str, panel: str, metric: str, runs: list[dict], secondary: bool) -> dict | None:
    seeds = seed_points(runs, panel, metric)  # the profile's own L² rows, not the extra variants
    l2 = mean_points(list(seeds.values())) if len(seeds) > 1 else seeds.get(L2, [])
    nnc = _points(runs, panel, metric, NNCODEC_PREFIX)
    fp32 = next((r["scores"][panel][metric] for r in runs if r["method"] == "fp32"), None)
    if not l2 or not nnc or fp32 is None:
        return None
    rows = []
    for p in nnc:
        l2_ratio, censored = ratio_at_score(l2, p["score"])
        rows.append(
            {
                "nncodec_setting": p["setting"],
                "nncodec_ratio": p["ratio"],
                "nncodec_score": p["score"],
                "l2_ratio_at_equal_score": l2_ratio,
                "censored": censored,
                "ratio_factor": (l2_ratio / p["ratio"]) if l2_ratio else None,
                "l2_score_at_nncodec_ratio": score_at_ratio(l2, p["ratio"]),
            }
        )
    levels = []
    for drop in DROPS:
        level = fp32 - drop
        r_l2, c_l2 = ratio_at_score(l2, level)
        r_nn, c_nn = ratio_at_score(nnc, level)
        factor = (r_l2 / r_nn) if (r_l2 and r_nn) else None
        bound = "≥" if c_l2 and not c_nn else "≤" if c_nn and not c_l2 else "?" if c_l2 and c_nn else ""
        levels.append(
            {
                "drop": drop,
                "level": level,
                "l2_ratio": r_l2,
                "l2_censored": c_l2,
                "nncodec_ratio": r_nn,
                "nncodec_censored": c_nn,
                "factor": factor,
                "bound": bound,
                "l2_score_at_nncodec_ratio": score_at_ratio(l2, r_nn) if r_nn else None,
            }
        )
    drop = HEADLINE_DROP.get(metric, DEFAULT_HEADLINE_DROP)
    headline = next(lv for lv in levels if lv["drop"] == drop)
    if len(seeds) > 1:  # each seed's own crossing, beside the mean curve's
        headline["l2_ratio_by_seed"] = {m: ratio_at_score(c, headline["level"])[0] for m, c in seeds.items()}
    f = headline["factor"]
    return {
        "subject": subject,
        "panel": panel,
        "metric": metric,
        "fp32": fp32,
        "rows": rows,
        "levels": levels,
        "headline": headline,
        "goal_factor": GOAL,
        "secondary": secondary,
        "l2_seeds": len(seeds),
        # met only for a measured factor, or a lower bound that already clears the goal
        "goal_met": bool(f is not None and f >= GOAL and headline["bound"] in ("", "≥")),
    }


def paired_presets(report: dict) -> list[dict]:
    """Each schedule of `PRESET_CHAIN` against the next shorter one measured at the same target, on every
    panel that keeps per-photo means: the mean paired difference (longer − shorter) of agreement and KL with
    its standard error over the photos, and the KL difference's z."""
    rows = []
    for subject, data in report.get("subjects", {}).items():
        by_method = {}
        for r in data["runs"]:
            by_method.setdefault(r["method"], {})[r["setting"]] = r
        chain = [m for m in PRESET_CHAIN if m in by_method]
        for shorter, longer in itertools.pairwise(chain):
            for setting, run in by_method[longer].items():
                base = by_method[shorter].get(setting)
                if base is None:
                    continue
                for panel, scores in run["scores"].items():
                    paired = paired_scores(scores, base["scores"].get(panel, {}))
                    if paired:
                        rows.append(
                            {"subject": subject, "panel": panel, "setting": setting, "shorter": shorter,
                             "longer": longer, **paired}
                        )
    return rows


def paired_scores(scores: dict, base: dict) -> dict | None:
    """One panel's scores against another run's on the same photos: the paired differences of agreement and
    KL and the relative change of the mean KL; None unless both kept their per-photo means."""
    photos, base_photos = scores.get("per_photo"), base.get("per_photo")
    if not photos or not base_photos:
        return None
    return {
        "photos": len(photos["kl"]),
        **{metric: paired_difference(photos[metric], base_photos[metric]) for metric in ("agreement", "kl")},
        "kl_relative": scores["kl"] / base["kl"] - 1,
    }


def paired_cells(row: dict) -> str:
    """The table cells of a `paired_scores` row: Δ agreement, Δ KL (each ± SE), Δ KL relative, z of KL."""
    a, k = row["agreement"], row["kl"]
    return (
        f"{a['mean']:+.3f} ± {a['se']:.3f} | {k['mean']:+.4f} ± {k['se']:.4f} | "
        f"{100 * row['kl_relative']:+.0f} % | {k['z']:+.1f}"
    )


def paired_difference(longer: list[float], shorter: list[float]) -> dict:
    """Mean of the per-photo differences, its standard error and z (0 when the differences do not vary)."""
    diffs = [a - b for a, b in zip(longer, shorter, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = (sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) ** 0.5 if n > 1 else 0.0
    return {"mean": mean, "se": se, "z": mean / se if se > 0 else 0.0}


def is_scalar_score(value) -> bool:
    """A score to print in a table (not a per-photo list, not a flag)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(report: dict) -> str:
    lines = [
        "# L² against its peers",
        "",
        f"Profile `{report['profile']}`, device `{report['device']}`, torch {report['torch']}, "
        f"{report['machine']['cpus']} CPUs ({report['machine']['torch_threads']} torch threads), "
        f"started {report['started']}, {report.get('seconds', 0):.0f} s in all; commit "
        f"{report.get('commit', 'not recorded')}, command `{report.get('command', 'not recorded')}`. "
        "Generated by `bench/run_all.py`; do not edit by hand.",
        "",
        "True ratio = fp32 bytes of the whole state_dict / every byte needed to decode it (the `.l2` file, "
        "the NNCodec bitstream plus raw integer tensors, the zstd blob). Every score is measured on the "
        "*decoded* weights. Times are wall-clock on the machine above (shared with other work); "
        "compress time of L² includes the optimization and writing the file, decode time is reading it back.",
        "",
    ]
    for subject, data in report.get("subjects", {}).items():
        panels = data["panels"]
        lines += [f"## {subject}", "", data["description"] + ".", ""]
        if "measured" in data:  # merged from another run of run_all (`bench/merge_peers.py`)
            m = data["measured"]
            lines += [
                f"Measured in a separate run: started {m['started']}, commit {m['commit']}, command `{m['command']}`.",
                "",
            ]
        head = ["method", "setting", "true ratio", "bytes"]
        cols = []
        fp32_scores = next((r["scores"] for r in data["runs"] if r["method"] == "fp32"), {})
        for panel, metric in panels.items():
            cols.append((panel, metric))
            cols += [(panel, m) for m, v in fp32_scores.get(panel, {}).items() if m != metric and is_scalar_score(v)]
        head += [f"{m} ({p})" if len(panels) > 1 else m for p, m in cols] + ["compress s", "decode s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in data["runs"]:
            vals = [_fmt(r["scores"].get(p, {}).get(m)) for p, m in cols]
            lines.append(
                "| "
                + " | ".join(
                    [
                        r["method"],
                        r["setting"],
                        f"{r['ratio']:.2f}×",
                        str(r["file_bytes"]),
                        *vals,
                        f"{r['compress_s']:.2f}",
                        f"{r['decode_s']:.3f}",
                    ]
                )
                + " |"
            )
        lines += [
            "",
            f"L² config: `{_compact(data['l2_config'])}`; subject took {data.get('seconds', 0):.0f} s.",
            "",
        ]
    lines += _render_paired(paired_presets(report))
    comps = report.get("comparisons", [])
    if comps:
        lines += [
            "## L² vs NNCodec at equal accuracy",
            "",
            "Ratio up to which each method's score stays ≥ fp32 − drop (first crossing along its "
            "piecewise-linear curve; `>` on a ratio, `≥`/`≤` on a factor mark bounds: a method whose highest "
            "sampled ratio still meets the level could go further). Headline drop: 1 pp for accuracies, 5 pp "
            "for top-1 agreement. "
            f"Goal: L²'s ratio ≥ {GOAL}× NNCodec's, judged on each panel's primary score; rows marked "
            "*secondary* repeat the comparison on top-1 agreement with fp32, which is less noisy than "
            "accuracy on a small or domain-shifted test set.",
            "",
            "| panel | fp32 | drop | NNCodec ratio | L² ratio | factor L²/NNCodec "
            "| L² score at NNCodec's ratio | headline | goal met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]

        def _r(v, censored):
            return "–" if v is None else (">" if censored else "") + f"{v:.2f}×"

        for c in comps:
            for lv in c["levels"]:
                is_head = lv is c["headline"] or lv["drop"] == c["headline"]["drop"]
                if lv["factor"] is None:
                    factor = "–"
                elif lv["bound"] == "?":
                    factor = "undetermined (both beyond sweep)"
                else:
                    factor = f"{lv['bound']}{lv['factor']:.2f}"
                label = f"{c['metric']}, *secondary*" if c.get("secondary") else c["metric"]
                goal = ("yes" if c["goal_met"] else "no") if is_head and not c.get("secondary") else ""
                lines.append(
                    f"| {c['panel']} ({label}) | {c['fp32']:.4f} | {100 * lv['drop']:.1f} pp | "
                    f"{_r(lv['nncodec_ratio'], lv['nncodec_censored'])} | "
                    f"{_r(lv['l2_ratio'], lv['l2_censored'])} | "
                    f"{factor} | {_fmt(lv['l2_score_at_nncodec_ratio'])} | {'**yes**' if is_head else ''} | "
                    f"{goal} |"
                )
        for c in comps:
            by_seed = c["headline"].get("l2_ratio_by_seed")
            if by_seed and not c.get("secondary"):
                each = ", ".join(_r(v, False) for v in by_seed.values())
                lines += [
                    "",
                    f"{c['subject']}: the L² curve is the mean of {c['l2_seeds']} seeds at each target; at the "
                    f"headline level each seed alone crosses at {each}.",
                ]
        lines += [
            "",
            "Every NNCodec point (primary scores; single points on small test sets are noisy):",
            "",
            "| panel | NNCodec point | ratio | score | L² ratio at equal score | factor | L² score at that ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in comps:
            if c.get("secondary"):
                continue
            for r in c["rows"]:
                ratio = (
                    "–"
                    if r["l2_ratio_at_equal_score"] is None
                    else ("≥ " if r["censored"] else "") + f"{r['l2_ratio_at_equal_score']:.2f}×"
                )
                factor = (
                    "–" if r["ratio_factor"] is None else ("≥ " if r["censored"] else "") + f"{r['ratio_factor']:.2f}"
                )
                lines.append(
                    f"| {c['panel']} | {r['nncodec_setting']} | {r['nncodec_ratio']:.2f}× | "
                    f"{r['nncodec_score']:.4f} | {ratio} | {factor} | "
                    f"{_fmt(r['l2_score_at_nncodec_ratio'])} |"
                )
        lines.append("")
    return "\n".join(lines)


def _render_paired(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Each longer schedule against the next shorter, paired on the same photos",
        "",
        "Longer − shorter, the mean of the per-photo differences ± its standard error over the photos (z = "
        "mean / SE; |z| < 2 is not distinguishable on this bench). Lower KL and higher agreement are better.",
        "",
        "| subject | target | shorter → longer | Δ agreement | Δ KL | Δ KL relative | z (KL) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['subject']} | {r['setting']} | {r['shorter']} → {r['longer']} | {paired_cells(r)} |")
    return lines + [""]


def _compact(config: dict) -> str:
    keep = (
        "transform",
        "allocation",
        "per_channel",
        "rounds",
        "transform_iters",
        "weight_iters",
        "batch_size",
        "rate_weight",
        "holdout_fraction",
    )
    return ", ".join(f"{k}={config[k]}" for k in keep if k in config)


def render_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [(s, p, m) for s, d in report.get("subjects", {}).items() for p, m in d["panels"].items()]
    if not panels:
        return
    ncols = min(2, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4.6 * nrows), squeeze=False)
    styles = {
        "L²": ("tab:red", "o", "-"),
        "NNCodec": ("tab:blue", "s", "-"),
        "RTN": ("tab:green", "^", "--"),
        "zstd": ("tab:gray", "D", "none"),
    }
    for ax, (subject, panel, metric) in zip(axes.flat, panels, strict=False):
        runs = report["subjects"][subject]["runs"]
        fp32 = next((r["scores"][panel][metric] for r in runs if r["method"] == "fp32"), None)
        if fp32 is not None:
            ax.axhline(fp32, color="black", lw=0.8, ls=":", label=f"fp32 ({fp32:.4f})")
        for prefix, (color, marker, ls) in styles.items():
            pts = sorted(
                (r["ratio"], r["scores"][panel][metric])
                for r in runs
                if r["method"].startswith(prefix) and panel in r.get("scores", {})
            )
            if pts:
                label = next(r["method"] for r in runs if r["method"].startswith(prefix))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=marker, ls=ls, label=label)
        ax.set_xscale("log")
        ax.set_xticks([1, 2, 3, 5, 10, 15, 20, 30])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g×"))
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("true compression ratio (fp32 bytes / file bytes)")
        ax.set_ylabel(metric)
        ax.set_title(panel)
        # Frame the range where L² was swept (up to ~26×): points far beyond it would squash the rest.
        top = max([r["ratio"] for r in runs if r["method"].startswith("L²")] or [30.0]) * 1.06
        lo = min(
            (r["scores"][panel][metric] for r in runs if panel in r.get("scores", {}) and r["ratio"] <= top),
            default=0.0,
        )
        if fp32 is not None:
            span = max(fp32 - lo, 0.005)
            ax.set_ylim(max(0.0, lo - 0.08 * span), fp32 + 0.08 * span)
        ax.set_xlim(0.9, max(32.0, top * 1.2))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"L² vs peers — profile {report['profile']}, device {report['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
