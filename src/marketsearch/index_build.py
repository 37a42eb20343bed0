"""Building FAISS indexes: the index types, training on a sample, filling chunk by chunk.

Vectors are L2-normalised float32 and every index uses inner-product similarity, so a score
is the cosine similarity of query and listing (1 = same direction). The types, chosen by
``IndexConfig.type`` (bytes a vector at d = 256 in brackets):

- ``flat``: ``IndexFlatIP``, exact search, the reference for recall@k [1,024 B].
- ``hnsw``: ``IndexHNSWFlat`` (``M = hnsw_m``, ``efSearch = hnsw_ef_search``); no training
  [~1,300 B].
- ``ivf``: ``IndexIVFFlat`` over an ``IndexFlatIP`` coarse quantizer trained by k-means;
  ``nlist = min(ivf_nlist or 4·√N, n_train // 39)`` (FAISS wants about 39 training points
  per centroid), ``nprobe = min(ivf_nprobe, nlist)``. Keeps the full vectors [1,032 B].
- ``ivfpq``: IVF whose lists hold product-quantised residuals (``IndexIVFPQ``): each vector
  is stored as ``pq_m`` one-byte codes (the residual to its list's centroid, cut into
  ``pq_m`` sub-vectors, each replaced by the nearest of 256 learnt centroids) plus its 8-byte
  id, so ``pq_m + 8`` bytes [56 B at pq_m = 48] instead of 4·d. A rotation comes first,
  through an ``IndexPreTransform`` (``pq_rotation``): ``random`` (the default) spreads the
  energy evenly over the sub-vectors and costs nothing to train; ``opq`` learns it (OPQ),
  which on the benchmark's data (1M x 256-d) cost ~100 s more training for +0.005
  recall@10; when ``pq_m``
  does not divide d both map into ``pq_m·⌈d/pq_m⌉`` dimensions (256 -> 288 at pq_m = 48, a
  lossless padding) so every sub-quantizer gets the same width. The rotations are
  orthonormal, so inner products, and therefore cosines, are unchanged. Same nlist/nprobe
  rule as ``ivf``. From ``ivf_hnsw_min_nlist`` lists up the coarse quantizer is an HNSW
  graph over the centroids (efSearch = ``hnsw_ef_search``): comparing a query with tens of
  thousands of centroids by brute force would cost more than scanning the probed lists.
- ``auto`` (the default): ``flat`` up to ``auto_flat_max`` vectors (exact, and cheap at
  that size), ``ivf`` up to ``auto_ivf_max`` (near-exact recall; the full vectors still fit a
  server's RAM: 2M x 1 KiB = 2 GiB), ``ivfpq`` above, where full vectors stop fitting and
  some recall is traded for ~18x less memory (bench/reports/index.md measures all three).

Training and filling are separate steps so that a catalogue larger than memory can be
indexed: ``IndexBuilder(cfg, d, n_expected)`` is trained once on a sample (``train``: up to
``train_sample`` rows, which the caller draws, e.g. with :func:`training_sample`), then
filled shard by shard (``add``), never holding more than a shard of float vectors.
:func:`build_index` does the same for vectors already in memory.

Re-ranking (``ivfpq`` with ``pq_rerank: exact``): given a ``vectors_path``, the builder also
appends every normalised row to that file as it adds it (raw rows of ``pq_rerank_dtype``, no
header: N x d x itemsize bytes), so the float vectors are never all in RAM. Serving opens
the file with :func:`open_vectors` (a read-only memory map) and :func:`search_reranked` takes
the first ``pq_rerank_k`` PQ results of a query and orders them by their exact cosine, read
from the file. The PQ code keeps the index small; the file, on disk and in the OS page
cache, restores the precision the code loses.
"""
from __future__ import annotations

import logging
import math
import mmap
import os
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from marketsearch.config import IndexConfig

log = logging.getLogger(__name__)

