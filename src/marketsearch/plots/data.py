"""Figures of the data: the price distribution and the listings per category."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.ticker import FuncFormatter

from .common import _new_figure, _save, _wrap


# --------------------------------------------------------------------------- data overview
def price_distribution_png(prices, path: str | Path,
                           title: str = "Listing prices") -> Path:
    """Histogram of prices on a log-scale x axis (log-spaced bins). Prices that are missing
    or not positive cannot sit on a log axis: they are counted in the subtitle."""
    values = np.asarray(prices, dtype=float)
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    left_out = len(values) - len(positive)

    fig = _new_figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    if len(positive):
        lo, hi = positive.min(), positive.max()
        if hi <= lo:
            lo, hi = lo / 1.5, hi * 1.5
        bins = np.logspace(np.log10(lo), np.log10(hi), 40)
        ax.hist(positive, bins=bins, color="#4c72b0", edgecolor="white", linewidth=0.5)
        ax.set_xscale("log")
        median = float(np.median(positive))
        ax.axvline(median, color="#c44e52", linestyle="--", linewidth=1.5,
                   label=f"median £{median:,.2f}")
        for q, style in ((0.1, ":"), (0.9, ":")):
            v = float(np.quantile(positive, q))
            ax.axvline(v, color="#555555", linestyle=style, linewidth=1.0,
                       label=f"{int(q * 100)}th percentile £{v:,.2f}")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"£{v:,.0f}" if v >= 1
                                                   else f"£{v:g}"))
        ax.legend(fontsize=9)
    else:
        ax.text(0.5, 0.5, "no positive prices", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("price (£, log scale)")
    ax.set_ylabel("listings")
    ax.grid(alpha=0.3, which="major")
    subtitle = f"{len(positive):,} listings"
    if left_out:
        subtitle += f"; {left_out:,} without a positive price not shown"
    ax.set_title(f"{title}\n{subtitle}", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def category_counts_png(categories: Sequence[str], path: str | Path,
                        title: str = "Listings per category") -> Path:
    """Horizontal bars of listings per category, largest at the top, counts and shares
    written at the bar ends."""
    counts = Counter("(missing)" if c is None or (isinstance(c, float) and math.isnan(c))
                     else str(c) for c in categories)
    if not counts:
        raise ValueError("no categories to count")
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    names = [_wrap(name, 34) for name, _ in items]
    values = np.array([v for _, v in items])
    total = values.sum()

    fig = _new_figure(9.0, max(3.0, 0.42 * len(items) + 1.4))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(items))
    colours = colormaps["tab20"](np.arange(len(items)) % 20)
    ax.barh(y, values, color=colours, edgecolor="none")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=9)
    ax.invert_yaxis()
    for yi, v in zip(y, values):
        ax.text(v, yi, f"  {v:,} ({v / total:.1%})", va="center", fontsize=8.5)
    ax.set_xlim(0, values.max() * 1.22)
    ax.set_xlabel("listings")
    ax.grid(alpha=0.3, axis="x")
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{title}\n{total:,} listings, {len(items)} categories", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
