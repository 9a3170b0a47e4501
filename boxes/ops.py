"""Elementwise box geometry: areas, intersections, IoU/IoA, horizontal flips, and per-class
NMS of many images in one call. Boxes are (ymin, xmin, ymax, xmax); any unit, as long as
both arguments share it. Plain TensorFlow ops (tf.data, train step, exported model)."""

from __future__ import annotations

import tensorflow as tf


def areas(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] -> [...] areas (negative for an inverted box)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def intersections(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[A, 4] x [N, 4] -> [A, N] intersection areas."""
    ay0, ax0, ay1, ax1 = tf.split(a, 4, axis=-1)                       # [A, 1] each
    by0, bx0, by1, bx1 = (t[None, :] for t in tf.unstack(b, axis=-1))  # [1, N] each
    h = tf.maximum(0.0, tf.minimum(ay1, by1) - tf.maximum(ay0, by0))
    w = tf.maximum(0.0, tf.minimum(ax1, bx1) - tf.maximum(ax0, bx0))
    return h * w


def iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[A, 4] x [N, 4] -> [A, N] intersection over union (0 where the union is empty)."""
    inter = intersections(a, b)
    union = areas(a)[:, None] + areas(b)[None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def ioa(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[A, 4] x [N, 4] -> [A, N] intersection over the area of a (the first argument)."""
    return tf.math.divide_no_nan(intersections(a, b), areas(a)[:, None])


def flip_left_right(boxes: tf.Tensor) -> tf.Tensor:
    """[..., 4] boxes normalized to an image -> the same boxes in its mirror image:
    x -> 1 - x, so xmin and xmax swap. Its own inverse."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)


def batched_nms(boxes: tf.Tensor, scores: tf.Tensor, classes: tf.Tensor, max_output_size: int,
                iou_threshold: float, score_threshold: float, extent: float,
                ) -> dict[str, tf.Tensor]:
    """Per-class NMS of every image of a batch in one padded call.

    Boxes of different classes are moved apart by class * (extent + 1) along both axes so that
    they never overlap, and one class-agnostic NMS then suppresses only within a class (the
    "batched NMS" offset trick: one kernel call instead of one per class).

    Args:
      boxes: [B, N, 4] (ymin, xmin, ymax, xmax), every coordinate within [0, extent].
      scores: [B, N]; a candidate below score_threshold is never kept.
      classes: [B, N] int class ids; negative ids (padding) are placed like class 0 and
        should carry a score below score_threshold.
      max_output_size: M, rows of the result.
      extent: the largest coordinate (the canvas side in pixels, or 1 for normalized boxes).

    Returns:
      {"boxes" [B, M, 4], "scores" [B, M], "classes" [B, M] int32, "num_detections" [B] int32},
      best first; rows past num_detections are zero (classes -1).
    """
    classes = tf.cast(classes, tf.int32)
    offset = tf.cast(tf.maximum(classes, 0), boxes.dtype)[..., None] * (extent + 1.0)
    selected, valid = tf.image.non_max_suppression_padded(
        boxes + offset, scores, max_output_size=max_output_size, iou_threshold=iou_threshold,
        score_threshold=score_threshold, pad_to_max_output_size=True)
    mask = tf.range(max_output_size)[None, :] < valid[:, None]

    def take(t):
        return tf.gather(t, selected, batch_dims=1)

    return {"boxes": tf.where(mask[..., None], take(boxes), 0.0),
            "scores": tf.where(mask, take(scores), 0.0),
            "classes": tf.where(mask, take(classes), -1),
            "num_detections": tf.cast(valid, tf.int32)}
