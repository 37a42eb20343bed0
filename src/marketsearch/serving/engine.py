"""The search engine: a bundle's models and index answering validated queries.

One object does the work for the HTTP server, the ``marketsearch search`` command and the
benchmarks, so all three answer a query the same way:

1. the queries' text and photos (already preprocessed by ``contract``) go through
   ``Bundle.predict``, the function the index build used, giving the fused, text and photo
   class probabilities and the fused embedding (a photo's backbone run by LiteRT or TensorFlow,
   ``serving.photo_runtime``: the same features to float rounding);
2. the category and scores come from the model of the query's modality: fused when it has
   text and a photo, the text model for text only, the photo model for a photo only;
3. neighbours come from the FAISS index by the fused embedding, re-ranked by distance when
   the query has a location (``SearchIndex.search_near``)::

       score = similarity - distance_weight * min(distance_km / distance_radius_km, 1)

4. the suggested price comes from the bundle's price head (``Bundle.price``) on the same
   fused embedding, the text, the presence flags and the query's location (bundles made
   before the price head answer without a price).
"""
from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from marketsearch.bundle import Bundle
from marketsearch.config import ServingConfig
from marketsearch.serving.contract import Query, parse_instances

log = logging.getLogger(__name__)

# Metadata columns a neighbour carries besides the contract's product_id/score/distance_km.
NEIGHBOR_FIELDS = ("title", "price", "category", "location")
CURRENCY = "GBP"


@dataclass
class Answer:
    category: str
    scores: dict[str, float]
    modality: str
    neighbors: list[dict]
    embedding: np.ndarray = field(repr=False)
    return_embedding: bool = False
    price: np.ndarray | None = None     # (estimate, low, high) in GBP

    def to_v1(self) -> dict:
        out = {"category": self.category, "scores": self.scores, "modality": self.modality,
               "neighbors": self.neighbors}
        if self.price is not None:
            estimate, low, high = (round(float(v), 2) for v in self.price)
            out["price"] = {"estimate": estimate, "low": low, "high": high, "currency": CURRENCY}
        if self.return_embedding:
            out["embedding"] = [float(v) for v in self.embedding]
        return out


def resolve_bundle_dir(path: str | Path) -> Path:
    """A bundle directory, as given or as KServe mounts a storageUri (``/mnt/models``, which
    holds either the bundle itself or one directory that does). A served symlink
    (marketsearch.publish) is resolved, so a server keeps reading the bundle it loaded even
    after a deploy swaps the link."""
    path = Path(path).resolve()
    if (path / "meta.json").exists():
        return path
    if path.is_dir():
        inner = [p for p in path.iterdir() if (p / "meta.json").exists()]
        if len(inner) == 1:
            return inner[0]
    raise FileNotFoundError(f"no model bundle at {path}: it has no meta.json (run `make run` "
                            "to train and deploy one, or pass --model BUNDLE)")


