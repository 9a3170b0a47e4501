"""Target assignment: ground-truth boxes -> compact per-anchor targets.

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
from collections.abc import Sequence

import tensorflow as tf

from boxes import coder
from boxes.ops import areas, intersections

BACKGROUND = -1
IGNORE = -2


@dataclasses.dataclass(frozen=True)
class LabelerConfig:
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    group_of_ioa: float = 0.5
    match_low_quality: bool = True

    @classmethod
    def from_json(cls, saved: dict) -> LabelerConfig:
        """The dict of a config.json; the variances that runs of earlier versions recorded
        here are read from the anchors' configuration now and are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in fields})


def label_anchors(
    anchors: tf.Tensor,
    boxes: tf.Tensor,
    classes: tf.Tensor,
    num_boxes: tf.Tensor,
    group_of: tf.Tensor | None = None,
    config: LabelerConfig = LabelerConfig(),
    *,
    variances: Sequence[float],
) -> tuple[tf.Tensor, tf.Tensor]:
    """Targets for one image.

    Args:
      anchors: [A, 4] (ymin, xmin, ymax, xmax) pixels.
      boxes: [N, 4] ground truth, same coordinates; rows >= num_boxes are padding.
      classes: [N] int class ids (>= 0).
      num_boxes: [] int, the number of real rows.
      group_of: [N] bool, or None (no group-of boxes).
      config: the matching thresholds.
      variances: the box coder's (AnchorConfig.variances).

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

    inter = intersections(anchors, boxes)                                  # [A, N]
    anchor_areas = areas(anchors)[:, None]
    union = anchor_areas + areas(boxes)[None, :] - inter
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
    encoded = coder.encode(tf.gather(boxes, matched), anchors, variances)
    box_targets = tf.where(positive[:, None], encoded, 0.0)
    return cls_targets, box_targets


def label_batch(anchors: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor, num_boxes: tf.Tensor,
                group_of: tf.Tensor | None = None, config: LabelerConfig = LabelerConfig(), *,
                variances: Sequence[float]) -> tuple[tf.Tensor, tf.Tensor]:
    """label_anchors over a batch: [B, N, ...] inputs -> [B, A] and [B, A, 4]."""
    if group_of is None:
        group_of = tf.zeros_like(classes, tf.bool)

    def one(args):
        b, c, n, g = args
        return label_anchors(anchors, b, c, n, g, config, variances=variances)

    return tf.map_fn(one, (boxes, classes, num_boxes, group_of),
                     fn_output_signature=(tf.TensorSpec([None], tf.int32),
                                          tf.TensorSpec([None, 4], tf.float32)))


def add_targets(batch: dict, anchors: tf.Tensor, config: LabelerConfig,
                variances: Sequence[float]) -> dict:
    """Adds cls_targets [B, A] and box_targets [B, A, 4] to a batch of the training input
    (tfrecords/input_pipeline.py: boxes [B, N, 4] canvas pixels, classes, num_boxes,
    group_of), in the train step or in tf.data."""
    cls_t, box_t = label_batch(anchors, batch["boxes"], batch["classes"], batch["num_boxes"],
                               batch["group_of"], config, variances=variances)
    return {**batch, "cls_targets": cls_t, "box_targets": box_t}


def add_image_targets(example: dict, anchors: tf.Tensor, config: LabelerConfig,
                      variances: Sequence[float]) -> dict:
    """add_targets for one image of the training input (before batching): cls_targets [A]
    and box_targets [A, 4]. Per image, so that tf.data runs the labeling in parallel."""
    cls_t, box_t = label_anchors(anchors, example["boxes"], example["classes"],
                                 example["num_boxes"], example["group_of"], config,
                                 variances=variances)
    return {**example, "cls_targets": cls_t, "box_targets": box_t}
