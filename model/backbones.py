"""Backbone registry: keras.applications families with their C3-C5 taps named once.

Each entry builds a keras.Model from a float32 image in [0, 255] (RGB) to
three feature maps at strides 8, 16 and 32 (C3, C4, C5). Each family's own input
preprocessing is part of the model. Starting weights (`build_backbone(weights=...)`):
None (random), "imagenet" (Keras applications' ImageNet weights, which Keras downloads once
into its cache, KERAS_HOME/models or ~/.keras/models) or a local file in Keras applications'
format (`.weights.h5` or legacy `.h5`, with or without the classifier on top). A previous
run's backbone is copied by engine/run_dir.py, which knows run directories.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable

import h5py
import keras
from keras import layers, ops


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Attributes:
      build: keras.applications constructor (include_top=False).
      taps: layer names of C3, C4, C5 (strides 8, 16, 32).
      preprocess: "caffe" (BGR minus ImageNet means), "tf" ([-1, 1]) or "none" (the model
        normalizes [0, 255] itself).
    """

    build: Callable[..., keras.Model] | None
    taps: tuple[str, str, str]
    preprocess: str


_A = keras.applications
BACKBONES: dict[str, BackboneSpec] = {
    # The original system's backbones.
    "resnet50": BackboneSpec(_A.ResNet50, ("conv3_block4_out", "conv4_block6_out",
                                           "conv5_block3_out"), "caffe"),
    "resnet101": BackboneSpec(_A.ResNet101, ("conv3_block4_out", "conv4_block23_out",
                                             "conv5_block3_out"), "caffe"),
    "resnet152": BackboneSpec(_A.ResNet152, ("conv3_block8_out", "conv4_block36_out",
                                             "conv5_block3_out"), "caffe"),
    # Pre-activation ResNets: a stage's last, stride-2 block starts inside the next stride,
    # so the full-width features at each stride are the next block's pre-activation.
    "resnet50v2": BackboneSpec(_A.ResNet50V2, ("conv3_block4_preact_relu",
                                               "conv4_block6_preact_relu", "post_relu"), "tf"),
    "resnet101v2": BackboneSpec(_A.ResNet101V2, ("conv3_block4_preact_relu",
                                                 "conv4_block23_preact_relu", "post_relu"), "tf"),
    "resnet152v2": BackboneSpec(_A.ResNet152V2, ("conv3_block8_preact_relu",
                                                 "conv4_block36_preact_relu", "post_relu"), "tf"),
    # Today's stronger choices.
    "convnext_tiny": BackboneSpec(_A.ConvNeXtTiny, (
        "convnext_tiny_stage_1_block_2_identity", "convnext_tiny_stage_2_block_8_identity",
        "convnext_tiny_stage_3_block_2_identity"), "none"),
    "convnext_small": BackboneSpec(_A.ConvNeXtSmall, (
        "convnext_small_stage_1_block_2_identity", "convnext_small_stage_2_block_26_identity",
        "convnext_small_stage_3_block_2_identity"), "none"),
    "convnext_base": BackboneSpec(_A.ConvNeXtBase, (
        "convnext_base_stage_1_block_2_identity", "convnext_base_stage_2_block_26_identity",
        "convnext_base_stage_3_block_2_identity"), "none"),
    "efficientnetv2_s": BackboneSpec(_A.EfficientNetV2S, ("block3d_add", "block5i_add",
                                                          "top_activation"), "none"),
    "efficientnetv2_m": BackboneSpec(_A.EfficientNetV2M, ("block3e_add", "block5n_add",
                                                          "top_activation"), "none"),
    "mobilenetv3_large": BackboneSpec(_A.MobileNetV3Large, (
        "expanded_conv_5_add", "expanded_conv_11_add", "expanded_conv_14_add"), "none"),
    # A few hundred thousand parameters, for CPU runs and tests.
    "small": BackboneSpec(None, ("small_c3", "small_c4", "small_c5"), "none"),
}

# C2 (stride 4) for a P2 pyramid level (--min_level=2), where the backbone provides it.
C2_TAPS: dict[str, str] = {
    "resnet50": "conv2_block3_out", "resnet101": "conv2_block3_out",
    "resnet152": "conv2_block3_out", "resnet50v2": "conv2_block3_preact_relu",
    "resnet101v2": "conv2_block3_preact_relu", "resnet152v2": "conv2_block3_preact_relu",
    "small": "small_c2",
}

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET = "imagenet"
WEIGHT_FILE_SUFFIXES = (".weights.h5", ".h5", ".hdf5")


