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


def _aligned_terms(a: tf.Tensor, b: tf.Tensor
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """[..., 4] x [..., 4] boxes paired row by row -> (IoU [...], union [...], the smallest
    enclosing box [..., 4], squared distance between the centres [...])."""
    inter_h = tf.maximum(0.0, tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]))
    inter_w = tf.maximum(0.0, tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]))
    inter = inter_h * inter_w
    union = areas(a) + areas(b) - inter
    iou = inter / tf.maximum(union, 1e-9)
    enclosing = tf.concat([tf.minimum(a[..., :2], b[..., :2]),
                           tf.maximum(a[..., 2:], b[..., 2:])], axis=-1)
    centre = 0.5 * (a[..., :2] + a[..., 2:]) - 0.5 * (b[..., :2] + b[..., 2:])
    return iou, union, enclosing, tf.reduce_sum(tf.square(centre), axis=-1)


def aligned_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[..., 4] x [..., 4] -> [...] IoU of each pair of rows (not all pairs, unlike iou)."""
    return _aligned_terms(a, b)[0]


def generalized_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[..., 4] x [..., 4] -> [...] GIoU = IoU - (C - union) / C, C the area of the smallest
    box enclosing both (Rezatofighi et al. 2019); in [-1, 1], informative even for disjoint
    boxes. Boxes must have positive areas."""
    iou, union, enclosing, _ = _aligned_terms(a, b)
    c = tf.maximum(areas(enclosing), 1e-9)
    return iou - (c - union) / c


def distance_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[..., 4] x [..., 4] -> [...] DIoU = IoU - d^2 / c^2, d the distance between the centres
    and c the diagonal of the smallest enclosing box (Zheng et al. 2020); in [-1, 1]."""
    iou, _, enclosing, d2 = _aligned_terms(a, b)
    c2 = tf.reduce_sum(tf.square(enclosing[..., 2:] - enclosing[..., :2]), axis=-1)
    return iou - d2 / tf.maximum(c2, 1e-9)
