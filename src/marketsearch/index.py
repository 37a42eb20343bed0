"""FAISS search over listing embeddings: search, geo re-ranking, save/load, recall@k.

Vectors are L2-normalised float32, and every index uses inner-product similarity, so a
score is the cosine similarity of query and listing (1 = same direction). The index types
(``flat``, ``hnsw``, ``ivf``, ``ivfpq`` and the size rule of ``auto``) and how an index is
trained on a sample and filled shard by shard live in ``marketsearch.index_build``;
``normalize``, ``build_index`` and ``IndexBuilder`` are re-exported here.

A ``SearchIndex`` is the FAISS index plus the product id of every row and the listings'
metadata (id, title, price, category, lat, lon, photo id: whatever columns are given), and
saves to / loads from a directory::

    index.faiss      faiss.write_index
    ids.json         product ids in FAISS row order (ints stay ints, strings stay strings)
    metadata.parquet one row per FAISS row, same order
    manifest.json    index type, dimension, size, the IndexConfig used, format version
    rerank_vectors.bin  ivfpq with ``pq_rerank: exact`` only: the normalised vectors (raw
                     N x d rows of ``pq_rerank_dtype``), memory-mapped by ``load``; searches
                     re-rank the first ``pq_rerank_k`` PQ results by exact cosine from it
                     (``marketsearch.index_build.search_reranked``)
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from marketsearch.config import IndexConfig
from marketsearch.geo import haversine_km
from marketsearch.index_build import (VECTOR_DTYPES, IndexBuilder, apply_search_params,
                                      build_index, fill, normalize, open_vectors, reconstruct,
                                      reranks, search_reranked, training_sample)

__all__ = ["IndexBuilder", "SearchIndex", "build_index", "normalize", "recall_at_k",
           "training_sample"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
METADATA_FILE = "metadata.parquet"
MANIFEST_FILE = "manifest.json"
VECTORS_FILE = "rerank_vectors.bin"
# SearchIndex.save copies / writes the re-rank vectors this many rows at a time.
SAVE_CHUNK = 65_536


# --------------------------------------------------------------------------- recall
def recall_at_k(index, vectors, queries, k: int) -> float:
    """Recall@k of ``index`` (a faiss.Index or SearchIndex built over ``vectors``) against
    exact inner-product search (IndexFlatIP) over the same vectors.

    recall@k = mean over queries of |approximate top-k ∩ exact top-k| / k
    (k is capped at the number of vectors)."""
    x = normalize(vectors)
    q = normalize(queries)
    k = min(int(k), len(x))
    if k <= 0 or len(q) == 0:
        raise ValueError("recall@k needs k >= 1, at least one vector and one query")
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(q, k)
    # A SearchIndex answers as it serves (re-ranked when it has re-rank vectors).
    _, found = (index._search_rows(q, k) if isinstance(index, SearchIndex)
                else index.search(q, k))
    hits = [len(set(t.tolist()) & set(f[f >= 0].tolist())) for t, f in zip(truth, found)]
    return float(np.mean(hits) / k)


# --------------------------------------------------------------------------- SearchIndex
def _plain(value):
    """numpy scalars -> Python scalars, so that ids are hashable the same way and JSON-able."""
    return value.item() if isinstance(value, np.generic) else value


class SearchIndex:
    """A FAISS index, the product id of each of its rows, and the listings' metadata.

    Build with ``SearchIndex.build(vectors, ids, metadata, cfg)``; row i of ``vectors``
    is the embedding of product ``ids[i]``. ``metadata`` (optional) is a DataFrame of
    listing fields; with an ``id`` column it is aligned to ``ids`` by id (ids it lacks get
    empty rows), without one it must already be in ``ids`` order. Columns ``lat`` and
    ``lon`` (degrees) enable :meth:`search_near`.

    ``vectors`` (optional, [N, d] normalised, row i = FAISS row i; a memory map in practice):
    when given, searches re-rank the first ``cfg.pq_rerank_k`` index results by exact cosine
    against them (``build`` and ``load`` pass them for ivfpq with ``pq_rerank: exact``).
    """

    def __init__(self, index: faiss.Index, ids: Sequence, metadata: pd.DataFrame | None = None,
                 cfg: IndexConfig | None = None, vectors: np.ndarray | None = None):
        ids = [_plain(i) for i in ids]
        if len(ids) != index.ntotal:
            raise ValueError(f"{len(ids)} ids for an index of {index.ntotal} vectors")
        if vectors is not None and tuple(vectors.shape) != (index.ntotal, index.d):
            raise ValueError(f"re-rank vectors of shape {tuple(vectors.shape)} for an index of "
                             f"{index.ntotal} vectors of dimension {index.d}")
        self.vectors = vectors
        if len(set(ids)) != len(ids):
            dupes = pd.Series(ids)[pd.Series(ids).duplicated()].unique()[:5].tolist()
            raise ValueError(f"product ids must be unique; duplicated: {dupes}")
        self.index = index
        self.ids = ids
        self.cfg = cfg or IndexConfig()
        self.metadata = self._align_metadata(metadata, ids)
        self._row_of = {pid: row for row, pid in enumerate(ids)}
        self._lat = self._coord("lat")
        self._lon = self._coord("lon")

    # --- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, vectors, ids: Sequence, metadata: pd.DataFrame | None = None,
              cfg: IndexConfig | None = None) -> "SearchIndex":
        x = np.asarray(vectors)
        if x.ndim != 2 or len(x) != len(ids):
            raise ValueError(f"vectors of shape {x.shape} do not match {len(ids)} ids")
        cfg = cfg or IndexConfig()
        if not reranks(cfg, cfg.type_for(len(x))):
            return cls(build_index(x, cfg), ids, metadata, cfg)
        # The re-rank vectors go to a temporary file (memory-mapped) until ``save`` copies it.
        tmp = Path(tempfile.mkdtemp(prefix="marketsearch-rerank-"))
        builder = fill(x, cfg, tmp / VECTORS_FILE)
        built = cls(builder.index, ids, metadata, cfg, builder.vectors())
        weakref.finalize(built, shutil.rmtree, tmp, ignore_errors=True)
        return built

    @staticmethod
    def _align_metadata(metadata: pd.DataFrame | None, ids: list) -> pd.DataFrame:
        if metadata is None:
            return pd.DataFrame({"id": ids})
        meta = metadata.reset_index(drop=True).copy()
        if "id" not in meta.columns:
            if len(meta) != len(ids):
                raise ValueError(f"metadata without an 'id' column has {len(meta)} rows "
                                 f"but there are {len(ids)} ids")
            meta.insert(0, "id", ids)
            return meta
        meta["id"] = [_plain(i) for i in meta["id"]]
        if meta["id"].duplicated().any():
            raise ValueError("metadata has duplicated ids: "
                             f"{meta.loc[meta['id'].duplicated(), 'id'].unique()[:5].tolist()}")
        aligned = meta.set_index("id").reindex(pd.Index(ids, name="id")).reset_index()
        missing = int((~pd.Index(ids).isin(meta["id"])).sum())
        if missing:
            log.warning("metadata lacks %d of %d indexed ids; their fields are empty",
                        missing, len(ids))
        return aligned

    def _coord(self, column: str) -> np.ndarray:
        if column not in self.metadata.columns:
            return np.full(len(self.ids), np.nan)
        return pd.to_numeric(self.metadata[column], errors="coerce").to_numpy(np.float64)

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def dim(self) -> int:
        return self.index.d

    # --- queries ------------------------------------------------------------------------
    def _query(self, query_vectors) -> np.ndarray:
        q = normalize(query_vectors)
        if q.shape[1] != self.index.d:
            raise ValueError(f"query vectors have dimension {q.shape[1]}, "
                             f"the index has {self.index.d}")
        return q

    @property
    def reranks(self) -> bool:
        """Whether searches re-rank index results by exact cosine (it has re-rank vectors)."""
        return self.vectors is not None

    def _search_rows(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the top ``k`` for normalised queries: the index's, re-ranked
        from the vectors file when there is one."""
        if self.vectors is None:
            return self.index.search(q, k)
        return search_reranked(self.index, self.vectors, q, k, self.cfg.pq_rerank_k,
                               prefetch=self.cfg.pq_rerank_prefetch)

    def search(self, query_vectors, k: int) -> list[list[tuple[object, float]]]:
        """Top-k listings per query: for each query row a list of (product_id, similarity),
        most similar first. A [d] vector counts as one query. Fewer than k come back when
        the index holds fewer (or, for ivf, the probed lists do)."""
        q = self._query(query_vectors)
        if len(self) == 0 or k <= 0:
            return [[] for _ in range(len(q))]
        scores, rows = self._search_rows(q, min(int(k), len(self)))
        return [[(self.ids[r], float(s)) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores, rows)]

    def search_near(self, query_vector, k: int, lat: float | None, lon: float | None,
                    alpha: float = 0.1, radius_km: float = 50.0,
                    pool_factor: int = 10) -> list[dict]:
        """Top-k listings for one query, re-ranked by similarity and distance to the buyer.

        The ``pool_factor * k`` most similar listings are fetched from the index, then
        ranked by::

            score = similarity - alpha * min(distance_km / radius_km, 1)

        so a listing at the buyer's location loses nothing, one ``radius_km`` or more away
        loses ``alpha``, linearly in between (distance_km is the great-circle distance
        between the buyer's and the listing's lat/lon). Listings without coordinates get
        the maximum penalty (``alpha``). ``alpha = 0`` keeps the pure similarity order;
        when the buyer's ``lat``/``lon`` is None nobody is penalised (distances are None).
        Ties in score go to the more similar listing.

        Returns up to k dicts {product_id, similarity, distance_km (float or None),
        score}, best score first.
        """
        if radius_km <= 0:
            raise ValueError(f"radius_km must be positive, got {radius_km}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        q = self._query(query_vector)
        if len(q) != 1:
            raise ValueError(f"search_near takes one query vector, got {len(q)}")
        if len(self) == 0 or k <= 0:
            return []
        pool = min(len(self), max(int(k), int(pool_factor) * int(k)))
        scores, rows = self._search_rows(q, pool)
        keep = rows[0] >= 0
        rows, sims = rows[0][keep], scores[0][keep].astype(np.float64)

        buyer_known = (lat is not None and lon is not None
                       and np.isfinite(lat) and np.isfinite(lon))
        if buyer_known:
            dist = np.asarray(haversine_km(self._lat[rows], self._lon[rows], lat, lon),
                              dtype=np.float64).reshape(-1)
            penalty = np.where(np.isfinite(dist), np.minimum(dist / radius_km, 1.0), 1.0)
        else:
            dist = np.full(len(rows), np.nan)
            penalty = np.zeros(len(rows))
        blended = sims - alpha * penalty
        # lexsort: last key is primary -> by blended desc, then similarity desc.
        order = np.lexsort((-sims, -blended))[:k]
        return [{
            "product_id": self.ids[rows[i]],
            "similarity": float(sims[i]),
            "distance_km": float(dist[i]) if np.isfinite(dist[i]) else None,
            "score": float(blended[i]),
        } for i in order]

    def lookup(self, product_ids: Sequence) -> pd.DataFrame:
        """Metadata rows of these product ids, in the order given (KeyError if unknown)."""
        rows = []
        for pid in product_ids:
            pid = _plain(pid)
            if pid not in self._row_of:
                raise KeyError(f"product id {pid!r} is not in the index")
            rows.append(self._row_of[pid])
        return self.metadata.iloc[rows].reset_index(drop=True)

    def row_of(self, product_id) -> int:
        """The FAISS row (and metadata row) of a product id (KeyError if unknown)."""
        row = self._row_of.get(_plain(product_id))
        if row is None:
            raise KeyError(f"product id {product_id!r} is not in the index")
        return row

    def vector_of(self, product_id) -> np.ndarray:
        """The stored (normalised) embedding of a product, for "more like this" queries
        (for ivfpq: read from the re-rank vectors when there are some, else decoded from its
        PQ code, an approximation)."""
        row = self._row_of.get(_plain(product_id))
        if row is None:
            raise KeyError(f"product id {product_id!r} is not in the index")
        if self.vectors is not None:
            return np.array(self.vectors[row], dtype=np.float32)
        return reconstruct(self.index, row)

    def recall_at_k(self, vectors, queries, k: int | None = None) -> float:
        return recall_at_k(self.index, vectors, queries, k or self.cfg.recall_k)

    # --- persistence --------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write index.faiss, ids.json, metadata.parquet, manifest.json (and, when it
        re-ranks, rerank_vectors.bin, copied a chunk at a time) to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vectors_entry = None
        if self.vectors is not None:
            vectors_entry = self._save_vectors(directory / VECTORS_FILE)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        (directory / IDS_FILE).write_text(json.dumps(self.ids))
        self.metadata.to_parquet(directory / METADATA_FILE, index=False)
        manifest = {
            "format_version": FORMAT_VERSION,
            "type": self.cfg.type_for(len(self)),
            "faiss_class": type(self.index).__name__,
            "dim": int(self.index.d),
            "ntotal": int(self.index.ntotal),
            "metric": "inner_product",
            "normalized": True,
            "config": self.cfg.model_dump(),
            "metadata_columns": list(self.metadata.columns),
            "rerank_vectors": vectors_entry,
        }
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        log.info("saved %s index of %d listings to %s", self.cfg.type_for(len(self)), len(self),
                 directory)
        return directory

    def _save_vectors(self, path: Path) -> dict:
        """The re-rank vectors to ``path`` in the dtype they have (a memory map of that very
        file is left as it is); their manifest entry."""
        v = self.vectors
        dtype = next((name for name, t in VECTOR_DTYPES.items() if np.dtype(t) == v.dtype),
                     None)
        if dtype is None:
            raise ValueError(f"re-rank vectors of dtype {v.dtype} are not one of "
                             f"{sorted(VECTOR_DTYPES)}")
        source = getattr(v, "filename", None)
        if source is None or not path.exists() or not path.samefile(source):
            tmp = path.with_suffix(path.suffix + ".tmp")
            with open(tmp, "wb") as out:
                for start in range(0, len(v), SAVE_CHUNK):
                    out.write(np.ascontiguousarray(v[start:start + SAVE_CHUNK]).tobytes())
            tmp.replace(path)
        return {"file": path.name, "dtype": dtype, "shape": [int(len(v)), int(v.shape[1])]}

    @classmethod
    def load(cls, directory: str | Path) -> "SearchIndex":
        directory = Path(directory)
        for name in (INDEX_FILE, IDS_FILE, MANIFEST_FILE):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory} is not a saved SearchIndex: "
                                        f"{name} is missing")
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: format_version {manifest.get('format_version')} "
                             f"is not {FORMAT_VERSION}")
        cfg = IndexConfig.model_validate(manifest["config"])
        index = faiss.read_index(str(directory / INDEX_FILE))
        apply_search_params(index, cfg)
        vectors = None
        entry = manifest.get("rerank_vectors")
        if entry:
            n, d = entry["shape"]
            if (n, d) != (index.ntotal, index.d):
                raise ValueError(f"{directory / entry['file']}: the manifest gives it shape "
                                 f"{[n, d]}, the index holds {index.ntotal} x {index.d}")
            vectors = open_vectors(directory / entry["file"], n, d, entry["dtype"])
        elif reranks(cfg, manifest.get("type", "")):
            log.warning("%s: saved without re-rank vectors; searching in PQ order", directory)
        ids = json.loads((directory / IDS_FILE).read_text())
        meta_path = directory / METADATA_FILE
        metadata = pd.read_parquet(meta_path) if meta_path.exists() else None
        return cls(index, ids, metadata, cfg, vectors)
