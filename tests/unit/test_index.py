"""FAISS search index: recall against exact search, persistence, geo re-ranking, id mapping."""
import json

import numpy as np
import pandas as pd
import pytest

from marketsearch.config import IndexConfig
from marketsearch.geo import haversine_km
from marketsearch.index import SearchIndex, build_index, normalize, recall_at_k

DIM = 64


def clustered(n, n_clusters=50, noise=0.8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, DIM)).astype(np.float32)
    labels = rng.integers(0, n_clusters, n)
    return centers[labels] + noise * rng.standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    both = clustered(5200)
    return both[:5000], both[5000:]  # catalogue, held-out queries from the same clusters


# --------------------------------------------------------------------------- normalize
def test_normalize_unit_rows_float32_and_zero_rows():
    x = normalize([[3.0, 4.0], [0.0, 0.0]])
    assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert normalize([1.0, 0.0]).shape == (1, 2)
    with pytest.raises(ValueError, match="non-finite"):
        normalize([[np.nan, 1.0]])


# --------------------------------------------------------------------------- recall
def test_flat_recall_is_exact(data):
    x, q = data
    assert recall_at_k(build_index(x, IndexConfig(type="flat")), x, q, 10) == 1.0


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_at_10(data, kind):
    x, q = data
    index = build_index(x, IndexConfig(type=kind))
    assert index.ntotal == len(x)
    assert recall_at_k(index, x, q, 10) >= 0.9


