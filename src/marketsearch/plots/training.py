"""Figures of a training run: the confusion matrix and the training curves."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .common import _new_figure, _save, _wrap


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
