"""Anchor labeler: ground-truth boxes -> compact per-anchor targets.

For every anchor, one class id and four box targets; nothing per class per
anchor (the one-hot is built inside the loss). Plain TensorFlow ops, so the
same function runs in the tf.data map (CPU) or inside the train step.

Rules (RetinaNet):
  * positive: IoU >= 0.5 with some ground-truth box (the best one is its match);
  * each ground-truth box also claims its best anchor, so a box smaller than
    every anchor still trains one;
  * ignored: 0.4 <= best IoU < 0.5 (neither foreground nor background);
  * background: best IoU < 0.4.
Group-of boxes (one box around a crowd of objects of a class) are matched
like other boxes, so the model learns to predict the group box that the
challenge metric rewards; in addition, an anchor that is not positive but lies
mostly inside a group-of box (intersection over the anchor's area >= 0.5) is
ignored, because the individual objects of the crowd are not annotated and
must not be taught as background.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from model import box_coder

BACKGROUND = -1
IGNORE = -2


@dataclasses.dataclass(frozen=True)
class LabelerConfig:
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    group_of_ioa: float = 0.5
    match_low_quality: bool = True
    variances: tuple[float, float, float, float] = box_coder.DEFAULT_VARIANCES


def _areas(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _intersections(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[A, 4] x [N, 4] -> [A, N] intersection areas."""
    ay0, ax0, ay1, ax1 = tf.split(a, 4, axis=-1)                       # [A, 1] each
    by0, bx0, by1, bx1 = (t[None, :] for t in tf.unstack(b, axis=-1))  # [1, N] each
    h = tf.maximum(0.0, tf.minimum(ay1, by1) - tf.maximum(ay0, by0))
    w = tf.maximum(0.0, tf.minimum(ax1, bx1) - tf.maximum(ax0, bx0))
    return h * w


def iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[A, 4] x [N, 4] (ymin, xmin, ymax, xmax) -> [A, N] intersection over union."""
    inter = _intersections(a, b)
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def ioa(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """[A, 4] x [N, 4] -> [A, N] intersection over the area of a (the first argument)."""
    return tf.math.divide_no_nan(_intersections(a, b), _areas(a)[:, None])


def label_anchors(
    anchors: tf.Tensor,
    boxes: tf.Tensor,
    classes: tf.Tensor,
    num_boxes: tf.Tensor,
    group_of: tf.Tensor | None = None,
    config: LabelerConfig = LabelerConfig(),
) -> tuple[tf.Tensor, tf.Tensor]:
    """Targets for one image.

    Args:
      anchors: [A, 4] (ymin, xmin, ymax, xmax) pixels.
      boxes: [N, 4] ground truth, same coordinates; rows >= num_boxes are padding.
      classes: [N] int class ids (>= 0).
      num_boxes: [] int, the number of real rows.
      group_of: [N] bool, or None (no group-of boxes).

    Returns:
      cls_targets: [A] int32, the matched class id, BACKGROUND (-1) or IGNORE (-2).
      box_targets: [A, 4] float32 encoded (ty, tx, th, tw) of the matched box; 0 where
        the anchor is not positive.
    """
    anchors = tf.cast(anchors, tf.float32)
    boxes = tf.cast(boxes, tf.float32)
    classes = tf.cast(classes, tf.int32)
    group_of = tf.zeros_like(classes, tf.bool) if group_of is None else tf.cast(group_of, tf.bool)
    # Only the real rows take part (the cost is anchors x boxes), plus one
    # always-invalid row so that an image without boxes needs no special case.
    real = tf.minimum(tf.cast(num_boxes, tf.int32), tf.shape(boxes)[0])
    boxes = tf.concat([boxes[:real], tf.zeros([1, 4])], axis=0)
    classes = tf.concat([classes[:real], [0]], axis=0)
    group_of = tf.concat([group_of[:real], [False]], axis=0)
    n = real + 1
    valid = tf.range(n) < real

    inter = _intersections(anchors, boxes)                                  # [A, N]
    anchor_areas = _areas(anchors)[:, None]
    union = anchor_areas + _areas(boxes)[None, :] - inter
    overlaps = tf.where(valid[None, :], tf.math.divide_no_nan(inter, union), -1.0)
    best_iou = tf.reduce_max(overlaps, axis=1)                              # [A]
    matched = tf.argmax(overlaps, axis=1, output_type=tf.int32)             # [A]
    positive = best_iou >= config.positive_iou

    if config.match_low_quality:
        # Each real box claims the anchor it overlaps most (ties: the first anchor).
        best_anchor = tf.argmax(overlaps, axis=0, output_type=tf.int32)     # [N]
        claims = valid & (tf.reduce_max(overlaps, axis=0) > 0.0)
        claimed = tf.tensor_scatter_nd_update(
            tf.fill([tf.shape(anchors)[0]], -1),
            tf.boolean_mask(best_anchor, claims)[:, None],
            tf.boolean_mask(tf.range(n), claims))
        matched = tf.where(claimed >= 0, claimed, matched)
        positive |= claimed >= 0

    ignore = ~positive & (best_iou >= config.negative_iou)
    groups = valid & group_of
    inside_group = tf.reduce_max(
        tf.where(groups[None, :], tf.math.divide_no_nan(inter, anchor_areas), 0.0), axis=1)
    ignore |= ~positive & (inside_group >= config.group_of_ioa)

    cls_targets = tf.where(positive, tf.gather(classes, matched),
                           tf.where(ignore, IGNORE, BACKGROUND))
    encoded = box_coder.encode(tf.gather(boxes, matched), anchors, config.variances)
    box_targets = tf.where(positive[:, None], encoded, 0.0)
    return cls_targets, box_targets


def label_batch(anchors, boxes, classes, num_boxes, group_of=None,
                config: LabelerConfig = LabelerConfig()) -> tuple[tf.Tensor, tf.Tensor]:
    """label_anchors over a batch: [B, N, ...] inputs -> [B, A] and [B, A, 4]."""
    if group_of is None:
        group_of = tf.zeros_like(classes, tf.bool)

    def one(args):
        b, c, n, g = args
        return label_anchors(anchors, b, c, n, g, config)

    return tf.map_fn(one, (boxes, classes, num_boxes, group_of),
                     fn_output_signature=(tf.TensorSpec([None], tf.int32),
                                          tf.TensorSpec([None, 4], tf.float32)))
