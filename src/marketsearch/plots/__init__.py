"""Figures for reports, MLflow and KFP: each function writes one PNG and returns its path.

Figures are drawn with matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``),
never through pyplot: no global figure state, no GUI backend, safe in components, servers
and threads, and nothing to close afterwards.

The package, one module per kind of figure:

    common.py    the shared helpers: a new Agg figure, saving it at ``DPI``, label wrapping
    training.py  ``confusion_matrix_png``, ``training_curves_png``
    data.py      ``price_distribution_png``, ``category_counts_png``
    uk_map.py    ``uk_map_png`` and its offline background of populated places
    drift.py     ``drift_png``, the figure of one drift run
"""
from .common import DPI
from .data import category_counts_png, price_distribution_png
from .drift import drift_png
from .training import confusion_matrix_png, training_curves_png
from .uk_map import UK_ASPECT, UK_LAT, UK_LON, uk_map_png
from .uk_map import _background_places  # noqa: F401  (tests/unit/test_plots.py reads it)

__all__ = [
    "DPI", "UK_ASPECT", "UK_LAT", "UK_LON", "category_counts_png", "confusion_matrix_png",
    "drift_png", "price_distribution_png", "training_curves_png", "uk_map_png",
]
