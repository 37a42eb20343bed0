"""The one training loop every model uses: AdamW, warm-up + cosine decay, early stopping."""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import ops  # noqa: E402

log = logging.getLogger(__name__)

# Variables whose names contain these are not decayed (biases, norm scales/offsets, embeddings
# of padding): decaying them only hurts.
NO_DECAY = ["bias", "gamma", "beta"]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and the backend (TensorFlow) random generators."""
    keras.utils.set_random_seed(int(seed))


def _n_examples(x: Any) -> int:
    if isinstance(x, dict):
        x = next(iter(x.values()))
    elif isinstance(x, (list, tuple)):
        x = x[0]
    return int(len(x))


def lr_schedule(learning_rate: float, steps_per_epoch: int, epochs: int,
                warmup_epochs: int = 0) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from lr/100 to ``learning_rate`` over ``warmup_epochs``, then cosine decay
    to lr/100 over the remaining epochs."""
    warmup_steps = max(0, int(warmup_epochs)) * steps_per_epoch
    total_steps = max(1, int(epochs)) * steps_per_epoch
    decay_steps = max(1, total_steps - warmup_steps)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 100.0, decay_steps=decay_steps, alpha=0.01,
            warmup_target=learning_rate, warmup_steps=warmup_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate, decay_steps=decay_steps, alpha=0.01)


@keras.saving.register_keras_serializable(package="marketsearch")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing (Keras' sparse loss has none)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "smoothed_sparse_ce",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        n_classes = ops.shape(y_pred)[-1]
        y_true = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        onehot = ops.one_hot(y_true, n_classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            onehot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def compile_model(model: keras.Model, *, learning_rate: float | Any, weight_decay: float,
                  label_smoothing: float = 0.0) -> None:
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay,
                                       global_clipnorm=5.0)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    if label_smoothing > 0:
        loss = SmoothedSparseCrossentropy(label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(
        optimizer=optimizer, loss=loss,
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3")])


def fit(model: keras.Model, x_train: Any, y_train: np.ndarray, x_val: Any, y_val: np.ndarray, *,
        epochs: int, batch_size: int, learning_rate: float, weight_decay: float,
        warmup_epochs: int, patience: int, seed: int, verbose: int = 2,
        monitor: str = "val_loss", label_smoothing: float = 0.0,
        class_weight: dict[int, float] | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None,
        shuffle_buffer: int | None = None) -> dict[str, Any]:
    """Compile ``model`` (AdamW, warm-up + cosine decay, sparse CE, accuracy + top-3) and train
    it with early stopping on ``monitor``; the best epoch's weights are restored at the end.

    ``x_*`` may be an array, a tuple/list or a dict of arrays (one per model input), or
    ``marketsearch.streaming.Examples`` (``y_*`` then None): streamed through tf.data with a
    shuffle buffer of ``shuffle_buffer`` examples (None: all of them); a set no larger than
    the buffer is taken as arrays (the same memory, Keras' faster array path).
    Returns the Keras history (lists per metric) plus ``best_epoch`` (1-based),
    ``epochs_run`` and ``seconds``.
    """
    from marketsearch.streaming import Examples

    if epochs <= 0:
        return {"best_epoch": 0, "epochs_run": 0, "seconds": 0.0}
    set_seed(seed)
    streamed = isinstance(x_train, Examples)
    n = len(x_train) if streamed else _n_examples(x_train)
    if n == 0:
        raise ValueError("x_train is empty: no examples to train on")
    steps = math.ceil(n / batch_size)
    compile_model(model, learning_rate=lr_schedule(learning_rate, steps, epochs, warmup_epochs),
                  weight_decay=weight_decay, label_smoothing=label_smoothing)
    if isinstance(x_train, list):
        x_train, x_val = tuple(x_train), tuple(x_val)
    buffer = shuffle_buffer or n
    if streamed:
        has_val = x_val is not None and len(x_val) > 0
        # A set that fits in the shuffle buffer would all be in memory anyway: take it as
        # arrays (Keras' own array path, faster than a generator for small sets).
        if n <= buffer:
            x_train, y_train = x_train.arrays()
            streamed = False
        if has_val and len(x_val) <= buffer:
            x_val, y_val = x_val.arrays()
    else:
        has_val = x_val is not None and y_val is not None and _n_examples(x_val) > 0
    val_data = None
    if has_val:
        val_data = x_val.dataset(batch_size) if isinstance(x_val, Examples) else \
            (x_val, np.asarray(y_val))
    if not has_val and monitor.startswith("val_"):
        monitor = monitor[4:]
    stopper = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=patience, restore_best_weights=True,
        mode="max" if "accuracy" in monitor or "top3" in monitor else "min")
    start = time.perf_counter()
    if streamed:
        hist = model.fit(x_train.dataset(batch_size, buffer, seed), epochs=epochs,
                         validation_data=val_data, shuffle=False, verbose=verbose,
                         class_weight=class_weight, callbacks=[stopper, *(callbacks or [])])
    else:
        hist = model.fit(x_train, np.asarray(y_train), batch_size=batch_size, epochs=epochs,
                         validation_data=val_data, shuffle=True, verbose=verbose,
                         class_weight=class_weight, callbacks=[stopper, *(callbacks or [])])
    seconds = time.perf_counter() - start
    out: dict[str, Any] = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    out["best_epoch"] = int(stopper.best_epoch) + 1
    out["epochs_run"] = len(next(iter(hist.history.values()), []))
    out["seconds"] = seconds
    log.info("trained %s: %d epochs in %.1fs, best epoch %d (%s=%.4f)", model.name,
             out["epochs_run"], seconds, out["best_epoch"], monitor,
             float(stopper.best) if stopper.best is not None else float("nan"))
    return out
