"""Photo features computed once: a frozen backbone's pooled features, cached by content.

A photo's features depend on exactly two things: the uint8 pixels the backbone sees and the
backbone's weights. The cache keys them by both (``photo_keys`` hashes the pixels,
``model_key`` the weights and the input shape), so a second ``make run``, ``marketsearch
evaluate`` or a drift retrain reads what an earlier run computed, a changed photo misses, and
a fine-tuned backbone (other weights) never sees another's features.

Where: ``image_model.feature_cache``, a local directory or an s3://bucket/prefix (on EKS the
data bucket, so that every stage's pod and every run reads what an earlier one computed;
``marketsearch.blobstore``). Layout under it: ``<model key>/part-<uuid>.npz``, each part holding
``keys`` (photo keys) and ``features`` (float32 [n, d]), and beside it ``part-<uuid>.keys``,
the part's photo keys one a line. A run writes one new part with its misses, then its key
file: the key file is the part's commit marker and the cache's index. A reader lists the
model key's folder and trusts an S3 part only where its key file is there (a writer stopped
between the two leaves a part nobody reads), learns where each photo is from the key files
alone (32 bytes a photo; no part is downloaded for it), and reads the features part by part,
one part open (on S3: one part downloaded to a scratch file) at a time. Each file is whole or
absent (locally written beside, then renamed; an S3 PUT is whole by itself), and each run's
part has a name of its own, so runs that share a cache never read a half-written part and
never overwrite one another. A local part is whole by its rename, so one without a key file
(from before the key files, or a writer stopped there) is read for its keys instead.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marketsearch import blobstore

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


KEYS = ".keys"  # a part's photo keys, one a line, written after the part: its commit marker


def _is_part(name: str) -> bool:
    return name.rsplit("/", 1)[-1].startswith("part-") and name.endswith(".npz")


class FeatureCache:
    """Features by photo content under ``root``: a local directory or an s3://bucket/prefix
    (``endpoint_url``: its S3 endpoint; None: AWS's). None: compute every time, store nothing.
    An s3:// root that cannot be used (no bucket, access denied) raises blobstore.StoreError."""

    def __init__(self, root: str | Path | None, endpoint_url: str | None = None):
        self.store = blobstore.open_store(root, endpoint_url) if root else None
        self.stats = CacheStats()
        self._indexes: dict[str, dict[str, tuple[str, int]]] = {}

    @classmethod
    def from_config(cls, cfg) -> "FeatureCache":
        """The cache at ``image_model.feature_cache`` (``{run_dir}`` filled in), or none."""
        image = cfg.image_model
        return cls(blobstore.location(cfg, image.feature_cache),
                   image.feature_cache_s3_endpoint_url)

    @contextmanager
    def _part(self, name: str):
        """A part's arrays (np.load of the file; on S3 of a scratch copy)."""
        with self.store.reading(name) as path, np.load(path, allow_pickle=False) as data:
            yield data

    def _index(self, model: str) -> dict[str, tuple[str, int]]:
        """Where each cached photo's features are: key -> (part, row), from the key files of
        the model key's parts. Read once per model key; the features are read when asked for."""
        if model in self._indexes:
            return self._indexes[model]
        names = set(self.store.list(f"{model}/"))
        index: dict[str, tuple[str, int]] = {}
        for part in sorted(filter(_is_part, names)):
            marker = part.removesuffix(".npz") + KEYS
            try:
                if marker in names:
                    keys = self.store.read_bytes(marker).decode().split()
                elif self.store.local:  # whole by its rename, without a key file (written
                    with self._part(part) as data:  # before them, or its writer stopped there)
                        keys = data["keys"].tolist()
                else:                   # its writer stopped before the key file: not trusted
                    continue
            except (OSError, ValueError, KeyError) as exc:
                log.warning("feature cache: skipping unreadable part %s (%s)", part, exc)
                continue
            index.update({key: (part, row) for row, key in enumerate(keys)})
        self._indexes[model] = index
        return index

    def _read(self, hits: dict[int, tuple[str, int]], out: np.ndarray) -> None:
        """Fill ``out[i]`` for each hit from its part, one part open at a time."""
        by_part: dict[str, list[tuple[int, int]]] = {}
        for i, (part, row) in hits.items():
            by_part.setdefault(part, []).append((i, row))
        for part, wanted in by_part.items():
            with self._part(part) as data:
                features = data["features"]
                for i, row in wanted:
                    out[i] = features[row]

    def _store(self, model: str, keys: list[str], features: np.ndarray) -> None:
        """One new part, then its key file (an S3 part is not read before that is there)."""
        name = f"{model}/part-{uuid.uuid4().hex}"
        with self.store.writing(f"{name}.npz") as path:
            np.savez(path, keys=np.asarray(keys, dtype=str), features=features.astype(np.float32))
        self.store.write_bytes(name + KEYS, "\n".join(keys).encode())
        index = self._indexes.get(model)
        if index is not None:
            index.update({key: (f"{name}.npz", row) for row, key in enumerate(keys)})

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
        mkey = model_key(model) if self.store is not None else None
        index = self._index(mkey) if mkey is not None else {}
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
            if mkey is not None:
                fresh = {keys[i]: i for i in miss}  # one row per distinct photo
                self._store(mkey, list(fresh), out[list(fresh.values())])
        log.info("%s: %d photos, %d from the cache, %d computed%s", desc, n, hits, len(miss),
                 "" if mkey is not None else " (no cache configured)")
        return out


def traced_features(model) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 photos -> ``model``'s features (inference mode), traced once over any batch size."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.uint8)

    @tf.function(input_signature=[spec])
    def forward(x):
        return model(tf.cast(x, model.inputs[0].dtype), training=False)

    return lambda batch: forward(batch).numpy()
