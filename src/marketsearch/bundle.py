"""The model bundle: everything needed to classify and search, in one directory.

    meta.json      labels, image size, text input kind, max_len, provenance
    image.keras    photo-only model           (uint8 [N,S,S,3] -> probs)
    text.keras     text-only model            (token ids or strings -> probs)
    fused.keras    the served model           (photo, text, presence flags -> probs, fused_embedding)
    vocab.json     token -> id (word2vec text model)
    index/         FAISS index of the catalogue's fused embeddings + id map + listing metadata

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

META = "meta.json"
MODEL_FILES = ("image.keras", "text.keras", "fused.keras", "vocab.json", META)


@dataclass
class Predictions:
    image_probs: np.ndarray | None
    text_probs: np.ndarray | None
    fused_probs: np.ndarray
    fused_embedding: np.ndarray


class Bundle:
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
        return self._load("fused.keras")

    @cached_property
    def vocab(self) -> dict[str, int]:
        path = self.root / "vocab.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @cached_property
    def index(self):
        from marketsearch.index import SearchIndex

        return SearchIndex.load(self.root / "index")

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
    def predict(self, texts: list[str] | None, pixels: np.ndarray | None,
                has_text: np.ndarray | None = None, has_image: np.ndarray | None = None,
                per_modality: bool = True, batch_size: int = 256) -> Predictions:
        """Classify and embed N items. ``texts`` (listing_text strings) or ``pixels`` may be None;
        the presence flags mark per item which modality it has (default: all that are given)."""
        n = len(texts) if texts is not None else len(pixels)
        has_text = np.ones(n, np.float32) if has_text is None else np.asarray(has_text, np.float32)
        has_image = np.ones(n, np.float32) if has_image is None else np.asarray(has_image, np.float32)
        if texts is None:
            has_text = np.zeros(n, np.float32)
        if pixels is None:
            has_image = np.zeros(n, np.float32)
        text_x = self.text_batch(texts if texts is not None else [""] * n)
        image_x = self.image_batch(pixels, n)
        out = self.fused_model.predict(
            {"image": image_x, "text": text_x, "image_present": has_image[:, None],
             "text_present": has_text[:, None]}, batch_size=batch_size, verbose=0)
        image_probs = text_probs = None
        if per_modality and pixels is not None:
            image_probs = self.image_model.predict(image_x, batch_size=batch_size, verbose=0)
        if per_modality and texts is not None:
            text_probs = self.text_model.predict(text_x, batch_size=batch_size, verbose=0)
        return Predictions(image_probs, text_probs, np.asarray(out["probs"]),
                           np.asarray(out["fused_embedding"]))

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
