"""Classification and box losses on compact targets; the one-hot exists only in here.

Classification: focal loss, or quality focal loss (GFL) whose positive targets are the IoU
of the decoded prediction with its box. Box: smooth-L1/Huber on the encoded deltas, or
1 - GIoU / 1 - DIoU on the boxes decoded against the anchors (boxes/coder.py, with the
anchor configuration's variances).

Normalization: each replica returns sum(loss over its images) / P, with P the
number of positive anchors in the whole global batch (all replicas), so that
summing the replicas' gradients (what the optimizer does under a strategy)
gives the gradient of the global-batch loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from boxes import coder
from boxes.assign import IGNORE
from boxes.ops import aligned_iou, distance_iou, generalized_iou
from model.config import LossConfig


def num_positives(cls_targets: tf.Tensor) -> tf.Tensor:
    """[B, A] class targets -> [] float32 count of positive anchors."""
    return tf.reduce_sum(tf.cast(cls_targets >= 0, tf.float32))


def focal_loss_sum(cls_targets: tf.Tensor, logits: tf.Tensor, alpha: float, gamma: float
                   ) -> tf.Tensor:
    """Sum of the sigmoid focal loss over every non-ignored anchor and class.

    Args:
      cls_targets: [B, A] int class id, -1 background, -2 ignore.
      logits: [B, A, K].
    """
    logits = tf.cast(logits, tf.float32)
    num_classes = tf.shape(logits)[-1]
    # one_hot of -1 or -2 is all zeros: background for every class.
    labels = tf.one_hot(tf.maximum(cls_targets, -1), num_classes, dtype=tf.float32)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    p = tf.sigmoid(logits)
    p_t = labels * p + (1.0 - labels) * (1.0 - p)
    alpha_t = labels * alpha + (1.0 - labels) * (1.0 - alpha)
    loss = alpha_t * tf.pow(1.0 - p_t, gamma) * ce
    keep = tf.cast(cls_targets != IGNORE, tf.float32)[..., None]
    return tf.reduce_sum(loss * keep)


def quality_focal_loss_sum(cls_targets: tf.Tensor, logits: tf.Tensor, quality: tf.Tensor,
                           beta: float) -> tf.Tensor:
    """Sum of the quality focal loss (GFL, Li et al. 2020) over every non-ignored anchor and
    class: |y - sigmoid(logit)|^beta * BCE(y, logit), with the soft target y = quality at a
    positive anchor's class and 0 elsewhere.

    Args:
      cls_targets: [B, A] int class id, -1 background, -2 ignore.
      logits: [B, A, K].
      quality: [B, A] target in [0, 1] of each positive anchor (the IoU of its decoded
        prediction with its box; no gradient flows through it); unused elsewhere.
    """
    logits = tf.cast(logits, tf.float32)
    num_classes = tf.shape(logits)[-1]
    quality = tf.stop_gradient(tf.clip_by_value(tf.cast(quality, tf.float32), 0.0, 1.0))
    labels = tf.one_hot(tf.maximum(cls_targets, -1), num_classes, dtype=tf.float32) \
        * quality[..., None]
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    loss = tf.pow(tf.abs(labels - tf.sigmoid(logits)), beta) * ce
    keep = tf.cast(cls_targets != IGNORE, tf.float32)[..., None]
    return tf.reduce_sum(loss * keep)


def positive_boxes(cls_targets: tf.Tensor, box_targets: tf.Tensor, deltas: tf.Tensor,
                   anchors: tf.Tensor, variances: Sequence[float]
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The positive anchors' decoded boxes: (indices [P, 2] int64 (image, anchor) of the P
    positives of the [B, A] targets, predicted [P, 4], target [P, 4]), boxes (ymin, xmin,
    ymax, xmax) pixels decoded from the [B, A, 4] deltas and targets against the [A, 4]
    anchors. Only the positives (tens of a batch's tens of thousands of anchors) are decoded:
    over every anchor, GIoU and its gradient cost a CPU step more than the rest of the loss."""
    indices = tf.where(cls_targets >= 0)
    anchors = tf.gather(tf.cast(anchors, tf.float32), indices[:, 1])
    return (indices,
            coder.decode(_gather_nd(deltas, indices), anchors, variances),
            coder.decode(_gather_nd(box_targets, indices), anchors, variances))


