"""Photo features computed once: a frozen backbone's pooled features, cached by content.

A photo's features depend on exactly two things: the uint8 pixels the backbone sees and the
backbone's weights. The cache keys them by both (``photo_keys`` hashes the pixels,
``model_key`` the weights and the input shape), so a second ``make run``, ``marketsearch
evaluate`` or a drift retrain reads what an earlier run computed, a changed photo misses, and
a fine-tuned backbone (other weights) never sees another's features.

Layout: ``<root>/<model key>/part-<uuid>.npz``, each part holding ``keys`` (photo keys) and
``features`` (float32 [n, d]). A run writes one new part with its misses, atomically (written
beside, then renamed), so runs that share a cache never read a half-written part.
"""
from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def photo_keys(pixels: np.ndarray) -> list[str]:
    """One content hash per photo of a uint8 [N, S, S, 3] array (its shape included)."""
    pixels = np.ascontiguousarray(pixels)
    shape = repr(pixels.shape[1:]).encode()
    return [hashlib.blake2b(shape + p.tobytes(), digest_size=16).hexdigest() for p in pixels]


def _structure(model) -> str:
    """What a model computes, apart from its weights: each layer's class and settings (a
    resize's size, a scaling's mode, a convolution's stride), without names or trainable
    flags, so a model built in one process and loaded from a file in another agree."""
    import json

    layers = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if hasattr(layer, "layers"):  # a nested model: its layers are listed themselves
            continue
        settings = {k: v for k, v in layer.get_config().items()
                    if k not in ("name", "trainable", "dtype") and
                    isinstance(v, (int, float, str, bool, list, tuple, type(None)))}
        layers.append([type(layer).__name__, settings])
    return json.dumps(layers, sort_keys=True, default=str)


def model_key(model) -> str:
    """A hash of a Keras model's structure (``_structure``) and weights: what its features
    depend on."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(_structure(model).encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight.numpy())).tobytes())
    return f"{model.name}-{digest.hexdigest()}"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"feature_cache_hits": self.hits, "feature_cache_misses": self.misses}


class FeatureCache:
    """Features by photo content under ``root`` (None: compute every time, store nothing)."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None
        self.stats = CacheStats()
        self._indexes: dict[Path, dict[str, tuple[Path, int]]] = {}

    @classmethod
    def from_config(cls, cfg) -> "FeatureCache":
        """The cache at ``image_model.feature_cache`` (``{run_dir}`` filled in), or none."""
        where = cfg.image_model.feature_cache
        return cls(cfg.path(where) if where else None)

    def _index(self, directory: Path) -> dict[str, tuple[Path, int]]:
        """Where each cached photo's features are: key -> (part file, row). Read once per
        directory (the keys only, 32 bytes a photo); the features are read when asked for."""
        if directory in self._indexes:
            return self._indexes[directory]
        index: dict[str, tuple[Path, int]] = {}
        for part in sorted(directory.glob("part-*.npz")) if directory.exists() else []:
            try:
                with np.load(part, allow_pickle=False) as data:
                    for row, key in enumerate(data["keys"].tolist()):
                        index[key] = (part, row)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("feature cache: skipping unreadable part %s (%s)", part, exc)
        self._indexes[directory] = index
        return index

    def _read(self, hits: dict[int, tuple[Path, int]], out: np.ndarray) -> None:
        """Fill ``out[i]`` for each hit from its part, one part file open at a time."""
        by_part: dict[Path, list[tuple[int, int]]] = {}
        for i, (part, row) in hits.items():
            by_part.setdefault(part, []).append((i, row))
        for part, wanted in by_part.items():
            with np.load(part, allow_pickle=False) as data:
                features = data["features"]
                for i, row in wanted:
                    out[i] = features[row]

    def _store(self, directory: Path, keys: list[str], features: np.ndarray) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}"
        tmp = directory / f".{name}.tmp.npz"
        np.savez(tmp, keys=np.asarray(keys, dtype=str), features=features.astype(np.float32))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.rename(directory / f"{name}.npz")
        index = self._indexes.get(directory)
        if index is not None:
            index.update({key: (directory / f"{name}.npz", row) for row, key in enumerate(keys)})

    def features(self, model, pixels: np.ndarray,
                 compute: Callable[[np.ndarray], np.ndarray] | None = None,
                 batch_size: int = 128, desc: str = "photo features") -> np.ndarray:
        """float32 [N, d] features of ``pixels`` by ``model`` (a Keras model uint8 -> [N, d]),
        reading the cached ones and computing (and caching) the rest in batches.

        ``compute`` overrides how a batch is computed (default: ``model`` called in inference
        mode through one traced function)."""
        from tqdm import tqdm

        n = len(pixels)
        dim = int(model.outputs[0].shape[-1])
        out = np.zeros((n, dim), np.float32)
        if n == 0:
            return out
        keys = photo_keys(pixels)
        directory = self.root / model_key(model) if self.root else None
        index = self._index(directory) if directory is not None else {}
        miss = [i for i, k in enumerate(keys) if k not in index]
        self._read({i: index[k] for i, k in enumerate(keys) if k in index}, out)
        hits = n - len(miss)
        self.stats.hits += hits
        self.stats.misses += len(miss)
        if miss:
            compute = compute or traced_features(model)
            bar = tqdm(total=len(miss), desc=desc, unit="photo", mininterval=2)
            for start in range(0, len(miss), batch_size):
                rows = miss[start:start + batch_size]
                out[rows] = compute(pixels[rows])
                bar.update(len(rows))
            bar.close()
            if directory is not None:
                fresh = {keys[i]: i for i in miss}  # one row per distinct photo
                self._store(directory, list(fresh), out[list(fresh.values())])
        log.info("%s: %d photos, %d from the cache, %d computed%s", desc, n, hits, len(miss),
                 "" if directory is not None else " (no cache configured)")
        return out


def traced_features(model) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 photos -> ``model``'s features (inference mode), traced once over any batch size."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.uint8)

    @tf.function(input_signature=[spec])
    def forward(x):
        return model(tf.cast(x, model.inputs[0].dtype), training=False)

    return lambda batch: forward(batch).numpy()
