"""Canvas arithmetic: how an image of any size becomes the model's square input and how
boxes on that canvas map back to the image. One home for training, inference and export.

An image of (height, width) pixels is resized by one scale so that its short side becomes
min_side unless its long side would exceed max_side, placed at the top left of a zero canvas
of side canvas_size(max_side), and cropped where it overhangs (only scale jitter in training
makes it overhang). image_info [4, 2] float32 records
    [[decoded height, width], [scaled height, width], [y scale, x scale], [y offset, x offset]]
and a box in canvas pixels maps back to the decoded image as (box + offset) / scale, and to
normalized coordinates by dividing by the decoded size.
"""

from __future__ import annotations

import math

import tensorflow as tf

# The stride of P7: every FPN level must tile the canvas exactly.
CANVAS_MULTIPLE = 128


def canvas_size(image_max_side: int) -> int:
    """Side of the square canvas: image_max_side rounded up to a multiple of 128 (pixels)."""
    return int(math.ceil(image_max_side / CANVAS_MULTIPLE) * CANVAS_MULTIPLE)


def resize_scale(size: tf.Tensor, min_side: float, max_side: float) -> tf.Tensor:
    """[2] float32 (height, width) -> [] the scale that takes the short side to min_side
    unless the long side would then exceed max_side (aspect kept)."""
    return tf.minimum(min_side / tf.reduce_min(size), max_side / tf.reduce_max(size))


def scaled_size(size: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """[2] float32 (height, width) x [] scale -> [2] whole pixels, at least 1."""
    return tf.maximum(tf.round(size * scale), 1.0)


def image_info(size: tf.Tensor, scaled: tf.Tensor, scale: tf.Tensor,
               offset: tf.Tensor | None = None) -> tf.Tensor:
    """The [4, 2] float32 image_info of the module docstring; offset [2] defaults to 0."""
    offset = tf.zeros([2]) if offset is None else offset
    return tf.stack([size, scaled, tf.stack([scale, scale]), offset])


def canvas_to_normalized(boxes: tf.Tensor, info: tf.Tensor) -> tf.Tensor:
    """[B, M, 4] (ymin, xmin, ymax, xmax) canvas pixels -> normalized to each decoded image,
    clipped to [0, 1]. info: [B, 4, 2] image_info."""
    size, scale, offset = info[:, 0], info[:, 2], info[:, 3]

    def tile(t):  # (y, x) -> (y, x, y, x), broadcast over the M boxes
        return tf.tile(t, [1, 2])[:, None, :]

    return tf.clip_by_value((boxes + tile(offset)) / tile(scale) / tile(size), 0.0, 1.0)
