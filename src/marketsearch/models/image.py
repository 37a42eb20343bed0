"""Photo classifier: uint8 photos in, a 256-d "embedding" layer and a softmax "probs" head out.

Scaling to the backbone's input range happens inside the model (``ImageScaling``), so training,
evaluation and serving all pass the same uint8 arrays from ``marketsearch.images``.

Backbones (``ImageModelConfig.backbone``):

* ``small_cnn``: a light CNN trained from scratch (stride-2 stem, batch-normalised separable
  convolutions, global average pooling; 0.2 M parameters): the local default, ~10 s an epoch
  over 8,000 photos at 64 px on two CPU cores, ~0.27 test accuracy on the shared listings.
* ``efficientnetb0`` / ``resnet50``: ``keras.applications`` without their top, with
  ``cfg.weights`` = None (random init), "imagenet" (downloaded by Keras: cluster only) or a
  path to a weights file of the notop backbone (e.g. ``efficientnetb0_notop.h5`` baked into the
  trainer image, or a ``.weights.h5`` saved with ``backbone.save_weights``).

Any backbone given weights ("imagenet" or a file; small_cnn takes a file too) trains in a
frozen-backbone phase and then a fine-tune phase with batch norm kept frozen.
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
                         f"small_cnn, {', '.join(APPLICATIONS)}")
    weights = cfg.weights or None
    if weights not in (None, "imagenet"):
        _check_weights_file(weights)
    app = getattr(keras.applications, APPLICATIONS[cfg.backbone])
    model = app(include_top=False, weights=weights, input_shape=(image_size, image_size, 3),
                pooling="avg")
    # Rename so the fused model can find it whatever the backbone.
    return keras.Model(model.input, model.output, name=BACKBONE_LAYER)


def build_image_model(n_classes: int, cfg: ImageModelConfig, image_size: int,
                      seed: int | None = None) -> keras.Model:
    """uint8 [N, S, S, 3] -> class probabilities ("probs"), with a Dense "embedding" layer."""
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = ImageScaling("raw", name="to_float")(inputs)
    if cfg.augment:
        x = augmentation(seed)(x)
    x = ImageScaling(SCALING[cfg.backbone], name="scaling")(x)
    backbone = build_backbone(cfg, image_size)
    # (No backbone(x, training=False) here: Keras 3 functional models pass the outer call's
    # training flag down regardless. Fine-tuning freezes batch norm via trainable instead.)
    x = backbone(x)
    x = layers.Dropout(cfg.dropout, name="features_dropout")(x)
    x = layers.Dense(cfg.embedding_dim, activation="relu", name="embedding")(x)
    x = layers.Dropout(cfg.dropout, name="embedding_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"image_{cfg.backbone}")


def is_pretrained(cfg: ImageModelConfig) -> bool:
    """Whether the backbone starts from a weights file or ImageNet (then: frozen phase first)."""
    return cfg.weights not in (None, "")


def unfreeze_for_fine_tuning(backbone: keras.Model) -> None:
    """Make the backbone trainable except its batch norm layers: a frozen BatchNormalization
    runs in inference mode, keeping the pretrained statistics (small batches of a new domain
    would wreck them)."""
    backbone.trainable = True
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False


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


def train_image_model(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                      y_val: np.ndarray, n_classes: int, cfg: ImageModelConfig, seed: int,
                      verbose: int = 2) -> tuple[keras.Model, dict[str, Any]]:
    """Build and train the photo model; returns (model, history).

    ``history["train"]`` holds the per-epoch curves (both phases back to back for a pretrained
    backbone, whose phases are also under "frozen" and "fine_tune"); ``history["seconds"]``
    the wall time.

    A pretrained backbone (``cfg.weights`` set: "imagenet" or a weights file, for any
    backbone) trains in two phases: ``cfg.epochs`` with the backbone frozen at
    ``cfg.learning_rate`` (only the embedding and head learn), then ``cfg.fine_tune_epochs``
    with it unfrozen at ``cfg.fine_tune_learning_rate`` (batch norm stays in inference mode).
    A randomly initialised backbone trains end to end for ``cfg.epochs`` (+
    ``cfg.fine_tune_epochs``) in one phase.
    """
    if x_train.dtype != np.uint8:
        raise ValueError(f"x_train must be uint8 photos, got {x_train.dtype}")
    image_size = int(x_train.shape[1])
    set_seed(seed)
    start = time.perf_counter()
    model = build_image_model(n_classes, cfg, image_size, seed=seed)
    backbone = model.get_layer(BACKBONE_LAYER)
    history: dict[str, Any] = {}
    if is_pretrained(cfg):
        backbone.trainable = False
        history["frozen"] = fit(model, x_train, y_train, x_val, y_val, epochs=cfg.epochs,
                                learning_rate=cfg.learning_rate, verbose=verbose,
                                **_fit_args(cfg, seed))
        if cfg.fine_tune_epochs > 0:
            unfreeze_for_fine_tuning(backbone)
            history["fine_tune"] = fit(
                model, x_train, y_train, x_val, y_val, epochs=cfg.fine_tune_epochs,
                learning_rate=cfg.fine_tune_learning_rate, verbose=verbose,
                **{**_fit_args(cfg, seed), "warmup_epochs": 0})
        history["train"] = _concat_phases(history)
    else:
        history["train"] = fit(model, x_train, y_train, x_val, y_val,
                               epochs=cfg.epochs + cfg.fine_tune_epochs,
                               learning_rate=cfg.learning_rate, verbose=verbose,
                               **_fit_args(cfg, seed))
    history["seconds"] = time.perf_counter() - start
    return model, history
