"""search_relevance: precision@k and top-1 of the search by photo, by text and by both, on an
index of hand-placed vectors where every figure is known; search_parts: the same over parts.

The stand-in bundle has what ``search_relevance`` uses: ``index`` (a real ``SearchIndex``) and
``predict``, which returns a chosen fused embedding per query (recognised by its text and by
the value its photo's pixels are filled with) and checks that each query is made as the server
makes it: photo-only with text "" and has_text 0, text-only with zero pixels and has_image 0.

Vectors live in two orthogonal planes of R^4 (cosine 0 between planes), at angles in degrees;
the index ranks by angle from the query within a plane::

    plane 0: P (cars) at 0°, A1..A12 at 1°..12°
    plane 1: Q (toys) at 0.5°, B1..B12 at 1°..12°

    A1..A12: cars cars toys cars cars toys cars cars cars toys cars cars
    B1..B12: toys cars toys toys cars toys toys toys cars toys cars cars

Listing P (cars) has two photos; Q (toys) has none. Queries and their k = 10 results:

    P text   plane 0 at 0°     P, A1..A10 -> P dropped -> A1..A10: 7 cars, first cars
             (P not dropped it would be P, A1..A9: 8 cars)
    P image  plane 1 at 0°     Q, B1..B9 (the 11th, B10, cut): 3 cars (B2 B5 B9), first Q toys
             (P's second photo would give plane 0 at 3°)
    P both   plane 1 at 12.5°  B12 B11 B10 B9 .. B3: 4 cars (B12 B11 B9 B5), first cars
    Q text   plane 1 at 0.5°   Q, B1..B10 -> Q dropped -> B1..B10: 7 toys, first toys
"""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from marketsearch.config import EvaluateConfig, IndexConfig
from marketsearch.evaluation import (SEARCH_MODES, search_lines, search_metrics, search_parts,
                                     search_relevance)
from marketsearch.index import SearchIndex

A_CATS = "cars cars toys cars cars toys cars cars cars toys cars cars".split()
B_CATS = "toys cars toys toys cars toys toys toys cars toys cars cars".split()
PHOTO_SIZE = 4


def at(plane: int, degrees: float) -> np.ndarray:
    v = np.zeros(4, np.float32)
    rad = np.deg2rad(degrees)
    v[2 * plane], v[2 * plane + 1] = np.cos(rad), np.sin(rad)
    return v


def catalogue() -> SearchIndex:
    rows = ([("P", at(0, 0), "cars")]
            + [(f"A{i}", at(0, i), cat) for i, cat in enumerate(A_CATS, 1)]
            + [("Q", at(1, 0.5), "toys")]
            + [(f"B{i}", at(1, i), cat) for i, cat in enumerate(B_CATS, 1)])
    ids, vecs, cats = zip(*rows)
    meta = pd.DataFrame({"id": ids, "category": cats, "title": ids})
    return SearchIndex.build(np.stack(vecs), list(ids), meta, IndexConfig(type="flat"))


# Query embeddings: by photo (the value its pixels are filled with), by text, by both.
PHOTO_QUERY = {1: at(1, 0), 2: at(0, 3)}
TEXT_QUERY = {"P: red toy car": at(0, 0), "Q: teddy bear": at(1, 0.5)}
BOTH_QUERY = {("P: red toy car", 1): at(1, 12.5), ("P: red toy car", 2): at(0, 6)}


class StandIn:
    """What search_relevance needs of a Bundle: ``index`` and ``predict``."""

    def __init__(self):
        self.index = catalogue()
        self.queries: list[tuple[str, str]] = []  # (mode, what) in the order predicted

    def predict(self, texts, pixels, has_text, has_image, per_modality=True):
        assert per_modality is False
        assert len(texts) == len(pixels) == len(has_text) == len(has_image)
        assert pixels.dtype == np.uint8
        out = []
        for text, px, t, i in zip(texts, pixels, has_text, has_image):
            photo = int(px.flat[0])
            assert np.all(px == photo)
            if t == 0 and i == 1:
                assert text == ""
                self.queries.append(("image", photo))
                out.append(PHOTO_QUERY[photo])
            elif t == 1 and i == 0:
                assert photo == 0, "a text-only query sends zero pixels"
                self.queries.append(("text", text))
                out.append(TEXT_QUERY[text])
            else:
                assert t == 1 and i == 1, (t, i)
                self.queries.append(("both", (text, photo)))
                out.append(BOTH_QUERY[(text, photo)])
        return SimpleNamespace(fused_embedding=np.stack(out))