# FAISS warns below this many training points per IVF centroid.
MIN_POINTS_PER_CENTROID = 39
# 8-bit sub-codes: 256 centroids per sub-quantizer, one byte each.
PQ_NBITS = 8
# build_index normalises and adds this many rows at a time (bounds its extra memory).
ADD_CHUNK = 65_536
# Links per node of the HNSW graph over the IVF centroids (not the listings).
QUANTIZER_HNSW_M = 32
KMEANS_SEED = 1234
OPQ_NITER, OPQ_MAX_TRAIN_POINTS = 20, 16_384
# The re-rank vectors file's dtypes (IndexConfig.pq_rerank_dtype).
VECTOR_DTYPES = {"float32": np.float32, "float16": np.float16}
# A stored row must be a unit vector (or zero) to this tolerance (float16 rounds ~1e-3).
NORM_TOLERANCE = 1e-2


# --------------------------------------------------------------------------- vectors
def normalize(vectors) -> np.ndarray:
    """Rows scaled to unit L2 norm, as a C-contiguous float32 copy; all-zero rows stay zero.

    Accepts a [N, d] array or a single [d] vector (returned as [1, d])."""
    arr = np.array(vectors, dtype=np.float32, copy=True, order="C")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"vectors must be [N, d] or [d], got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.where(~np.all(np.isfinite(arr), axis=1))[0]
        raise ValueError(f"vectors has non-finite values in {len(bad)} rows "
                         f"(first: row {int(bad[0])})")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    np.divide(arr, norms, out=arr, where=norms > 0)
    return arr


def training_sample(vectors, cfg: IndexConfig | None = None) -> np.ndarray:
    """The rows an IVF index is trained on: all of them up to ``cfg.train_sample``, else that
    many distinct rows drawn with ``cfg.train_seed`` (kept in their original order)."""
    cfg = cfg or IndexConfig()
    n = len(vectors)
    if n <= cfg.train_sample:
        return vectors
    rows = np.random.default_rng(cfg.train_seed).choice(n, cfg.train_sample, replace=False)
    return vectors[np.sort(rows)]