def test_index_parameters_follow_config(data):
    x, _ = data
    hnsw = build_index(x[:500], IndexConfig(type="hnsw", hnsw_m=16, hnsw_ef_search=99))
    assert hnsw.hnsw.efSearch == 99
    assert hnsw.metric_type == 0  # faiss.METRIC_INNER_PRODUCT
    ivf = build_index(x, IndexConfig(type="ivf", ivf_nlist=64, ivf_nprobe=8))
    assert (ivf.nlist, ivf.nprobe) == (64, 8)
    small = build_index(x[:400], IndexConfig(type="ivf", ivf_nlist=64, ivf_nprobe=8))
    assert small.nlist == 400 // 39 and small.nprobe == 8
    default = build_index(x, IndexConfig(type="ivf"))  # 4 * sqrt(N) lists, capped at N // 39
    assert default.nlist == min(round(4 * np.sqrt(len(x))), len(x) // 39)


def test_auto_is_exact_for_a_small_catalogue_and_ivf_for_a_large_one(data):
    import faiss

    x, q = data
    cfg = IndexConfig(type="auto", auto_flat_max=len(x))
    assert isinstance(build_index(x, cfg), faiss.IndexFlatIP)
    assert cfg.type_for(len(x) + 1) == "ivf"
    ivf = build_index(x, IndexConfig(type="auto", auto_flat_max=len(x) - 1))
    assert faiss.try_extract_index_ivf(ivf) is not None
    assert recall_at_k(ivf, x, q, 10) >= 0.9


def test_scores_are_cosines(data):
    x, q = data
    idx = SearchIndex.build(x, list(range(len(x))), cfg=IndexConfig(type="flat"))
    hits = idx.search(q[:1], 3)[0]
    xn, qn = normalize(x), normalize(q[:1])[0]
    for pid, score in hits:
        assert score == pytest.approx(float(xn[pid] @ qn), abs=1e-5)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


# --------------------------------------------------------------------------- ids, metadata
def test_ids_map_to_their_vectors():
    x = clustered(300, seed=3)
    rng = np.random.default_rng(1)
    ids = [f"p{n}" for n in rng.permutation(10_000)[:300]]
    idx = SearchIndex.build(x, ids, cfg=IndexConfig(type="flat"))
    top1 = [hits[0][0] for hits in idx.search(x, 1)]
    assert top1 == ids
    np.testing.assert_allclose(idx.vector_of(ids[7]), normalize(x[7])[0], rtol=1e-5)
    # numpy integer ids come back as plain ints
    idx2 = SearchIndex.build(x, np.arange(1000, 1300), cfg=IndexConfig(type="flat"))
    pid, _ = idx2.search(x[5], 1)[0][0]
    assert pid == 1005 and type(pid) is int


def test_metadata_is_aligned_by_id():
    x = clustered(20, seed=4)
    ids = list(range(100, 120))
    meta = pd.DataFrame({"id": ids[::-1], "title": [f"t{i}" for i in ids[::-1]],
                         "price": np.arange(20.0)})
    idx = SearchIndex.build(x, ids, meta)
    assert idx.metadata["id"].tolist() == ids
    assert idx.lookup([105, 100])["title"].tolist() == ["t105", "t100"]
    with pytest.raises(KeyError):
        idx.lookup([999])
    with pytest.raises(ValueError, match="unique"):
        SearchIndex.build(x, [1] * 20)


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_save_load_round_trip(tmp_path, data, kind):
    x, q = data
    x = x[:2000]
    ids = [f"listing-{i}" for i in range(len(x))]
    meta = pd.DataFrame({"id": ids, "title": [f"item {i}" for i in range(len(x))],
                         "price": np.linspace(1, 500, len(x)),
                         "lat": np.linspace(50, 58, len(x)), "lon": np.linspace(-5, 1, len(x))})
    cfg = IndexConfig(type=kind, hnsw_ef_search=48, ivf_nprobe=4, pq_m=16)
    idx = SearchIndex.build(x, ids, meta, cfg)
    before = idx.search(q[:20], 10)
    near_before = idx.search_near(q[0], 5, 51.5, -0.1, alpha=0.2, radius_km=100)

    idx.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["type"] == kind and manifest["ntotal"] == len(x) and manifest["dim"] == DIM
    loaded = SearchIndex.load(tmp_path / "idx")

    assert loaded.ids == ids and loaded.cfg == cfg
    pd.testing.assert_frame_equal(loaded.metadata, idx.metadata)
    assert loaded.search(q[:20], 10) == before
    assert loaded.search_near(q[0], 5, 51.5, -0.1, alpha=0.2, radius_km=100) == near_before
    # "more like this" reads a stored vector back (IVF types build their row map for it);
    # ivfpq re-ranks by default, from a float16 copy of the vectors it reads it from
    stored = loaded.vector_of(ids[3])
    assert loaded.reranks == (kind == "ivfpq")
    np.testing.assert_allclose(stored, normalize(x[3])[0], atol=2e-3 if kind == "ivfpq" else 1e-5)
    assert (tmp_path / "idx" / "rerank_vectors.bin").exists() == (kind == "ivfpq")


def test_load_missing_directory_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        SearchIndex.load(tmp_path)


# --------------------------------------------------------------------------- search_near
def unit(sim):
    """A DIM-vector whose cosine with e0 is ``sim``."""
    v = np.zeros(DIM, dtype=np.float32)
    v[0], v[1] = sim, np.sqrt(1 - sim**2)
    return v


LONDON = (51.5074, -0.1278)


@pytest.fixture()
def near_index():
    # "far": most similar, in Edinburgh (~530 km); "close": slightly less similar, in
    # Croydon (~15 km); "nowhere": very similar, no coordinates; "other": dissimilar, London.
    ids = ["far", "close", "nowhere", "other"]
    x = np.stack([unit(0.95), unit(0.92), unit(0.96), unit(0.2)])
    meta = pd.DataFrame({"id": ids, "lat": [55.9533, 51.3762, np.nan, 51.51],
                         "lon": [-3.1883, -0.0982, np.nan, -0.13]})
    return SearchIndex.build(x, ids, meta, IndexConfig(type="flat"))


def test_search_near_prefers_close_listing_with_alpha(near_index):
    query = unit(1.0)
    res = near_index.search_near(query, 3, *LONDON, alpha=0.1, radius_km=50)
    # close: 0.92 - 0.1 * ~15/50 ~ 0.89; nowhere: 0.96 - 0.1 = 0.86; far: 0.95 - 0.1 = 0.85
    assert [r["product_id"] for r in res] == ["close", "nowhere", "far"]
    close, nowhere, far = res
    assert close["similarity"] == pytest.approx(0.92, abs=1e-5)
    assert close["distance_km"] == pytest.approx(
        haversine_km(*LONDON, 51.3762, -0.0982), rel=1e-6)
    assert 10 < close["distance_km"] < 20 and 500 < far["distance_km"] < 560
    # score = similarity - alpha * min(distance / radius, 1)
    assert close["score"] == pytest.approx(0.92 - 0.1 * close["distance_km"] / 50, abs=1e-5)
    assert far["score"] == pytest.approx(0.95 - 0.1, abs=1e-5)  # beyond the radius: capped
    assert nowhere["distance_km"] is None
    assert nowhere["score"] == pytest.approx(0.96 - 0.1, abs=1e-5)  # maximum penalty


def test_search_near_alpha_zero_is_pure_similarity(near_index):
    res = near_index.search_near(unit(1.0), 3, *LONDON, alpha=0.0, radius_km=50)
    assert [r["product_id"] for r in res] == ["nowhere", "far", "close"]
    assert all(r["score"] == r["similarity"] for r in res)


def test_search_near_without_buyer_location(near_index):
    res = near_index.search_near(unit(1.0), 4, None, None, alpha=0.5)
    assert [r["product_id"] for r in res] == ["nowhere", "far", "close", "other"]
    assert all(r["distance_km"] is None for r in res)


def test_search_near_pool_is_limited_to_k_results(near_index):
    assert len(near_index.search_near(unit(1.0), 1, *LONDON, alpha=0.1)) == 1
    assert len(near_index.search(unit(1.0), 50)[0]) == 4  # never more than the index holds