@pytest.fixture
def listings():
    """(products, images, pixels): P with two photos (first filled with 1, second with 2), Q
    without a photo."""
    products = pd.DataFrame({"id": ["P", "Q"], "text": ["P: red toy car", "Q: teddy bear"],
                             "category": ["cars", "toys"]})
    images = pd.DataFrame({"id": ["p-first", "p-second"], "product_id": ["P", "P"],
                           "row": [0, 1]})
    pixels = np.stack([np.full((PHOTO_SIZE, PHOTO_SIZE, 3), v, np.uint8) for v in (1, 2)])
    return products, images, pixels


def test_figures_are_the_hand_computed_ones(listings):
    bundle = StandIn()
    result = search_relevance(bundle, *listings, k=10)
    assert result == {
        "k": 10, "n_listings": 2,
        "image": {"n_queries": 1, "precision_at_10": pytest.approx(0.3), "top1": 0.0},
        "text": {"n_queries": 2, "precision_at_10": pytest.approx(0.7), "top1": 1.0},
        "both": {"n_queries": 1, "precision_at_10": pytest.approx(0.4), "top1": 1.0},
    }
    # P by its first photo only; Q (no photo) by text only; nothing else was asked.
    assert sorted(bundle.queries, key=str) == sorted(
        [("image", 1), ("text", "P: red toy car"), ("text", "Q: teddy bear"),
         ("both", ("P: red toy car", 1))], key=str)


def test_own_listing_is_never_counted(listings):
    """P and Q are their own nearest listing by text; counted, text precision would be
    (0.8 + 0.7) / 2 and with k = 1 every text query would be right by finding itself."""
    products, images, pixels = listings
    text = search_relevance(StandIn(), products, images, pixels, k=10)["text"]
    assert text["precision_at_10"] == pytest.approx(0.7)
    # k = 1: P's nearest other listing A1 is cars (right), Q's B1 is toys (right).
    assert search_relevance(StandIn(), products, images, pixels, k=1)["text"] == {
        "n_queries": 2, "precision_at_1": 1.0, "top1": 1.0}
    # k = 3 for Q alone: B1 toys, B2 cars, B3 toys (Q itself, the nearest, left out).
    only_q = search_relevance(StandIn(), products[products["id"] == "Q"], images, pixels, k=3)
    assert only_q["text"]["precision_at_3"] == pytest.approx(2 / 3)


def test_photoless_listings_count_only_for_text(listings):
    products, images, pixels = listings
    result = search_relevance(StandIn(), products, images.iloc[0:0], pixels, k=10)
    assert result["image"] == {"n_queries": 0, "precision_at_10": None, "top1": None}
    assert result["both"] == {"n_queries": 0, "precision_at_10": None, "top1": None}
    assert result["text"]["n_queries"] == 2
    assert search_metrics(result) == {
        "image": {}, "both": {},
        "text": {"precision_at_10": pytest.approx(0.7), "top1": 1.0}}


def test_chunks_give_the_same_figures(listings):
    assert (search_relevance(StandIn(), *listings, k=10, chunk_size=1)
            == search_relevance(StandIn(), *listings, k=10))


def test_parts_give_the_figures_of_the_listings_whole(listings):
    """Q's part first, then P's, whose pixels hold its photos the other way round (``row``
    indexes the part's own pixels): the hand-computed figures of the whole, every query once."""
    products, images, pixels = listings
    q_part = (products[products["id"] == "Q"], images.iloc[0:0],
              np.zeros((0, PHOTO_SIZE, PHOTO_SIZE, 3), np.uint8))
    p_part = (products[products["id"] == "P"], images.assign(row=[1, 0]), pixels[::-1])
    bundle = StandIn()
    result = search_parts(bundle, iter([q_part, p_part]), k=10)
    assert result == search_relevance(StandIn(), *listings, k=10)
    assert result["n_listings"] == 2 and result["image"] == {
        "n_queries": 1, "precision_at_10": pytest.approx(0.3), "top1": 0.0}
    assert len(bundle.queries) == 4


def test_metrics_and_lines_name_every_mode(listings):
    result = search_relevance(StandIn(), *listings, k=10)
    assert search_metrics(result) == {
        "image": {"precision_at_10": pytest.approx(0.3), "top1": 0.0},
        "text": {"precision_at_10": pytest.approx(0.7), "top1": 1.0},
        "both": {"precision_at_10": pytest.approx(0.4), "top1": 1.0}}
    lines = search_lines(result)
    assert len(lines) == len(SEARCH_MODES)
    assert "precision@10 0.300" in lines[0] and "top-1 0.000" in lines[0]
    assert "(2 queries)" in lines[1]


def test_k_comes_from_the_evaluate_config():
    assert EvaluateConfig().search_k == 10
    with pytest.raises(ValueError):
        EvaluateConfig(search_k=0)
