"""The drift reference: a summary of listings (``Reference``) and its two files in a bundle's
``reference/`` directory (see the package docstring)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE_DIR = "reference"
STATS_FILE = "reference.json"
EMBEDDINGS_FILE = "embeddings.npz"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- the summary
@dataclass
class Reference:
    """A summary of a set of listings (the training split, or a new batch).

    ``price_sample``, ``text_lengths`` and ``photo_brightness`` (per-photo mean luminance,
    0-255, see ``mean_luminance``) hold at most ``DriftConfig.sample_size`` values,
    ``photo_embeddings`` and ``text_embeddings`` at most ``DriftConfig.embedding_rows`` rows
    (one photo, one text per listing), each a seeded random sample; ``category_counts`` and
    ``oov_rate`` cover every listing. An empty ``photo_brightness`` with photos means a
    reference saved before the photo_brightness check (its check then skips)."""
    n_listings: int
    n_photos: int
    category_counts: dict[str, int]
    price_sample: np.ndarray
    text_lengths: np.ndarray
    oov_rate: float | None
    photo_embeddings: np.ndarray
    text_embeddings: np.ndarray
    photo_brightness: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    meta: dict[str, Any] = field(default_factory=dict)

    # --- reading and writing ---------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``reference.json`` and ``embeddings.npz`` into ``directory`` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stats = {
            "format_version": FORMAT_VERSION,
            "n_listings": int(self.n_listings), "n_photos": int(self.n_photos),
            "category_counts": {str(k): int(v) for k, v in self.category_counts.items()},
            "price_sample": [float(v) for v in self.price_sample],
            "price_quantiles": _quantiles(self.price_sample),
            "text_lengths": [int(v) for v in self.text_lengths],
            "text_length_quantiles": _quantiles(self.text_lengths),
            "oov_rate": None if self.oov_rate is None else float(self.oov_rate),
            "photo_brightness_quantiles": _quantiles(self.photo_brightness),
            "meta": self.meta,
        }
        (directory / STATS_FILE).write_text(json.dumps(stats, indent=1))
        np.savez_compressed(directory / EMBEDDINGS_FILE,
                            photo=self.photo_embeddings.astype(np.float32),
                            text=self.text_embeddings.astype(np.float32),
                            photo_brightness=np.asarray(self.photo_brightness, np.float32))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Reference":
        """Read a reference saved by ``save``; ``directory`` may also be a bundle directory
        (its ``reference/`` subdirectory is read)."""
        directory = Path(directory)
        if not (directory / STATS_FILE).exists() and (directory / REFERENCE_DIR / STATS_FILE).exists():
            directory = directory / REFERENCE_DIR
        path = directory / STATS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{directory} holds no drift reference: {STATS_FILE} is "
                                    f"missing (bundles trained before the drift checks have "
                                    f"none; retrain or run build_reference)")
        stats = json.loads(path.read_text())
        version = stats.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: reference format_version {version!r}, this code reads "
                             f"{FORMAT_VERSION}")
        with np.load(directory / EMBEDDINGS_FILE) as npz:
            photo, text = npz["photo"], npz["text"]
            # absent from references saved before the photo_brightness check (same format:
            # the check skips on them, saying so)
            brightness = (npz["photo_brightness"] if "photo_brightness" in npz.files
                          else np.zeros(0, np.float32))
        return cls(n_listings=stats["n_listings"], n_photos=stats["n_photos"],
                   category_counts=dict(stats["category_counts"]),
                   price_sample=np.asarray(stats["price_sample"], dtype=float),
                   text_lengths=np.asarray(stats["text_lengths"], dtype=np.int64),
                   oov_rate=stats["oov_rate"], photo_embeddings=photo,
                   text_embeddings=text, photo_brightness=brightness,
                   meta=stats.get("meta", {}))


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    """Readable quantiles for reference.json (the checks use the samples themselves)."""
    if len(values) == 0:
        return None
    qs = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
    return {f"q{int(q * 100):02d}": float(v) for q, v in zip(qs, np.quantile(values, qs))}
