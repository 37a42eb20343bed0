"""The price head's comparables (marketsearch.comparables) on a handful of listings: a text
finds its near twin and that listing's price, a listing is not its own comparable, a text
without known words has none, and the saved index answers as the built one."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from marketsearch.comparables import Comparables, TextEmbedder

LISTINGS = pd.DataFrame({
    "id": ["a", "b", "c", "d", "e", "f"],
    "text": ["iphone 12 mini 64gb unlocked black boxed", "iphone 12 mini 64gb unlocked white",
             "oak dining table with four chairs", "oak dining table with six chairs",
             "childrens mountain bike 21 gears", "adult mountain bike 21 gears"],
    "price": [300.0, 280.0, 120.0, 150.0, 40.0, 90.0]})


@pytest.fixture(scope="module")
def comparables():
    embedder = TextEmbedder.fit(LISTINGS["text"].tolist(), dim=16, min_df=1, seed=0)
    # two frames, as shards come
    return Comparables.build(embedder, [LISTINGS.iloc[:4], LISTINGS.iloc[4:]], len(LISTINGS), k=2)


def test_a_text_finds_its_near_twin_and_its_price(comparables):
    out = comparables.features(["iphone 12 mini 64gb unlocked black boxed", "oak table chairs"])
    assert out.shape == (2, 3) and out.dtype == np.float32
    assert out[0, 0] == pytest.approx(1.0, abs=1e-4)          # the same text: cosine 1
    assert out[0, 1] == pytest.approx(math.log(300.0), rel=1e-6)
    # the weighted mean of the two best lies between their log-prices
    assert math.log(280.0) <= out[0, 2] <= math.log(300.0)
    assert 0 < out[1, 0] < 1                                 # a dining table's price
    assert np.abs(out[1, 1] - np.log([120.0, 150.0])).min() < 1e-5


def test_a_listing_is_not_its_own_comparable(comparables):
    out = comparables.features(LISTINGS["text"].tolist(), exclude=LISTINGS["id"].tolist())
    # each one's best is now its twin (a <-> b, c <-> d, e <-> f), whose price differs
    twins = np.log([280.0, 300.0, 150.0, 120.0, 90.0, 40.0])
    np.testing.assert_allclose(out[:, 1], twins, rtol=1e-6)


def test_a_text_with_no_known_word_has_no_comparable(comparables):
    out = comparables.features(["", "zzz qqq"])
    np.testing.assert_array_equal(out, np.zeros((2, 3), np.float32))


def test_saved_and_loaded_it_answers_the_same(comparables, tmp_path):
    texts = ["white iphone 12", "bike for a child", "dining chairs"]
    loaded = Comparables.load(comparables.save(tmp_path / "comparables"))
    assert loaded.k == 2 and len(loaded.index) == len(LISTINGS)
    # the projection is stored in float16: the same neighbours, cosines to ~1e-3
    np.testing.assert_allclose(loaded.features(texts), comparables.features(texts), atol=2e-3)


def test_too_few_texts_to_learn_terms_from_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fit comparables on 2 texts"):
        TextEmbedder.fit(["a b", "c d"], dim=8, min_df=3, seed=0)


def test_the_same_text_asked_twice_gets_the_same_answer_as_once(comparables):
    """A listing is asked with and without its photo: the second ask is not searched again,
    and answers as the first (its own exclusion kept)."""
    texts = ["iphone 12 mini 64gb unlocked white", "oak dining table with four chairs"] * 2
    ids = ["b", "c", "b", "x"]
    twice = comparables.features(texts, exclude=ids)
    np.testing.assert_array_equal(twice[0], twice[2])
    np.testing.assert_array_equal(twice[[0, 1]], comparables.features(texts[:2], ids[:2]))
    # "c" left out of the one, not of the other
    assert twice[1, 1] == pytest.approx(math.log(150.0)) and twice[3, 0] > twice[1, 0]


def test_more_listings_than_expected_is_a_clear_error(comparables):
    with pytest.raises(ValueError, match="than the 4 expected"):
        Comparables.build(comparables.embedder, [LISTINGS], 4, k=2)


def test_max_terms_keeps_the_most_frequent_terms_and_bounds_the_projection():
    texts = LISTINGS["text"].tolist()
    full = TextEmbedder.fit(texts, dim=4, min_df=1, seed=0)
    capped = TextEmbedder.fit(texts, dim=4, min_df=1, seed=0, max_terms=6)
    assert len(full.vectorizer.vocabulary_) > 6
    assert capped.projection.shape == (6, 4) and len(capped.vectorizer.vocabulary_) == 6
    # those kept are terms of the most listings (two each here), none of one listing only
    counts = {t: sum(f" {t} " in f" {text} " for text in texts)
              for t in capped.vectorizer.vocabulary_}
    assert set(counts.values()) == {2}, counts
    assert "boxed" in full.vectorizer.vocabulary_ and "boxed" not in capped.vectorizer.vocabulary_
