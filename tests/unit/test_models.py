"""Fast unit tests of the model code on tiny synthetic data (seconds, CPU)."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from marketsearch.config import (  # noqa: E402
    FusionConfig, ImageModelConfig, SmallCnnConfig, TextModelConfig, Word2VecConfig)
from marketsearch.models import (  # noqa: E402
    ImageScaling, MaskedMeanPool, ModalityDropout, assemble_fused_model, build_backbone,
    build_fusion_head, build_hub_text_model, build_image_model, build_text_ensemble,
    build_text_model,
    embedding_matrix, embedding_model, fit, fused_inputs, prepare_text_input, present_flags,
    set_seed, text_input_kind, train_fusion_head, train_image_model, train_text_model,
    train_word2vec)
from marketsearch.models.image import backbone_of  # noqa: E402
from marketsearch.models.training import SmoothedSparseCrossentropy  # noqa: E402
from marketsearch.text import OOV, PAD, encode, tokenize  # noqa: E402

N_CLASSES = 3
SIZE = 16
FAST = dict(epochs=2, batch_size=8, learning_rate=1e-2, weight_decay=1e-4, warmup_epochs=0,
            patience=5, seed=0, verbose=0)


# --- synthetic data ---------------------------------------------------------------------------

def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, 16, 16, 3]: class k is a bright square in the k-th colour channel."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % N_CLASSES
    x = rng.integers(0, 60, size=(n, SIZE, SIZE, 3)).astype("uint8")
    for i, k in enumerate(y):
        x[i, 4:12, 4:12, k] = 250
    return x, y


WORDS = {0: ["sofa", "table", "chair"], 1: ["iphone", "samsung", "charger"],
         2: ["drill", "saw", "hammer"]}


def _texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % N_CLASSES
    texts = []
    for k in y:
        words = list(rng.choice(WORDS[k], size=3)) + ["good", "condition", "collection", "only"]
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + " . Posted in town")
    return texts, y


def _img_cfg(**kw) -> ImageModelConfig:
    base = dict(backbone="small_cnn", weights=None, input_size=None, epochs=2, batch_size=8,
                embedding_dim=256, learning_rate=5e-3, warmup_epochs=0, patience=5,
                augment=True, dropout=0.3)
    return ImageModelConfig(**{**base, **kw})


def _txt_cfg(**kw) -> TextModelConfig:
    base = dict(max_len=12, filters=8, kernel_sizes=[1, 2], embedding_dim=256, epochs=2,
                batch_size=8, learning_rate=1e-2, warmup_epochs=0, patience=5, dropout=0.1,
                word2vec=Word2VecConfig(vector_size=8, window=2, min_count=1, epochs=5))
    return TextModelConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _seeded():
    set_seed(0)
    keras.backend.clear_session()


def _roundtrip(model, tmp_path, name="m.keras"):
    path = tmp_path / name
    model.save(path)
    return keras.models.load_model(path)


# --- training loop ----------------------------------------------------------------------------

def _dense_model(dim=4):
    inputs = keras.Input((dim,))
    x = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES, activation="softmax", name="probs")(x))


def test_fit_learns_and_reports_history():
    rng = np.random.default_rng(0)
    y = np.arange(96) % N_CLASSES
    x = rng.normal(size=(96, 4)).astype("float32")
    x[np.arange(96), y] += 3.0
    model = _dense_model()
    hist = fit(model, x, y, x[:24], y[:24], **{**FAST, "epochs": 8})
    for key in ("loss", "accuracy", "top3", "val_loss", "val_accuracy", "val_top3"):
        assert len(hist[key]) == hist["epochs_run"]
    assert hist["accuracy"][-1] > 0.9
    assert hist["val_top3"][-1] == pytest.approx(1.0)  # 3 classes: top-3 always right
    assert isinstance(model.optimizer, keras.optimizers.AdamW)


def test_fit_warmup_then_cosine_schedule():
    model = _dense_model()
    x = np.zeros((16, 4), "float32")
    y = np.zeros(16, "int64")
    fit(model, x, y, x, y, **{**FAST, "epochs": 4, "warmup_epochs": 1, "batch_size": 4})
    sched = model.optimizer._learning_rate
    lrs = [float(sched(step)) for step in (0, 4, 8, 15)]
    assert lrs[0] < lrs[1]  # warming up
    assert lrs[1] == pytest.approx(FAST["learning_rate"], rel=1e-3)  # peak after 1 epoch
    assert lrs[1] > lrs[2] > lrs[3]  # cosine decay


def test_fit_accepts_tuple_inputs():
    a = keras.Input((2,))
    b = keras.Input((2,))
    out = keras.layers.Dense(N_CLASSES, activation="softmax")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], out)
    x = (np.ones((8, 2), "float32"), np.zeros((8, 2), "float32"))
    hist = fit(model, x, np.zeros(8, "int64"), x, np.zeros(8, "int64"), **FAST)
    assert hist["epochs_run"] == 2


def test_early_stopping_restores_best_weights():
    """Validation labels disagree with training labels, so validation loss is best after the
    first epoch and worsens after: the returned model must hold the epoch-1 weights."""
    rng = np.random.default_rng(1)
    y = np.arange(60) % N_CLASSES
    x = rng.normal(size=(60, 4)).astype("float32")
    x[np.arange(60), y] += 3.0
    y_val = (y + 1) % N_CLASSES
    snapshots = []

    class Snap(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append([w.copy() for w in self.model.get_weights()])

    model = _dense_model()
    hist = fit(model, x, y, x, y_val, **{**FAST, "epochs": 6, "patience": 2},
               callbacks=[Snap()])
    best = int(np.argmin(hist["val_loss"]))
    assert hist["best_epoch"] == best + 1
    assert hist["epochs_run"] < 6  # stopped early
    assert best != hist["epochs_run"] - 1  # so restoring is observable
    for w, w_best, w_last in zip(model.get_weights(), snapshots[best], snapshots[-1]):
        np.testing.assert_array_equal(w, w_best)
    assert any(not np.array_equal(a, b) for a, b in zip(snapshots[best], snapshots[-1]))


def test_label_smoothing_loss_matches_dense_formula():
    loss = SmoothedSparseCrossentropy(0.1)
    y_pred = np.array([[0.7, 0.2, 0.1]], "float32")
    expected = keras.losses.categorical_crossentropy(
        np.array([[1.0, 0, 0]], "float32"), y_pred, label_smoothing=0.1)
    assert float(loss(np.array([0]), y_pred)) == pytest.approx(float(expected[0]), rel=1e-5)


# --- image model ------------------------------------------------------------------------------

def test_image_model_shapes_embedding_and_uint8_input():
    model = build_image_model(N_CLASSES, _img_cfg(), SIZE)
    assert model.inputs[0].dtype == "uint8"
    x, _ = _images(4)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (4, N_CLASSES)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.get_layer("embedding").units == 256
    assert model.output.name.startswith("probs") or model.layers[-1].name == "probs"
    assert embedding_model(model).predict(x, verbose=0).shape == (4, 256)
    names = [layer.name for layer in model.layers]
    assert "augment" in names
    assert "augment" not in [layer.name for layer in
                             build_image_model(N_CLASSES, _img_cfg(augment=False), SIZE).layers]


def test_small_cnn_architecture_comes_from_config():
    default = build_image_model(N_CLASSES, _img_cfg(), SIZE).get_layer("image_features").get_layer("backbone")
    assert isinstance(default.get_layer("b2_1_conv"), keras.layers.SeparableConv2D)
    assert default.get_layer("stem_bn").momentum == 0.9
    arch = SmallCnnConfig(stem_filters=8, stages=[(12, 1), (16, 2)], separable=False,
                          stem_pool=True, bn_momentum=0.5)
    model = build_image_model(N_CLASSES, _img_cfg(small_cnn=arch), SIZE)
    backbone = backbone_of(model)
    names = {layer.name for layer in backbone.layers}
    assert {"stem_pool", "b0_0_conv", "b1_1_conv", "b0_pool"} <= names
    assert not any(n.startswith("b2_") for n in names) and "b1_pool" not in names
    assert type(backbone.get_layer("b0_0_conv")) is keras.layers.Conv2D
    assert backbone.get_layer("stem_conv").filters == 8
    assert backbone.get_layer("b1_1_conv").filters == 16
    assert backbone.get_layer("b1_0_bn").momentum == 0.5
    assert backbone.output.shape[-1] == 16
    assert model.predict(_images(2)[0], verbose=0).shape == (2, N_CLASSES)


def test_augmentation_only_while_training():
    model = build_image_model(N_CLASSES, _img_cfg(), SIZE)
    aug = model.get_layer("augment")
    x = _images(8)[0].astype("float32")
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)
    assert not np.allclose(np.asarray(aug(x, training=True)), x)


def test_image_scaling_modes_match_keras_preprocessing():
    x = _images(2)[0]
    np.testing.assert_allclose(np.asarray(ImageScaling("unit")(x)), x / 255.0, rtol=1e-6)
    expected = keras.applications.resnet50.preprocess_input(x.astype("float32").copy())
    np.testing.assert_allclose(np.asarray(ImageScaling("caffe")(x)), expected, atol=1e-4)
    with pytest.raises(ValueError, match="mode"):
        ImageScaling("bogus")


def test_train_image_model_learns_and_round_trips(tmp_path):
    x, y = _images(48)
    model, hist = train_image_model(x, y, x[:12], y[:12], N_CLASSES,
                                    _img_cfg(epochs=6, batch_size=4, dropout=0.0, augment=False), seed=0,
                                    verbose=0)
    assert hist["train"]["epochs_run"] >= 1
    assert (model.predict(x, verbose=0).argmax(1) == y).mean() > 0.6
    loaded = _roundtrip(model, tmp_path)
    np.testing.assert_allclose(loaded.predict(x[:6], verbose=0), model.predict(x[:6], verbose=0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedding_model(loaded).predict(x[:6], verbose=0),
                               embedding_model(model).predict(x[:6], verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_train_image_model_rejects_float_photos():
    x, y = _images(8)
    with pytest.raises(ValueError, match="uint8"):
        train_image_model(x.astype("float32"), y, x, y, N_CLASSES, _img_cfg(), seed=0)


def test_applications_backbone_random_init_and_from_weights_file(tmp_path):
    size = 32  # keras.applications' minimum input size
    cfg = _img_cfg(backbone="efficientnetb0", weights=None, embedding_dim=16)
    backbone = build_backbone(cfg, size)
    assert backbone.name == "backbone"
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    backbone.save_weights(path)

    fresh = build_backbone(cfg, size)  # another random init: differs
    assert any(not np.array_equal(a, b) for a, b in
               zip(fresh.get_weights(), backbone.get_weights()))
    model = build_image_model(N_CLASSES, cfg.model_copy(update={"weights": str(path)}), size)
    for a, b in zip(backbone_of(model).get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).integers(0, 255, (2, size, size, 3)).astype("uint8")
    assert model.predict(x, verbose=0).shape == (2, N_CLASSES)

    with pytest.raises(FileNotFoundError, match="weights"):
        build_backbone(cfg.model_copy(update={"weights": str(tmp_path / "missing.h5")}), size)


def test_pretrained_backbone_frozen_then_fine_tuned(tmp_path):
    """A backbone loaded from a weights file: stage 1 trains only the head, on the backbone's
    features; stage 2 fine-tunes the backbone from pixels with batch norm frozen (small_cnn
    here: the same code path as the other backbones, faster)."""
    cfg = _img_cfg(epochs=2, fine_tune_epochs=2, augment=False, embedding_dim=16)
    path = tmp_path / "small_cnn.weights.h5"
    build_backbone(cfg, SIZE).save_weights(path)
    cfg = cfg.model_copy(update={"weights": str(path)})
    reference = build_backbone(cfg, SIZE).get_weights()
    x, y = _images(24)

    import marketsearch.models.image as image_module
    calls = []
    real_fit = image_module.fit

    def recording_fit(model, x_train, *args, **kwargs):
        out = real_fit(model, x_train, *args, **kwargs)
        calls.append((model.name, np.shape(x_train.arrays()[0]), kwargs["learning_rate"],
                      {w.path for w in model.trainable_weights}))
        return out

    image_module.fit = recording_fit
    try:
        model, hist = train_image_model(x, y, x, y, N_CLASSES, cfg, seed=0, verbose=0)
    finally:
        image_module.fit = real_fit
    assert set(hist) >= {"frozen", "fine_tune", "train"}
    assert hist["train"]["epochs_run"] == (hist["frozen"]["epochs_run"]
                                           + hist["fine_tune"]["epochs_run"])
    assert len(hist["train"]["val_loss"]) == hist["train"]["epochs_run"]
    (head_name, head_x, lr1, head_vars), (full_name, full_x, lr2, full_vars) = calls
    backbone_vars = {w.path for w in backbone_of(model).weights}
    # stage 1: the head alone, on pooled features (the small CNN's 256 channels), not pixels
    assert head_name.endswith("head_probs") and head_x == (24, 256)
    assert not head_vars & backbone_vars and head_vars
    # stage 2: the whole model from pixels, the backbone trainable but not its batch norm
    assert full_name == model.name and full_x == x.shape
    assert full_vars & backbone_vars
    assert not any("moving" in v or "gamma" in v or "beta" in v for v in full_vars & backbone_vars)
    assert (lr1, lr2) == (cfg.learning_rate, cfg.fine_tune_learning_rate)
    tuned = backbone_of(model).get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(tuned, reference))
    stats = [w.path for w in backbone_of(model).weights if "moving" in w.path]
    assert stats
    moving = {w.path: np.asarray(w) for w in backbone_of(model).weights}
    ref = dict(zip([w.path for w in build_backbone(cfg, SIZE).weights], reference))
    for p in stats:
        np.testing.assert_array_equal(moving[p], ref[p])


def test_imagenet_weights_need_an_applications_backbone():
    with pytest.raises(ValueError, match="small_cnn"):
        build_backbone(_img_cfg(weights="imagenet"), SIZE)


def test_resnet50_backbone_builds_with_caffe_scaling():
    model = build_image_model(N_CLASSES, _img_cfg(backbone="resnet50", embedding_dim=16), 32)
    assert model.get_layer("image_features").get_layer("scaling").mode == "caffe"
    assert backbone_of(model).output.shape[-1] == 2048


# --- text model -------------------------------------------------------------------------------

def test_word2vec_is_cbow_and_deterministic():
    texts, _ = _texts(30)
    tokens = [tokenize(t) for t in texts]
    cfg = Word2VecConfig(vector_size=8, window=2, min_count=1, epochs=3)
    a = train_word2vec(tokens, cfg, seed=3)
    b = train_word2vec(tokens, cfg, seed=3)
    c = train_word2vec(tokens, cfg, seed=4)
    assert a.index_to_key == b.index_to_key
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert not np.array_equal(a.vectors, c.vectors)
    assert a.vector_size == 8 and "sofa" in a.key_to_index
    with pytest.raises(ValueError, match="token"):
        train_word2vec([[], []], cfg, seed=0)


def test_text_model_embedding_initialised_from_word2vec():
    texts, _ = _texts(30)
    tokens = [tokenize(t) for t in texts]
    kv = train_word2vec(tokens, Word2VecConfig(vector_size=8, min_count=1, epochs=2), seed=0)
    vocab = {"<pad>": PAD, "<oov>": OOV, **{w: i + 2 for i, w in enumerate(kv.index_to_key)}}
    raw = embedding_matrix(vocab, kv, norm=None)
    np.testing.assert_array_equal(raw[vocab["sofa"]], kv["sofa"])
    matrix = embedding_matrix(vocab, kv, norm=0.5)
    np.testing.assert_array_equal(matrix[PAD], 0.0)
    centred = kv.vectors - kv.vectors.mean(axis=0)
    expected = centred[kv.key_to_index["sofa"]]
    np.testing.assert_allclose(matrix[vocab["sofa"]], expected / np.linalg.norm(expected) * 0.5,
                               rtol=1e-5)
    # similar words stay similar: the rescaling keeps the centred Word2Vec directions
    np.testing.assert_allclose(np.linalg.norm(matrix[2:], axis=1), 0.5, rtol=1e-4)
    model = build_text_model(matrix, N_CLASSES, _txt_cfg())
    np.testing.assert_array_equal(model.get_layer("word_embedding").get_weights()[0], matrix)
    ids = encode(texts[:4], vocab, 12)
    assert model.predict(ids, verbose=0).shape == (4, N_CLASSES)
    assert model.get_layer("embedding").units == 256
    assert text_input_kind(model) == "tokens"


def test_text_model_bigram_branch_comes_from_config():
    matrix = np.random.default_rng(0).normal(size=(20, 8)).astype("float32")
    with_bigrams = build_text_model(matrix, N_CLASSES, _txt_cfg(bigram_buckets=128, bigram_dim=4))
    assert with_bigrams.get_layer("bigram_embedding").get_weights()[0].shape == (128, 4)
    without = build_text_model(matrix, N_CLASSES, _txt_cfg(bigram_buckets=0))
    assert not any("bigram" in layer.name for layer in without.layers)
    ids = np.array([[2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]], "int32")
    assert without.predict(ids, verbose=0).shape == (1, N_CLASSES)


def test_hashed_bigrams_skip_padding_and_stay_in_range():
    from marketsearch.models.text import HashedBigrams
    ids = np.array([[5, 6, 7, 0, 0], [5, 6, 0, 0, 0]], "int32")
    out = np.asarray(HashedBigrams(101)(ids))
    assert out.shape == (2, 4)
    assert (out[0, :2] > 0).all() and (out[0, 2:] == 0).all()
    assert out[0, 0] == out[1, 0]  # same word pair, same bucket
    assert out[0, 0] != out[0, 1]
    assert out.max() < 101


def test_attention_pool_ignores_padding():
    from marketsearch.models.text import MaskedAttentionPool
    ids = np.array([[5, 6, 0]], "int32")
    vectors = np.array([[[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]]], "float32")
    out = np.asarray(MaskedAttentionPool()([ids, vectors]))
    np.testing.assert_allclose(out, [[0.5, 0.5]], rtol=1e-5)  # zero-init scores: a plain mean


def test_masked_mean_pool_ignores_padding():
    ids = np.array([[5, 6, 0, 0]], "int32")
    vectors = np.arange(8, dtype="float32").reshape(1, 4, 2)
    vectors[0, 2:] = 100.0  # padding positions: must not count
    out = np.asarray(MaskedMeanPool()([ids, vectors]))
    np.testing.assert_allclose(out, [[1.0, 2.0]])


def test_train_text_model_learns_and_round_trips(tmp_path):
    texts, y = _texts(60)
    model, vocab, hist = train_text_model(texts, y, texts[:15], y[:15], N_CLASSES,
                                          _txt_cfg(epochs=8, towers=2), seed=0, verbose=0)
    assert vocab["<pad>"] == PAD and vocab["<oov>"] == OOV and "drill" in vocab
    ids = encode(texts, vocab, 12)
    assert (model.predict(ids, verbose=0).argmax(1) == y).mean() > 0.9
    assert hist["train"]["epochs_run"] >= 1 and len(hist["towers"]) == 2
    assert embedding_model(model).predict(ids[:2], verbose=0).shape == (2, 2 * 256)
    loaded = _roundtrip(model, tmp_path)
    np.testing.assert_allclose(loaded.predict(ids, verbose=0), model.predict(ids, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert text_input_kind(loaded) == "tokens"
    np.testing.assert_array_equal(prepare_text_input(texts[:3], "tokens", vocab, 12), ids[:3])


def _tower(seed: int, dim: int = 6) -> "keras.Model":
    set_seed(seed)
    matrix = np.random.default_rng(seed).normal(size=(20, 4)).astype("float32")
    return build_text_model(matrix, N_CLASSES, _txt_cfg(embedding_dim=dim))


def test_text_ensemble_is_softmax_of_mean_tower_logits(tmp_path):
    towers = [_tower(1), _tower(2), _tower(3)]
    ensemble = build_text_ensemble(towers)
    ids = np.random.default_rng(0).integers(0, 20, size=(5, 12)).astype("int32")
    log_p = np.mean([np.log(t.predict(ids, verbose=0)) for t in towers], axis=0)
    expected = np.exp(log_p) / np.exp(log_p).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ensemble.predict(ids, verbose=0), expected, rtol=1e-4, atol=1e-6)
    emb = embedding_model(ensemble).predict(ids, verbose=0)
    assert emb.shape == (5, 18)
    np.testing.assert_allclose(emb[:, :6], embedding_model(towers[0]).predict(ids, verbose=0),
                               rtol=1e-5, atol=1e-6)
    loaded = _roundtrip(ensemble, tmp_path)
    np.testing.assert_allclose(loaded.predict(ids, verbose=0), expected, rtol=1e-4, atol=1e-6)
    assert build_text_ensemble(towers[:1]) is towers[0]


# --- TF-Hub encoder ---------------------------------------------------------------------------

HUB_DIM = 6


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    """A tiny TF SavedModel sentence encoder: hashed tokens -> mean of a variable table."""

    class Encoder(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.Variable(
                tf.random.stateless_normal([64, HUB_DIM], seed=[1, 2]), name="table")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            tokens = tf.strings.split(tf.strings.lower(texts))
            ids = tf.strings.to_hash_bucket_fast(tokens, 64)
            return tf.reduce_mean(tf.ragged.map_flat_values(tf.gather, self.table, ids), axis=1)

    path = tmp_path_factory.mktemp("hub") / "encoder"
    tf.saved_model.save(Encoder(), str(path))
    from marketsearch import hub_handles

    hub_handles.allow([str(path)])   # as text_model.hub_handle does for the pipeline
    return str(path)


def test_hub_text_model_round_trips(hub_dir, tmp_path):
    texts, _ = _texts(6)
    model = build_hub_text_model(hub_dir, N_CLASSES, _txt_cfg())
    assert text_input_kind(model) == "strings"
    assert model.get_layer("hub_encoder").output_dim == HUB_DIM
    x = prepare_text_input(texts, "strings", None, 12)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (6, N_CLASSES)
    enc = np.asarray(model.get_layer("hub_encoder")(tf.constant(texts)))
    assert enc.shape == (6, HUB_DIM) and not np.allclose(enc[0], enc[1])
    loaded = _roundtrip(model, tmp_path)
    assert loaded.get_layer("hub_encoder").get_config()["handle"] == hub_dir
    np.testing.assert_allclose(loaded.predict(x, verbose=0), probs, rtol=1e-5, atol=1e-6)


def test_a_hub_handle_swapped_into_a_saved_model_is_refused_and_not_loaded(hub_dir, tmp_path,
                                                                          monkeypatch):
    """The handle inside a .keras file chooses code to run (a SavedModel): one the config
    does not allow is refused before tensorflow_hub loads anything."""
    import json
    import zipfile

    import tensorflow_hub as hub

    model = build_hub_text_model(hub_dir, N_CLASSES, _txt_cfg())
    path = tmp_path / "text.keras"
    model.save(path)
    tampered = tmp_path / "tampered.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(json.loads(data)).replace(
                    json.dumps(hub_dir)[1:-1], "/srv/someone-elses/savedmodel").encode()
            dst.writestr(item, data)
    loaded = []
    monkeypatch.setattr(hub, "load", lambda handle, *a, **k: loaded.append(handle))
    with pytest.raises(ValueError, match="TF-Hub handle '/srv/someone-elses/savedmodel'.*"
                                         "refusing to load it"):
        keras.models.load_model(tampered, compile=False)
    assert loaded == []


def test_train_text_model_with_hub_encoder(hub_dir):
    texts, y = _texts(30)
    model, vocab, hist = train_text_model(
        texts, y, texts[:6], y[:6], N_CLASSES,
        _txt_cfg(encoder="tfhub", hub_handle=hub_dir, epochs=2), seed=0, verbose=0)
    assert vocab == {} and hist["train"]["epochs_run"] == 2
    assert text_input_kind(model) == "strings"
    with pytest.raises(ValueError, match="hub_handle"):
        train_text_model(texts, y, texts, y, N_CLASSES, _txt_cfg(encoder="tfhub"), seed=0)


# --- fusion -----------------------------------------------------------------------------------

def test_present_flags_from_zero_rows():
    emb = np.array([[0.0, 0.0], [0.0, 0.3]])
    np.testing.assert_array_equal(present_flags(emb), [[0.0], [1.0]])


def test_modality_dropout_hides_one_modality_only_in_training():
    layer = ModalityDropout(rate=1.0, seed=0)
    ones = np.ones((200, 1), "float32")
    ip, tp = (np.asarray(t) for t in layer([ones, ones], training=True))
    np.testing.assert_array_equal(ip + tp, 1.0)  # exactly one of the two hidden
    assert 0.3 < ip.mean() < 0.7  # image and text hidden about equally often
    ip, tp = (np.asarray(t) for t in layer([ones, ones], training=False))
    np.testing.assert_array_equal(ip, 1.0)
    np.testing.assert_array_equal(tp, 1.0)
    only_text = np.zeros_like(ones)
    ip, tp = (np.asarray(t) for t in layer([only_text, ones], training=True))
    np.testing.assert_array_equal(tp, 1.0)  # a lone modality is never hidden


def test_fusion_head_ignores_missing_modality():
    head = build_fusion_head(5, 4, N_CLASSES, FusionConfig(embedding_dim=8))
    assert head.get_layer("fused_embedding").units == 8
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(3, 5)), rng.normal(size=(3, 4))
    zero, one = np.zeros((3, 1)), np.ones((3, 1))
    a = head.predict([img, txt, zero, one], verbose=0)
    b = head.predict([img * 7 + 1, txt, zero, one], verbose=0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    c = head.predict([img * 7 + 1, txt, one, one], verbose=0)
    assert not np.allclose(a, c)


def test_train_fusion_head_uses_both_modalities():
    rng = np.random.default_rng(0)
    n = 240
    y = np.arange(n) % N_CLASSES
    img = rng.normal(size=(n, 6)).astype("float32")
    txt = rng.normal(size=(n, 5)).astype("float32")
    img[np.arange(n), y] += 2.5
    txt[np.arange(n), y] += 2.5
    txt[:20] = 0.0  # listings without text still train
    head, hist = train_fusion_head(img, txt, y, img[:60], txt[:60], y[:60], N_CLASSES,
                                   FusionConfig(embedding_dim=16, epochs=15, batch_size=32,
                                                learning_rate=1e-2, modality_dropout=0.3),
                                   seed=0, verbose=0)
    assert hist["train"]["epochs_run"] >= 1 and hist["seconds"] > 0
    ones, zeros = np.ones((n, 1)), np.zeros((n, 1))
    both = (head.predict([img, txt, ones, ones], verbose=0).argmax(1) == y).mean()
    img_only = (head.predict([img, 0 * txt, ones, zeros], verbose=0).argmax(1) == y).mean()
    txt_only = (head.predict([0 * img, txt, zeros, ones], verbose=0).argmax(1) == y).mean()
    assert both > 0.9
    assert img_only > 0.6 and txt_only > 0.6  # modality dropout taught it single modalities
    assert both > max(img_only, txt_only) - 0.02


def test_fusion_head_blend_uses_the_modality_classifiers():
    rng = np.random.default_rng(0)
    wi, bi = rng.normal(size=(5, N_CLASSES)), rng.normal(size=N_CLASSES)
    wt, bt = rng.normal(size=(4, N_CLASSES)), rng.normal(size=N_CLASSES)
    head = build_fusion_head(5, 4, N_CLASSES, FusionConfig(embedding_dim=8),
                             image_classifier=(wi, bi), text_classifier=(wt, bt))
    img, txt = rng.normal(size=(3, 5)), rng.normal(size=(3, 4))
    zero, one = np.zeros((3, 1)), np.ones((3, 1))
    blend = head.get_layer("blend")
    np.testing.assert_array_equal(np.asarray(blend.blend), [1.0, 0.0, 0.0])  # fused only

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    blend.set_weights([np.array([0.0, 1.0, 0.0], "float32")])
    np.testing.assert_allclose(head.predict([img, txt, one, one], verbose=0),
                               softmax(txt @ wt + bt), rtol=1e-4, atol=1e-6)
    # text absent: its logits are zeros, not its bias
    np.testing.assert_allclose(head.predict([img, txt, one, zero], verbose=0), 1.0 / N_CLASSES,
                               rtol=1e-5)
    blend.set_weights([np.array([0.0, 0.0, 2.0], "float32")])
    np.testing.assert_allclose(head.predict([img, txt, one, one], verbose=0),
                               softmax(2 * (img @ wi + bi)), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def small_models():
    x_img, y = _images(24)
    texts, _ = _texts(24)
    img_model, _ = train_image_model(x_img, y, x_img, y, N_CLASSES,
                                     _img_cfg(epochs=1, embedding_dim=12), seed=0, verbose=0)
    txt_model, vocab, _ = train_text_model(texts, y, texts, y, N_CLASSES,
                                           _txt_cfg(epochs=1, embedding_dim=10, towers=2),
                                           seed=0, verbose=0)
    ids = encode(texts, vocab, 12)
    img_e = embedding_model(img_model).predict(x_img, verbose=0)
    txt_e = embedding_model(txt_model).predict(ids, verbose=0)
    head, hist = train_fusion_head(img_e, txt_e, y, img_e, txt_e, y, N_CLASSES,
                                   FusionConfig(embedding_dim=8, epochs=2, batch_size=8,
                                                blend_epochs=3),
                                   seed=0, verbose=0, image_model=img_model,
                                   text_model=txt_model)
    return img_model, txt_model, vocab, head, x_img, texts, hist


def test_train_fusion_head_fits_blend_and_keeps_classifiers_frozen(small_models):
    img_model, txt_model, _, head, _, _, hist = small_models
    assert set(hist) >= {"train", "blend", "blend_weights", "seconds"}
    assert len(hist["blend_weights"]) == 3
    assert hist["blend"]["epochs_run"] == 3  # fusion.blend_epochs
    assert not np.allclose(hist["blend_weights"], [1.0, 0.0, 0.0])  # fitted on validation
    for name, model in (("text", txt_model), ("image", img_model)):
        kernel, bias = head.get_layer(f"{name}_logits_dense").get_weights()
        ref_kernel, ref_bias = model.get_layer("probs").get_weights()
        np.testing.assert_allclose(kernel, ref_kernel, rtol=1e-6)
        np.testing.assert_allclose(bias, ref_bias, rtol=1e-6)


def test_assembled_fused_model_matches_parts_and_round_trips(small_models, tmp_path):
    img_model, txt_model, vocab, head, x_img, texts, _ = small_models
    fused = assemble_fused_model(img_model, txt_model, head)
    assert text_input_kind(fused) == "tokens"
    ids = encode(texts, vocab, 12)
    inputs = fused_inputs(x_img, ids)
    out = fused.predict(inputs, verbose=0)
    assert set(out) == {"probs", "fused_embedding", "image_probs", "text_probs"}
    assert out["probs"].shape == (24, N_CLASSES) and out["fused_embedding"].shape == (24, 8)
    # the photo and text models' own scores come from the same pass
    np.testing.assert_allclose(out["image_probs"], img_model.predict(x_img, verbose=0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["text_probs"], txt_model.predict(ids, verbose=0),
                               rtol=1e-4, atol=1e-5)
    # and from cached photo features, through the nested "from_features" part
    from marketsearch.models.fusion import FROM_FEATURES
    from marketsearch.models.image import features_model
    feats = features_model(img_model).predict(x_img.astype("float32"), verbose=0)
    again = fused.get_layer(FROM_FEATURES).predict(
        {"image_features": feats, "text": ids, "image_present": inputs["image_present"],
         "text_present": inputs["text_present"]}, verbose=0)
    for key in out:
        np.testing.assert_allclose(again[key], out[key], rtol=1e-4, atol=1e-5)

    img_emb = embedding_model(img_model).predict(x_img, verbose=0)
    txt_emb = embedding_model(txt_model).predict(ids, verbose=0)
    ones = np.ones((24, 1))
    np.testing.assert_allclose(out["probs"], head.predict([img_emb, txt_emb, ones, ones],
                                                          verbose=0), rtol=1e-4, atol=1e-5)

    loaded = _roundtrip(fused, tmp_path, "fused.keras")
    again = loaded.predict(inputs, verbose=0)
    for key in out:
        np.testing.assert_allclose(again[key], out[key], rtol=1e-5, atol=1e-5)


def test_fused_model_text_only_and_photo_only(small_models):
    img_model, txt_model, vocab, head, x_img, texts, _ = small_models
    fused = assemble_fused_model(img_model, txt_model, head)
    ids = encode(texts, vocab, 12)
    n = len(texts)
    zeros, ones = np.zeros((n, 1)), np.ones((n, 1))
    # text only: whatever photo is passed does not matter
    a = fused.predict(fused_inputs(np.zeros_like(x_img), ids, zeros, ones), verbose=0)
    b = fused.predict(fused_inputs(x_img, ids, zeros, ones), verbose=0)
    np.testing.assert_allclose(a["probs"], b["probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["fused_embedding"], b["fused_embedding"], rtol=1e-5, atol=1e-6)
    # photo only: whatever text is passed does not matter
    c = fused.predict(fused_inputs(x_img, np.zeros_like(ids), ones, zeros), verbose=0)
    d = fused.predict(fused_inputs(x_img, ids, ones, zeros), verbose=0)
    np.testing.assert_allclose(c["probs"], d["probs"], rtol=1e-5, atol=1e-6)
    both = fused.predict(fused_inputs(x_img, ids), verbose=0)
    # (the probs of both may equal the text model's, where the blend fell back to it)
    assert not np.allclose(both["fused_embedding"], b["fused_embedding"])


def test_fused_model_with_hub_text_model(hub_dir, tmp_path):
    x_img, y = _images(6)
    texts, _ = _texts(6)
    img_model = build_image_model(N_CLASSES, _img_cfg(embedding_dim=12), SIZE)
    txt_model = build_hub_text_model(hub_dir, N_CLASSES, _txt_cfg(embedding_dim=10))
    fused = assemble_fused_model(img_model, txt_model,
                                 build_fusion_head(12, 10, N_CLASSES, FusionConfig(embedding_dim=8)))
    assert text_input_kind(fused) == "strings"
    inputs = fused_inputs(x_img, prepare_text_input(texts, "strings", None, 0))
    out = fused.predict(inputs, verbose=0)
    loaded = _roundtrip(fused, tmp_path, "fused_hub.keras")
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0)["probs"], out["probs"],
                               rtol=1e-5, atol=1e-6)


def _write_bundle(root, fused, img_model, txt_model, vocab):
    import json

    root.mkdir()
    fused.save(root / "fused.keras")
    img_model.save(root / "image.keras")
    txt_model.save(root / "text.keras")
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "meta.json").write_text(json.dumps({"labels": ["a", "b", "c"], "image_size": SIZE,
                                                "text_input": "tokens", "max_len": 12}))


def test_bundles_from_before_the_split_still_predict_the_same(small_models, tmp_path):
    """A champion saved before the fused model was split into image_features ->
    from_features (one graph, photo and text models run beside it) predicts what the split
    model predicts; and a text-only item of the split model skips the backbone."""
    from marketsearch.bundle import Bundle

    img_model, txt_model, vocab, head, x_img, texts, _ = small_models
    _write_bundle(tmp_path / "split", assemble_fused_model(img_model, txt_model, head),
                  img_model, txt_model, vocab)
    # the fused model as bundles were saved before: one graph, probs + fused_embedding only
    image_in = keras.Input((SIZE, SIZE, 3), dtype="uint8", name="image")
    text_in = keras.Input((12,), dtype="int32", name="text")
    present = [keras.Input((1,), name="image_present"), keras.Input((1,), name="text_present")]
    head_both = keras.Model(head.inputs, [head.get_layer("fused_embedding").output, head.output])
    fused_vec, probs = head_both([embedding_model(img_model)(image_in),
                                  embedding_model(txt_model)(text_in), *present])
    old = keras.Model({"image": image_in, "text": text_in, "image_present": present[0],
                       "text_present": present[1]},
                      {"probs": keras.layers.Identity(name="probs")(probs),
                       "fused_embedding": keras.layers.Identity(name="fused_embedding")(fused_vec)})
    _write_bundle(tmp_path / "old", old, img_model, txt_model, vocab)

    split, before = Bundle(tmp_path / "split"), Bundle(tmp_path / "old")
    assert split.parts is not None and before.parts is None
    has_image = (np.arange(len(texts)) % 3 != 0).astype("float32")  # a third are text-only
    a = split.predict(texts, x_img, has_image=has_image)
    b = before.predict(texts, x_img, has_image=has_image)
    for field in ("fused_probs", "fused_embedding", "text_probs"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-4, atol=1e-5)
    with_photo = has_image > 0
    np.testing.assert_allclose(a.image_probs[with_photo], b.image_probs[with_photo],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b.image_probs, img_model.predict(x_img, verbose=0),
                               rtol=1e-4, atol=1e-5)
    # items that all have a photo (a server's request) go through both parts in one traced
    # call, and get what they got beside text-only items
    photos = np.flatnonzero(with_photo)
    c = split.predict([texts[i] for i in photos], x_img[photos])
    assert "_fn_photo_to_fused" in split.__dict__
    for field in ("fused_probs", "fused_embedding", "text_probs", "image_probs"):
        np.testing.assert_allclose(getattr(c, field), getattr(a, field)[photos],
                                   rtol=1e-4, atol=1e-5)


def test_requests_run_the_inference_copy_of_the_photo_features(small_models, tmp_path,
                                                                monkeypatch):
    """A request's photo (no feature cache) goes through ``Bundle.serving_features`` (the
    folded backbone for Lite0; here a stand-in that blanks the features, so its use shows),
    in the one-call path and the mixed one alike; batch work with a feature cache keeps the
    trained ``parts[0]``."""
    import marketsearch.models.image as image_models
    from marketsearch.bundle import Bundle

    img_model, txt_model, vocab, head, x_img, texts, _ = small_models
    _write_bundle(tmp_path / "b", assemble_fused_model(img_model, txt_model, head),
                  img_model, txt_model, vocab)

    def blanked(features):
        inputs = keras.Input(features.inputs[0].shape[1:])
        return keras.Model(inputs, keras.layers.Lambda(lambda t: t * 0.0)(features(inputs)))

    plain = Bundle(tmp_path / "b")
    assert np.any(plain.photo_features(x_img[:3]))  # its serving_features made before the patch
    monkeypatch.setattr(image_models, "inference_features", blanked)
    served = Bundle(tmp_path / "b")
    assert not np.any(served.photo_features(x_img[:3]))
    has_image = (np.arange(len(texts)) % 3 != 0).astype("float32")
    for bundle_has_image in (None, has_image):  # all with a photo (one call), then mixed
        a = plain.predict(texts, x_img, has_image=bundle_has_image)
        b = served.predict(texts, x_img, has_image=bundle_has_image)
        assert not np.allclose(a.fused_embedding, b.fused_embedding, atol=1e-4)
    np.testing.assert_allclose(b.text_probs, a.text_probs, rtol=1e-5)  # text untouched

    class Cache:
        def features(self, model, pixels, compute, batch_size):
            assert model is served.parts[0]
            return compute(pixels)

    served.feature_cache = Cache()
    np.testing.assert_allclose(served.photo_features(x_img[:3]),
                               plain.photo_features(x_img[:3]), rtol=1e-5, atol=1e-6)


def test_a_bundle_run_by_litert_predicts_what_tensorflow_predicts(small_models, tmp_path):
    """``photo_runtime = "litert"`` (a server's default, serving.photo_runtime) sends the
    photos through ``lite_features`` and then the rest of the model: all-photo and mixed
    batches get the fused, photo and text outputs of the TensorFlow path."""
    from marketsearch.bundle import Bundle

    img_model, txt_model, vocab, head, x_img, texts, _ = small_models
    _write_bundle(tmp_path / "b", assemble_fused_model(img_model, txt_model, head),
                  img_model, txt_model, vocab)
    tf_bundle, lite = Bundle(tmp_path / "b"), Bundle(tmp_path / "b")
    lite.photo_runtime, lite.photo_threads = "litert", 1
    has_image = (np.arange(len(texts)) % 3 != 0).astype("float32")
    for flags in (None, has_image):
        a = tf_bundle.predict(texts, x_img, has_image=flags)
        b = lite.predict(texts, x_img, has_image=flags)
        for field in ("fused_probs", "fused_embedding", "text_probs", "image_probs"):
            np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-4,
                                       atol=1e-5)
    assert "lite_features" in lite.__dict__ and "lite_features" not in tf_bundle.__dict__
    assert "_fn_photo_to_fused" not in lite.__dict__
