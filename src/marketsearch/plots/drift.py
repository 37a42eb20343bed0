"""The figure of one drift run: the reference against the batch, and each check's score."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter

from .common import _new_figure, _save, _wrap

# --------------------------------------------------------------------------- drift
_REF_COLOUR, _BATCH_COLOUR = "#4c72b0", "#dd8452"


def _reference_vs_batch_hist(ax, samples, bins, median_text) -> None:
    """The reference (filled) and the batch (outline) as shares of their own counts."""
    for values, colour, name in zip(samples, (_REF_COLOUR, _BATCH_COLOUR), ("reference", "batch")):
        if len(values):
            ax.hist(values, bins=bins, weights=np.full(len(values), 1.0 / len(values)),
                    histtype="stepfilled" if name == "reference" else "step", color=colour,
                    alpha=0.45 if name == "reference" else 1.0, linewidth=1.8,
                    label=f"{name} (median {median_text(values)})")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.legend(fontsize=8)


def drift_png(reference_categories: Mapping[str, int], batch_categories: Mapping[str, int],
              reference_prices, batch_prices, reference_text_lengths, batch_text_lengths,
              checks: Mapping[str, Mapping], path: str | Path,
              title: str = "Drift: training reference vs batch",
              reference_brightness=None, batch_brightness=None) -> Path:
    """The panels of one drift run: category shares (reference vs batch), price
    distributions (log scale), tokens per listing text, per-photo mean luminance (when
    either side has a luminance sample) and each check's score against its decision line.

    ``checks`` is ``run_checks(...)["checks"]``: per check its "score" (>= 1 on the drift side
    of its rule: statistic / threshold, or log p / log alpha), "drift" and "detail"."""
    brightness = [np.asarray([] if v is None else v, dtype=float)
                  for v in (reference_brightness, batch_brightness)]
    with_brightness = any(len(v) for v in brightness)
    fig = _new_figure(14.0, 14.5 if with_brightness else 10.0)
    grid = fig.add_gridspec(3 if with_brightness else 2, 2)

    # Category shares, largest reference share at the top; unseen categories at the bottom.
    ax = fig.add_subplot(grid[0, 0])
    ref_total = max(sum(reference_categories.values()), 1)
    batch_total = max(sum(batch_categories.values()), 1)
    names = sorted(reference_categories, key=lambda k: -reference_categories[k])
    names += sorted(k for k in batch_categories if k not in reference_categories)
    if names:
        y = np.arange(len(names))
        ref_share = np.array([reference_categories.get(k, 0) / ref_total for k in names])
        batch_share = np.array([batch_categories.get(k, 0) / batch_total for k in names])
        ax.barh(y - 0.2, ref_share, height=0.4, color=_REF_COLOUR,
                label=f"reference ({ref_total:,})")
        ax.barh(y + 0.2, batch_share, height=0.4, color=_BATCH_COLOUR,
                label=f"batch ({batch_total:,})")
        ax.set_yticks(y)
        ax.set_yticklabels([_wrap(k if k in reference_categories else f"{k} (unseen)", 30)
                            for k in names], fontsize=7.5)
        ax.invert_yaxis()
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("category mix (share of listings)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.set_axisbelow(True)

    # Prices on a log axis; missing or non-positive prices are counted in the title.
    ax = fig.add_subplot(grid[0, 1])
    samples = [np.asarray(v, dtype=float) for v in (reference_prices, batch_prices)]
    positive = [v[np.isfinite(v) & (v > 0)] for v in samples]
    left_out = sum(len(v) - len(p) for v, p in zip(samples, positive))
    both = np.concatenate(positive)
    if len(both):
        lo, hi = both.min(), both.max()
        if hi <= lo:
            lo, hi = lo / 1.5, hi * 1.5
        bins = np.logspace(np.log10(lo), np.log10(hi), 40)
        for values, colour, name in zip(positive, (_REF_COLOUR, _BATCH_COLOUR),
                                        ("reference", "batch")):
            if len(values):
                ax.hist(values, bins=bins, density=False, weights=np.full(len(values),
                        1.0 / len(values)), histtype="stepfilled" if name == "reference"
                        else "step", color=colour, alpha=0.45 if name == "reference" else 1.0,
                        linewidth=1.8, label=f"{name} (median £{np.median(values):,.2f})")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"£{v:,.0f}" if v >= 1
                                                   else f"£{v:g}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
        ax.legend(fontsize=8)
    ax.set_xlabel("price (£, log scale)")
    ax.set_ylabel("share of listings")
    extra = f"; {left_out:,} without a positive price not shown" if left_out else ""
    ax.set_title(f"price{extra}", fontsize=10)
    ax.grid(alpha=0.3)

    # Tokens per listing text, up to the 99th percentile of both.
    ax = fig.add_subplot(grid[1, 0])
    lengths = [np.asarray(v, dtype=float) for v in (reference_text_lengths, batch_text_lengths)]
    both = np.concatenate(lengths)
    if len(both):
        top = max(float(np.quantile(both, 0.99)), 1.0)
        bins = np.linspace(0, top, 40)
        _reference_vs_batch_hist(ax, [np.minimum(v, top) for v in lengths], bins,
                                 lambda v: f"{np.median(v):g}")
    ax.set_xlabel("tokens per listing text (last bin: 99th percentile and above)")
    ax.set_ylabel("share of listings")
    ax.set_title("text length", fontsize=10)
    ax.grid(alpha=0.3)

    # Per-photo mean luminance (0-255): the photo embeddings ignore exposure, this does not.
    if with_brightness:
        ax = fig.add_subplot(grid[1, 1])
        bins = np.linspace(0, 255, 52)
        _reference_vs_batch_hist(ax, [np.clip(v, 0, 255) for v in brightness], bins,
                                 lambda v: f"{np.median(v):.0f}")
        ax.set_xlim(0, 255)
        ax.set_xlabel("mean luminance per photo (0.299 R + 0.587 G + 0.114 B, 0-255)")
        ax.set_ylabel("share of photos")
        ax.set_title("photo brightness", fontsize=10)
        ax.grid(alpha=0.3)

    # Each check against its decision line (the whole bottom row beside the brightness panel).
    ax = fig.add_subplot(grid[2, :] if with_brightness else grid[1, 1])
    names = list(checks)
    cap = 5.0
    if names:
        scores = np.array([min(max(float(checks[n].get("score", 0.0)), 0.0), cap)
                           for n in names])
        skipped = [str(checks[n].get("detail", "")).startswith("skipped") for n in names]
        colours = ["#bbbbbb" if s else "#c44e52" if checks[n]["drift"] else "#55a868"
                   for n, s in zip(names, skipped)]
        y = np.arange(len(names))
        ax.barh(y, scores, color=colours)
        ax.axvline(1.0, color="#333333", linestyle="--", linewidth=1.2, label="decision line")
        for yi, n, s, skip in zip(y, names, scores, skipped):
            r = checks[n]
            if skip:
                text = "skipped"
            else:
                p = r.get("p_value")
                text = f"stat {r['statistic']:.3g} / thr {r['threshold']:.3g}"
                if p is not None:
                    text += f", p {p:.2g}"
            ax.text(min(s, cap) + 0.05, yi, text, va="center", fontsize=7.5)
        ax.set_yticks(y)
        ax.set_yticklabels([n.replace("_", " ") for n in names], fontsize=9)
        ax.invert_yaxis()
        ax.set_xlim(0, cap * 1.6)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(f"score (>= 1: drift; statistic / threshold or log p / log alpha; capped at {cap:g})")
    fired = [n for n in names if checks[n]["drift"]]
    ax.set_title("checks: " + (f"DRIFT ({', '.join(fired)})" if fired else "no drift"),
                 fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.set_axisbelow(True)

    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)
