"""Feature pyramid: C3-C5 -> P3-P7 (RetinaNet's variant)."""

from __future__ import annotations

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="oid_retinanet")
class FeaturePyramid(layers.Layer):
    """[C3, C4, C5] -> [P3, P4, P5, P6, P7], each [B, H/2^l, W/2^l, channels].

    P3-P5: 1x1 laterals, top-down nearest upsampling and addition, 3x3 smoothing.
    P6: 3x3 stride-2 convolution of C5; P7: ReLU then 3x3 stride-2 of P6.
    Input sides must be multiples of 128 (the pipeline pads to that), so each
    level is exactly half the previous one.
    """

    def __init__(self, channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.lateral = [layers.Conv2D(channels, 1, name=f"lateral_c{i}") for i in (3, 4, 5)]
        self.smooth = [layers.Conv2D(channels, 3, padding="same", name=f"smooth_p{i}")
                       for i in (3, 4, 5)]
        self.p6 = layers.Conv2D(channels, 3, strides=2, padding="same", name="p6")
        self.p7 = layers.Conv2D(channels, 3, strides=2, padding="same", name="p7")
        self.upsample = layers.UpSampling2D(2, interpolation="nearest")

    def build(self, input_shape):
        for conv, shape in zip(self.lateral, input_shape, strict=True):
            conv.build(shape)
        lat = tuple(input_shape[0][:-1]) + (self.channels,)
        for conv in self.smooth:
            conv.build(lat)
        self.p6.build(input_shape[2])
        self.p7.build(tuple(input_shape[2][:-1]) + (self.channels,))

    def call(self, inputs):
        c3, c4, c5 = inputs
        l5 = self.lateral[2](c5)
        l4 = self.lateral[1](c4) + self.upsample(l5)
        l3 = self.lateral[0](c3) + self.upsample(l4)
        p3, p4, p5 = (s(x) for s, x in zip(self.smooth, (l3, l4, l5), strict=True))
        p6 = self.p6(c5)
        p7 = self.p7(keras.activations.relu(p6))
        return [p3, p4, p5, p6, p7]

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}
