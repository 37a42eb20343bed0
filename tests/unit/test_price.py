"""The price-suggestion library (marketsearch.price) on hand-computed arrays and small
synthetic listings: metrics, the two baselines, the quantile head and its calibration."""
from __future__ import annotations

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from marketsearch.config import Config, PriceConfig  # noqa: E402
from marketsearch.price import (  # noqa: E402
    QUANTILES_LAYER, CategoryMedian, OrderedQuantiles, PinballLoss, Standardize, TfidfRidge,
    average_price_heads, build_price_head, calibrate_price_head, conformal_scale,
    fit_price_head, location_features, predict_price, price_metrics, price_plot,
    relative_error_shift)


# --- metrics -----------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values():
    true = [100.0, 200.0, 50.0, 10.0]
    est = [110.0, 150.0, 50.0, 20.0]  # errors 10, -50, 0, 10; relative 0.1, 0.25, 0, 1.0
    low, high = [90.0, 160.0, 40.0, 5.0], [120.0, 190.0, 60.0, 9.0]  # holds 100 and 50 only
    m = price_metrics(true, est, low, high)
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(17.5)
    assert m["rmse"] == pytest.approx(math.sqrt((100 + 2500 + 0 + 100) / 4))
    assert m["mdape"] == pytest.approx(0.175)  # the median of 0, 0.1, 0.25, 1.0
    assert m["within_25"] == pytest.approx(0.75)  # 0.25 itself counts
    assert m["coverage_80"] == pytest.approx(0.5)
    assert price_metrics(true, est)["coverage_80"] is None


