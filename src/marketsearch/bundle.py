"""The model bundle: everything needed to classify and search, in one directory.

    meta.json      labels, image size, text input kind, max_len, provenance
    image.keras    photo-only model           (uint8 [N,S,S,3] -> probs)
    text.keras     text-only model            (token ids or strings -> probs)
    fused.keras    the served model           (photo, text, presence flags -> probs, fused_embedding)
    vocab.json     token -> id (word2vec text model)
    price.keras    the price head (fused embedding, location, flags -> log-price quantiles) and
    price_baselines.json  the baselines trained beside it (marketsearch.pricing; optional)
    price_comparables/    the catalogue's priced listings indexed by text, which the head
                   reads (marketsearch.comparables; optional)
    index/         FAISS index of the catalogue's fused embeddings + id map + listing metadata
    thumbnails.parquet  product_id -> JPEG of the listing's first photo (search page; optional)
    seen_ids.json  ids of the listings the models learned from (train and val splits), so a later
                   evaluation can keep them out of the pairs this model is scored on
    reference/     the drift checks' reference (marketsearch.drift)
    build.json     build_index's figures: listings indexed, index type, recall@k
    checksums.json sha256 of every file above (marketsearch.checksums), written last

Training, evaluation, the index build and the server all go through ``Bundle`` so that a
listing is preprocessed and embedded the same way everywhere.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from marketsearch.records.base import Record

META = "meta.json"
THUMBNAILS_FILE = "thumbnails.parquet"
SEEN_FILE = "seen_ids.json"
# the model part train_fusion writes (a directory among them: copied whole)
MODEL_FILES = ("image.keras", "text.keras", "fused.keras", "vocab.json", META, "price.keras",
               "price_baselines.json", "price_comparables")
BUILD_FILE = "build.json"


@dataclass
class Predictions:
    image_probs: np.ndarray | None
    text_probs: np.ndarray | None
    fused_probs: np.ndarray
    fused_embedding: np.ndarray


class Bundle(Record):
    """A bundle directory (see the module docstring); build_index's record."""

    FILES = {"meta.json": "labels, image size, text input, provenance",
             "image.keras, text.keras, fused.keras, vocab.json": "the models",
             "price.keras, price_baselines.json": "the price head and its baselines",
             "price_comparables/": "the listings the price head compares a request with",
             "index/": "FAISS index, id map, listing metadata",
             "thumbnails.parquet": "a JPEG per listing", SEEN_FILE: "ids the models learned from",
             "reference/": "the drift reference", BUILD_FILE: "build_index's figures",
             "checksums.json": "sha256 of every other file, verified before loading"}

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / META
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root} is not a model bundle: {META} is missing")
        self.meta = json.loads(meta_path.read_text())
        self.labels: list[str] = self.meta["labels"]
        self.image_size: int = int(self.meta["image_size"])
        self.text_input: str = self.meta.get("text_input", "tokens")
        self.max_len: int = int(self.meta.get("max_len", 128))

    # --- lazily loaded parts -------------------------------------------------------------
    def _load(self, name: str):
        import keras

        import marketsearch.models  # noqa: F401  registers the custom layers

        return keras.models.load_model(self.root / name, compile=False)

    @cached_property
    def image_model(self):
        return self._load("image.keras")

    @cached_property
    def text_model(self):
        return self._load("text.keras")

    @cached_property
    def fused_model(self):
        model = self._load("fused.keras")
        for name, output in zip(model.output_names, model.outputs):
            if name.endswith("probs") and output.shape[-1] != len(self.labels):
                raise ValueError(f"bundle {self.root}: fused.keras predicts {output.shape[-1]} "
                                 f"classes ({name}) but {META} names {len(self.labels)} labels; "
                                 "refusing it")
        return model

    @cached_property
    def price_model(self):
        """The price head (``marketsearch.pricing``), or None for a bundle without one."""
        from marketsearch.pricing import PRICE_FILE

        if not (self.root / PRICE_FILE).exists():
            return None
        import marketsearch.price  # noqa: F401  registers the head's layers

        return self._load(PRICE_FILE)

    @cached_property
    def vocab(self) -> dict[str, int]:
        """token -> id for a text model that takes token ids; {} for one that takes strings.
        A token model without its vocabulary is refused: every word would read as unknown."""
        path = self.root / "vocab.json"
        if path.exists():
            return json.loads(path.read_text())
        if self.text_input == "tokens":
            raise FileNotFoundError(f"bundle {self.root}: its text model takes token ids but "
                                    "vocab.json is missing")
        return {}

    @cached_property
    def index(self):
        from marketsearch.index import SearchIndex

        return SearchIndex.load(self.root / "index")

    @cached_property
    def thumbnails(self) -> dict:
        """product id -> JPEG bytes of its first photo ({} for a bundle without thumbnails)."""
        path = self.root / THUMBNAILS_FILE
        if not path.exists():
            return {}
        import pandas as pd

        table = pd.read_parquet(path)
        return dict(zip(table["product_id"].tolist(), table["jpeg"].tolist()))

    @cached_property
    def seen_ids(self) -> frozenset[str] | None:
        """Ids of the listings this bundle's models learned from; None for a bundle made
        before they were recorded."""
        path = self.root / SEEN_FILE
        return frozenset(json.loads(path.read_text())) if path.exists() else None

    @property
    def has_index(self) -> bool:
        return (self.root / "index").exists()

    # --- preprocessing -----------------------------------------------------------------------
    def text_batch(self, texts: list[str]) -> np.ndarray:
        from marketsearch.models.text import prepare_text_input

        return prepare_text_input([t or "" for t in texts], self.text_input, self.vocab, self.max_len)

    def image_batch(self, pixels: np.ndarray | None, n: int) -> np.ndarray:
        """uint8 [n,S,S,3] at this bundle's size (resized if they were prepared at another)."""
        if pixels is None:
            return np.zeros((n, self.image_size, self.image_size, 3), dtype=np.uint8)
        if pixels.shape[1] != self.image_size:
            from PIL import Image

            pixels = np.stack([np.asarray(Image.fromarray(p).resize(
                (self.image_size, self.image_size), Image.Resampling.BILINEAR)) for p in pixels])
        return pixels.astype(np.uint8, copy=False)

    # --- inference ---------------------------------------------------------------------------
    @cached_property
    def parts(self):
        """(image_features, from_features) nested models of the fused model, or None for a
        bundle made before the fused model was split that way (it runs whole)."""
        from marketsearch.models.fusion import FROM_FEATURES
        from marketsearch.models.image import FEATURES_LAYER

        names = {layer.name for layer in self.fused_model.layers}
        if not {FEATURES_LAYER, FROM_FEATURES} <= names:
            return None
        return self.fused_model.get_layer(FEATURES_LAYER), self.fused_model.get_layer(FROM_FEATURES)

    @cached_property
    def serving_features(self):
        """``parts[0]`` as requests run it: an EfficientNet-Lite0 backbone with its batch norms
        folded into its convs (``models.image.inference_features``; the same features to float
        rounding, ~3 ms less a photo on a CPU). Batch work through ``feature_cache`` keeps
        ``parts[0]`` itself, the model whose weights key the cache."""
        from marketsearch.models.image import inference_features

        return inference_features(self.parts[0])

    feature_cache = None  # a FeatureCache: batch work reuses photo features across runs
    # What runs photos that do not go through feature_cache: "tensorflow" (the traced Keras
    # model) or "litert" (``lite_features``; a server's setting, serving.photo_runtime), with
    # photo_threads threads a call (0: the CPUs the process may use).
    photo_runtime = "tensorflow"
    photo_threads = 0

    @cached_property
    def lite_features(self):
        """``serving_features`` converted to TensorFlow Lite and run by LiteRT
        (``models.lite_runtime``): the same features, about a third of the time a photo."""
        from marketsearch.models.lite_runtime import LiteModel

        return LiteModel(self.serving_features, self.photo_threads)

    def photo_features(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Pooled backbone features of uint8 photos, read from ``feature_cache`` where a photo
        was seen before (batch work: index build, evaluation), computed otherwise."""
        from marketsearch.feature_cache import traced_features

        cached = self.feature_cache is not None
        model = self.parts[0] if cached else self.serving_features
        pixels = self.image_batch(pixels, len(pixels))
        if not cached and self.photo_runtime == "litert":
            compute = self.lite_features
        else:
            key = "_fn_features" if cached else "_fn_serving_features"
            if key not in self.__dict__:
                self.__dict__[key] = traced_features(model)
            compute = self.__dict__[key]
        if cached:
            return self.feature_cache.features(model, pixels, compute=compute,
                                               batch_size=batch_size)
        if not len(pixels):
            return np.zeros((0, int(model.output.shape[-1])), np.float32)
        return np.concatenate([compute(pixels[i:i + batch_size])
                               for i in range(0, len(pixels), batch_size)])

    def _traced(self, key: str, model, spec):
        if key not in self.__dict__:
            import tensorflow as tf

            @tf.function(input_signature=[spec])
            def forward(x):
                return model(x, training=False)

            self.__dict__[key] = forward
        return self.__dict__[key]

    def _compiled(self, per_modality: bool):
        """A bundle made before the fused model was split (``parts`` is None): the fused model
        (with ``per_modality`` also the photo and text models beside it) traced once as a
        TensorFlow function over a variable batch size. Calling a Keras model eagerly or
        through ``predict`` costs ~40 ms of overhead per call; a traced function a few ms."""
        import tensorflow as tf

        fused = self.fused_model
        spec = {t.name: tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in fused.inputs}
        if not per_modality:
            return self._traced("_fn_fused", fused, spec)
        if "_fn_all" not in self.__dict__:
            image, text = self.image_model, self.text_model

            @tf.function(input_signature=[spec])
            def forward(x):
                out = dict(fused(x, training=False))
                out["image_probs"] = image(x["image"], training=False)
                out["text_probs"] = text(x["text"], training=False)
                return out

            self.__dict__["_fn_all"] = forward
        return self.__dict__["_fn_all"]

    def _photo_to_fused(self):
        """Both parts traced as one function (uint8 photos in, as ``_compiled``'s): for items
        that all have a photo and no ``feature_cache`` (a server's requests), one call instead
        of the backbone's and then ``_from_features``' (~1.3 ms less a request, same output)."""
        if "_fn_photo_to_fused" not in self.__dict__:
            import tensorflow as tf

            from marketsearch.models.image import FEATURES_LAYER

            backbone, model = self.serving_features, self.parts[1]
            spec = {t.name: tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in model.inputs
                    if t.name != FEATURES_LAYER}
            spec["image"] = tf.TensorSpec((None, *backbone.inputs[0].shape[1:]), tf.uint8)

            @tf.function(input_signature=[spec])
            def forward(x):
                x = dict(x)
                image = tf.cast(x.pop("image"), backbone.inputs[0].dtype)
                x[FEATURES_LAYER] = backbone(image, training=False)
                return model(x, training=False)

            self.__dict__["_fn_photo_to_fused"] = forward
        return self.__dict__["_fn_photo_to_fused"]

    def _from_features(self):
        import tensorflow as tf

        model = self.parts[1]
        spec = {t.name: tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in model.inputs}
        return self._traced("_fn_from_features", model, spec)

    def predict(self, texts: list[str] | None, pixels: np.ndarray | None,
                has_text: np.ndarray | None = None, has_image: np.ndarray | None = None,
                per_modality: bool = True, batch_size: int = 256) -> Predictions:
        """Classify and embed N items. ``texts`` (listing_text strings) or ``pixels`` may be None;
        the presence flags mark per item which modality it has (default: all that are given).

        Training-time evaluation, the index build and the server all call this, so an item is
        preprocessed and run through the same traced function wherever it is seen. The
        backbone runs only for items that have a photo, through ``feature_cache`` when it is
        set (batch work: index build, evaluation); without it, through ``lite_features`` when
        ``photo_runtime`` is "litert" (a server), or, where the items all have a photo, through
        both parts in one traced call (``_photo_to_fused``)."""
        n = len(texts) if texts is not None else len(pixels)
        has_text = np.ones(n, np.float32) if has_text is None else np.asarray(has_text, np.float32)
        has_image = np.ones(n, np.float32) if has_image is None else np.asarray(has_image, np.float32)
        if texts is None:
            has_text = np.zeros(n, np.float32)
        if pixels is None:
            has_image = np.zeros(n, np.float32)
        text_x = self.text_batch(texts if texts is not None else [""] * n)
        with_photo = np.flatnonzero(has_image > 0)
        if (self.parts is not None and self.feature_cache is None and 0 < len(with_photo) == n
                and self.photo_runtime == "tensorflow"):
            forward = self._photo_to_fused()
            inputs = {"image": self.image_batch(pixels, n), "text": text_x}
        elif self.parts is not None:
            features = np.zeros((n, int(self.parts[0].output.shape[-1])), np.float32)
            if len(with_photo):
                features[with_photo] = self.photo_features(pixels[with_photo], batch_size)
            forward = self._from_features()
            inputs = {"image_features": features, "text": text_x}
        else:
            forward = self._compiled(per_modality)
            inputs = {"image": self.image_batch(pixels, n), "text": text_x}
        chunks: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, batch_size):
            end = start + batch_size
            batch = {k: v[start:end] for k, v in inputs.items()}
            out = forward({**batch, "image_present": has_image[start:end, None],
                           "text_present": has_text[start:end, None]})
            for name, value in out.items():
                chunks.setdefault(name, []).append(value.numpy())
        out = {name: np.concatenate(parts) for name, parts in chunks.items()}
        return Predictions(out.get("image_probs") if pixels is not None else None,
                           out.get("text_probs") if texts is not None else None,
                           out["probs"], out["fused_embedding"])

    @cached_property
    def price_baselines(self) -> dict | None:
        """The price baselines (``marketsearch.pricing.load_baselines``); the head reads the
        price its text ridge (``TEXT_PRICE``) gives a request's text."""
        from marketsearch.pricing import load_baselines

        return load_baselines(self.root)

    @cached_property
    def comparables(self):
        """The listings the price head compares a text with (``marketsearch.comparables``);
        None for a bundle whose head reads none."""
        from marketsearch.comparables import DIRECTORY, Comparables

        path = self.root / DIRECTORY
        return Comparables.load(path) if path.exists() else None

    def price_text(self, texts, exclude=None) -> dict | None:
        """The text's share of the price head's input for N texts ("" for none): {"ridge": the
        text ridge's log-price, "comparables": the ``Comparables.features`` of each text (None
        for a head that reads none)}; None for a bundle without a price head. It needs no
        model output, so a server computes it while the models run (``SearchEngine.answer``).
        ``exclude``: as for ``price``."""
        from marketsearch.pricing import TEXT_PRICE, ridge_log_price

        if self.price_model is None:
            return None
        texts = [t or "" for t in texts]
        return {"ridge": ridge_log_price(self.price_baselines[TEXT_PRICE], texts),
                "comparables": None if self.comparables is None else
                self.comparables.features(texts, exclude)}

    def price(self, fused_embedding: np.ndarray, texts, has_text, has_image, lat=None,
              lon=None, exclude=None, text_part: dict | None = None) -> np.ndarray | None:
        """Suggested prices of N items from their fused embeddings (``predict``), texts (""
        for none), presence flags and coordinates (None or NaN: unknown): float32 [N, 3] of
        (estimate, low, high) in GBP, the interval the calibrated 80% one; None for a bundle
        without a price head. ``exclude``: per item, a catalogue listing id that is not its
        comparable (pricing a catalogue listing: itself). ``text_part``: ``price_text`` of the
        same texts, when the caller computed it already."""
        import tensorflow as tf

        from marketsearch.price import from_log_quantiles
        from marketsearch.pricing import features

        head = self.price_model
        if head is None:
            return None
        n = len(fused_embedding)
        texts = [t or "" for t in texts]
        lat = np.full(n, np.nan) if lat is None else np.asarray(lat, np.float64)
        lon = np.full(n, np.nan) if lon is None else np.asarray(lon, np.float64)
        part = self.price_text(texts, exclude) if text_part is None else text_part
        x = features(fused_embedding, texts, lat, lon, has_text, has_image, part["ridge"],
                     part["comparables"])
        forward = self._traced("_fn_price", head, tf.TensorSpec((None, x.shape[1]), tf.float32))
        return np.stack(from_log_quantiles(head, forward(x).numpy()), axis=1).astype(np.float32)

    # --- the record ----------------------------------------------------------------------------
    @classmethod
    def load(cls, directory):
        return cls(directory)

    def save(self, directory):
        if Path(directory).resolve() != self.root.resolve():
            Bundle.copy(self.root, directory)

    def verify(self) -> str:
        """Check every file against ``checksums.json`` (marketsearch.checksums) before anything
        is loaded; returns the manifest's digest. Raises IntegrityError naming the file."""
        from marketsearch import checksums

        return checksums.verify(self.root)

    def metrics(self):
        path = self.root / BUILD_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def headline(self):
        m = self.metrics()
        recall = next((f"{k.replace('_', ' ')} {v:.3f}" for k, v in m.items()
                       if k.startswith("recall_at_")), "")
        return f"{m.get('n_listings')} listings in a {m.get('index_type')} index, {recall}"

    # --- writing -----------------------------------------------------------------------------
    @staticmethod
    def copy(src: str | Path, dst: str | Path) -> Path:
        """Copy a bundle directory atomically (write beside, then rename over ``dst``)."""
        src, dst = Path(src), Path(dst)
        tmp = dst.with_name(f".{dst.name}.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(src, tmp)
        old = dst.with_name(f".{dst.name}.old")
        if dst.exists():
            if old.exists():
                shutil.rmtree(old)
            dst.rename(old)
        tmp.rename(dst)
        if old.exists():
            shutil.rmtree(old)
        return dst


def pair_arrays(products, images, pixels):
    """Per photo–listing pair: (listing texts, photo pixels, label names, product ids)."""
    by_id = products.set_index("id")
    texts = by_id.loc[images["product_id"], "text"].tolist()
    labels = by_id.loc[images["product_id"], "category"].tolist()
    return texts, pixels[images["row"].to_numpy()], labels, images["product_id"].tolist()
