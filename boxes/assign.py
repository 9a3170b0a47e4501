"""Target assignment: ground-truth boxes -> compact per-anchor targets.

For every anchor, one class id and four box targets; nothing per class per
anchor (the one-hot is built inside the loss). Plain TensorFlow ops, so the
same function runs in the tf.data map (CPU) or inside the train step.

Two assigners (LabelerConfig.assigner):

"iou" (RetinaNet, Lin et al. 2017):
  * positive: IoU >= 0.5 with some ground-truth box (the best one is its match);
  * each ground-truth box also claims its best anchor, so a box smaller than
    every anchor still trains one;
  * ignored: 0.4 <= best IoU < 0.5 (neither foreground nor background);
  * background: best IoU < 0.4.

"atss" (Adaptive Training Sample Selection, Zhang et al. 2020, "Bridging the Gap Between
Anchor-based and Anchor-free Detection", CVPR):
  * candidates of a box: on each pyramid level, the atss_top_k anchors whose centres are
    nearest to the box's centre (fewer if the level has fewer anchors);
  * the box's IoU threshold is mean + std of its candidates' IoUs (the sample standard
    deviation, as the authors' code computes it; 0 for a single candidate);
  * positive: a candidate whose IoU >= that threshold and whose centre lies strictly inside
    the box; an anchor that is positive for several boxes goes to the one it overlaps most;
  * with match_low_quality, a box left without positives (one smaller than the gaps between
    anchor centres) claims its best anchor, unless that anchor is another box's positive;
  * every other anchor is background (the paper has no IoU band of ignored anchors: the
    threshold adapts per box), unless atss_ignore_iou > 0: then a non-positive anchor whose
    best IoU with a box is at least that is ignored, as the "iou" assigner ignores its band.
    A large object has many anchors of IoU 0.4-0.6 around its few ATSS positives; taught as
    background they look like the object itself to the classifier.

Both:
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
ASSIGNERS = ("iou", "atss")


@dataclasses.dataclass(frozen=True)
class LabelerConfig:
    """Attributes:
      positive_iou, negative_iou: the "iou" assigner's thresholds.
      group_of_ioa: a non-positive anchor this much inside a group-of box is ignored.
      match_low_quality: every box claims its best anchor ("iou"), or its best anchor when
        it has no positive ("atss").
      assigner: "iou" or "atss" (the module docstring has both rules).
      atss_top_k: ATSS candidates per pyramid level and box.
      atss_ignore_iou: ATSS: a non-positive anchor with best IoU >= this is ignored; 0: none
        (the paper's rule).
    """

    positive_iou: float = 0.5
    negative_iou: float = 0.4
    group_of_ioa: float = 0.5
    match_low_quality: bool = True
    assigner: str = "iou"
    atss_top_k: int = 9
    atss_ignore_iou: float = 0.0

    def __post_init__(self):
        if self.assigner not in ASSIGNERS:
            raise ValueError(f"assigner must be one of {', '.join(ASSIGNERS)}, "
                             f"got {self.assigner!r}")
        if self.atss_top_k < 1:
            raise ValueError(f"atss_top_k must be at least 1, got {self.atss_top_k}")
        if not 0.0 <= self.atss_ignore_iou <= 1.0:
            raise ValueError(f"atss_ignore_iou must be in [0, 1], got {self.atss_ignore_iou}")

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
    level_counts: Sequence[int] | None = None,
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
      level_counts: anchors per pyramid level in `anchors`' order
        (AnchorConfig.level_counts); needed by the "atss" assigner.

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
    num_anchors = tf.shape(anchors)[0]

    if config.assigner == "atss":
        if level_counts is None:
            raise ValueError("the atss assigner needs the anchors' level_counts "
                             "(AnchorConfig.level_counts)")
        candidate = atss_candidates(anchors, boxes, overlaps, level_counts,
                                    config.atss_top_k) & valid[None, :]        # [A, N]
        chosen = tf.where(candidate, overlaps, -1.0)
        matched = tf.argmax(chosen, axis=1, output_type=tf.int32)             # [A]
        positive = tf.reduce_any(candidate, axis=1)
        if config.match_low_quality:
            has_positive = tf.reduce_any(candidate, axis=0)                    # [N]
            claimed = _claim_best_anchors(overlaps, valid & ~has_positive, num_anchors)
            claimed = tf.where(positive, -1, claimed)
            matched = tf.where(claimed >= 0, claimed, matched)
            positive |= claimed >= 0
        if config.atss_ignore_iou > 0:
            ignore = ~positive & (tf.reduce_max(overlaps, axis=1) >= config.atss_ignore_iou)
        else:
            ignore = tf.zeros_like(positive)
    else:
        best_iou = tf.reduce_max(overlaps, axis=1)                              # [A]
        matched = tf.argmax(overlaps, axis=1, output_type=tf.int32)             # [A]
        positive = best_iou >= config.positive_iou
        if config.match_low_quality:
            # Each real box claims the anchor it overlaps most (ties: the first anchor).
            claimed = _claim_best_anchors(overlaps, valid, num_anchors)
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


def _claim_best_anchors(overlaps: tf.Tensor, claims: tf.Tensor, num_anchors) -> tf.Tensor:
    """[A] index of the box that claims each anchor as its best (highest IoU; ties: the first
    anchor), -1 where none does. overlaps [A, N]; claims [N] bool: which boxes claim (a box
    that overlaps no anchor claims nothing)."""
    best_anchor = tf.argmax(overlaps, axis=0, output_type=tf.int32)         # [N]
    claims &= tf.reduce_max(overlaps, axis=0) > 0.0
    return tf.tensor_scatter_nd_update(
        tf.fill([num_anchors], -1),
        tf.boolean_mask(best_anchor, claims)[:, None],
        tf.boolean_mask(tf.range(tf.shape(overlaps)[1]), claims))


def atss_thresholds(candidate_ious: tf.Tensor) -> tf.Tensor:
    """[N, C] IoUs of each box's C candidates -> [N] ATSS thresholds: mean + sample standard
    deviation (divisor C - 1, as torch.std in the authors' code; 0 when C is 1)."""
    c = candidate_ious.shape[-1]
    mean = tf.reduce_mean(candidate_ious, axis=-1)
    if c is None or c < 2:
        return mean
    var = tf.reduce_sum(tf.square(candidate_ious - mean[:, None]), axis=-1) / (c - 1)
    return mean + tf.sqrt(var)


def atss_candidates(anchors: tf.Tensor, boxes: tf.Tensor, overlaps: tf.Tensor,
                    level_counts: Sequence[int], top_k: int) -> tf.Tensor:
    """[A, N] bool: anchor a is an ATSS positive of box n (before resolving anchors that are
    positive for several boxes).

    Args:
      anchors: [A, 4], boxes: [N, 4] (ymin, xmin, ymax, xmax), same units (pixels).
      overlaps: [A, N] IoU.
      level_counts: anchors per level, summing to A, in the anchors' order.
      top_k: candidates per level and box, by distance between centres.
    """
    if sum(level_counts) != anchors.shape[0] and anchors.shape[0] is not None:
        raise ValueError(f"level_counts {tuple(level_counts)} sum to {sum(level_counts)}, "
                         f"not the {anchors.shape[0]} anchors")
    acy = 0.5 * (anchors[:, 0] + anchors[:, 2])
    acx = 0.5 * (anchors[:, 1] + anchors[:, 3])
    bcy = 0.5 * (boxes[:, 0] + boxes[:, 2])
    bcx = 0.5 * (boxes[:, 1] + boxes[:, 3])
    # Squared distances rank like distances; [N, A] so that top_k runs along the anchors.
    dist2 = tf.square(bcy[:, None] - acy[None, :]) + tf.square(bcx[:, None] - acx[None, :])
    picks, start = [], 0
    for count in level_counts:
        k = min(top_k, count)
        _, idx = tf.math.top_k(-dist2[:, start:start + count], k=k, sorted=False)
        picks.append(idx + start)
        start += count
    cand = tf.concat(picks, axis=1)                                          # [N, C]
    cand_iou = tf.gather(tf.transpose(overlaps), cand, batch_dims=1)         # [N, C]
    threshold = atss_thresholds(cand_iou)                                    # [N]
    cy, cx = tf.gather(acy, cand), tf.gather(acx, cand)                      # [N, C]
    inside = ((cy > boxes[:, 0:1]) & (cy < boxes[:, 2:3])
              & (cx > boxes[:, 1:2]) & (cx < boxes[:, 3:4]))
    keep = inside & (cand_iou >= threshold[:, None])
    box_index = tf.broadcast_to(tf.range(tf.shape(cand)[0])[:, None], tf.shape(cand))
    indices = tf.stack([cand, box_index], axis=-1)                           # [N, C, 2]
    hits = tf.scatter_nd(tf.boolean_mask(indices, keep),
                         tf.ones([tf.reduce_sum(tf.cast(keep, tf.int32))], tf.int32),
                         tf.stack([tf.shape(anchors)[0], tf.shape(cand)[0]]))
    return hits > 0


def label_batch(anchors: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor, num_boxes: tf.Tensor,
                group_of: tf.Tensor | None = None, config: LabelerConfig = LabelerConfig(), *,
                variances: Sequence[float], level_counts: Sequence[int] | None = None
                ) -> tuple[tf.Tensor, tf.Tensor]:
    """label_anchors over a batch: [B, N, ...] inputs -> [B, A] and [B, A, 4]."""
    if group_of is None:
        group_of = tf.zeros_like(classes, tf.bool)

    def one(args):
        b, c, n, g = args
        return label_anchors(anchors, b, c, n, g, config, variances=variances,
                             level_counts=level_counts)

    return tf.map_fn(one, (boxes, classes, num_boxes, group_of),
                     fn_output_signature=(tf.TensorSpec([None], tf.int32),
                                          tf.TensorSpec([None, 4], tf.float32)))


def add_targets(batch: dict, anchors: tf.Tensor, config: LabelerConfig,
                variances: Sequence[float], level_counts: Sequence[int] | None = None) -> dict:
    """Adds cls_targets [B, A] and box_targets [B, A, 4] to a batch of the training input
    (tfrecords/input_pipeline.py: boxes [B, N, 4] canvas pixels, classes, num_boxes,
    group_of), in the train step or in tf.data."""
    cls_t, box_t = label_batch(anchors, batch["boxes"], batch["classes"], batch["num_boxes"],
                               batch["group_of"], config, variances=variances,
                               level_counts=level_counts)
    return {**batch, "cls_targets": cls_t, "box_targets": box_t}


def add_image_targets(example: dict, anchors: tf.Tensor, config: LabelerConfig,
                      variances: Sequence[float], level_counts: Sequence[int] | None = None
                      ) -> dict:
    """add_targets for one image of the training input (before batching): cls_targets [A]
    and box_targets [A, 4]. Per image, so that tf.data runs the labeling in parallel."""
    cls_t, box_t = label_anchors(anchors, example["boxes"], example["classes"],
                                 example["num_boxes"], example["group_of"], config,
                                 variances=variances, level_counts=level_counts)
    return {**example, "cls_targets": cls_t, "box_targets": box_t}