class SearchEngine:
    def __init__(self, bundle: Bundle, cfg: ServingConfig | None = None, gazetteer=None):
        if not bundle.has_index:
            raise FileNotFoundError(f"bundle {bundle.root} has no index/: it was not built by "
                                    "build_index")
        self.bundle = bundle
        self.cfg = cfg or ServingConfig()
        bundle.photo_runtime, bundle.photo_threads = self.cfg.photo_runtime, self.cfg.photo_threads
        if gazetteer is None:
            from marketsearch.geo import get_gazetteer

            gazetteer = get_gazetteer()
        self.gazetteer = gazetteer
        self.index = bundle.index
        self.labels = bundle.labels
        # the price head's text features, computed while the models run on the same request
        self._text_pool = ThreadPoolExecutor(max(1, self.cfg.inference_threads),
                                             thread_name_prefix="price-text")
        meta = self.index.metadata
        self._meta = {col: meta[col].tolist() for col in NEIGHBOR_FIELDS if col in meta.columns}

    @classmethod
    def load(cls, path: str | Path, cfg: ServingConfig | None = None) -> "SearchEngine":
        """The bundle at ``path``, verified against its checksums before anything is loaded."""
        bundle = Bundle(resolve_bundle_dir(path))
        bundle.verify()
        return cls(bundle, cfg)

    def warmup(self) -> None:
        """Trace the model function and touch every part once, so the first request is fast."""
        blank = np.full((self.bundle.image_size, self.bundle.image_size, 3), 255, np.uint8)
        queries = [Query("warm up", blank, 1), Query("warm up", None, 1), Query(None, blank, 1)]
        self.answer(queries)                 # a mixed batch: the backbone, then the rest
        for query in queries:                # one request: with a photo, both in one call
            self.answer([query])

    # --- requests ------------------------------------------------------------------------
    def geocode(self, location: str):
        return self.gazetteer.lookup(location)

    def parse(self, instances, v2: bool = False) -> list[Query]:
        return parse_instances(instances, self.cfg, self.bundle.image_size, self.geocode, v2=v2)

    def answer_instances(self, instances, v2: bool = False) -> list[Answer]:
        return self.answer(self.parse(instances, v2=v2))

    # --- the work ------------------------------------------------------------------------
    def answer(self, queries: list[Query]) -> list[Answer]:
        if not queries:
            return []
        size = self.bundle.image_size
        texts = [q.text or "" for q in queries]
        pixels = np.stack([q.pixels if q.pixels is not None else np.zeros((size, size, 3), np.uint8)
                           for q in queries])
        has_text = np.array([q.text is not None for q in queries], np.float32)
        has_image = np.array([q.pixels is not None for q in queries], np.float32)
        # the text's share of the price (a ridge, a comparables search: Python and FAISS)
        # runs beside the models (TensorFlow, which releases the GIL)
        text_part = self._text_pool.submit(self.bundle.price_text, texts)
        pred = self.bundle.predict(texts, pixels, has_text, has_image, per_modality=True)
        prices = self.bundle.price(pred.fused_embedding, texts, has_text, has_image,
                                   [np.nan if q.lat is None else q.lat for q in queries],
                                   [np.nan if q.lon is None else q.lon for q in queries],
                                   text_part=text_part.result())
        probs_of = {"fused": pred.fused_probs, "text": pred.text_probs, "image": pred.image_probs}
        answers = []
        for i, q in enumerate(queries):
            probs = probs_of[q.modality][i]
            answers.append(Answer(
                category=self.labels[int(np.argmax(probs))],
                scores={label: float(p) for label, p in zip(self.labels, probs)},
                modality=q.modality,
                neighbors=self.neighbors(pred.fused_embedding[i], q.k, q.lat, q.lon),
                embedding=pred.fused_embedding[i],
                return_embedding=q.return_embedding,
                price=None if prices is None else prices[i]))
        return answers

    def neighbors(self, vector: np.ndarray, k: int, lat: float | None = None,
                  lon: float | None = None) -> list[dict]:
        hits = self.index.search_near(vector, k, lat, lon, alpha=self.cfg.distance_weight,
                                      radius_km=self.cfg.distance_radius_km,
                                      pool_factor=self.cfg.rerank_pool_factor)
        out = []
        for hit in hits:
            row = self.index.row_of(hit["product_id"])
            item = {"product_id": str(hit["product_id"]), "score": round(hit["score"], 6),
                    "similarity": round(hit["similarity"], 6),
                    "distance_km": None if hit["distance_km"] is None
                    else round(hit["distance_km"], 2)}
            for col, values in self._meta.items():
                value = values[row]
                if isinstance(value, float) and math.isnan(value):
                    value = None
                item[col] = value.item() if isinstance(value, np.generic) else value
            out.append(item)
        return out

    def more_like_this(self, product_id: str, k: int, lat: float | None = None,
                       lon: float | None = None) -> list[dict]:
        """Listings like a catalogue listing (by its stored vector), itself excluded."""
        hits = self.neighbors(self.index.vector_of(product_id), k + 1, lat, lon)
        return [h for h in hits if h["product_id"] != str(product_id)][:k]