def ivf_nlist(n_expected: int, wanted: int, n_train: int) -> int:
    """Number of IVF lists: ``wanted`` (0: 4·√N), at most one per 39 training points."""
    wanted = int(wanted) if wanted else int(round(4 * math.sqrt(max(n_expected, 1))))
    return max(1, min(wanted, n_train // MIN_POINTS_PER_CENTROID))


def reranks(cfg: IndexConfig, kind: str) -> bool:
    """Whether an index of this ``kind`` built with ``cfg`` re-ranks from a vectors file."""
    return kind == "ivfpq" and cfg.pq_rerank == "exact"


# --------------------------------------------------------------------------- builder
class IndexBuilder:
    """An index of type ``cfg.type_for(n_expected)`` over d-dimensional vectors, trained once
    on a sample then filled chunk by chunk::

        builder = IndexBuilder(cfg, d, n_expected)
        builder.train(sample)            # a no-op for flat and hnsw
        for shard in shards:
            builder.add(shard)           # rows get consecutive ids, from 0
        index = builder.index

    ``n_expected`` (the catalogue size) picks the type under ``auto`` and the default nlist;
    it need not be exact. Vectors are normalised as they come in. ``train_s`` and ``add_s``
    accumulate the seconds spent in FAISS training and adding (for benchmarks and logs).

    ``vectors_path``: when the index re-ranks (:func:`reranks`: ivfpq with ``pq_rerank:
    exact``), each added chunk is also appended there (created or truncated now; the rows in
    ``pq_rerank_dtype``); :meth:`vectors` then memory-maps it. Ignored by other indexes, and
    without it an ivfpq index is built without its re-rank vectors (``vectors_path`` stays
    None). ``store_s``: seconds spent writing that file."""

    def __init__(self, cfg: IndexConfig | None, d: int, n_expected: int,
                 vectors_path: str | Path | None = None):
        self.cfg = cfg or IndexConfig()
        self.d, self.n_expected = int(d), int(n_expected)
        self.kind = self.cfg.type_for(self.n_expected)
        self.index: faiss.Index | None = None
        self.train_s = self.add_s = self.store_s = 0.0
        self.vectors_path: Path | None = None
        self._store = None
        if vectors_path is not None and reranks(self.cfg, self.kind):
            self.vectors_path = Path(vectors_path)
            self.vectors_path.parent.mkdir(parents=True, exist_ok=True)
            self._store = open(self.vectors_path, "wb")
        if self.kind == "flat":
            self.index = faiss.IndexFlatIP(self.d)
        elif self.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(self.d, self.cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = max(40, 2 * self.cfg.hnsw_m)
            self.index.hnsw.efSearch = self.cfg.hnsw_ef_search
        elif self.kind not in ("ivf", "ivfpq"):
            raise ValueError(f"index type {self.kind!r} is not one of flat, hnsw, ivf, ivfpq")

    @property
    def needs_training(self) -> bool:
        return self.index is None

    def train(self, sample) -> "IndexBuilder":
        """Learn the IVF centroids (and the rotation and PQ codebooks) from ``sample``, rows
        representative of the whole catalogue. A no-op for types without training."""
        if not self.needs_training:
            return self
        x = self._checked(sample)
        if len(x) == 0:
            raise ValueError(f"an {self.kind} index must be trained: no vectors given")
        nlist = ivf_nlist(self.n_expected, self.cfg.ivf_nlist, len(x))
        t0 = time.perf_counter()
        if self.kind == "ivf":
            quantizer = faiss.IndexFlatIP(self.d)
            # faiss' Python wrapper keeps a reference to the quantizer for the index's lifetime.
            index = faiss.IndexIVFFlat(quantizer, self.d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = KMEANS_SEED
            index.train(x)
        else:
            index = self._train_ivfpq(x, nlist)
        self.train_s += time.perf_counter() - t0
        apply_search_params(index, self.cfg)
        self.index = index
        log.info("%s index trained on %d vectors in %.1fs: nlist=%d (asked %d) nprobe=%d",
                 self.kind, len(x), self.train_s, nlist, self.cfg.ivf_nlist,
                 faiss.extract_index_ivf(index).nprobe)
        return self

    def _train_ivfpq(self, x: np.ndarray, nlist: int) -> faiss.Index:
        m, how = self.cfg.pq_m, self.cfg.pq_rotation
        d_pq = m * math.ceil(self.d / m)              # zero-padded so that m divides it
        if how == "random":
            rotation = faiss.RandomRotationMatrix(self.d, d_pq)
            rotation.init(self.cfg.train_seed)
        elif how == "opq":
            rotation = faiss.OPQMatrix(self.d, m, d_pq)
            # FAISS' defaults (50 iterations on 65,536 rows) take ~10 min at d = 256 on a core.
            rotation.niter, rotation.max_train_points = OPQ_NITER, OPQ_MAX_TRAIN_POINTS
        elif d_pq != self.d:
            raise ValueError(f"pq_m={m} does not divide the dimension {self.d}; use "
                             "pq_rotation random or opq (they pad) or pick a divisor")
        else:
            rotation = None
        if nlist >= self.cfg.ivf_hnsw_min_nlist:
            quantizer = faiss.IndexHNSWFlat(d_pq, QUANTIZER_HNSW_M, faiss.METRIC_INNER_PRODUCT)
            quantizer.hnsw.efConstruction = 2 * QUANTIZER_HNSW_M
        else:
            quantizer = faiss.IndexFlatIP(d_pq)
        ivf = faiss.IndexIVFPQ(quantizer, d_pq, nlist, m, PQ_NBITS, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = KMEANS_SEED
        ivf.pq.cp.seed = KMEANS_SEED
        index = ivf if rotation is None else faiss.IndexPreTransform(rotation, ivf)
        # k-means assigns with exact search (an HNSW graph cannot be rebuilt each iteration);
        # the centroids then go into the quantizer.
        exact = faiss.IndexFlatIP(d_pq)
        ivf.clustering_index = exact
        try:
            index.train(x)
        finally:
            ivf.clustering_index = None              # `exact` is freed with this frame
        return index

    def add(self, chunk) -> "IndexBuilder":
        """Append rows (ids continue from the rows already added)."""
        if self.needs_training:
            raise RuntimeError(f"train the {self.kind} index on a sample before adding to it")
        x = self._checked(chunk)
        if len(x):
            t0 = time.perf_counter()
            self.index.add(x)
            self.add_s += time.perf_counter() - t0
            if self.vectors_path is not None:
                if self._store is None:
                    raise RuntimeError(f"{self.vectors_path} is closed: vectors() was called, "
                                       "add no more rows")
                t0 = time.perf_counter()
                self._store.write(x.astype(VECTOR_DTYPES[self.cfg.pq_rerank_dtype]).tobytes())
                self.store_s += time.perf_counter() - t0
        return self

    def vectors(self) -> np.ndarray | None:
        """The re-rank vectors written so far, memory-mapped read-only (closes the file for
        writing: add no rows after this); None when this builder writes none."""
        if self.vectors_path is None:
            return None
        if self._store is not None:
            self._store.close()
            self._store = None
        return open_vectors(self.vectors_path, self.index.ntotal if self.index else 0, self.d,
                            self.cfg.pq_rerank_dtype)

    def _checked(self, vectors) -> np.ndarray:
        x = normalize(vectors)
        if x.shape[1] != self.d:
            raise ValueError(f"vectors have dimension {x.shape[1]}, the index has {self.d}")
        return x


def build_index(vectors, cfg: IndexConfig | None = None) -> faiss.Index:
    """A FAISS inner-product index over the (normalised) vectors, of type ``cfg.type``,
    trained on :func:`training_sample` of them and filled ``ADD_CHUNK`` rows at a time.

    Vectors are normalised here (a no-op for unit vectors), so scores are cosines. The index
    alone: an ivfpq index re-ranks only with its vectors file (:func:`fill`,
    ``SearchIndex.build``)."""
    return fill(vectors, cfg).index


def fill(vectors, cfg: IndexConfig | None = None,
         vectors_path: str | Path | None = None) -> IndexBuilder:
    """:func:`build_index`'s builder, trained and filled (for its index, timings and, with
    ``vectors_path``, its re-rank vectors)."""
    cfg = cfg or IndexConfig()
    x = np.asarray(vectors)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"vectors must be [N, d] or [d], got shape {x.shape}")
    n, d = x.shape
    builder = IndexBuilder(cfg, d, n, vectors_path)
    if builder.needs_training:
        builder.train(training_sample(x, cfg))
    for start in range(0, n, ADD_CHUNK):
        builder.add(x[start:start + ADD_CHUNK])
    log.info("built %s index: %d vectors of dimension %d", builder.kind, builder.index.ntotal, d)
    return builder


# --------------------------------------------------------------------------- query time
def apply_search_params(index: faiss.Index, cfg: IndexConfig) -> None:
    """Query-time knobs (not all of them survive write_index/read_index in every version):
    HNSW efSearch, IVF nprobe (also behind the rotation's ``IndexPreTransform``) and the efSearch
    of an HNSW coarse quantizer."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = cfg.hnsw_ef_search
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(cfg.ivf_nprobe, ivf.nlist)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            # The graph must return nprobe centroids: efSearch below that would cap them.
            quantizer.hnsw.efSearch = max(cfg.hnsw_ef_search, ivf.nprobe)


_direct_map_lock = threading.Lock()


def reconstruct(index: faiss.Index, row: int) -> np.ndarray:
    """The vector stored at ``row`` (for ``ivfpq``: decoded from its PQ code, so close to,
    not equal to, the vector added). IVF indexes keep no row -> list position map unless
    asked; it is built on first use (8 bytes a row)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        with _direct_map_lock:
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                ivf.make_direct_map(True)
    return index.reconstruct(int(row))


# --------------------------------------------------------------------------- re-ranking
def open_vectors(path: str | Path, n: int, d: int, dtype: str) -> np.ndarray:
    """The re-rank vectors file ``path`` (``n`` x ``d`` raw rows of ``dtype``) as a read-only
    memory map. FileNotFoundError when it is missing and ValueError when its size is not
    ``n·d·itemsize`` or a row checked is not a unit vector (truncated, another index's, or
    another dtype's), each naming the file."""
    path = Path(path)
    if dtype not in VECTOR_DTYPES:
        raise ValueError(f"{path}: re-rank vectors dtype {dtype!r} is not one of "
                         f"{sorted(VECTOR_DTYPES)}")
    np_dtype = np.dtype(VECTOR_DTYPES[dtype])
    if not path.is_file():
        raise FileNotFoundError(f"the re-rank vectors file {path} is missing (it is written "
                                "with the index; rebuild it, or set index.pq_rerank: none)")
    size, expected = path.stat().st_size, int(n) * int(d) * np_dtype.itemsize
    if size != expected:
        raise ValueError(f"the re-rank vectors file {path} has {size:,} bytes, not the "
                         f"{expected:,} of {n:,} x {d} {dtype} vectors: truncated, or not this "
                         "index's")
    if n == 0:
        return np.zeros((0, d), dtype=np_dtype)
    vectors = np.memmap(path, dtype=np_dtype, mode="r", shape=(int(n), int(d)))
    # Spot-check a few rows (first, last, a spread between): stored vectors are normalised.
    rows = np.unique(np.linspace(0, n - 1, min(n, 17)).astype(np.int64))
    norms = np.linalg.norm(np.asarray(vectors[rows], dtype=np.float32), axis=1)
    bad = ~((np.abs(norms - 1) < NORM_TOLERANCE) | (norms == 0)) | ~np.isfinite(norms)
    if bad.any():
        raise ValueError(f"the re-rank vectors file {path} is corrupt: row {int(rows[bad][0])} "
                         f"has norm {float(norms[bad][0]):.4g}, not 1")
    try:   # candidates are scattered rows: read-ahead around them would be wasted I/O
        vectors._mmap.madvise(mmap.MADV_RANDOM)
    except (AttributeError, OSError, ValueError):   # pragma: no cover - platform-dependent
        pass
    return vectors


_PAGE = mmap.PAGESIZE


def _prefetch(vectors: np.ndarray, rows: np.ndarray) -> None:
    """Ask the kernel to read the pages of these rows now, all at once (MADV_WILLNEED starts
    asynchronous reads and returns), so that touching them waits for one round of I/O rather
    than one per row. Cheap when the pages are cached already."""
    mm = getattr(vectors, "_mmap", None)
    if mm is None:
        return
    row_bytes = vectors.shape[1] * vectors.dtype.itemsize
    first = rows * row_bytes // _PAGE
    if _PAGE % row_bytes:                         # rows may straddle two pages
        first = np.concatenate([first, ((rows + 1) * row_bytes - 1) // _PAGE])
    pages = np.unique(first)
    advise, willneed = mm.madvise, mmap.MADV_WILLNEED
    try:
        for page in pages.tolist():
            advise(willneed, page * _PAGE, _PAGE)
    except (OSError, ValueError):   # pragma: no cover - e.g. past the end on some systems
        pass


def search_reranked(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int,
                    rerank_k: int, prefetch: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` for ``max(k, rerank_k)`` candidates, then the top ``k`` of them by
    exact inner product with their rows of ``vectors`` (normalised, row i = FAISS id i):
    (scores [nq, k] float32, rows [nq, k] int64), -inf / -1 where fewer were found, like
    FAISS. ``queries`` must be normalised float32."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    n = index.ntotal
    k = min(int(k), n)
    scores = np.full((len(q), max(k, 0)), -np.inf, dtype=np.float32)
    rows = np.full((len(q), max(k, 0)), -1, dtype=np.int64)
    if k <= 0:
        return scores, rows
    _, candidates = index.search(q, min(max(k, int(rerank_k)), n))
    for i, cand in enumerate(candidates):
        cand = np.unique(cand[cand >= 0])          # sorted: reads in file order
        if not len(cand):
            continue
        if prefetch:
            _prefetch(vectors, cand)
        sims = np.asarray(vectors[cand], dtype=np.float32) @ q[i]
        m = min(k, len(cand))
        top = np.argpartition(-sims, m - 1)[:m] if m < len(cand) else np.arange(len(cand))
        top = top[np.argsort(-sims[top], kind="stable")]
        scores[i, :m], rows[i, :m] = sims[top], cand[top]
    return scores, rows


def drop_from_page_cache(path: str | Path) -> None:
    """Ask the kernel to drop ``path``'s clean cached pages (POSIX_FADV_DONTNEED; pages still
    mapped by a process stay). For measuring a cold re-rank."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
