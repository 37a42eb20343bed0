"""Comparables for the price head: the catalogue's listings whose text reads most like a
request's, and what they were priced at.

Sellers list near twins of what others list (the same model of phone, a shop's range, a
relisted item): on the shared data about one test listing in six has a training listing whose
TF-IDF cosine is 0.5 or more, and that listing's price is then off by a median 13% of the
true one, against about 50% for the price head without it. The fused embedding tells
categories apart and finds such twins poorly; word statistics find them.

- ``TextEmbedder``: the TF-IDF of word 1- and 2-grams (``marketsearch.price.word_tfidf``,
  the TF-IDF ridge's words; terms in at least ``min_df`` listings) projected by a truncated
  SVD (latent semantic analysis) to ``dim`` and L2-normalised, so that a FAISS inner product
  is the cosine; dense, so the catalogue's vectors go into the same kind of index as the
  listings' (``marketsearch.index``, its type chosen by size).
- ``Comparables``: the embedder and a ``SearchIndex`` of every priced catalogue listing's text
  vector with its log-price. ``features`` gives the price head, per text, the best cosine,
  that listing's log-price and the cosine²-weighted mean log-price of the ``k`` best; a
  listing being priced from inside the catalogue (training, evaluate) is not its own
  comparable (``exclude``).

Files (``DIRECTORY`` in the model part and the bundle)::

    embedder.json   the TF-IDF vocabulary and idf weights, min_df, the projection's width
    projection.npy  float16 [terms, dim]: the SVD's components
    index/          the SearchIndex; its metadata holds each listing's ``log_price``
    comparables.json  ``k``
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

DIRECTORY = "price_comparables"
EMBEDDER_FILE = "embedder.json"
PROJECTION_FILE = "projection.npy"
INDEX_DIR = "index"
SETTINGS_FILE = "comparables.json"
WIDTH = 3  # the columns ``features`` gives per text


class TextEmbedder:
    """Text -> float32 [dim], L2-normalised TF-IDF projected by a truncated SVD; zeros for a
    text without a known term."""

    def __init__(self, vectorizer, projection: np.ndarray, min_df: int):
        self.vectorizer, self.min_df = vectorizer, int(min_df)
        self.projection = np.asarray(projection, np.float32)

    @property
    def dim(self) -> int:
        return self.projection.shape[1]

    @classmethod
    def fit(cls, texts: Sequence[str], dim: int, min_df: int, seed: int,
            max_terms: int | None = None) -> "TextEmbedder":
        """Learn the terms (at most ``max_terms``, the most frequent) and the projection from
        ``texts`` (a sample of the catalogue's). ``dim`` is capped below the number of texts
        and of terms. The projection is terms x ``dim`` floats, and the SVD that finds it
        holds a few times that: ``max_terms`` bounds both whatever the catalogue's size."""
        from sklearn.decomposition import TruncatedSVD

        from marketsearch.price import word_tfidf

        vectorizer = word_tfidf(min_df, dtype=np.float32, max_terms=max_terms)
        try:
            x = vectorizer.fit_transform([t or "" for t in texts])
        except ValueError as err:  # no term in min_df listings
            raise ValueError(f"cannot fit comparables on {len(texts)} texts: {err}") from err
        width = max(1, min(dim, x.shape[0] - 1, x.shape[1] - 1))
        svd = TruncatedSVD(width, random_state=seed).fit(x)
        log.info("comparables embedder: %d texts, %d terms -> %d dimensions (%.0f%% of the "
                 "TF-IDF variance)", x.shape[0], x.shape[1], width,
                 100 * svd.explained_variance_ratio_.sum())
        return cls(vectorizer, svd.components_.T, min_df)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        x = np.asarray(self.vectorizer.transform([t or "" for t in texts]) @ self.projection,
                       np.float32)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)

    def save(self, directory: Path) -> None:
        (directory / EMBEDDER_FILE).write_text(json.dumps({
            "min_df": self.min_df, "dim": self.dim,
            "vocabulary": {t: int(i) for t, i in self.vectorizer.vocabulary_.items()},
            "idf": self.vectorizer.idf_.tolist()}))
        np.save(directory / PROJECTION_FILE, self.projection.astype(np.float16))

    @classmethod
    def load(cls, directory: Path) -> "TextEmbedder":
        state = json.loads((directory / EMBEDDER_FILE).read_text())
        projection = np.load(directory / PROJECTION_FILE, allow_pickle=False)
        if projection.shape != (len(state["vocabulary"]), state["dim"]):
            raise ValueError(f"{directory}: the projection is {projection.shape}, the embedder "
                             f"names {len(state['vocabulary'])} terms x {state['dim']}")
        from marketsearch.price import word_tfidf

        vectorizer = word_tfidf(state["min_df"], state["vocabulary"], state["idf"], np.float32)
        return cls(vectorizer, projection, state["min_df"])


