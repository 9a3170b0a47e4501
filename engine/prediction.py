"""From the inference loop's rows to submission rows: predict.py's per-image combination.

    one ImageResult (every detector's detections of one image, level-local classes)
    -> MIDs -> per level: the detections of its one model, or the weighted boxes fusion
       of its several models (an ensemble)
    -> the levels concatenated (oid.submission.merge_levels; the rows already belong to one
       ImageId, since every level's model ran on the same batch)
    -> each box copied to every Subcategory ancestor of its class, each ancestor once, and
       identical boxes of one class collapsed to the best score (expand_to_ancestors)
    -> the top_k best with score >= score_threshold (keep_top_k)

No TensorFlow: the rows are numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from engine.inference import Detector, ImageResult
from oid.hierarchy import Hierarchy
from oid.submission import (
    ImageDetections,
    expand_to_ancestors,
    keep_top_k,
    merge_levels,
    weighted_boxes_fusion,
)


class Combiner:
    """Turns each image's per-detector detections into its submission row.

    Args:
      detectors: in the order of ImageResult.detections.
      levels: level -> indices into `detectors` of its models (several: an ensemble).
      hierarchy: copy boxes to ancestors along it; None to leave the classes as predicted.
      top_k: detections kept per image, after merging and expansion.
      score_threshold: detections below are dropped.
      wbf_iou: an ensemble's boxes of one class fuse when their IoU is above this.
      weights: per detector, its weight in the fusion of its level (default 1).
    """

    def __init__(self, detectors: Sequence[Detector], levels: Mapping[int, Sequence[int]],
                 hierarchy: Hierarchy | None, top_k: int = 300, score_threshold: float = 0.0,
                 wbf_iou: float = 0.55, weights: Sequence[float] | None = None):
        self.levels = {level: tuple(levels[level]) for level in sorted(levels)}
        if sorted(i for models in self.levels.values() for i in models) != \
                list(range(len(detectors))):
            raise ValueError("every detector must belong to exactly one level")
        self.mids = [d.mids for d in detectors]
        self.ancestors = hierarchy.ancestors_map() if hierarchy is not None else None
        self.top_k = top_k
        self.score_threshold = score_threshold
        self.wbf_iou = wbf_iou
        self.weights = list(weights) if weights is not None else [1.0] * len(detectors)

    def level_detections(self, row: ImageResult, level: int) -> ImageDetections:
        """One level's detections of the image, its ensemble fused."""
        per_model = []
        for k in self.levels[level]:
            d = row.detections[k]
            per_model.append(ImageDetections(row.image_id, d.boxes, d.scores,
                                             self.mids[k][d.classes]))
        if len(per_model) == 1:
            return per_model[0]
        return weighted_boxes_fusion(per_model, [self.weights[k] for k in self.levels[level]],
                                     iou_threshold=self.wbf_iou)

    def __call__(self, row: ImageResult) -> ImageDetections:
        if not row.readable:
            return ImageDetections.empty(row.image_id)
        dets = merge_levels([self.level_detections(row, level) for level in self.levels])
        if self.ancestors is not None:
            dets = expand_to_ancestors(dets, self.ancestors)
        return keep_top_k(dets, self.top_k, self.score_threshold)