class BackboneWeightsError(ValueError):
    """The backbone's starting weights cannot be had: no download, a bad or foreign file."""


def keras_cache_dir() -> str:
    """Where Keras keeps what it downloads (the ImageNet weights go to its models/)."""
    return os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))


def _preprocess(x, kind: str):
    if kind == "caffe":
        return x[..., ::-1] - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
    if kind == "tf":
        return x / 127.5 - 1.0
    return x


def _small_backbone(inputs, norm: str = "group", bn_momentum: float = 0.99,
                    width: float = 1.0, with_c2: bool = False) -> list:
    """Five stride-2 stages of 3x3 convolutions, C3-C5 at strides 8, 16 and 32.

    The first two stages (1/2 and 1/4 resolution) have biases and no normalization: there
    it would take a third of the backbone's time. From the third stage on, `norm`:
    "group" (GroupNorm, independent of batch size and replicas) or "batch" (BatchNorm with
    `bn_momentum`, statistics synchronized over replicas; trains faster from scratch).
    `width` multiplies every stage's channels (16, 32, 64, 128, 192), rounded to multiples of 8.
    with_c2: also return the second stage's output (stride 4) first, as C2.
    """
    if norm not in ("group", "batch"):
        raise ValueError(f"the small backbone's norm must be group or batch, got {norm!r}")
    if width <= 0:
        raise ValueError(f"the small backbone's width must be positive, got {width}")
    x = inputs / 255.0
    outs = []
    for stage, (channels, blocks) in enumerate([(16, 1), (32, 1), (64, 2), (128, 2), (192, 2)]):
        channels = max(8, int(round(channels * width / 8)) * 8)
        for b in range(blocks):
            x = layers.Conv2D(channels, 3, strides=2 if b == 0 else 1, padding="same",
                              use_bias=stage < 2, name=f"small_s{stage}_b{b}_conv")(x)
            if stage >= 2 and norm == "group":
                x = layers.GroupNormalization(groups=8, name=f"small_s{stage}_b{b}_gn")(x)
            elif stage >= 2:
                x = layers.BatchNormalization(momentum=bn_momentum, synchronized=True,
                                              name=f"small_s{stage}_b{b}_bn")(x)
            x = layers.Activation("relu", name=f"small_s{stage}_b{b}_relu")(x)
        if stage >= 2 or (stage == 1 and with_c2):
            outs.append(layers.Identity(name=f"small_c{stage + 1}")(x))
    return outs


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: str | None = None,
                   norm: str = "group", bn_momentum: float = 0.99,
                   width: float = 1.0, min_level: int = 3) -> keras.Model:
    """The backbone `name` as a model: [B, H, W, 3] float in [0, 255] -> [C3, C4, C5], or
    [C2, C3, C4, C5] with min_level 2 (backbones in C2_TAPS).

    Args:
      weights: None (random), "imagenet" or a local Keras applications weights file (see the
        module docstring).
      norm, bn_momentum, width: the small backbone's normalization and channel multiplier
        (see _small_backbone); the keras.applications backbones keep their own.

    Raises:
      BackboneWeightsError: the ImageNet weights cannot be downloaded (offline) or the file is
        missing or holds no weights of this backbone; the message names the file and the fix.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    if min_level not in (2, 3):
        raise ValueError(f"backbone features start at C2 or C3, not C{min_level}")
    if min_level == 2 and name not in C2_TAPS:
        raise ValueError(f"backbone {name!r} has no C2 tap for a P2 level; use one of "
                         f"{', '.join(C2_TAPS)}, or min_level 3")
    inputs = keras.Input(input_shape, name="image")
    if spec.build is None:
        if weights:
            raise BackboneWeightsError(
                f"the small backbone has neither ImageNet weights nor weight files; start it "
                f"from a previous run's directory instead (got {weights!r})")
        return keras.Model(inputs, _small_backbone(inputs, norm, bn_momentum, width,
                                                   min_level == 2),
                           name=f"backbone_{name}")
    if not weights:
        net = spec.build(include_top=False, weights=None, input_shape=input_shape)
    elif weights == IMAGENET:
        net = _imagenet(spec, name, input_shape)
    else:
        net = _from_file(spec, name, input_shape, weights)
    taps = ((C2_TAPS[name],) if min_level == 2 else ()) + spec.taps
    features = keras.Model(net.inputs, [net.get_layer(t).output for t in taps],
                           name=f"{name}_features")
    return keras.Model(inputs, features(_preprocess(inputs, spec.preprocess)),
                       name=f"backbone_{name}")


def _imagenet(spec: BackboneSpec, name: str, input_shape) -> keras.Model:
    """keras.applications' ImageNet weights: from Keras' cache, else downloaded into it."""
    try:
        return spec.build(include_top=False, weights=IMAGENET, input_shape=input_shape)
    except Exception as e:  # keras.utils.get_file raises a plain Exception for a URL failure
        url = re.search(r"URL fetch failure on (\S+): ", str(e))
        if url is None:
            raise
        file = url.group(1).rsplit("/", 1)[-1]
        cache = os.path.join(keras_cache_dir(), "models")
        raise BackboneWeightsError(
            f"cannot download {name}'s ImageNet weights ({e}); offline, pre-fetch them on a "
            f"machine with internet (python tools/fetch_weights.py --backbone {name}) and copy "
            f"{file} into {cache} (Keras' cache: $KERAS_HOME/models, default ~/.keras/models), "
            f"or pass the file's path as --backbone_weights") from None


def _from_file(spec: BackboneSpec, name: str, input_shape, path: str) -> keras.Model:
    """keras.applications' model with include_top=False and the weights of PATH.

    Keras reads a `.weights.h5` file by layer name, so one saved with the classifier on top
    loads too; a legacy `.h5` file is read layer by layer in order, which fails for a file
    with the classifier, so such a file is read by layer name instead, once every layer of
    the backbone is known to be in it (a layer missing from the file would silently keep its
    random start).
    """
    if not os.path.isfile(path):
        raise BackboneWeightsError(
            f"{path}: no such file (expected 'imagenet', a Keras applications weights file "
            f"({' or '.join(WEIGHT_FILE_SUFFIXES[:2])}) or a train.py run directory)")
    if not path.endswith(WEIGHT_FILE_SUFFIXES):
        raise BackboneWeightsError(
            f"{path}: not a Keras applications weights file (its name must end in "
            f"{', '.join(WEIGHT_FILE_SUFFIXES)})")
    try:
        return spec.build(include_top=False, weights=path, input_shape=input_shape)
    except (ValueError, OSError, KeyError) as e:
        first = e
    if not path.endswith(".weights.h5"):
        try:
            return _legacy_by_name(spec, input_shape, path)
        except (ValueError, OSError, KeyError) as e:
            first = e
    raise BackboneWeightsError(
        f"{path}: not {name}'s weights in Keras applications' format: "
        f"{' '.join(str(first).split())[:300]}") from None


def _legacy_by_name(spec: BackboneSpec, input_shape, path: str) -> keras.Model:
    """A legacy .h5 file with the classifier on top, read by layer name: only once every
    layer of the backbone is in the file (a missing one would keep its random start) and the
    file holds no layer beyond those of the model with its classifier (a deeper network of the
    same family, such as ResNet101's file for ResNet50, has every ResNet50 layer name too)."""
    in_file = _legacy_h5_layer_names(path)
    net = spec.build(include_top=False, weights=None, input_shape=input_shape)
    missing = [layer.name for layer in net.layers if layer.weights and layer.name not in in_file]
    if missing:
        raise ValueError(f"{len(missing)} layers with weights are not in the file, e.g. "
                         f"{', '.join(missing[:3])}")
    with_top = {layer.name for layer in spec.build(include_top=True, weights=None).layers
                if layer.weights}
    extra = sorted(in_file - with_top)
    if extra:
        raise ValueError(f"the file holds {len(extra)} layers this network does not have, e.g. "
                         f"{', '.join(extra[:3])}")
    net.load_weights(path, by_name=True)
    return net


def _legacy_h5_layer_names(path: str) -> set[str]:
    """Names of the layers with weights that a legacy Keras .h5 weights file (or whole-model
    file) holds."""
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        names = group.attrs.get("layer_names")
        if names is None:
            raise ValueError("no layer_names attribute: not a Keras .h5 weights file")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        return {n for n in names if len(group[n].attrs.get("weight_names", [])) > 0}