class Comparables:
    """The embedder, and the index of the catalogue's priced listings by text (see the module
    docstring)."""

    def __init__(self, embedder: TextEmbedder, index, k: int):
        self.embedder, self.index, self.k = embedder, index, int(k)
        self.log_price = pd.to_numeric(index.metadata["log_price"]).to_numpy(np.float32)

    @classmethod
    def build(cls, embedder: TextEmbedder, listings: Iterable[pd.DataFrame], n_expected: int,
              k: int, index_cfg=None) -> "Comparables":
        """Index ``listings`` (frames of priced listings: id, text, price; read one at a time,
        e.g. shard by shard) under their text vectors; ``n_expected``: at most how many."""
        from marketsearch.index import SearchIndex

        ids, log_prices = [], []
        with tempfile.TemporaryDirectory(prefix="comparables-") as tmp:
            vectors = np.lib.format.open_memmap(Path(tmp) / "vectors.npy", mode="w+",
                                                dtype=np.float32,
                                                shape=(max(n_expected, 1), embedder.dim))
            bar = tqdm(total=n_expected, desc="price comparables: embed listings",
                       unit="listing", mininterval=2)
            for frame in listings:
                if len(ids) + len(frame) > n_expected:
                    raise ValueError(f"more priced listings to index as comparables than the "
                                     f"{n_expected} expected")
                vectors[len(ids):len(ids) + len(frame)] = embedder.embed(frame["text"].tolist())
                ids += frame["id"].tolist()
                log_prices.append(np.log(frame["price"].to_numpy(np.float64)))
                bar.update(len(frame))
            bar.close()
            if not ids:
                raise ValueError("no priced listings to index as comparables")
            index = SearchIndex.build(vectors[:len(ids)], ids, pd.DataFrame(
                {"id": ids, "log_price": np.concatenate(log_prices)}), index_cfg)
        log.info("comparables: %d listings indexed (%s)", len(ids), type(index.index).__name__)
        return cls(embedder, index, k)

    def features(self, texts: Sequence[str], exclude: Sequence | None = None) -> np.ndarray:
        """float32 [N, 3] per text: the best comparable's cosine (0..1), its log-price, and
        the cosine²-weighted mean log-price of the ``k`` best; zeros for "" or a text with no
        known term. ``exclude``: per text, a listing id that is not its comparable (itself)."""
        # each distinct (text, excluded id) once: a listing is asked with and without its
        # photo, the same text twice
        keys = list(zip(texts, [None] * len(texts) if exclude is None else exclude))
        where = {key: i for i, key in enumerate(dict.fromkeys(keys))}
        if len(where) < len(keys):
            rows = self.features([t for t, _ in where], None if exclude is None else
                                 [e for _, e in where])
            return rows[[where[key] for key in keys]]
        out = np.zeros((len(texts), WIDTH), np.float32)
        vectors = self.embedder.embed(texts)
        said = np.flatnonzero(np.linalg.norm(vectors, axis=1) > 0)
        if not len(said) or not len(self.index):
            return out
        hits = self.index.search(vectors[said], self.k + (exclude is not None))
        for i, found in zip(said, hits):
            if exclude is not None:
                found = [(pid, s) for pid, s in found if pid != exclude[i]]
            found = found[:self.k]
            if not found:
                continue
            sims = np.clip([s for _, s in found], 0.0, 1.0)
            prices = self.log_price[[self.index.row_of(pid) for pid, _ in found]]
            weights = sims ** 2 + 1e-6
            out[i] = (sims[0], prices[0], float(weights @ prices / weights.sum()))
        return out

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.embedder.save(directory)
        self.index.save(directory / INDEX_DIR)
        (directory / SETTINGS_FILE).write_text(json.dumps({"k": self.k}))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Comparables":
        from marketsearch.index import SearchIndex

        directory = Path(directory)
        k = json.loads((directory / SETTINGS_FILE).read_text())["k"]
        return cls(TextEmbedder.load(directory), SearchIndex.load(directory / INDEX_DIR), k)
