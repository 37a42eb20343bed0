"""The fused model never loses to its better half: a fixture where the photo is pure noise."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from marketsearch.config import FusionConfig  # noqa: E402
from marketsearch.models.fusion import (build_fusion_head, classifier_weights,  # noqa: E402
                                        never_below_parts, train_fusion_head)

N_CLASSES, DIM = 4, 8


def _classifier(kernel: np.ndarray, bias: np.ndarray):
    """A stand-in modality model: its "probs" Dense is all fusion reads of it."""
    inputs = keras.Input((kernel.shape[0],))
    dense = keras.layers.Dense(kernel.shape[1], activation="softmax", name="probs")
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model


def _data(n: int, seed: int):
    """Text embeddings carry the class (one-hot-ish with noise, 85% clean); photos are noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    txt = rng.normal(0, 0.3, (n, DIM)).astype("float32")
    clean = rng.random(n) < 0.85
    txt[np.arange(n), np.where(clean, y, rng.integers(0, N_CLASSES, n))] += 2.0
    img = rng.normal(0, 1.0, (n, DIM)).astype("float32")
    return img, txt, y


def _models():
    text_kernel = np.zeros((DIM, N_CLASSES))
    text_kernel[np.arange(N_CLASSES), np.arange(N_CLASSES)] = 3.0  # reads the class coordinate
    image_kernel = np.random.default_rng(9).normal(0, 1.0, (DIM, N_CLASSES))  # noise in, noise out
    return (_classifier(image_kernel, np.zeros(N_CLASSES)),
            _classifier(text_kernel, np.zeros(N_CLASSES)))


def _accuracy(probs, y):
    return float(np.mean(np.argmax(probs, axis=1) == y))


def test_fusion_with_a_noise_photo_is_not_below_text_alone():
    image_model, text_model = _models()
    tr, va, te = _data(600, 0), _data(300, 1), _data(600, 2)
    cfg = FusionConfig(embedding_dim=16, epochs=8, batch_size=32, warmup_epochs=0, patience=3)
    head, history = train_fusion_head(tr[0], tr[1], tr[2], va[0], va[1], va[2], N_CLASSES, cfg,
                                      seed=0, verbose=0, image_model=image_model,
                                      text_model=text_model)
    ones = np.ones((len(te[2]), 1), "float32")
    fused = _accuracy(head.predict([te[0], te[1], ones, ones], verbose=0), te[2])
    text_alone = _accuracy(text_model.predict(te[1], verbose=0), te[2])
    image_alone = _accuracy(image_model.predict(te[0], verbose=0), te[2])
    assert image_alone < 0.4 < text_alone  # the fixture is what it says
    assert history["val_accuracy_parts"]["fused"] >= history["val_accuracy_parts"]["text"]
    assert fused >= text_alone - 0.02, (fused, text_alone, history["choice"])


def _head_with_blend(image_model, text_model, blend: list[float]):
    """A fusion head holding both classifiers, its (fused, text, image) blend set by hand."""
    head = build_fusion_head(DIM, DIM, N_CLASSES, FusionConfig(embedding_dim=16), seed=0,
                             image_classifier=classifier_weights(image_model),
                             text_classifier=classifier_weights(text_model))
    head.get_layer("blend").blend.assign(np.array(blend, "float32"))
    return head


def test_a_blend_that_loses_falls_back_to_the_better_part():
    image_model, text_model = _models()
    img, txt, y = _data(300, 3)
    # an untrained fused path and the image logits only: worse than the text model alone
    head = _head_with_blend(image_model, text_model, [1.0, 0.0, 1.0])
    ones = np.ones((len(y), 1), "float32")
    x = (img, txt, ones, ones)
    before = _accuracy(head.predict(list(x), verbose=0), y)
    result = never_below_parts(head, x, y)
    assert result["choice"] == "text"
    assert result["val_accuracy_parts"]["fused"] == pytest.approx(before)
    after = head.predict(list(x), verbose=0)
    np.testing.assert_allclose(after, text_model.predict(txt, verbose=0), rtol=1e-4, atol=1e-5)
    assert _accuracy(after, y) > before


def test_a_blend_that_wins_is_kept():
    image_model, text_model = _models()
    img, txt, y = _data(300, 4)
    head = _head_with_blend(image_model, text_model, [0.0, 1.0, 0.0])  # = the text model
    ones = np.ones((len(y), 1), "float32")
    result = never_below_parts(head, (img, txt, ones, ones), y)
    assert result["choice"] == "blend"  # a tie goes to the blend
    np.testing.assert_array_equal(np.asarray(head.get_layer("blend").blend), [0.0, 1.0, 0.0])
