"""The one box coder: encodes training targets and decodes predictions.

Boxes are (ymin, xmin, ymax, xmax) in pixels. A box is encoded against an
anchor as
    ty = (cy - cy_a) / h_a / vy     tx = (cx - cx_a) / w_a / vx
    th = log(h / h_a) / vh          tw = log(w / w_a) / vw
with variances (vy, vx, vh, vw), which come from AnchorConfig.variances (boxes/anchors.py;
(0.1, 0.1, 0.2, 0.2) unless configured): they have no default here, so the encoder of the
targets and the decoder of the predictions cannot disagree. Plain TensorFlow ops: the same
functions run in tf.data, in the train step and in the exported inference model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

# Largest log-scale a decoded box may have, so exp() cannot overflow on a wild prediction.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def _centers(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """[..., 4] (ymin, xmin, ymax, xmax) -> centre y, centre x, height, width, each [...]."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    h, w = ymax - ymin, xmax - xmin
    return ymin + 0.5 * h, xmin + 0.5 * w, h, w


def encode(boxes: tf.Tensor, anchors: tf.Tensor, variances: Sequence[float]) -> tf.Tensor:
    """[..., 4] boxes against [..., 4] anchors (broadcastable) -> [..., 4] (ty, tx, th, tw).

    Degenerate boxes (zero height or width) are clamped to a tiny size so the
    log stays finite; such boxes never become positives in practice.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    cy, cx, h, w = _centers(boxes)
    cya, cxa, ha, wa = _centers(anchors)
    eps = 1e-6
    h, w = tf.maximum(h, eps), tf.maximum(w, eps)
    vy, vx, vh, vw = variances
    return tf.stack([(cy - cya) / ha / vy, (cx - cxa) / wa / vx,
                     tf.math.log(h / ha) / vh, tf.math.log(w / wa) / vw], axis=-1)


def decode(deltas: tf.Tensor, anchors: tf.Tensor, variances: Sequence[float]) -> tf.Tensor:
    """Inverse of encode: [..., 4] (ty, tx, th, tw) -> [..., 4] (ymin, xmin, ymax, xmax) pixels."""
    deltas = tf.cast(deltas, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    cya, cxa, ha, wa = _centers(anchors)
    ty, tx, th, tw = tf.unstack(deltas, axis=-1)
    vy, vx, vh, vw = variances
    cy = ty * vy * ha + cya
    cx = tx * vx * wa + cxa
    h = tf.exp(tf.minimum(th * vh, _MAX_LOG_SCALE)) * ha
    w = tf.exp(tf.minimum(tw * vw, _MAX_LOG_SCALE)) * wa
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)
