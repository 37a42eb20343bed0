"""The text models' Keras layers: a masked mean and an attention pool over token vectors,
hashed word pairs (fastText-style bigrams) computed from the token ids, and a TF-Hub sentence
encoder. Registered as "marketsearch>..." so that saved models reload them by name."""
from __future__ import annotations

import keras
from keras import layers, ops

from ..text import PAD


@keras.saving.register_keras_serializable(package="marketsearch")
class MaskedMeanPool(layers.Layer):
    """Mean of token vectors over the non-padding positions: ([N, T] ids, [N, T, D]) -> [N, D]."""

    def call(self, inputs):
        ids, vectors = inputs
        mask = ops.cast(ops.not_equal(ids, PAD), vectors.dtype)[..., None]
        total = ops.sum(vectors * mask, axis=1)
        return total / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def compute_output_shape(self, input_shapes):
        ids_shape, vec_shape = input_shapes
        return (vec_shape[0], vec_shape[-1])


@keras.saving.register_keras_serializable(package="marketsearch")
class MaskedAttentionPool(layers.Layer):
    """Attention pooling over the non-padding positions: a learned score per token vector,
    softmax over the sequence, weighted sum. ([N, T] ids, [N, T, D]) -> [N, D].

    Learns which words matter (much like TF-IDF weights) where a plain mean treats
    "collection only" like "iphone".
    """

    def build(self, input_shapes):
        dim = input_shapes[1][-1]
        self.score = self.add_weight(name="score", shape=(dim,), initializer="zeros")
        self.score_bias = self.add_weight(name="score_bias", shape=(), initializer="zeros")

    def call(self, inputs):
        ids, vectors = inputs
        mask = ops.not_equal(ids, PAD)
        logits = ops.einsum("ntd,d->nt", vectors, self.score) + self.score_bias
        logits = ops.where(mask, logits, ops.full_like(logits, -1e9))
        weights = ops.softmax(logits, axis=-1) * ops.cast(mask, vectors.dtype)
        return ops.einsum("nt,ntd->nd", weights, vectors)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[1][0], input_shapes[1][-1])


@keras.saving.register_keras_serializable(package="marketsearch")
class HashedBigrams(layers.Layer):
    """Token ids [N, T] -> hashed ids of adjacent word pairs [N, T-1] in [1, buckets), 0 where
    either word is padding (fastText's bigram trick: word order without a bigram vocabulary)."""

    def __init__(self, buckets: int = 65536, **kwargs):
        super().__init__(**kwargs)
        self.buckets = int(buckets)

    def call(self, ids):
        ids = ops.cast(ids, "int32")
        left, right = ids[:, :-1], ids[:, 1:]
        hashed = (left * 7919 + right * 31) % (self.buckets - 1) + 1
        both = ops.logical_and(ops.not_equal(left, PAD), ops.not_equal(right, PAD))
        return ops.where(both, hashed, ops.zeros_like(hashed))

    def compute_output_shape(self, input_shape):
        length = None if input_shape[1] is None else input_shape[1] - 1
        return (input_shape[0], length)

    def compute_output_spec(self, ids):
        return keras.KerasTensor(self.compute_output_shape(ids.shape), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "buckets": self.buckets}


@keras.saving.register_keras_serializable(package="marketsearch")
class HubTextEncoder(layers.Layer):
    """A TF-Hub (or TF SavedModel) sentence encoder loaded with ``tensorflow_hub.load``.

    Takes a string tensor [N] and returns [N, output_dim] floats. The encoder is frozen; the
    handle (a tfhub.dev/Kaggle URL or a local path) is stored in the config so that a saved
    Keras model reloads the encoder from the same handle.
    ``hub.KerasLayer`` is not used because it needs tf_keras, which does not mix with Keras 3.
    """

    def __init__(self, handle: str, output_dim: int | None = None, signature: str | None = None,
                 **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.handle = str(handle)
        self.signature = signature
        self._encoder = self._load()
        self.output_dim = int(output_dim) if output_dim else self._probe_dim()

    @classmethod
    def from_config(cls, config):
        """Loading a saved model: the handle in the file must be one the config allows, or
        nothing is loaded (a tampered file could otherwise name any SavedModel to run)."""
        from marketsearch import hub_handles

        handle = str(config.get("handle"))
        if handle not in hub_handles.ALLOWED:
            raise ValueError(f"the saved model asks for TF-Hub handle {handle!r}, which the "
                             "config does not allow (text_model.hub_handle, serving.hub_handles);"
                             " refusing to load it")
        return cls(**config)

    def _load(self):
        import tensorflow_hub as hub
        module = hub.load(self.handle)
        if self.signature:
            return module.signatures[self.signature]
        if not callable(module):
            sigs = getattr(module, "signatures", {})
            if "serving_default" in sigs:
                return sigs["serving_default"]
            raise ValueError(f"hub module {self.handle!r} is not callable and has no "
                             "serving_default signature")
        return module

    def _encode(self, strings):
        import tensorflow as tf
        out = self._encoder(tf.reshape(tf.convert_to_tensor(strings, tf.string), [-1]))
        if isinstance(out, dict):
            out = out.get("outputs", out.get("default", next(iter(out.values()))))
        return tf.cast(out, tf.float32)

    def _probe_dim(self) -> int:
        return int(self._encode(["probe"]).shape[-1])

    def call(self, inputs):
        return self._encode(inputs)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "handle": self.handle, "output_dim": self.output_dim,
                "signature": self.signature}
