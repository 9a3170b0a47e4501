"""Feature pyramid: C3-C5 -> P3-P7 (RetinaNet's variant), optionally with P2 from C2."""

from __future__ import annotations

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="oid_retinanet")
class FeaturePyramid(layers.Layer):
    """[C_min .. C5] -> [P_min .. P_max], each [B, H/2^l, W/2^l, channels].

    min_level 3 (RetinaNet) or 2 (adds P2 at stride 4 from C2, for small objects, as the
    original system's last version); max_level 5, 6 or 7.
    P_min-P5: 1x1 laterals, top-down nearest upsampling and addition, 3x3 smoothing.
    P6: 3x3 stride-2 convolution of C5; P7: ReLU then 3x3 stride-2 of P6.
    Input sides must be multiples of 128 (the pipeline pads to that), so each
    level is exactly half the previous one. Layer names do not depend on min_level, so a
    P3-P7 checkpoint keeps its names.
    """

    def __init__(self, channels: int = 256, min_level: int = 3, max_level: int = 7, **kwargs):
        super().__init__(**kwargs)
        if min_level not in (2, 3) or max_level not in (5, 6, 7):
            raise ValueError(f"the FPN builds P{min_level}-P{max_level}? min_level must be 2 "
                             "or 3, max_level 5, 6 or 7")
        self.channels = channels
        self.min_level = min_level
        self.max_level = max_level
        self.inputs_levels = tuple(range(min_level, 6))
        self.lateral = [layers.Conv2D(channels, 1, name=f"lateral_c{i}")
                        for i in self.inputs_levels]
        self.smooth = [layers.Conv2D(channels, 3, padding="same", name=f"smooth_p{i}")
                       for i in self.inputs_levels]
        self.p6 = layers.Conv2D(channels, 3, strides=2, padding="same", name="p6") \
            if max_level >= 6 else None
        self.p7 = layers.Conv2D(channels, 3, strides=2, padding="same", name="p7") \
            if max_level >= 7 else None
        self.upsample = layers.UpSampling2D(2, interpolation="nearest")

    def build(self, input_shape):
        for conv, shape in zip(self.lateral, input_shape, strict=True):
            conv.build(shape)
        for conv, shape in zip(self.smooth, input_shape, strict=True):
            conv.build(tuple(shape[:-1]) + (self.channels,))
        if self.p6 is not None:
            self.p6.build(input_shape[-1])
        if self.p7 is not None:
            self.p7.build(tuple(input_shape[-1][:-1]) + (self.channels,))

    def call(self, inputs):
        laterals = [conv(c) for conv, c in zip(self.lateral, inputs, strict=True)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down: C5's lateral first
            laterals[i] = laterals[i] + self.upsample(laterals[i + 1])
        outputs = [s(x) for s, x in zip(self.smooth, laterals, strict=True)]
        c5 = inputs[-1]
        if self.p6 is not None:
            outputs.append(self.p6(c5))
        if self.p7 is not None:
            outputs.append(self.p7(keras.activations.relu(outputs[-1])))
        return outputs

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "min_level": self.min_level,
                "max_level": self.max_level}
