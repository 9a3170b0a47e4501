"""RetinaNet's classification and box heads, shared across pyramid levels."""

from __future__ import annotations

import math

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="oid_retinanet")
class RetinaNetHead(layers.Layer):
    """Levels [P3..P7] -> [B, A, outputs_per_anchor], anchors in the order of model/anchors.py.

    `convs` 3x3 convolutions (with GroupNorm, BatchNorm or no normalization and
    ReLU) then a 3x3 convolution to anchors_per_location * outputs_per_anchor
    channels. The convolution weights are shared by every level; normalization
    layers are per level (statistics differ between levels). The final
    convolution's bias starts at `bias_init` (the focal-loss prior for the
    classification head) and it computes in float32 under mixed precision. BatchNorm
    statistics are synchronized over replicas, so any replica count gives the result of
    one device with the global batch.
    """

    def __init__(self, outputs_per_anchor: int, anchors_per_location: int = 9, convs: int = 4,
                 channels: int = 256, norm: str = "group", num_levels: int = 5,
                 bias_init: float = 0.0, bn_momentum: float = 0.99, **kwargs):
        super().__init__(**kwargs)
        if norm not in ("group", "batch", "none"):
            raise ValueError(f"norm must be group, batch or none, got {norm!r}")
        self.outputs_per_anchor = outputs_per_anchor
        self.anchors_per_location = anchors_per_location
        self.convs = convs
        self.channels = channels
        self.norm = norm
        self.num_levels = num_levels
        self.bias_init = bias_init
        self.bn_momentum = bn_momentum
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.tower = [layers.Conv2D(channels, 3, padding="same", kernel_initializer=init,
                                    name=f"conv{i}") for i in range(convs)]
        self.norms = []
        for level in range(num_levels):
            per_level = []
            for i in range(convs):
                if norm == "group":
                    per_level.append(layers.GroupNormalization(
                        group_norm_groups(channels), name=f"gn{i}_l{level}"))
                elif norm == "batch":
                    per_level.append(layers.BatchNormalization(
                        momentum=bn_momentum, synchronized=True, name=f"bn{i}_l{level}"))
            self.norms.append(per_level)
        self.out = layers.Conv2D(anchors_per_location * outputs_per_anchor, 3, padding="same",
                                 kernel_initializer=init,
                                 bias_initializer=keras.initializers.Constant(bias_init),
                                 dtype="float32", name="out")

    def build(self, input_shape):
        shape = tuple(input_shape[0])
        for i, conv in enumerate(self.tower):
            conv.build(shape if i == 0 else shape[:-1] + (self.channels,))
        for level, per_level in enumerate(self.norms):
            for norm in per_level:
                norm.build(tuple(input_shape[level][:-1]) + (self.channels,))
        self.out.build(shape[:-1] + (self.channels,))

    def call(self, features, training=None):
        outputs = []
        for level, x in enumerate(features):
            for i, conv in enumerate(self.tower):
                x = conv(x)
                if self.norms[level]:
                    x = self.norms[level][i](x, training=training)
                x = keras.activations.relu(x)
            x = self.out(x)
            shape = ops.shape(x)
            outputs.append(ops.reshape(x, (shape[0], -1, self.outputs_per_anchor)))
        return ops.concatenate(outputs, axis=1)

    def get_config(self):
        return {**super().get_config(), "outputs_per_anchor": self.outputs_per_anchor,
                "anchors_per_location": self.anchors_per_location, "convs": self.convs,
                "channels": self.channels, "norm": self.norm, "num_levels": self.num_levels,
                "bias_init": self.bias_init, "bn_momentum": self.bn_momentum}


def prior_bias(prior: float = 0.01) -> float:
    """Bias that makes every anchor start at foreground probability `prior`."""
    return -math.log((1 - prior) / prior)


def group_norm_groups(channels: int) -> int:
    """RetinaNet's 32 GroupNorm groups, but at least 8 channels per group: narrower heads
    (the CPU demo's 64 channels) would otherwise normalize pairs of channels, close to
    instance norm, which rescales away how strongly a level responds as a whole."""
    groups = max(1, min(32, channels // 8))
    while channels % groups:
        groups -= 1
    return groups
