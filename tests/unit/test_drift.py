"""Drift checks (marketsearch.drift): each check fires on a clearly shifted batch and stays
quiet on one from the same distribution; the reference round-trips through its files; too
small a batch is refused by name.

The statistical checks run on synthetic summaries; the summary code itself runs on the small
Gumtree fixture, cleaned by the pipeline's own ``clean_frames``, with a tiny bundle whose
image and text models are built here (random weights, the same "embedding" layers and input
contract as the trained ones) so that no test trains a model."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from marketsearch import drift, plots
from marketsearch.config import DriftConfig, load_config

SIZE, MAX_LEN = 32, 24
SMALL = DriftConfig(min_listings=20, min_photos=20)


# --------------------------------------------------------------------------- synthetic
def summary(categories: dict[str, int], prices, lengths, oov=0.05, photo=None, text=None,
            n_photos=None, brightness=None) -> drift.Reference:
    n = sum(categories.values())
    photo = np.zeros((0, 0), np.float32) if photo is None else np.asarray(photo, np.float32)
    text = np.zeros((0, 0), np.float32) if text is None else np.asarray(text, np.float32)
    brightness = np.zeros(0, np.float32) if brightness is None else np.asarray(brightness,
                                                                                np.float32)
    return drift.Reference(n_listings=n, n_photos=len(photo) if n_photos is None else n_photos,
                           category_counts=categories, price_sample=np.asarray(prices, float),
                           text_lengths=np.asarray(lengths, np.int64), oov_rate=oov,
                           photo_embeddings=photo, text_embeddings=text,
                           photo_brightness=brightness)


CATS = {"Appliances": 0.3, "Home & Garden": 0.25, "Phones": 0.2, "Sports": 0.15, "Toys": 0.1}


def listed_prices(rng, n, scale=1.0):
    """Prices as sellers list them: log-normal around £40 with the shared listings' spread
    (sd 1.8 in log), at round values (whole pounds under £10, then steps of £5, £10, £50),
    times ``scale``."""
    x = rng.lognormal(np.log(40), 1.8, n)
    step = np.select([x < 10, x < 100, x < 1000], [1, 5, 10], 50)
    return np.maximum(np.round(x / step), 1) * step * scale


def draw(rng, n, proportions=CATS, price_scale=1.0, length_scale=1.0, oov=0.05,
         shift=0.0, dim=16, dark=1.0):
    names = list(proportions)
    cats = rng.choice(names, size=n, p=np.array(list(proportions.values())))
    counts = {k: int((cats == k).sum()) for k in names if (cats == k).any()}
    prices = listed_prices(rng, n, price_scale)
    lengths = np.maximum(1, rng.poisson(40 * length_scale, n))
    photo = rng.normal(0, 1, (min(n, 300), dim)) + shift
    text = rng.normal(0, 1, (min(n, 300), dim))
    # mean luminance of ~1.7 photos per listing, 0-255, darkened by ``dark``
    brightness = np.clip(rng.normal(150, 40, int(n * 1.7)), 0, 255) * dark
    return summary(counts, prices, lengths, oov, photo, text, brightness=brightness)


@pytest.fixture(scope="module")
def reference():
    return draw(np.random.default_rng(0), 4000)


def test_same_distribution_fires_nothing(reference):
    for seed in (1, 2, 3):
        result = drift.run_checks(reference, draw(np.random.default_rng(seed), 500),
                                  DriftConfig(), seed=seed)
        assert not result["drift"], [r["detail"] for r in result["checks"].values()]
        assert set(result["checks"]) == set(drift.CHECKS)
        for check in result["checks"].values():
            assert set(check) >= {"name", "statistic", "threshold", "p_value", "drift", "detail"}


def test_category_mix_shift(reference):
    skewed = {"Appliances": 0.05, "Home & Garden": 0.05, "Phones": 0.05, "Sports": 0.45,
              "Toys": 0.4}
    result = drift.run_checks(reference, draw(np.random.default_rng(4), 500, skewed),
                              DriftConfig())
    check = result["checks"]["category_mix"]
    assert result["drift"] and check["drift"] and check["p_value"] < 1e-10
    assert check["tvd"] > 0.3
    assert result["fired"] == ["category_mix"]


def test_category_unseen_in_reference_is_pooled_and_named(reference):
    batch = draw(np.random.default_rng(5), 500)
    batch.category_counts["Vintage Cars"] = 30
    batch.n_listings += 30
    check = drift.category_check(reference, batch, alpha=0.01, min_tvd=0.05)
    assert check["drift"] and check["unseen_categories"] == ["Vintage Cars"]
    assert "Vintage Cars" in check["detail"]


def test_price_x3(reference):
    batch = draw(np.random.default_rng(6), 500, price_scale=3.0)
    check = drift.run_checks(reference, batch, DriftConfig())["checks"]["price"]
    assert check["drift"] and check["p_value"] < 1e-6
    assert check["statistic"] == pytest.approx(np.log(3.0), abs=0.15)   # the median log shift


def _price_checks(reference, scale, n, seeds):
    cfg = DriftConfig()
    return [drift.price_check(reference, draw(np.random.default_rng(seed), n, price_scale=scale),
                              drift.per_test_alpha(cfg), cfg.price_min_log_shift)
            for seed in seeds]


def test_price_moved_by_30_percent_is_flagged(reference):
    """Prices x1.3 in 500-listing batches: the median log-price up by log 1.3 = 0.26 in the
    typical batch (round prices make a batch's median jump by steps), and flagged in most
    (16 of these 20; the bench measures 95% on the shared listings' prices; the PSI > 0.2
    rule this check had flagged none). A fall (x1/1.5) is flagged in every batch, its shift
    negative."""
    floor = DriftConfig().price_min_log_shift
    rises = _price_checks(reference, 1.3, 500, range(100, 120))
    assert np.median([c["statistic"] for c in rises]) == pytest.approx(np.log(1.3), abs=0.01)
    assert sum(c["drift"] for c in rises) >= 15
    falls = _price_checks(reference, 1 / 1.5, 500, range(120, 140))
    assert all(c["drift"] and c["statistic"] < -floor for c in falls)
    assert "median £" in falls[0]["detail"] and "log shift -" in falls[0]["detail"]


def test_price_same_distribution_is_not_flagged(reference):
    """Batches from the reference's price distribution, down to the 50-listing minimum, whose
    median alone often moves by more than the floor: KS keeps every one quiet."""
    quiet = {n: _price_checks(reference, 1.0, n, seeds)
             for n, seeds in [(500, range(140, 160)), (50, range(160, 180))]}
    for checks in quiet.values():
        assert not any(c["drift"] for c in checks), [c["detail"] for c in checks if c["drift"]]
    assert any(abs(c["statistic"]) >= DriftConfig().price_min_log_shift for c in quiet[50])


def test_price_floor_ignores_a_small_move_of_a_large_batch(reference):
    """20,000 listings at prices x1.05: KS finds the move significant, but the median
    log-price moved by 0.05, under the floor, so only a floor of 0 flags it."""
    batch = draw(np.random.default_rng(41), 20_000, price_scale=1.05)
    check = drift.price_check(reference, batch, alpha=0.01, min_log_shift=0.1)
    assert check["p_value"] < 1e-6 and check["statistic"] == pytest.approx(np.log(1.05), abs=0.02)
    assert not check["drift"]
    assert drift.price_check(reference, batch, alpha=0.01, min_log_shift=0.0)["drift"]


def test_text_length(reference):
    check = drift.run_checks(reference, draw(np.random.default_rng(8), 500, length_scale=2.5),
                             DriftConfig())["checks"]["text_length"]
    assert check["drift"] and check["statistic"] > 0.5


def test_oov_rate(reference):
    cfg = DriftConfig()
    quiet = drift.run_checks(reference, draw(np.random.default_rng(9), 500, oov=0.07), cfg)
    loud = drift.run_checks(reference, draw(np.random.default_rng(9), 500, oov=0.2), cfg)
    assert not quiet["checks"]["oov_rate"]["drift"]
    assert loud["checks"]["oov_rate"]["drift"] and loud["fired"] == ["oov_rate"]


def test_mmd_permutation_test():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(400, 32))
    _, p_same, h = drift.mmd_test(x, rng.normal(size=(400, 32)), seed=1)
    _, p_shift, _ = drift.mmd_test(x, rng.normal(0.3, 1.0, (400, 32)), seed=1)
    assert p_same > 0.05 and p_shift <= 1 / 201 + 1e-12
    assert h == pytest.approx(2 * 32, rel=0.15)  # median |a-b|^2 of N(0, I_32) rows ~ 2 * 32
    # seeded: the same call gives the same answer
    assert drift.mmd_test(x, x[:100] + 0.1, seed=3) == drift.mmd_test(x, x[:100] + 0.1, seed=3)


def test_embedding_shift_fires(reference):
    result = drift.run_checks(reference, draw(np.random.default_rng(11), 500, shift=0.5),
                              DriftConfig())
    assert result["fired"] == ["photo_embedding"]


def photos(rng, n, size=8):
    """``n`` uint8 photos whose exposure and tint vary from photo to photo, as real ones do."""
    exposure = rng.uniform(40, 220, (n, 1, 1, 1)) * rng.uniform(0.85, 1.15, (n, 1, 1, 3))
    return np.clip(exposure + rng.normal(0, 20, (n, size, size, 3)), 0, 255).astype(np.uint8)


def with_photos(ref: drift.Reference, pixels) -> drift.Reference:
    """``ref`` with the mean luminance of these photos as its brightness sample."""
    return dataclasses.replace(ref, photo_brightness=drift.mean_luminance(pixels),
                               n_photos=len(pixels))


def test_mean_luminance():
    rng = np.random.default_rng(15)
    px = photos(rng, 50)
    expected = (px.astype(np.float64) @ [0.299, 0.587, 0.114]).mean(axis=(1, 2))
    lum = drift.mean_luminance(px)
    assert lum.dtype == np.float32 and lum.shape == (50,)
    np.testing.assert_allclose(lum, expected, rtol=1e-6)
    # chunking and row selection do not change a photo's value
    np.testing.assert_array_equal(drift.mean_luminance(px, chunk=7), lum)
    np.testing.assert_array_equal(drift.mean_luminance(px, np.array([9, 3, 3])), lum[[9, 3, 3]])
    assert drift.mean_luminance(np.full((2, 4, 4, 3), 255, np.uint8)).tolist() == [255, 255]
    grey = np.full((1, 4, 4), 100, np.uint8)  # no colour channels: the grey level itself
    assert drift.mean_luminance(grey).tolist() == [100.0]


def test_photo_brightness_darker_photos_fire(reference):
    """The reference's own photos x0.7 darker (as bench_drift darkens them): the photo
    embeddings of an ImageNet model barely move, the luminance check fires."""
    ref_px = photos(np.random.default_rng(16), 2000)
    ref = with_photos(reference, ref_px)
    darker = (ref_px[:900].astype(np.float32) * 0.7).clip(0, 255).astype(np.uint8)
    batch = with_photos(draw(np.random.default_rng(17), 500), darker)
    result = drift.run_checks(ref, batch, DriftConfig())
    check = result["checks"]["photo_brightness"]
    assert result["fired"] == ["photo_brightness"]
    assert check["drift"] and check["statistic"] > 0.2 and check["p_value"] < 1e-10
    assert check["threshold"] == pytest.approx(0.05 / 6)
    assert check["batch_median"] == pytest.approx(0.7 * check["reference_median"], rel=0.05)
    assert check["detail"] == (f"KS D {check['statistic']:.3f} (min 0.15); median luminance "
                               f"{check['reference_median']:.0f} -> {check['batch_median']:.0f}")
    assert "| photo_brightness |" in drift.summary_markdown(result)


def test_photo_brightness_same_distribution_is_quiet(reference):
    ref = with_photos(reference, photos(np.random.default_rng(16), 2000))
    for seed in (18, 19, 20):
        rng = np.random.default_rng(seed)
        batch = with_photos(draw(rng, 500), photos(rng, 900))
        result = drift.run_checks(ref, batch, DriftConfig(), seed=seed)
        check = result["checks"]["photo_brightness"]
        assert not check["drift"] and check["p_value"] > 0.01, check["detail"]
        assert not result["drift"], result["fired"]
    # a brightness shift too small to matter on a big batch stays under the KS D floor
    rng = np.random.default_rng(21)
    big = with_photos(draw(rng, 500), np.clip(photos(rng, 20000).astype(int) + 8, 0, 255)
                      .astype(np.uint8))
    check = drift.photo_brightness_check(ref, big, alpha=0.01, ks_min_statistic=0.1)
    assert check["p_value"] < 0.01 and check["statistic"] < 0.1 and not check["drift"]


def test_reference_without_brightness_predates_the_check(reference, tmp_path):
    """A reference saved before the photo_brightness check (no key in embeddings.npz): the
    check skips and says why; the reference still loads and the other checks run."""
    ref = with_photos(reference, photos(np.random.default_rng(16), 500))
    ref.save(tmp_path)
    with np.load(tmp_path / drift.EMBEDDINGS_FILE) as npz:
        assert set(npz.files) == {"photo", "text", "photo_brightness"}
        np.savez_compressed(tmp_path / drift.EMBEDDINGS_FILE, photo=npz["photo"],
                            text=npz["text"])
    old = drift.Reference.load(tmp_path)
    assert old.photo_brightness.shape == (0,) and old.n_photos == 500
    np.testing.assert_array_equal(old.photo_embeddings, ref.photo_embeddings)
    rng = np.random.default_rng(22)
    dark = with_photos(draw(rng, 500), photos(rng, 900) // 2)
    result = drift.run_checks(old, dark, DriftConfig())
    check = result["checks"]["photo_brightness"]
    assert not check["drift"] and check["p_value"] is None and not result["drift"]
    assert check["detail"].startswith("skipped: the reference predates the photo_brightness "
                                      "check")
    assert "| photo_brightness | 0 |" in drift.summary_markdown(result)
    assert "| skipped |" in drift.summary_markdown(result)


def test_bonferroni_alpha():
    assert drift.per_test_alpha(DriftConfig()) == pytest.approx(0.05 / 6)
    assert drift.per_test_alpha(DriftConfig(bonferroni=False)) == 0.05
    assert drift.per_test_alpha(DriftConfig(checks=["price", "oov_rate"])) == 0.05


def test_too_small_batch_is_refused(reference):
    tiny = draw(np.random.default_rng(12), 30)
    with pytest.raises(drift.DriftInputError, match=r"30 listing.*at least 50.*min_listings"):
        drift.run_checks(reference, tiny, DriftConfig())
    # too few photos: the photo checks are skipped, saying why, and the others still judge
    few_photos = draw(np.random.default_rng(13), 200, price_scale=3.0, dark=0.5)
    few_photos.n_photos = 10
    result = drift.run_checks(reference, few_photos, DriftConfig())
    for name in ("photo_embedding", "photo_brightness"):
        photo = result["checks"][name]
        assert not photo["drift"] and photo["p_value"] is None
        assert "10 photo(s), fewer than drift.min_photos (50)" in photo["detail"]
    assert result["drift"] and result["fired"] == ["price"]


def test_markdown_and_figure(reference, tmp_path):
    batch = draw(np.random.default_rng(14), 500, price_scale=3.0)
    result = drift.run_checks(reference, batch, DriftConfig())
    md = drift.summary_markdown(result)
    assert "| check | statistic | threshold | p-value | verdict |" in md
    assert "**Drift detected**: price" in md and "| price |" in md
    png = drift.drift_png(reference, batch, result, tmp_path / "drift.png")
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 800
        with_brightness = img.size[1]  # a photo-brightness panel: a third row
    # the plot function alone, with an unseen category and a skipped check
    checks = dict(result["checks"], oov_rate={**result["checks"]["oov_rate"], "detail": "skipped"})
    small = plots.drift_png({"A": 5}, {"A": 3, "B": 2}, [1, 2], [3, 4], [5], [6], checks,
                            tmp_path / "small.png")
    with Image.open(small) as img:
        assert img.format == "PNG" and img.size[0] > 800
        assert img.size[1] < with_brightness  # no brightness samples: no panel


# --------------------------------------------------------------------------- with a bundle
@pytest.fixture(scope="module")
def clean(fixture_dir):
    """The fixture's listings and photos through the pipeline's clean_frames (no gazetteer:
    coordinates play no part here)."""
    from marketsearch import sources
    from marketsearch.cleaning import clean_frames

    class NoGazetteer:
        def lookup(self, _):
            return None

    raw = sources.read_local(fixture_dir)
    cfg = load_config(overrides={"clean": {"image_size": SIZE, "thumbnail_size": 0}})
    return clean_frames(raw.products, raw.images, cfg, gazetteer=NoGazetteer())


@pytest.fixture(scope="module")
def bundle(clean, tmp_path_factory):
    """A bundle with untrained image and text models of the trained ones' shape: uint8
    photos / int32 token ids in, a Dense "embedding" layer, a softmax "probs" head."""
    import keras
    from keras import layers

    from marketsearch.bundle import Bundle
    from marketsearch.text import build_vocab, tokenize

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("bundle")
    labels = clean.labels
    train = clean.products[clean.products["split"] == "train"]
    words = sorted({t for text in train["text"] for t in tokenize(text)})
    vocab = build_vocab([], words)

    image_in = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1 / 255)(image_in)
    x = layers.Conv2D(8, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(16, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(16, name="embedding")(x)
    image_model = keras.Model(
        image_in, layers.Dense(len(labels), activation="softmax", name="probs")(x))
    image_model.save(root / "image.keras")
    text_in = keras.Input((MAX_LEN,), dtype="int32", name="tokens")
    x = layers.Embedding(len(vocab), 8, name="token_vectors")(text_in)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dense(16, name="embedding")(x)
    text_model = keras.Model(
        text_in, layers.Dense(len(labels), activation="softmax", name="probs")(x))
    text_model.save(root / "text.keras")
    # A fused model run whole (no image_features / from_features split, as bundles made
    # before that split): Bundle.parts is None and the photo embeddings come from the
    # image model itself.
    fused_image = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    fused_text = keras.Input((MAX_LEN,), dtype="int32", name="tokens")
    keras.Model([fused_image, fused_text],
                layers.Average()([image_model(fused_image), text_model(fused_text)])
                ).save(root / "fused.keras")
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "meta.json").write_text(json.dumps({"labels": labels, "image_size": SIZE,
                                                "text_input": "tokens", "max_len": MAX_LEN}))
    return Bundle(root)


def halves(clean):
    """Two halves of the fixture's listings (2 per category each) with their photos."""
    products = clean.products.sort_values("id")
    first = products.groupby("category").head(2)
    second = products[~products["id"].isin(first["id"])]
    photos = clean.images
    return [(p.drop(columns="split"), photos[photos["product_id"].isin(p["id"])])
            for p in (first, second)]


def test_reference_from_the_bundle_and_round_trip(bundle, clean, tmp_path):
    out = drift.write_reference(bundle, clean.products, clean.images, clean.pixels, SMALL, seed=1)
    ref_dir = bundle.root / drift.REFERENCE_DIR
    assert (ref_dir / drift.STATS_FILE).exists() and (ref_dir / drift.EMBEDDINGS_FILE).exists()
    train = clean.products[clean.products["split"] == "train"]
    val = clean.products[clean.products["split"] == "val"]
    assert out["reference_listings"] == len(train) == sum(
        json.loads((ref_dir / drift.STATS_FILE).read_text())["category_counts"].values())
    assert out["reference_holdout_listings"] == len(val)

    ref = drift.Reference.load(bundle.root)  # the bundle directory or its reference/
    assert ref.meta["reference_splits"] == ["train"] and ref.meta["holdout_splits"] == ["val"]
    assert len(ref.text_embeddings) == len(val) and ref.text_embeddings.shape[1] == 16
    # one photo per held-out listing that has one
    with_photos = clean.images.loc[clean.images["product_id"].isin(val["id"]), "product_id"]
    assert ref.photo_embeddings.shape == (with_photos.nunique(), 16)
    # photo brightness is a data statistic: every photo of the training split (< sample_size)
    train_rows = clean.images.loc[clean.images["product_id"].isin(train["id"]), "row"]
    np.testing.assert_allclose(np.sort(ref.photo_brightness),
                               np.sort(drift.mean_luminance(clean.pixels, train_rows.to_numpy())))
    ref.save(tmp_path / "copy")
    again = drift.Reference.load(tmp_path / "copy")
    assert again.category_counts == ref.category_counts
    assert again.n_listings == ref.n_listings and again.oov_rate == pytest.approx(ref.oov_rate)
    np.testing.assert_array_equal(again.price_sample, ref.price_sample)
    np.testing.assert_array_equal(again.text_lengths, ref.text_lengths)
    np.testing.assert_array_equal(again.photo_embeddings, ref.photo_embeddings)
    np.testing.assert_array_equal(again.text_embeddings, ref.text_embeddings)
    np.testing.assert_array_equal(again.photo_brightness, ref.photo_brightness)
    with pytest.raises(FileNotFoundError, match="no drift reference"):
        drift.Reference.load(tmp_path / "nothing")


def test_bundle_batches(bundle, clean):
    """Half the fixture as the reference, the other half as batches: as it is, with degraded
    photos, with random words in the texts."""
    (ref_p, ref_i), (cur_p, cur_i) = halves(clean)
    ref = drift.build_reference(bundle, ref_p, ref_i, clean.pixels, SMALL, seed=1)
    assert ref.meta["role"] == "reference" and ref.n_listings == len(ref_p)
    cur = drift.current_statistics(bundle, cur_p, cur_i, clean.pixels, SMALL, seed=2)
    assert cur.meta["role"] == "batch"
    same = drift.run_checks(ref, cur, SMALL)
    assert not same["drift"], same["fired"]

    # photos blurred, darkened and noisy: the photo embeddings move
    from PIL import ImageFilter

    rows = cur_i["row"].to_numpy()
    rng = np.random.default_rng(3)
    bad = np.stack([np.asarray(Image.fromarray(p).filter(ImageFilter.GaussianBlur(3)))
                    for p in clean.pixels[rows]]).astype(float) * 0.4
    bad = np.clip(bad + rng.normal(0, 25, bad.shape), 0, 255).astype(np.uint8)
    degraded = drift.current_statistics(bundle, cur_p, cur_i.assign(row=np.arange(len(rows))),
                                        bad, SMALL, seed=2)
    result = drift.run_checks(ref, degraded, SMALL)
    assert result["checks"]["photo_embedding"]["drift"]
    assert result["checks"]["photo_brightness"]["drift"]
    assert not result["checks"]["text_embedding"]["drift"]

    # texts of random tokens: OOV rate and the text embeddings move
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    noise = [" ".join("".join(rng.choice(letters, 7)) for _ in range(30)) for _ in cur_p["text"]]
    oov = drift.current_statistics(bundle, cur_p.assign(text=noise), cur_i, clean.pixels,
                                   SMALL, seed=2)
    result = drift.run_checks(ref, oov, SMALL)
    assert result["checks"]["oov_rate"]["drift"] and oov.oov_rate == 1.0
    assert result["checks"]["text_embedding"]["drift"]
    assert not result["checks"]["photo_embedding"]["drift"]
    assert not result["checks"]["photo_brightness"]["drift"]

    with pytest.raises(drift.DriftInputError, match="min_listings"):
        drift.run_checks(ref, cur, DriftConfig())  # half the fixture < the default 50


def test_brightness_sample_is_seeded(bundle, clean):
    """The brightness sample of a summary: at most sample_size of the batch's photos, drawn
    by the seed (the same seed, the same sample), each the photo's mean luminance."""
    _, (cur_p, cur_i) = halves(clean)
    cfg = SMALL.model_copy(update={"sample_size": 10})
    a = drift.current_statistics(bundle, cur_p, cur_i, clean.pixels, cfg, seed=5)
    b = drift.current_statistics(bundle, cur_p, cur_i, clean.pixels, cfg, seed=5)
    c = drift.current_statistics(bundle, cur_p, cur_i, clean.pixels, cfg, seed=6)
    assert len(cur_i) > 10 and a.photo_brightness.shape == (10,)
    np.testing.assert_array_equal(a.photo_brightness, b.photo_brightness)
    assert not np.array_equal(a.photo_brightness, c.photo_brightness)
    every = drift.mean_luminance(clean.pixels, cur_i["row"].to_numpy())
    assert np.isin(a.photo_brightness, every).all()
    # with sample_size above the batch's photo count: every photo once
    full = drift.current_statistics(bundle, cur_p, cur_i, clean.pixels, SMALL, seed=5)
    np.testing.assert_array_equal(np.sort(full.photo_brightness), np.sort(every))


def test_check_batch(bundle, clean):
    """The monitoring pipeline's call: the bundle's saved reference against a clean batch."""
    drift.write_reference(bundle.root, clean.products, clean.images, clean.pixels, SMALL, seed=1)
    test = clean.products[clean.products["split"] == "test"].drop(columns="split")
    photos = clean.images[clean.images["product_id"].isin(test["id"])]
    cfg = SMALL.model_copy(update={"min_listings": 10, "min_photos": 10})
    result, reference, current = drift.check_batch(bundle.root, test, photos, clean.pixels,
                                                   cfg, seed=3)
    assert reference.meta["role"] == "reference" and current.n_listings == len(test)
    assert current.n_photos == len(photos)
    # the reference is the one saved in the bundle, not rebuilt from the batch
    saved = drift.Reference.load(bundle.root)
    assert reference.n_listings == saved.n_listings == int((clean.products["split"] == "train").sum())
    np.testing.assert_array_equal(reference.text_embeddings, saved.text_embeddings)
    assert set(result["checks"]) == set(drift.CHECKS)
    assert json.loads(json.dumps(result))["checks"].keys() == result["checks"].keys()
    with pytest.raises(drift.DriftInputError, match=f"has {len(test)} listing"):
        drift.check_batch(bundle, test, photos, clean.pixels, SMALL, seed=3)


def test_config_refuses_checks_that_could_never_fire():
    with pytest.raises(ValueError, match=r"1/21, is not below the per-test alpha 0.00833"):
        DriftConfig(mmd_permutations=20)
    # seven checks, six of them p-value tests: 0.05 / 6 ~ 0.0083 each; 1/201 is below it
    assert DriftConfig().mmd_permutations == 200
    with pytest.raises(ValueError, match=r"1/101.*use at least 120 permutations"):
        DriftConfig(mmd_permutations=100)
    assert DriftConfig(mmd_permutations=120).mmd_permutations == 120  # 1/121 < 0.0083
    # without the embedding checks the permutation count does not matter
    assert DriftConfig(mmd_permutations=20, checks=["price", "category_mix"]).alpha == 0.05
    for checks in ([], ["price", "price"]):
        with pytest.raises(ValueError, match="each check once, at least one"):
            DriftConfig(checks=checks)


def test_drift_check_judges_only_new_listings_from_the_clean_shards(bundle, clean, tmp_path):
    """drift_check on clean data (here one CleanData; in the DAG the clean shards and their
    plan): the listings in the champion's index or already considered are left out, more new
    ones than drift.batch_max_listings are sampled, nothing is cleaned again, and the refused
    rows reported are those of listings not yet considered."""
    from marketsearch.components.drift_check import drift_check
    from marketsearch.index import IDS_FILE
    from marketsearch.quarantine import record
    from marketsearch.records import CleanData

    drift.write_reference(bundle.root, clean.products, clean.images, clean.pixels, SMALL, seed=1)
    ids = sorted(clean.products["id"])
    known, new = ids[:12], ids[12:]
    (bundle.root / "index").mkdir(exist_ok=True)
    (bundle.root / "index" / IDS_FILE).write_text(json.dumps(known))
    refused = [record("products", {"id": known[0]}, "clean", "price", "price: missing"),
               record("products", {"id": "new-1"}, "validate", "price", "price: not a number"),
               record("images", {"id": "p1", "product_id": known[1]}, "clean", "data", "bad"),
               record("images", {"id": "p2", "product_id": "new-1"}, "clean", "data", "bad")]
    data = CleanData(clean.products, clean.images, clean.pixels, refused, summary=clean.summary)
    cfg = load_config(overrides={"run_dir": str(tmp_path), "drift": {
        "min_listings": 20, "min_photos": 20, "batch_max_listings": 30}})

    result = drift_check(cfg, data, champion_dir=bundle.root)
    assert result.result["n_new_listings"] == len(new) == 40
    assert result.result["n_listings"] == 30                 # a seeded sample of the 40
    assert set(result.result["checks"]) == set(drift.CHECKS)
    assert result.quarantine["row_id"].tolist() == ["new-1", "p2"]
    assert result.result["n_quarantined"] == 2
    again = drift_check(cfg, data, champion_dir=bundle.root)
    assert again.result["checks"] == result.result["checks"]  # the same sample

    everything = drift_check(cfg.model_copy(update={"drift": SMALL}), data,
                             champion_dir=bundle.root)
    assert everything.result["n_listings"] == 40
    # every listing considered: too few new ones to judge, no drift
    none_new = drift_check(cfg, data, champion_dir=bundle.root, considered_ids=set(new))
    assert none_new.result["n_new_listings"] == 0 and none_new.retrain is False
    assert none_new.result["reason"].startswith("not judged") and not none_new.result["checks"]


def test_drift_check_without_a_champion_trains(clean, tmp_path):
    from marketsearch.catalogue import CleanCatalogue
    from marketsearch.components.drift_check import judge

    cfg = load_config(overrides={"run_dir": str(tmp_path)})
    result = judge(cfg, CleanCatalogue.of(clean), None, set())
    assert result.retrain is True and result.result["reason"] == "no champion yet: train one"
    assert result.result["n_new_listings"] == len(clean.products)
    dry = judge(load_config(overrides={"run_dir": str(tmp_path),
                                       "monitoring": {"dry_run": True}}),
                CleanCatalogue.of(clean), None, set())
    assert dry.result["drift"] is True and dry.retrain is False
