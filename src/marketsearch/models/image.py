"""Photo classifier: uint8 photos in, a 256-d "embedding" layer and a softmax "probs" head out.

Scaling to the backbone's input range happens inside the model (``ImageScaling``), so training,
evaluation and serving all pass the same uint8 arrays from ``marketsearch.images``.

Backbones (``ImageModelConfig.backbone``):

* ``small_cnn``: a light CNN trained from scratch (stride-2 stem, batch-normalised separable
  convolutions, global average pooling): the local default, a few seconds an epoch on two CPU
  cores at 64 px.
* ``efficientnetb0`` / ``resnet50``: ``keras.applications`` without their top, with
  ``cfg.weights`` = None (random init), "imagenet" (downloaded by Keras: cluster only) or a
  path to a weights file of the notop backbone (e.g. ``efficientnetb0_notop.h5`` baked into the
  trainer image, or a ``.weights.h5`` saved with ``backbone.save_weights``). With pretrained
  weights, training runs a frozen-backbone phase then a fine-tune phase.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..config import ImageModelConfig
from .training import fit, set_seed

import keras  # noqa: E402  (after training.py has quietened TensorFlow's logging)
from keras import layers, ops  # noqa: E402

log = logging.getLogger(__name__)

BACKBONE_LAYER = "backbone"
APPLICATIONS = {"efficientnetb0": "EfficientNetB0", "resnet50": "ResNet50"}
# What each backbone expects of its input, from uint8 RGB (see ImageScaling).
SCALING = {"small_cnn": "unit", "efficientnetb0": "raw", "resnet50": "caffe"}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="marketsearch")
class ImageScaling(layers.Layer):
    """uint8/float RGB in [0, 255] -> the backbone's input range.

    ``unit``: x / 255; ``raw``: float 0..255 unchanged (EfficientNet rescales internally);
    ``caffe``: RGB -> BGR minus the ImageNet channel means (ResNet50's ``preprocess_input``).
    """

    def __init__(self, mode: str = "unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("unit", "raw", "caffe"):
            raise ValueError(f"ImageScaling mode {mode!r} is not one of unit, raw, caffe")
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype="float32")
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


def _sep_block(x, filters: int, name: str):
    x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def small_cnn(image_size: int, name: str = BACKBONE_LAYER) -> keras.Model:
    """A light from-scratch CNN: [S, S, 3] floats in [0, 1] -> pooled features."""
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, (filters, n_convs) in enumerate(((64, 1), (128, 2), (256, 2))):
        for j in range(n_convs):
            x = _sep_block(x, filters, f"b{i}_{j}")
        if i < 2:
            x = layers.MaxPooling2D(2, name=f"b{i}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, x, name=name)


def build_backbone(cfg: ImageModelConfig, image_size: int) -> keras.Model:
    """The feature extractor named "backbone" (pooled features out), weights per ``cfg``."""
    if cfg.backbone == "small_cnn":
        if cfg.weights not in (None, ""):
            model = small_cnn(image_size)
            model.load_weights(cfg.weights)
            return model
        return small_cnn(image_size)
    if cfg.backbone not in APPLICATIONS:
        raise ValueError(f"image backbone {cfg.backbone!r} is not one of "
                         f"small_cnn, {', '.join(APPLICATIONS)}")
    weights = cfg.weights or None
    if weights not in (None, "imagenet"):
        from pathlib import Path
        if not Path(weights).is_file():
            raise FileNotFoundError(f"image_model.weights: no weights file at {weights}")
    app = getattr(keras.applications, APPLICATIONS[cfg.backbone])
    model = app(include_top=False, weights=weights, input_shape=(image_size, image_size, 3),
                pooling="avg")
    # Rename so the fused model can find it whatever the backbone.
    return keras.Model(model.inputs, model.outputs, name=BACKBONE_LAYER)


def build_image_model(n_classes: int, cfg: ImageModelConfig, image_size: int,
                      seed: int | None = None) -> keras.Model:
    """uint8 [N, S, S, 3] -> class probabilities ("probs"), with a Dense "embedding" layer."""
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = ImageScaling("raw", name="to_float")(inputs)
    if cfg.augment:
        x = augmentation(seed)(x)
    x = ImageScaling(SCALING[cfg.backbone], name="scaling")(x)
    backbone = build_backbone(cfg, image_size)
    # training=False keeps a pretrained backbone's batch norm in inference mode when unfrozen
    # (the usual fine-tuning recipe); a from-scratch backbone trains its batch norm.
    pretrained = cfg.backbone != "small_cnn" and cfg.weights not in (None, "")
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = layers.Dropout(cfg.dropout, name="features_dropout")(x)
    x = layers.Dense(cfg.embedding_dim, activation="relu", name="embedding")(x)
    x = layers.Dropout(cfg.dropout, name="embedding_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"image_{cfg.backbone}")


def _fit_args(cfg: ImageModelConfig, seed: int) -> dict[str, Any]:
    return dict(batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                warmup_epochs=cfg.warmup_epochs, patience=cfg.patience, seed=seed,
                label_smoothing=getattr(cfg, "label_smoothing", 0.0))


def train_image_model(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                      y_val: np.ndarray, n_classes: int, cfg: ImageModelConfig, seed: int,
                      verbose: int = 2) -> tuple[keras.Model, dict[str, Any]]:
    """Build and train the photo model; returns (model, history).

    A pretrained keras.applications backbone trains in two phases: ``cfg.epochs`` with the
    backbone frozen at ``cfg.learning_rate``, then ``cfg.fine_tune_epochs`` with it unfrozen
    at ``cfg.fine_tune_learning_rate``. A randomly initialised backbone trains end to end
    for ``cfg.epochs`` (+ ``cfg.fine_tune_epochs``) in one phase.
    """
    if x_train.dtype != np.uint8:
        raise ValueError(f"x_train must be uint8 photos, got {x_train.dtype}")
    image_size = int(x_train.shape[1])
    set_seed(seed)
    start = time.perf_counter()
    model = build_image_model(n_classes, cfg, image_size, seed=seed)
    backbone = model.get_layer(BACKBONE_LAYER)
    pretrained = cfg.backbone != "small_cnn" and cfg.weights not in (None, "")
    history: dict[str, Any] = {}
    if pretrained:
        backbone.trainable = False
        history["frozen"] = fit(model, x_train, y_train, x_val, y_val, epochs=cfg.epochs,
                                learning_rate=cfg.learning_rate, verbose=verbose,
                                **_fit_args(cfg, seed))
        if cfg.fine_tune_epochs > 0:
            backbone.trainable = True
            history["fine_tune"] = fit(
                model, x_train, y_train, x_val, y_val, epochs=cfg.fine_tune_epochs,
                learning_rate=cfg.fine_tune_learning_rate, verbose=verbose,
                **{**_fit_args(cfg, seed), "warmup_epochs": 0})
    else:
        history["train"] = fit(model, x_train, y_train, x_val, y_val,
                               epochs=cfg.epochs + cfg.fine_tune_epochs,
                               learning_rate=cfg.learning_rate, verbose=verbose,
                               **_fit_args(cfg, seed))
    history["seconds"] = time.perf_counter() - start
    return model, history
