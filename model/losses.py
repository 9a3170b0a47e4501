"""Focal loss and box loss on compact targets; the one-hot exists only in here.

Normalization: each replica returns sum(loss over its images) / P, with P the
number of positive anchors in the whole global batch (all replicas), so that
summing the replicas' gradients (what the optimizer does under a strategy)
gives the gradient of the global-batch loss.
"""

from __future__ import annotations

import tensorflow as tf

from boxes.assign import IGNORE
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


def box_loss_sum(cls_targets: tf.Tensor, box_targets: tf.Tensor, deltas: tf.Tensor,
                 kind: str, delta: float) -> tf.Tensor:
    """Sum over positive anchors and the 4 coordinates of smooth-L1 or Huber.

    Args:
      box_targets, deltas: [B, A, 4] encoded (ty, tx, th, tw).
    """
    diff = tf.abs(tf.cast(deltas, tf.float32) - box_targets)
    quadratic = tf.minimum(diff, delta)
    huber = 0.5 * quadratic ** 2 + delta * (diff - quadratic)
    if kind == "smooth_l1":
        loss = huber / delta
    elif kind == "huber":
        loss = huber
    else:
        raise ValueError(f"box_loss must be smooth_l1 or huber, got {kind!r}")
    positive = tf.cast(cls_targets >= 0, tf.float32)[..., None]
    return tf.reduce_sum(loss * positive)


def retinanet_loss(cls_targets, box_targets, cls_logits, box_deltas, config: LossConfig,
                   normalizer: tf.Tensor) -> dict[str, tf.Tensor]:
    """{"loss", "cls_loss", "box_loss"} of one replica's batch.

    Args:
      normalizer: positive anchors in the global batch (summed over replicas); at least 1.
    """
    normalizer = tf.maximum(tf.cast(normalizer, tf.float32), 1.0)
    cls = focal_loss_sum(cls_targets, cls_logits, config.alpha, config.gamma) / normalizer
    box = box_loss_sum(cls_targets, box_targets, box_deltas, config.box_loss, config.box_delta) \
        / normalizer * config.box_weight
    return {"loss": cls + box, "cls_loss": cls, "box_loss": box}
