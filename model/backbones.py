"""Backbone registry: keras.applications families with their C3-C5 taps named once.

Each entry builds a keras.Model from a float32 image in [0, 255] (RGB) to
three feature maps at strides 8, 16 and 32 (C3, C4, C5). Weights are random
(`weights=None`) unless a local file with ImageNet weights is given: nothing
is downloaded. Each family's own input preprocessing is part of the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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
      weights: a local weights file for the keras.applications model (e.g. ImageNet), or None.
      norm, bn_momentum, width: the small backbone's normalization and channel multiplier
        (see _small_backbone); the keras.applications backbones keep their own.
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
            raise ValueError("the small backbone has no pretrained weights")
        return keras.Model(inputs, _small_backbone(inputs, norm, bn_momentum, width,
                                                   min_level == 2),
                           name=f"backbone_{name}")
    net = spec.build(include_top=False, weights=weights, input_shape=input_shape)
    taps = ((C2_TAPS[name],) if min_level == 2 else ()) + spec.taps
    features = keras.Model(net.inputs, [net.get_layer(t).output for t in taps],
                           name=f"{name}_features")
    return keras.Model(inputs, features(_preprocess(inputs, spec.preprocess)),
                       name=f"backbone_{name}")