def _gather_nd(values, indices: tf.Tensor) -> tf.Tensor:
    # A tensor, not a variable: XLA compiles GatherNd but not a variable's ResourceGatherNd.
    return tf.gather_nd(tf.cast(tf.convert_to_tensor(values), tf.float32), indices)


def box_loss_sum(cls_targets: tf.Tensor, box_targets: tf.Tensor, deltas: tf.Tensor,
                 kind: str, delta: float, anchors: tf.Tensor | None = None,
                 variances: Sequence[float] | None = None,
                 decoded: tuple[tf.Tensor, tf.Tensor] | None = None) -> tf.Tensor:
    """Sum over positive anchors of the box loss: smooth-L1 or Huber summed over the 4
    encoded coordinates, or 1 - GIoU / 1 - DIoU of the decoded boxes.

    Args:
      box_targets, deltas: [B, A, 4] encoded (ty, tx, th, tw).
      anchors: [A, 4] pixels and variances (the box coder's): needed by giou and diou.
      decoded: positive_boxes()'s (predicted, target) when the caller has them already.
    """
    if kind in ("giou", "diou"):
        if decoded is None and (anchors is None or variances is None):
            raise ValueError(f"box_loss {kind} decodes boxes: pass the anchors and variances")
        pred, target = decoded or positive_boxes(cls_targets, box_targets, deltas, anchors,
                                                 variances)[1:]
        similarity = generalized_iou if kind == "giou" else distance_iou
        return tf.reduce_sum(1.0 - similarity(pred, target))
    diff = tf.abs(tf.cast(deltas, tf.float32) - box_targets)
    quadratic = tf.minimum(diff, delta)
    huber = 0.5 * quadratic ** 2 + delta * (diff - quadratic)
    if kind == "smooth_l1":
        loss = huber / delta
    elif kind == "huber":
        loss = huber
    else:
        raise ValueError(f"box_loss must be smooth_l1, huber, giou or diou, got {kind!r}")
    return tf.reduce_sum(loss * tf.cast(cls_targets >= 0, tf.float32)[..., None])


def retinanet_loss(cls_targets, box_targets, cls_logits, box_deltas, config: LossConfig,
                   normalizer: tf.Tensor, anchors: tf.Tensor | None = None,
                   variances: Sequence[float] | None = None) -> dict[str, tf.Tensor]:
    """{"loss", "cls_loss", "box_loss"} of one replica's batch.

    Args:
      cls_targets: [B, A]; box_targets: [B, A, 4] encoded; cls_logits: [B, A, K];
        box_deltas: [B, A, 4].
      normalizer: positive anchors in the global batch (summed over replicas); at least 1.
      anchors: [A, 4] pixels, and variances: needed when config.needs_decoded_boxes.
    """
    normalizer = tf.maximum(tf.cast(normalizer, tf.float32), 1.0)
    if config.needs_decoded_boxes and (anchors is None or variances is None):
        raise ValueError(f"cls_loss {config.cls_loss} / box_loss {config.box_loss} decode "
                         "boxes: pass the anchors and variances")
    decoded = None
    if config.cls_loss == "quality_focal":
        indices, pred, target = positive_boxes(cls_targets, box_targets, box_deltas, anchors,
                                               variances)
        decoded = (pred, target)  # the GIoU/DIoU box loss needs the same boxes
        quality = tf.scatter_nd(indices, aligned_iou(pred, target),
                                tf.shape(cls_targets, out_type=tf.int64))
        cls = quality_focal_loss_sum(cls_targets, cls_logits, quality, config.gamma)
    else:
        cls = focal_loss_sum(cls_targets, cls_logits, config.alpha, config.gamma)
    cls = cls / normalizer
    box = box_loss_sum(cls_targets, box_targets, box_deltas, config.box_loss, config.box_delta,
                       anchors, variances, decoded) / normalizer * config.box_weight
    return {"loss": cls + box, "cls_loss": cls, "box_loss": box}
