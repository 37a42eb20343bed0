"""The price head as train_fusion trains it into the model part and the bundle carries it: on
the fixture, every kind of request (text and photo, text only, photo only) gets a price whose
interval holds the estimate, and the baselines trained beside it load back."""
from __future__ import annotations

import json

import numpy as np
import pytest

from marketsearch.bundle import Bundle
from marketsearch.pricing import BASELINES_FILE, PRICE_FILE, TEXT_PRICE, load_baselines
from tests.support import train_tiny_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny_bundle(tmp_path_factory.mktemp("price"))


def test_train_fusion_trains_the_price_head_and_its_baselines_into_the_bundle(trained):
    cfg, _, bundle_dir = trained
    for name in (PRICE_FILE, BASELINES_FILE):
        assert (bundle_dir / name).exists(), f"{name} did not reach the bundle"
    result = json.loads((bundle_dir.parent / "fused" / "result.json").read_text())
    assert result["price_rows"] > result["price_val_rows"] > 0
    assert 0.0 <= result["price_coverage"] <= 1.0 and result["price_interval_scale"] > 0
    assert 0.3 <= result["price_estimate_factor"] <= 1.0   # the suggestion: below the median
    # the bundle's head answers the validation listings as it did in training (it learned
    # from the embeddings the served bundle computes, vocabulary and all)
    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.pricing import score_prices
    from marketsearch.records import CleanData

    catalogue = CleanCatalogue.of(CleanData.load(bundle_dir.parent / "clean"))
    val = score_prices(Bundle(bundle_dir), catalogue.parts("val"))
    # (and a listing is its own comparable in neither)
    assert val["modes"]["both"]["mdape"] == pytest.approx(result["price_val_mdape"], rel=1e-4)
    # the comparables it reads: every priced listing of the catalogue, whatever its split
    from marketsearch.pricing import priced

    comparables = Bundle(bundle_dir).comparables
    assert len(comparables.index) == len(priced(catalogue.plan.listings)) > 0
    assert comparables.k == cfg.price.comparables
    baselines = load_baselines(bundle_dir)
    estimate, low, high = baselines["tfidf_ridge"].predict(["mountain bike 21 gears"])
    assert low[0] <= estimate[0] <= high[0] and estimate[0] > 0
    # the head's own text ridge (price.text_char_terms) travels beside the baseline
    assert baselines[TEXT_PRICE].char_vocabulary and not baselines["tfidf_ridge"].char_vocabulary
    assert result["price_heads"] == cfg.price.heads == 2


def test_every_kind_of_request_gets_a_price_inside_its_interval(trained):
    cfg, _, bundle_dir = trained
    bundle = Bundle(bundle_dir)
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 255, (3, bundle.image_size, bundle.image_size, 3), np.uint8)
    texts = ["oak dining table and four chairs", "", "childrens bike"]
    has_text = np.array([1, 0, 1], np.float32)
    has_image = np.array([1, 1, 0], np.float32)          # both, photo only, text only
    pred = bundle.predict(texts, photos, has_text, has_image, per_modality=False)
    prices = bundle.price(pred.fused_embedding, texts, has_text, has_image,
                          lat=[51.5, np.nan, 53.4], lon=[-0.12, np.nan, -2.2])
    assert prices.shape == (3, 3) and prices.dtype == np.float32
    assert np.isfinite(prices).all() and (prices > 0).all()
    estimate, low, high = prices.T
    assert (low <= estimate).all() and (estimate <= high).all() and (low < high).all()
    # the text's share computed first (as the server does, beside the models) changes nothing
    part = bundle.price_text(texts)
    assert part["ridge"][1] == 0 and not part["comparables"][1].any()   # no text, no evidence
    np.testing.assert_array_equal(bundle.price(pred.fused_embedding, texts, has_text, has_image,
                                               lat=[51.5, np.nan, 53.4], lon=[-0.12, np.nan, -2.2],
                                               text_part=part), prices)
    # and it is what the head reads: a ridge that says ten times the price moves the estimate
    louder = {**part, "ridge": part["ridge"] + np.log(10.0) * (has_text > 0)}
    moved_by_ridge = bundle.price(pred.fused_embedding, texts, has_text, has_image,
                                  lat=[51.5, np.nan, 53.4], lon=[-0.12, np.nan, -2.2],
                                  text_part=louder)
    assert moved_by_ridge[0, 0] != prices[0, 0] and moved_by_ridge[1, 0] == prices[1, 0]
    # a price the seller wrote is read: naming one moves the estimate towards it
    named = bundle.price(pred.fused_embedding[2:], ["childrens bike £900"], has_text[2:],
                         has_image[2:], lat=[53.4], lon=[-2.2])
    assert named[0, 0] > prices[2, 0]
    # the location is an input: moving the listing moves its price
    moved = bundle.price(pred.fused_embedding, texts, has_text, has_image,
                         lat=[57.1, np.nan, 50.4], lon=[-2.1, np.nan, -4.1])
    assert not np.allclose(moved, prices)