def test_bad_true_prices_are_refused_by_count_and_position():
    with pytest.raises(ValueError, match=r"true: 3 of 5 prices .* positions 1, 2, 3$"):
        price_metrics([100.0, 0.0, np.nan, -5.0, 20.0], [1.0] * 5)
    with pytest.raises(ValueError, match=r"15 of 15 .* 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 5 more"):
        price_metrics([0.0] * 15, [1.0] * 15)
    with pytest.raises(ValueError, match="estimate has 2 rows but true has 3"):
        price_metrics([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="both low and high"):
        price_metrics([1.0], [1.0], low=[0.5])


# --- baselines ---------------------------------------------------------------------------------
# In each category one word sets the price, 10x apart: the category alone cannot tell.
ITEMS = {"furniture": {"sofa": 400.0, "stool": 40.0},
         "phones": {"iphone": 300.0, "case": 8.0},
         "tools": {"lathe": 900.0, "chisel": 12.0}}
FILLER = ["good", "condition", "collection", "only", "used", "clean", "offers", "welcome"]


def _listings(per_item: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    categories, texts, prices = [], [], []
    for category, items in ITEMS.items():
        for word, price in items.items():
            for _ in range(per_item):
                categories.append(category)
                texts.append(" ".join([word, *rng.choice(FILLER, size=4)]))
                prices.append(price * math.exp(rng.normal(0, 0.1)))
    return categories, texts, np.round(np.asarray(prices), 2)


@pytest.fixture(scope="module")
def listings():
    return _listings(8, seed=0), _listings(3, seed=1)  # 48 training, 18 test listings


def _bounded(estimate, low, high) -> None:
    assert np.all(low <= estimate) and np.all(estimate <= high) and np.all(low > 0)


def test_tfidf_ridge_beats_category_median_when_words_carry_the_price(listings):
    (cats, texts, prices), (test_cats, test_texts, test_prices) = listings
    by_category = CategoryMedian(min_listings=3).fit(cats, prices).predict(test_cats)
    by_words = TfidfRidge(alpha=0.1).fit(texts, prices).predict(test_texts)
    for parts in (by_category, by_words):
        _bounded(*parts)
    median = price_metrics(test_prices, *by_category)
    ridge = price_metrics(test_prices, *by_words)
    assert ridge["mdape"] < 0.5 * median["mdape"]
    assert ridge["within_25"] > median["within_25"]


def test_category_median_uses_the_category_and_falls_back_to_all_listings():
    model = CategoryMedian(min_listings=3).fit(
        ["a", "a", "a", "a", "a", "b", "b", "c", "c", "c"],
        [10, 20, 30, 40, 50, 1000, 1000, 1, 2, 3])
    estimate, low, high = model.predict(["a", "b", "unseen"])
    assert estimate[0] == 30.0 and low[0] == pytest.approx(14.0) and high[0] == pytest.approx(46.0)
    assert estimate[1] == estimate[2] == pytest.approx(np.median([10, 20, 30, 40, 50, 1000,
                                                                  1000, 1, 2, 3]))
    _bounded(estimate, low, high)
    with pytest.raises(ValueError, match=r"prices: 1 of 2 .* positions 1$"):
        CategoryMedian().fit(["a", "b"], [5.0, 0.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        CategoryMedian().predict(["a"])


@pytest.mark.parametrize("make", [lambda c, t, p: CategoryMedian(min_listings=3).fit(c, p),
                                  lambda c, t, p: TfidfRidge().fit(t, p),
                                  lambda c, t, p: TfidfRidge(char_terms=500).fit(t, p)],
                         ids=["category_median", "tfidf_ridge", "tfidf_ridge_chars"])
def test_baseline_state_round_trips_through_json_and_a_file(listings, tmp_path, make):
    (cats, texts, prices), (test_cats, test_texts, _) = listings
    model = make(cats, texts, prices)
    inputs = test_cats if isinstance(model, CategoryMedian) else test_texts
    expected = model.predict(inputs)
    again = type(model).from_dict(json.loads(json.dumps(model.to_dict())))
    loaded = type(model).load(model.save(tmp_path / "baseline" / "state.json"))
    for other in (again, loaded):
        for a, b in zip(expected, other.predict(inputs)):
            np.testing.assert_array_equal(a, b)
    other_kind = TfidfRidge if isinstance(model, CategoryMedian) else CategoryMedian
    with pytest.raises(ValueError, match="is not a"):
        other_kind.from_dict(model.to_dict())


def test_character_ngrams_price_words_the_training_texts_spelt_otherwise():
    """Trained on "bike" and "sofa" listings, a words-only ridge knows nothing of "bikes" or
    "sofas"; with character n-grams it prices them near their stems."""
    rng = np.random.default_rng(0)
    texts = [f"{w} {rng.choice(FILLER)}" for w in ("bike", "sofa") for _ in range(20)]
    prices = [300.0] * 20 + [30.0] * 20
    words = TfidfRidge(alpha=0.1, holdout=0.0).fit(texts, prices)
    chars = TfidfRidge(alpha=0.1, holdout=0.0, char_terms=2000).fit(texts, prices)
    assert 0 < len(chars.char_vocabulary) <= 2000 and not words.char_vocabulary
    unseen = ["bikes", "sofas"]
    np.testing.assert_allclose(words.predict(unseen)[0][0], words.predict(unseen)[0][1])
    bikes, sofas = chars.predict(unseen)[0]
    assert bikes > 3 * sofas


def test_tfidf_ridge_interval_comes_from_held_out_residuals(listings):
    (_, texts, prices), _ = listings
    training = TfidfRidge(alpha=0.1, holdout=0.0).fit(texts, prices)
    residuals = np.log(prices) - np.log(training.predict(texts)[0])
    np.testing.assert_allclose(training.residual_quantiles, np.quantile(residuals, [0.1, 0.9]))
    held_out = TfidfRidge(alpha=0.1, holdout=0.25).fit(texts, prices)
    width = [m.residual_quantiles[1] - m.residual_quantiles[0] for m in (held_out, training)]
    assert width[0] > 2 * width[1] > 0  # the training residuals flatter the model
    with pytest.raises(ValueError, match="holdout"):
        TfidfRidge(holdout=0.01).fit(texts[:10], prices[:10])


# --- the head ----------------------------------------------------------------------------------
def test_pinball_loss_by_hand():
    # y = 1 against quantiles (0, 1, 3) at levels 0.1, 0.5, 0.9: 0.1 * 1, 0, 0.1 * 2 -> mean 0.1
    loss = PinballLoss([0.1, 0.5, 0.9])(np.array([1.0]), np.array([[0.0, 1.0, 3.0]]))
    assert float(loss) == pytest.approx(0.1)


def test_ordered_quantiles_never_cross_whatever_the_raw_values():
    raw = np.random.default_rng(0).normal(0, 20, size=(500, 5)).astype("float32")
    out = np.asarray(OrderedQuantiles(2)(raw))
    assert np.all(np.diff(out, axis=1) >= 0)
    np.testing.assert_allclose(out[:, 2], raw[:, 2])


def test_standardize_scales_features_and_leaves_constant_ones_at_scale_one():
    x = np.stack([np.arange(10.0) * 1000, np.ones(10)], axis=1).astype("float32")
    layer = Standardize()
    layer.build(x.shape)
    layer.adapt(x)
    out = np.asarray(layer(x))
    np.testing.assert_allclose(out[:, 0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, 0].std(), 1, atol=1e-5)
    # A flag that was always 1 in training reads -1 where it is 0, not -1e7.
    np.testing.assert_allclose(np.asarray(layer(np.zeros((1, 2), "float32")))[0, 1], -1.0)


def test_conformal_scale_by_hand():
    quantiles = np.array([[-1.0, 0.0, 1.0]] * 4)
    needed = np.array([0.5, -2.0, 1.5, 0.1])  # factors 0.5, 2, 1.5, 0.1
    # n = 4, target 0.5: the ceil(5 * 0.5) = 3rd smallest factor
    assert conformal_scale(needed, quantiles, 1, 0.5) == 1.5
    assert conformal_scale(needed, quantiles, 1, 0.99) == 2.0  # never past the largest


def test_location_features():
    out = location_features([51.5, np.nan, None, 54.4], [-0.13, -2.0, -2.0, -3.25])
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(out[3], [0.0, 0.0, 1.0], atol=1e-6)  # the UK's middle
    assert -1 < out[0, 0] < 0 < out[0, 1] < 1 and out[0, 2] == 1  # London: south, east
    np.testing.assert_array_equal(out[1:3], 0.0)  # a missing coordinate: all zeros, flag 0
    with pytest.raises(ValueError, match="lon has 1 rows but lat has 2"):
        location_features([51.0, 52.0], [0.0])


DIM = 6
HEAD_CFG = PriceConfig(hidden=16, dropout=0.0, epochs=30, batch_size=32, learning_rate=1e-2,
                       warmup_epochs=0, patience=6)


def _linear(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Log-price = 4 + a fixed linear function of the features + noise (sd 0.2)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, DIM)).astype("float32")
    weights = np.linspace(-0.6, 0.6, DIM)
    return x, 4.0 + x @ weights + rng.normal(0, 0.2, size=n)


@pytest.fixture(scope="module")
def trained():
    (x, logp), (x_val, logp_val) = _linear(400, 0), _linear(300, 1)
    head = build_price_head(DIM, HEAD_CFG, seed=0)
    history = fit_price_head(head, x, logp, x_val, logp_val, HEAD_CFG, seed=0)
    return head, history


def test_head_learns_a_linear_log_price(trained):
    head, history = trained
    x_test, logp_test = _linear(300, 2)
    estimate, low, high = predict_price(head, x_test)
    metrics = price_metrics(np.exp(logp_test), estimate, low, high)
    assert metrics["mdape"] < 0.2  # noise alone gives ~0.14
    _bounded(estimate, low, high)
    assert 0.7 <= metrics["coverage_80"] <= 0.9
    assert history["best_epoch"] >= 1 and history["val_loss"][-1] < history["val_loss"][0]
    x_train, _ = _linear(400, 0)  # the fixture's: the input scaling comes from them
    np.testing.assert_allclose(head.get_layer("standardize").mean, x_train.mean(axis=0),
                               atol=1e-5)


def test_head_quantiles_never_cross_even_far_from_the_training_data(trained):
    head, _ = trained
    x = np.random.default_rng(3).normal(0, 50, size=(500, DIM)).astype("float32")
    quantiles = head.predict(x, verbose=0)
    assert np.all(np.diff(quantiles, axis=1) >= 0)


def test_calibrated_interval_covers_the_target_of_the_validation_rows(trained):
    head, history = trained
    x_val, logp_val = _linear(300, 1)
    assert 0.75 <= history["coverage"] <= 0.85
    _, low, high = predict_price(head, x_val)
    assert np.mean((np.exp(logp_val) >= low) & (np.exp(logp_val) <= high)) == \
        pytest.approx(history["coverage"], abs=1 / 300)
    # A wider target needs a larger scale, and the head keeps the last one set.
    wider = calibrate_price_head(head, x_val, logp_val, 0.95)
    assert wider["interval_scale"] > history["interval_scale"] and wider["coverage"] >= 0.94
    calibrate_price_head(head, x_val, logp_val, HEAD_CFG.interval_target)


def test_relative_error_shift_centres_the_window_and_lowers_the_median_relative_error():
    assert relative_error_shift(0.0) == 0.0
    assert relative_error_shift(0.5) == pytest.approx(0.5 * np.log(0.75))
    assert relative_error_shift(3.0) == relative_error_shift(0.95)   # capped, still finite
    with pytest.raises(ValueError, match="0 or more"):
        relative_error_shift(float("nan"))
    # Prices whose log lies around the suggested median (sd 0.9): the median asks too much
    # by more, in relative terms, than it asks too little; the shifted one less so.
    rng = np.random.default_rng(0)
    median = rng.uniform(1, 6, size=50_000)
    true = np.exp(median + rng.normal(0, 0.9, size=median.size))
    error = lambda estimate: np.median(np.abs(estimate / true - 1))  # noqa: E731
    plain = error(np.exp(median))
    shifted = error(np.exp(median + relative_error_shift(plain)))
    assert shifted < plain - 0.003


def test_calibration_moves_the_suggestion_below_the_median_and_can_leave_it(trained):
    head, history = trained
    assert history["estimate_factor"] == pytest.approx(
        np.sqrt(1 - history["mdape_before"] ** 2))
    assert history["estimate_factor"] < 1 and history["mdape"] <= history["mdape_before"]
    x_val, logp_val = _linear(300, 1)
    layer = head.get_layer(QUANTILES_LAYER)
    median = np.exp(head.predict(x_val, verbose=0)[:, layer.median])
    np.testing.assert_allclose(predict_price(head, x_val)[0],
                               median * history["estimate_factor"], rtol=1e-5)
    with pytest.raises(ValueError, match="selects none"):
        calibrate_price_head(head, x_val, logp_val, 0.8, relative_rows=np.zeros(300, bool))
    half = calibrate_price_head(head, x_val, logp_val, 0.8, relative_rows=np.arange(300) < 150)
    assert half["mdape_before"] == pytest.approx(
        np.median(np.abs(median[:150] / np.exp(logp_val[:150]) - 1)), rel=1e-5)
    plain = calibrate_price_head(head, x_val, logp_val, HEAD_CFG.interval_target,
                                 relative=False)
    assert plain["estimate_factor"] == 1.0 and layer.estimate_shift == 0.0
    np.testing.assert_allclose(predict_price(head, x_val)[0], median, rtol=1e-5)
    calibrate_price_head(head, x_val, logp_val, HEAD_CFG.interval_target)   # as it was


def test_head_round_trips_through_keras_file(trained, tmp_path):
    head, history = trained
    path = tmp_path / "price.keras"
    head.save(path)
    loaded = keras.models.load_model(path)
    assert float(loaded.get_layer(QUANTILES_LAYER).interval_scale) == \
        pytest.approx(history["interval_scale"])
    assert loaded.get_layer(QUANTILES_LAYER).estimate_shift == \
        pytest.approx(np.log(history["estimate_factor"])) != 0
    x, _ = _linear(50, 4)
    for a, b in zip(predict_price(head, x), predict_price(loaded, x)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_averaged_heads_answer_the_mean_of_their_quantiles_calibrated_anew(trained, tmp_path):
    (x, logp), (x_val, logp_val) = _linear(400, 0), _linear(300, 1)
    first, _ = trained
    second = build_price_head(DIM, HEAD_CFG, seed=1, name="price_head_1")
    fit_price_head(second, x, logp, x_val, logp_val, HEAD_CFG, seed=1)
    with pytest.raises(ValueError, match="at least one head"):
        average_price_heads([])
    both = average_price_heads([first, second])
    x_test, logp_test = _linear(200, 5)
    expected = (first.predict(x_test, verbose=0) + second.predict(x_test, verbose=0)) / 2
    np.testing.assert_allclose(both.predict(x_test, verbose=0), expected, rtol=1e-5, atol=1e-5)
    calibration = calibrate_price_head(both, x_val, logp_val, 0.8)
    assert 0.75 <= calibration["coverage"] <= 0.85
    assert float(first.get_layer(QUANTILES_LAYER).interval_scale) == 1.0   # reset, not stacked
    estimate, low, high = predict_price(both, x_test)
    _bounded(estimate, low, high)
    assert np.all(np.diff(both.predict(x_test * 50, verbose=0), axis=1) >= 0)
    path = tmp_path / "price.keras"
    both.save(path)
    for a, b in zip(predict_price(both, x_test), predict_price(keras.models.load_model(path),
                                                               x_test)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    other = build_price_head(DIM + 1, HEAD_CFG, seed=2, name="price_head_2")
    with pytest.raises(ValueError, match="differ in inputs"):
        average_price_heads([first, other])
    calibrate_price_head(first, x_val, logp_val, HEAD_CFG.interval_target)  # as the fixture had it


def _with_gate(head, bias: float):
    """``head`` with its written-price gate forced open (large bias) or shut (very negative)."""
    gate = head.get_layer("price_gate")
    kernel, _ = gate.get_weights()
    gate.set_weights([np.zeros_like(kernel), np.full((1,), bias, np.float32)])
    return head


def test_written_price_gate_moves_the_median_of_rows_that_state_a_price(tmp_path):
    """The gate open, a row that states a price gets exactly it as its median; a row that
    states none answers as with the gate shut; the quantiles still never cross."""
    cfg = PriceConfig(hidden=8)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    x[:, 5] = [1, 0, 1, 0]                                   # flag: a price is written
    x[:, 4] = np.log([10.0, 999.0, 250.0, 999.0])            # its log (ignored without flag)
    head = build_price_head(6, cfg, seed=0, written=(4, 5))
    head.get_layer("standardize").adapt(np.random.default_rng(1).normal(size=(50, 6)))
    opened = _with_gate(head, 50.0).predict(x, verbose=0)
    np.testing.assert_allclose(opened[[0, 2], 1], np.log([10.0, 250.0]), rtol=1e-5)
    assert (np.diff(opened, axis=1) > 0).all()
    shut = _with_gate(head, -50.0).predict(x, verbose=0)
    _with_gate(head, 50.0)
    np.testing.assert_allclose(opened[[1, 3]], shut[[1, 3]], rtol=1e-6)
    assert np.abs(opened[[0, 2], 1] - shut[[0, 2], 1]).min() > 1e-3
    # saved and loaded, it answers the same
    head.save(tmp_path / "price.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "price.keras").predict(
        x, verbose=0), opened, rtol=1e-6)
    # off by config, or without the columns, there is no gate
    assert "price_gate" not in [layer.name for layer in build_price_head(
        6, PriceConfig(written_gate=False), written=(4, 5)).layers]
    assert "price_gate" not in [layer.name for layer in build_price_head(6, cfg).layers]
    with pytest.raises(ValueError, match=r"written columns \(4, 6\) are not inside the 6"):
        build_price_head(6, cfg, written=(4, 6))


def test_comparable_gate_moves_the_median_by_the_cosine_and_the_written_price_has_the_last_word():
    """Both gates open: a row's median goes the comparable's cosine of the way towards its
    price, then all the way to a price the seller wrote."""
    cfg = PriceConfig(hidden=8)
    x = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
    x[:, 2] = [1.0, 0.5, 0.5]                                # the best comparable's cosine
    x[:, 3] = np.log([80.0, 80.0, 80.0])                     # its log-price
    x[:, 6] = [0, 0, 1]                                      # a price is written ...
    x[:, 5] = np.log([1.0, 1.0, 30.0])                       # ... here
    head = build_price_head(7, cfg, seed=0, written=(5, 6), comparable=(3, 2))
    head.get_layer("standardize").adapt(np.random.default_rng(1).normal(size=(50, 7)))
    for name in ("price_comparable_gate", "price_gate"):
        gate = head.get_layer(name)
        gate.set_weights([np.zeros_like(gate.get_weights()[0]), np.full((1,), 50.0, np.float32)])
    opened = head.predict(x, verbose=0)
    assert opened[0, 1] == pytest.approx(math.log(80.0), rel=1e-5)
    gate = head.get_layer("price_comparable_gate")
    gate.set_weights([gate.get_weights()[0], np.full((1,), -50.0, np.float32)])
    own = head.predict(x, verbose=0)[1, 1]                   # the head's median, no comparable
    assert opened[1, 1] == pytest.approx((own + math.log(80.0)) / 2, rel=1e-5)
    assert opened[2, 1] == pytest.approx(math.log(30.0), rel=1e-5)
    assert (np.diff(opened, axis=1) > 0).all()
    with pytest.raises(ValueError, match=r"comparable columns \(7, 2\) are not inside the 7"):
        build_price_head(7, cfg, comparable=(7, 2))


def test_fit_refuses_bad_rows_and_a_mismatched_config():
    head = build_price_head(DIM, HEAD_CFG, seed=0)
    x, logp = _linear(20, 0)
    logp[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"train log-prices: 2 of 20 rows .* positions 3, 7$"):
        fit_price_head(head, x, logp, x, logp, HEAD_CFG, seed=0)
    five = PriceConfig(quantiles=[0.05, 0.1, 0.5, 0.9, 0.95])
    with pytest.raises(ValueError, match="predicts 3 quantiles but cfg.quantiles has 5"):
        fit_price_head(head, *_linear(20, 0), *_linear(20, 1), five, seed=0)


# --- config and figure -------------------------------------------------------------------------
def test_price_config_section():
    assert Config().price.quantiles == [0.1, 0.5, 0.9] and Config().price.interval_target == 0.8
    for bad in ([0.1, 0.9], [0.5, 0.9], [0.1, 0.5, 0.5, 0.9], [0.0, 0.5, 0.9]):
        with pytest.raises(ValueError, match="price.quantiles"):
            PriceConfig(quantiles=bad)


def test_price_plot_has_a_log_log_panel_per_model(listings, tmp_path):
    (cats, texts, prices), (test_cats, test_texts, test_prices) = listings
    fig = price_plot(test_prices, {
        "category median": CategoryMedian(min_listings=3).fit(cats, prices).predict(test_cats),
        "tf-idf ridge": TfidfRidge().fit(texts, prices).predict(test_texts),
        "no interval": (test_prices * 1.1, None, None)}, sample=10)
    assert len(fig.axes) == 3
    assert all(ax.get_xscale() == ax.get_yscale() == "log" for ax in fig.axes)
    assert "MdAPE" in fig.axes[0].get_title() and "coverage" not in fig.axes[2].get_title()
    fig.savefig(tmp_path / "price.png")
    assert (tmp_path / "price.png").stat().st_size > 2000