def test_a_bundle_without_a_price_head_answers_none(trained, tmp_path):
    import shutil

    _, _, bundle_dir = trained
    old = shutil.copytree(bundle_dir, tmp_path / "old")
    (old / PRICE_FILE).unlink()
    (old / BASELINES_FILE).unlink()
    assert Bundle(old).price(np.zeros((1, 4), np.float32), ["a sofa"], [1.0], [0.0]) is None
    assert Bundle(old).price_text(["a sofa"]) is None
    assert load_baselines(old) is None
    # a bundle from before the head had its own text ridge: the head reads the baseline's
    words_only = shutil.copytree(bundle_dir, tmp_path / "words")
    state = json.loads((words_only / BASELINES_FILE).read_text())
    del state[TEXT_PRICE]
    (words_only / BASELINES_FILE).write_text(json.dumps(state))
    baselines = load_baselines(words_only)
    assert baselines[TEXT_PRICE] is baselines["tfidf_ridge"]


def test_evaluate_scores_the_head_against_both_baselines_on_the_same_listings(trained, tmp_path):
    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.components.evaluate import price_warning
    from marketsearch.pricing import price_figure, priced, score_prices
    from marketsearch.records import CleanData

    _, clean_dir, bundle_dir = trained
    catalogue = CleanCatalogue.of(CleanData.load(clean_dir))
    result = score_prices(Bundle(bundle_dir), catalogue.parts("test"))
    n = sum(len(priced(p.products)) for p in catalogue.parts("test"))
    assert result["n_listings"] == n > 0
    for name in ("model", "tfidf_ridge", "category_median"):
        figures = result["models"][name]
        assert figures["n"] == n and 0 <= figures["coverage_80"] <= 1 and figures["mdape"] >= 0
    assert result["modes"]["text"]["n"] == n                # every listing can be asked by text
    assert len(result["sample"]["true"]) == n and len(result["sample"]["model"][0]) == 3
    price_figure(result).savefig(tmp_path / "price.png")
    assert (tmp_path / "price.png").stat().st_size > 10_000
    # a challenger clearly worse at prices is flagged; within the tolerance, or alone, it is not
    worse = {"models": {"model": {"mdape": result["models"]["model"]["mdape"] * 1.5 + 0.1}}}
    assert "worse" in price_warning(worse, result, tolerance=0.1)
    assert price_warning(result, result, tolerance=0.1) == ""
    assert price_warning(worse, None, tolerance=0.1) == ""


def test_too_few_priced_listings_skip_the_price_head_and_say_why(trained, tmp_path):
    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.pricing import train_price
    from marketsearch.records import CleanData

    cfg, clean_dir, bundle_dir = trained
    few = cfg.model_copy(update={"price": cfg.price.model_copy(
        update={"min_train_listings": 10_000})})
    out = train_price(few, CleanCatalogue.of(CleanData.load(clean_dir)), Bundle(bundle_dir),
                      tmp_path)
    assert "fewer than price.min_train_listings (10000)" in out["price"]["skipped"]
    assert not (tmp_path / PRICE_FILE).exists()
