"""The Open Images Challenge 2019 detection metric (OID mAP@0.5), in numpy.

This is the metric of the TF Object Detection API's `OpenImagesChallengeEvaluator`
and its `oid_challenge_evaluation.py` command (tf-object-detection 0.0.3), as
specified in OID_METRIC.md (shared/ beside the repository); the section
numbers below refer to it.

  §2 Ground truth is expanded along Subcategory edges: a box and a verified-present
     label are copied to every ancestor, a verified-absent label to every
     descendant (each relative once). Detections are never expanded.
  §3 A class is verified in an image when the expanded ground truth has a box
     or an image-level label (present or absent) of it there.
  §4 Detections on images without ground truth and detections of classes not
     verified in their image are ignored; degenerate boxes (min >= max) are
     dropped; per image and class, scores <= -10 are dropped and only the
     10,000 highest are kept.
  §5 Per image and class, in descending score: a detection whose best non-group
     box (first of the maximal IoU) has IoU >= 0.5 and is not yet taken is a
     true positive, else a false positive. A non-TP detection whose best group-of
     box has intersection / detection area >= 0.5 is absorbed (neither TP nor
     FP); each group-of box that absorbed a score > 0 gives one TP at the
     maximal absorbed score.
  §6 A class's ground-truth count is its number of expanded boxes, group-of
     boxes included.
  §7 AP is the PASCAL VOC 2010 all-point area under the interpolated PR curve.
  §8 mAP is the mean AP over the classes with ground truth.

Coordinates are normalized to [0, 1]. The evaluator API takes boxes as [N, 4]
float arrays in (ymin, xmin, ymax, xmax) order, like the TF API. The box CSVs
order XMin,XMax,YMin,YMax, and a Kaggle PredictionString is groups of
`LabelName Score XMin YMin XMax YMax`.

Equal scores: the reference sorts with an unstable sort, so its order for equal
scores is unspecified. Here it is fixed, so that the result depends only on the
set of detections, never on their order: within an image and class, equal
scores are matched in order of (ymin, xmin, ymax, xmax); in a class's ranking,
equal scores put false positives before true positives (a tie never helps).

The evaluation is vectorized over all images and classes at once: greedy
matching looks sequential, but because a detection only ever tries its single
best box, a detection is a TP exactly when it is the first detection (in score
order) whose best box is that box with IoU >= 0.5. Memory grows with the number
of boxes, labels and detections, never with images x classes.

Two ways in:
  * `OIDChallengeEvaluator`: reset / add_ground_truth / add_detections /
    evaluate, for eval.py.
  * `python -m oid.metric --boxes ... --predictions SUBMISSION.csv`, the
    replacement for the reference's oid_challenge_evaluation.py. The file is
    read by oid.submission.read_submission, beside the writer of the format.

The command is stricter than the evaluator API about its input, as a file
format should be: a submission's scores must lie in [0, 1] and its boxes have
min <= max (the API, like the reference, takes any finite score and drops
min >= max, §4); either is a malformed detection, named by file, line and
ImageId, or skipped and counted with --lenient. Bad input ends in one
`error: ...` line and exit status 2 (oid.errors); ground-truth images that the
submission has no row for are counted in a warning and in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from oid import errors, fileio
from oid.annotations import read_boxes, read_image_labels
from oid.classes import ClassTable, load_classes
from oid.errors import InputFileError
from oid.hierarchy import Hierarchy, load_hierarchy
from oid.submission import (
    ROW_REASONS,
    Submission,
    SubmissionReport,
    ragged_arange,
    read_submission,
)

logger = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5  # matching_iou_threshold; the comparison is >= (§5)
MAX_DETECTIONS = 10_000  # per image and class (nms_max_output_boxes, §4c)
MIN_SCORE = -10.0  # scores <= this are dropped (the NMS score threshold, §4c)
_PAIR_BUDGET = 1 << 20  # detection-box pairs held at once while matching (~100 MB)


# -- results ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassResult:
    """One class: AP (None when the class has no ground truth) and its GT count."""

    ap: float | None
    num_gt: int


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """The metric.

    Attributes:
      mean_ap: mean AP over the classes with ground truth (None if there is none).
      per_class: MID -> ClassResult, for every class of the class list, in its order.
      num_images: images with ground truth (boxes or image-level labels).
    """

    mean_ap: float | None
    per_class: dict[str, ClassResult]
    num_images: int

    def to_json(self) -> dict:
        """The JSON the command prints.

        `{"mAP": float, "per_class": {MID: {"ap": float|None, "num_gt": int}},
        "num_images": int}`.
        """
        return {
            "mAP": self.mean_ap,
            "per_class": {m: {"ap": r.ap, "num_gt": r.num_gt} for m, r in self.per_class.items()},
            "num_images": self.num_images,
        }


def average_precision(scores: ArrayLike, is_tp: ArrayLike, num_gt: float) -> float:
    """PASCAL VOC 2010 all-point AP of one class (§7).

    Args:
      scores: [K] entry scores (any order).
      is_tp: [K] bool, True for a true positive.
      num_gt: ground-truth count of the class (> 0).
    """
    scores = np.asarray(scores, np.float64)
    is_tp = np.asarray(is_tp, bool)
    order = np.lexsort((is_tp, -scores))  # equal scores: false positives first
    return _average_precision(is_tp[order], num_gt)


def _average_precision(is_tp_ranked: np.ndarray, num_gt: float) -> float:
    """AP from TP flags in ranking order; the arithmetic of the reference's metrics.py."""
    if not is_tp_ranked.size:
        return 0.0
    labels = is_tp_ranked.astype(np.float64)
    cum_tp = np.cumsum(labels)
    cum_fp = np.cumsum((labels <= 0).astype(np.float64))
    precision = np.concatenate([[0.0], cum_tp / (cum_tp + cum_fp), [0.0]])
    recall = np.concatenate([[0.0], cum_tp / num_gt, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    changed = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[changed] - recall[changed - 1]) * precision[changed]))


# -- hierarchy expansion ---------------------------------------------------------------


class _Expansion:
    """For every class of the list, itself plus its ancestors (up) or descendants (down).

    Stored as CSR arrays of class indices. A class whose relatives are not all
    in the class list, or that is not in the hierarchy, gets a problem string,
    raised only when ground truth of that class is expanded (the reference
    asserts / raises KeyError).
    """

    def __init__(self, mids: Sequence[str], hierarchy: Hierarchy, up: bool):
        index = {m: i for i, m in enumerate(mids)}
        members: list[int] = []
        offsets = [0]
        self.problems: dict[int, str] = {}
        for i, mid in enumerate(mids):
            members.append(i)
            if mid not in hierarchy:
                self.problems[i] = f"class {mid} is not in the hierarchy"
            else:
                relatives = hierarchy.ancestors(mid) if up else hierarchy.descendants(mid)
                missing = sorted(r for r in relatives if r not in index)
                if missing:
                    what = "ancestor" if up else "descendant"
                    self.problems[i] = (f"class {mid} has the {what} {missing[0]}, which is not "
                                        "in the class list")
                members.extend(sorted(index[r] for r in relatives if r in index))
            offsets.append(len(members))
        self.members = np.asarray(members, np.int32)
        self.offsets = np.asarray(offsets, np.int64)

    def check(self, classes: np.ndarray) -> None:
        if self.problems:
            bad = [c for c in np.unique(classes).tolist() if c in self.problems]
            if bad:
                raise ValueError(self.problems[bad[0]])

    def expand(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source row, class) of every expanded row; each row's copies follow it."""
        self.check(classes)
        starts = self.offsets[classes]
        counts = self.offsets[classes + 1] - starts
        rows = np.repeat(np.arange(len(classes)), counts)
        return rows, self.members[np.repeat(starts, counts) + ragged_arange(counts)]


# -- the evaluator ---------------------------------------------------------------------


class OIDChallengeEvaluator:
    """Streaming OID challenge evaluator: reset / add_ground_truth / add_detections / evaluate.

    Ground truth and detections may come in any order and in any number of
    calls, one image or a batch of images at a time; everything is held as
    compact arrays (about 50 bytes a detection) and scored in `evaluate()`.

    Boxes are [N, 4] float arrays in (ymin, xmin, ymax, xmax) order, normalized.
    Labels are MIDs (str) or int indices into the class list. Image ids are any
    hashable scalars (bytes are decoded as UTF-8, so TF string tensors work).
    """

    def __init__(self, classes: ClassTable | Sequence[str], hierarchy: Hierarchy | None = None):
        """Args:
          classes: the class list (a ClassTable or MIDs); per-class results
            follow its order.
          hierarchy: if given, ground truth is expanded along it as it is added
            (§2); None for ground truth that is already expanded.
        """
        self.mids: tuple[str, ...] = tuple(classes.mids if isinstance(classes, ClassTable)
                                           else classes)
        self._class_index = {m: i for i, m in enumerate(self.mids)}
        if len(self._class_index) != len(self.mids):
            raise ValueError("the class list has repeated MIDs")
        self._up = self._down = None
        if hierarchy is not None:
            self._up = _Expansion(self.mids, hierarchy, up=True)
            self._down = _Expansion(self.mids, hierarchy, up=False)
        self.reset()

    def reset(self) -> None:
        """Forgets all ground truth and detections."""
        self._image_index: dict[object, int] = {}
        self._is_gt_image = np.zeros(0, bool)  # by image code
        self._gt_boxes = _Chunks([np.int64, np.int32] + [np.float64] * 4 + [bool])
        self._gt_labels = _Chunks([np.int64, np.int32])  # (image, class), expanded
        self._dets = _Chunks([np.int64, np.int32] + [np.float64] * 5)

    # -- adding data ---------------------------------------------------------------

    def add_ground_truth(
        self,
        image_id: object,
        boxes: ArrayLike | None = None,
        labels: ArrayLike = (),
        is_group_of: ArrayLike | None = None,
        *,
        image_labels: ArrayLike = (),
        image_label_confidences: ArrayLike = (),
    ) -> None:
        """Adds ground truth, unexpanded if the evaluator has a hierarchy.

        Args:
          image_id: the image (a scalar), or a batch: [N] image ids, one per box.
          boxes: [N, 4] (ymin, xmin, ymax, xmax), normalized.
          labels: [N] MIDs or class indices of the boxes.
          is_group_of: [N] bool (default all False).
          image_labels: [L] MIDs or class indices of the image-level labels of
            this image (scalar image_id only; use add_image_labels for batches).
          image_label_confidences: [L] 1 (verified present) or 0 (verified absent).
        An image added with no boxes and no labels still counts as a
        ground-truth image (where every detection is ignored).
        """
        boxes = _boxes_array(boxes)
        n = len(boxes)
        images = self._image_codes(image_id, n)
        classes = self._class_codes(labels, n, "labels")
        group = np.zeros(n, bool) if is_group_of is None else np.asarray(is_group_of, bool).ravel()
        if len(group) != n:
            raise ValueError(f"is_group_of has {len(group)} entries for {n} boxes")
        self._add_boxes(images, classes, boxes, group)
        if np.ndim(image_id) == 0:
            self._mark_ground_truth(self._image_codes(image_id, 1))
            self.add_image_labels(image_id, image_labels, image_label_confidences)
        elif len(image_labels):
            raise ValueError("with a batch of image ids, pass image-level labels to "
                             "add_image_labels")

    def add_image_labels(self, image_id: object, labels: ArrayLike,
                         confidences: ArrayLike) -> None:
        """Adds image-level labels, unexpanded if the evaluator has a hierarchy.

        Args:
          image_id: the image (a scalar), or [L] image ids, one per label.
          labels: [L] MIDs or class indices.
          confidences: [L] 1 (verified present) or 0 (verified absent).
        """
        confidences = np.asarray(confidences, np.float64).ravel()
        n = len(confidences)
        classes = self._class_codes(labels, n, "labels")
        if not np.isin(confidences, (0.0, 1.0)).all():
            raise ValueError("image-level confidences must be 0 (absent) or 1 (present)")
        self._add_labels(self._image_codes(image_id, n), classes, confidences == 1.0)

    def add_ground_truth_frames(self, boxes: pd.DataFrame | None,
                                labels: pd.DataFrame | None) -> None:
        """Adds ground truth in the official columns, as read by oid.annotations.

        Args:
          boxes: ImageID, LabelName, XMin, XMax, YMin, YMax, IsGroupOf. Read
            coordinates as float64 (read_boxes(coord_dtype=np.float64)) to get
            the reference's numbers exactly.
          labels: ImageID, LabelName, Confidence (1 present, 0 absent).
        """
        if boxes is not None and len(boxes):
            images = self._image_codes_of(boxes["ImageID"])
            classes = self._class_codes_of(boxes["LabelName"])
            coords = np.stack([boxes[c].to_numpy(np.float64)
                               for c in ("YMin", "XMin", "YMax", "XMax")], 1)
            # Like the reference (astype(bool)): any non-zero IsGroupOf, -1 included.
            self._add_boxes(images, classes, coords, boxes["IsGroupOf"].to_numpy() != 0)
        if labels is not None and len(labels):
            self._add_labels(self._image_codes_of(labels["ImageID"]),
                             self._class_codes_of(labels["LabelName"]),
                             labels["Confidence"].to_numpy() == 1)

    def add_detections(self, image_id: object, boxes: ArrayLike, scores: ArrayLike,
                       labels: ArrayLike) -> None:
        """Adds detections (never expanded).

        Args:
          image_id: the image (a scalar), or [N] image ids, one per detection.
          boxes: [N, 4] (ymin, xmin, ymax, xmax), normalized, finite.
          scores: [N] any finite scores; only their order matters, except that
            a score <= 0 cannot make a group-of true positive and <= -10 is dropped.
          labels: [N] MIDs or class indices.
        Detections of one image may be added in several calls; they add up.
        """
        boxes = _boxes_array(boxes)
        n = len(boxes)
        scores = np.asarray(scores, np.float64).ravel()
        if len(scores) != n:
            raise ValueError(f"{len(scores)} scores for {n} boxes")
        if not np.isfinite(scores).all():
            raise ValueError("detection scores must be finite")
        self._dets.append((self._image_codes(image_id, n), self._class_codes(labels, n, "labels"),
                           *_columns(boxes), scores))

    def add_submission(self, submission: Submission) -> int:
        """Adds the detections of a submission file (see oid.submission.read_submission).

        Returns the number of its rows whose image has no ground truth so far
        (their detections are ignored, unless ground truth for them comes later).
        """
        rows = self._image_codes(submission.image_ids, len(submission.image_ids))
        self._dets.append((rows[submission.row], submission.labels, *_columns(submission.boxes),
                           submission.scores))
        self._grow_flags()
        return int((~self._is_gt_image[rows]).sum())

    def ground_truth_images_missing(self, image_ids: ArrayLike,
                                    limit: int = 5) -> tuple[int, list[object]]:
        """The ground-truth images that `image_ids` does not list.

        Their ground truth still counts (the reference's rule), as an image
        with no detections: recall, and so the mAP, drop.

        Args:
          image_ids: [R] the images of a submission (its rows).
          limit: at most this many of the missing ids are returned.
        Returns:
          (how many ground-truth images are missing, the first `limit` of them
          in the order their ground truth was added).
        """
        ids = np.asarray(image_ids, object).ravel()
        codes = self._image_codes(ids, len(ids))
        self._grow_flags()
        listed = np.zeros(len(self._is_gt_image), bool)
        listed[codes] = True
        missing = np.flatnonzero(self._is_gt_image & ~listed)
        first = missing[:max(limit, 0)]
        if not len(first):
            return len(missing), []
        wanted = set(first.tolist())
        # Codes number the images in order of addition, the order the dict keeps.
        images = itertools.islice(self._image_index, int(first[-1]) + 1)
        examples = [image for code, image in enumerate(images) if code in wanted]
        return len(missing), examples

    def _add_boxes(self, images, classes, boxes, group) -> None:
        self._mark_ground_truth(images)
        if self._up is not None:
            rows, classes = self._up.expand(classes)
            images, boxes, group = images[rows], boxes[rows], group[rows]
        self._gt_boxes.append((images, classes, *_columns(boxes), group))

    def _add_labels(self, images, classes, present) -> None:
        self._mark_ground_truth(images)
        if self._up is not None:
            up_rows, up_classes = self._up.expand(classes[present])
            down_rows, down_classes = self._down.expand(classes[~present])
            images = np.concatenate([images[present][up_rows], images[~present][down_rows]])
            classes = np.concatenate([up_classes, down_classes])
        self._gt_labels.append((images, classes))

    def _mark_ground_truth(self, images: np.ndarray) -> None:
        self._grow_flags()
        self._is_gt_image[images] = True

    def _grow_flags(self) -> None:
        if len(self._is_gt_image) < len(self._image_index):
            grown = np.zeros(2 * len(self._image_index), bool)
            grown[:len(self._is_gt_image)] = self._is_gt_image
            self._is_gt_image = grown

    # -- ids -> codes --------------------------------------------------------------

    def _image_codes(self, image_id: object, n: int) -> np.ndarray:
        if np.ndim(image_id) == 0:
            code = self._image_code(_scalar_id(image_id))
            return np.full(n, code, np.int64)
        ids = np.asarray(image_id).ravel()
        if len(ids) != n:
            raise ValueError(f"{len(ids)} image ids for {n} rows")
        codes, uniques = pd.factorize(ids)
        lut = np.array([self._image_code(_scalar_id(u)) for u in uniques], np.int64)
        return lut[codes] if len(codes) else np.zeros(0, np.int64)

    def _image_codes_of(self, column: pd.Series) -> np.ndarray:
        cat = _categorical(column)
        lut = np.array([self._image_code(str(u)) for u in cat.cat.categories], np.int64)
        return lut[cat.cat.codes.to_numpy()]

    def _image_code(self, image_id: object) -> int:
        return self._image_index.setdefault(image_id, len(self._image_index))

    def _class_codes(self, labels: ArrayLike, n: int, what: str) -> np.ndarray:
        arr = np.asarray(labels).ravel()
        if len(arr) != n:
            raise ValueError(f"{len(arr)} {what} for {n} rows")
        if not n:
            return np.zeros(0, np.int32)
        if arr.dtype.kind in "iu":
            if arr.min() < 0 or arr.max() >= len(self.mids):
                raise ValueError(f"class index out of range [0, {len(self.mids)})")
            return arr.astype(np.int32)
        codes, uniques = pd.factorize(arr)
        return self._class_lut([_scalar_id(u) for u in uniques])[codes]

    def _class_codes_of(self, column: pd.Series) -> np.ndarray:
        cat = _categorical(column)
        return self._class_lut(list(cat.cat.categories))[cat.cat.codes.to_numpy()]

    def _class_lut(self, mids: list) -> np.ndarray:
        unknown = [m for m in mids if m not in self._class_index]
        if unknown:
            raise KeyError(f"unknown class MID {unknown[0]!r} (not in the class list)")
        return np.array([self._class_index[m] for m in mids], np.int32)

    # -- scoring -------------------------------------------------------------------

    def evaluate(self) -> MetricResult:
        """Scores everything added so far (the evaluator keeps its data)."""
        num_classes = len(self.mids)
        num_images = int(self._is_gt_image.sum())
        ap, num_gt = _score(num_classes, self._gt_boxes.arrays(), self._gt_labels.arrays(),
                            self._dets.arrays())
        has_gt = num_gt > 0
        mean_ap = float(np.mean(ap[has_gt])) if has_gt.any() else None
        per_class = {
            mid: ClassResult(float(ap[i]) if has_gt[i] else None, int(num_gt[i]))
            for i, mid in enumerate(self.mids)
        }
        return MetricResult(mean_ap, per_class, num_images)


def _categorical(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.CategoricalDtype):
        return column
    return column.astype("category")


def _scalar_id(value: object) -> object:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _boxes_array(boxes: ArrayLike | None) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 4))
    arr = np.asarray(boxes, np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (ymin, xmin, ymax, xmax), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("box coordinates must be finite")
    return arr


def _columns(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.ascontiguousarray(boxes[:, k]) for k in range(4))


class _Chunks:
    """Parallel columns added in chunks, e.g. one image at a time.

    Small chunks are merged every _MERGE_EVERY appends, so that a dataset added
    image by image is not held as millions of tiny arrays, without re-copying
    what was merged before.
    """

    _MERGE_EVERY = 512

    def __init__(self, dtypes: list):
        self.dtypes = dtypes
        self.merged: list[tuple[np.ndarray, ...]] = []
        self.recent: list[tuple[np.ndarray, ...]] = []

    def append(self, columns: tuple[np.ndarray, ...]) -> None:
        self.recent.append(tuple(np.asarray(c, d) for c, d in zip(columns, self.dtypes,
                                                                   strict=True)))
        if len(self.recent) >= self._MERGE_EVERY:
            self.merged.append(self._join(self.recent))
            self.recent = []

    def arrays(self) -> tuple[np.ndarray, ...]:
        """All columns, concatenated in order of addition (no copy for a single chunk)."""
        return self._join(self.merged + self.recent)

    def _join(self, chunks: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        if not chunks:
            return tuple(np.zeros(0, d) for d in self.dtypes)
        if len(chunks) == 1:
            return chunks[0]
        return tuple(np.concatenate([c[k] for c in chunks]) for k in range(len(self.dtypes)))


# -- the vectorized core ---------------------------------------------------------------


def _score(num_classes: int, gt, labels, dets) -> tuple[np.ndarray, np.ndarray]:
    """AP and GT count per class ([C] float with NaN where no GT, [C] int).

    gt: (image, class, ymin, xmin, ymax, xmax, is_group_of) of the expanded boxes.
    labels: (image, class) of the expanded image-level labels.
    dets: (image, class, ymin, xmin, ymax, xmax, score).
    """
    gt_img, gt_cls, *gt_box, gt_group = gt
    det_img, det_cls, *det_box, det_score = dets
    num_gt = np.bincount(gt_cls, minlength=num_classes)

    # §3: verified (image, class) pairs as sorted keys image * C + class.
    gt_key = gt_img * num_classes + gt_cls
    verified = np.sort(np.concatenate([gt_key, labels[0] * num_classes + labels[1]]))
    verified = verified[np.r_[True, verified[1:] != verified[:-1]]] if len(verified) else verified

    # §4: which detections take part.
    ymin, xmin, ymax, xmax = det_box
    key = det_img * num_classes + det_cls
    take = (ymin < ymax) & (xmin < xmax) & (det_score > MIN_SCORE) & _is_in(key, verified)
    keep = np.flatnonzero(take)
    key, score = key[keep], det_score[keep]
    order = _rank_detections(key, score, [b[keep] for b in det_box])
    keep, key, score = keep[order], key[order], score[order]
    # Segments of equal key: one image and class each.
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(key)])
    if len(key) and sizes.max() > MAX_DETECTIONS:
        capped = np.arange(len(key)) - np.repeat(starts, sizes) < MAX_DETECTIONS
        keep, key, score = keep[capped], key[capped], score[capped]
        sizes = np.minimum(sizes, MAX_DETECTIONS)
    box = [b[keep] for b in det_box]
    cls = det_cls[keep]
    segment_keys = key[np.r_[0, np.cumsum(sizes)[:-1]]] if len(key) else key

    def ranges(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) of each detection's (image, class) among the GT boxes `rows` (sorted by key)."""
        keys = gt_key[rows]
        lo = np.searchsorted(keys, segment_keys, "left")
        hi = np.searchsorted(keys, segment_keys, "right")
        return np.repeat(lo, sizes), np.repeat(hi, sizes)

    # §5 stage 1: non-group boxes, sorted by key, file order within a key.
    is_tp = np.zeros(len(key), bool)
    single = np.flatnonzero(~gt_group)
    single = single[np.argsort(gt_key[single], kind="stable")]
    lo, hi = ranges(single)
    query = np.flatnonzero(hi > lo)
    if len(query):
        best, arg = _best_overlap([b[query] for b in box], lo[query], hi[query],
                                  [b[single] for b in gt_box], ioa=False)
        cand = best >= IOU_THRESHOLD
        # A detection only ever tries its best box, so the first candidate (in
        # score order) for a box takes it and later ones are false positives.
        _, first = np.unique(arg[cand], return_index=True)
        is_tp[query[cand][first]] = True

    # §5 stage 2: group-of boxes absorb the remaining detections.
    absorbed = np.zeros(len(key), bool)
    group = np.flatnonzero(gt_group)
    group = group[np.argsort(gt_key[group], kind="stable")]
    lo, hi = ranges(group)
    query = np.flatnonzero((hi > lo) & ~is_tp)
    group_cls = np.zeros(0, np.int32)
    group_score = np.zeros(0)
    if len(query):
        best, arg = _best_overlap([b[query] for b in box], lo[query], hi[query],
                                  [b[group] for b in gt_box], ioa=True)
        inside = best >= IOU_THRESHOLD
        absorbed[query[inside]] = True
        # Within an image and class detections are in descending score, so the
        # first one a group-of box absorbs carries its maximal score.
        boxes_hit, first = np.unique(arg[inside], return_index=True)
        top = score[query[inside][first]]
        group_cls = gt_cls[group[boxes_hit]][top > 0]
        group_score = top[top > 0]

    # §7: rank the entries of each class and integrate.
    entry_cls = np.concatenate([cls[~absorbed], group_cls])
    entry_score = np.concatenate([score[~absorbed], group_score])
    entry_tp = np.concatenate([is_tp[~absorbed], np.ones(len(group_score), bool)])
    order = _rank_entries(entry_cls, entry_score, entry_tp)
    entry_cls, entry_tp = entry_cls[order], entry_tp[order]
    bounds = np.searchsorted(entry_cls, np.arange(num_classes + 1))
    ap = np.full(num_classes, np.nan)
    for c in np.flatnonzero(num_gt):
        ap[c] = _average_precision(entry_tp[bounds[c]:bounds[c + 1]], float(num_gt[c]))
    return ap, num_gt


def _is_in(keys: np.ndarray, sorted_unique: np.ndarray) -> np.ndarray:
    """keys in sorted_unique, as a bool mask.

    A lookup table over the range of `sorted_unique` when that range is at most
    6 x the number of elements (numpy's isin rule: memory stays proportional to
    the detections, never to images x classes), else binary search.
    """
    if not len(sorted_unique):
        return np.zeros(len(keys), bool)
    low, high = int(sorted_unique[0]), int(sorted_unique[-1])
    if high - low + 1 <= 6 * (len(keys) + len(sorted_unique)):
        table = np.zeros(high - low + 2, bool)  # the last cell stands for "outside"
        table[sorted_unique - low] = True
        return table[np.clip(keys - low, 0, high - low + 1)] & (keys >= low)
    found = np.minimum(np.searchsorted(sorted_unique, keys), len(sorted_unique) - 1)
    return sorted_unique[found] == keys


def _descending_bits(score: np.ndarray) -> np.ndarray:
    """uint64 keys that sort like -score rounded to float32 (monotone, not one-to-one)."""
    rounded = (-score).astype(np.float32) + np.float32(0)  # (+ 0: -0.0 becomes 0.0)
    bits = rounded.view(np.uint32).astype(np.uint64)
    negative = bits >= np.uint64(1 << 31)
    return np.where(negative, np.uint64(0xFFFFFFFF) - bits, bits + np.uint64(1 << 31))


def _rank_detections(key: np.ndarray, score: np.ndarray, box: list[np.ndarray]) -> np.ndarray:
    """Order by (key, descending score); equal (key, score) by (ymin, xmin, ymax, xmax).

    One sort of a single uint64 (key, float32-rounded score) is much faster than
    a lexsort of two arrays; runs that tie on it (equal float32 scores) are then
    sorted exactly.
    """
    if len(key) and key.max() >= 1 << 32:
        raise OverflowError("images x classes too large for the ranking key")
    packed = (key.astype(np.uint64) << np.uint64(32)) | _descending_bits(score)
    order = np.argsort(packed)
    return _refine_ties(order, packed[order],
                        lambda sub: (box[3][sub], box[2][sub], box[1][sub], box[0][sub],
                                     -score[sub], key[sub]))


def _rank_entries(cls: np.ndarray, score: np.ndarray, is_tp: np.ndarray) -> np.ndarray:
    """Order by (class, descending score); equal scores put false positives first."""
    packed = ((cls.astype(np.uint64) << np.uint64(33)) | (_descending_bits(score) << np.uint64(1))
              | is_tp.astype(np.uint64))
    order = np.argsort(packed)
    # Ties are judged without the TP bit: an FP and a TP whose scores round to the
    # same float32 are ordered by their exact scores.
    return _refine_ties(order, packed[order] >> np.uint64(1),
                        lambda sub: (is_tp[sub], -score[sub], cls[sub]))


def _refine_ties(order: np.ndarray, sorted_keys: np.ndarray, exact_keys) -> np.ndarray:
    """Re-sorts the runs of equal keys exactly (lexsort on exact_keys(subset)), in place."""
    tied = sorted_keys[1:] == sorted_keys[:-1]
    if tied.any():
        in_run = np.zeros(len(order), bool)
        in_run[1:] |= tied
        in_run[:-1] |= tied
        at = np.flatnonzero(in_run)
        sub = order[at]
        # Runs keep their place: the exact keys sort each run's members among themselves.
        order[at] = sub[np.lexsort(exact_keys(sub))]
    return order


def _best_overlap(query_box, lo, hi, gt_box, ioa: bool):
    """Best overlap of each query detection with the boxes gt[lo[i]:hi[i]] (all non-empty).

    Returns ([Q] maximal IoU, or IoA when `ioa`; [Q] index of the first box
    reaching it), the reference's argmax. Pairs are formed in chunks of about
    _PAIR_BUDGET, so memory stays bounded whatever the boxes per image.
    """
    n = len(lo)
    best = np.empty(n)
    arg = np.empty(n, np.int64)
    counts = hi - lo
    ends = np.cumsum(counts)
    start = 0
    while start < n:
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + _PAIR_BUDGET, "right")))
        c = counts[start:stop]
        seg = ends[start:stop] - c - base  # first pair of each query in this chunk
        q = np.repeat(np.arange(start, stop), c)
        g = np.repeat(lo[start:stop] - seg, c) + np.arange(len(q))
        overlap = _overlap([b[q] for b in query_box], [b[g] for b in gt_box], ioa)
        top = np.maximum.reduceat(overlap, seg)
        hit = np.flatnonzero(overlap == np.repeat(top, c))
        first = hit[np.r_[True, q[hit[1:]] != q[hit[:-1]]]]
        if len(first) != stop - start:
            raise FloatingPointError("overlap is NaN (a box of zero or non-finite area)")
        best[start:stop] = top
        arg[start:stop] = g[first]
        start = stop
    return best, arg


def _overlap(det, gt, ioa: bool) -> np.ndarray:
    """Pairwise IoU, or intersection / detection area, in the reference's float operations."""
    dy0, dx0, dy1, dx1 = det
    gy0, gx0, gy1, gx1 = gt
    height = np.maximum(0.0, np.minimum(dy1, gy1) - np.maximum(dy0, gy0))
    width = np.maximum(0.0, np.minimum(dx1, gx1) - np.maximum(dx0, gx0))
    inter = height * width
    det_area = (dy1 - dy0) * (dx1 - dx0)
    if ioa:
        return inter / det_area
    return inter / (det_area + (gy1 - gy0) * (gx1 - gx0) - inter)


# -- the command -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How a submission's rows meet the ground truth's images.

    Attributes:
      rows_without_ground_truth: submission rows whose image has no ground
        truth (their detections are ignored).
      images_without_row: ground-truth images the submission has no row for
        (their ground truth counts with no detections, lowering the mAP).
      examples_without_row: the first (up to 5) of those ImageIds.
    """

    rows_without_ground_truth: int
    images_without_row: int
    examples_without_row: tuple[str, ...] = ()


def load_ground_truth(boxes_path: str, labels_path: str, classes: ClassTable,
                      hierarchy: Hierarchy | None) -> OIDChallengeEvaluator:
    """An evaluator holding the ground truth of two official CSVs, expanded along `hierarchy`.

    Args:
      boxes_path, labels_path: official box and image-level label CSVs (.gz: gzipped).
      classes: the class list.
      hierarchy: expand the ground truth along it; None when it is expanded already.
    Raises:
      InputFileError naming the file (and line) of the first problem.
    """
    # float64 coordinates: the reference computes IoU from the CSV's decimal
    # values, and float32 rounding moves IoUs that sit exactly on 0.5.
    # Repeated rows are legitimate after expansion and each counts, as in the reference.
    boxes, _ = read_boxes(boxes_path, classes, coord_dtype=np.float64, check_duplicates=False)
    labels, _ = read_image_labels(labels_path, classes, check_duplicates=False)
    evaluator = OIDChallengeEvaluator(classes, hierarchy)
    for path, frame in ((boxes_path, boxes), (labels_path, labels)):
        _check_expandable(evaluator, path, frame)
    evaluator.add_ground_truth_frames(boxes, labels)
    return evaluator


def evaluate_files(
    boxes_path: str,
    labels_path: str,
    classes: ClassTable,
    hierarchy: Hierarchy | None,
    predictions_path: str,
    *,
    lenient: bool = False,
) -> tuple[MetricResult, SubmissionReport, Coverage]:
    """Scores a submission file against ground-truth CSVs.

    Args:
      boxes_path, labels_path: official box and image-level label CSVs.
      classes: the class list.
      hierarchy: expand the ground truth along it; None when it is expanded already.
      predictions_path: a Kaggle submission (see oid.submission.read_submission).
      lenient: skip and count malformed predictions (ground truth is always strict).
    Returns:
      The metric, what the reader kept and skipped, and how the submission's
      rows cover the ground truth's images.
    """
    evaluator = load_ground_truth(boxes_path, labels_path, classes, hierarchy)
    submission, report = read_submission(predictions_path, classes, lenient=lenient)
    unmatched = evaluator.add_submission(submission)
    missing, examples = evaluator.ground_truth_images_missing(submission.image_ids)
    coverage = Coverage(unmatched, missing, tuple(str(e) for e in examples))
    return evaluator.evaluate(), report, coverage


def _check_expandable(evaluator: OIDChallengeEvaluator, path: str, frame: pd.DataFrame) -> None:
    """Names the first row whose class cannot be expanded (not in the hierarchy, or a
    relative outside the class list), as an InputFileError instead of a bare ValueError."""
    if evaluator._up is None or not len(frame):
        return
    is_label_file = "IsGroupOf" not in frame
    for present in ((True, False) if is_label_file else (True,)):
        rows = frame if not is_label_file else frame[(frame["Confidence"] == 1) == present]
        expansion = evaluator._up if present else evaluator._down
        classes = evaluator._class_codes_of(rows["LabelName"])
        bad = np.isin(classes, list(expansion.problems))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputFileError(path, None, f"ImageID {rows['ImageID'].iat[first]}: "
                                             f"{expansion.problems[int(classes[first])]}; "
                                             "the ground truth cannot be expanded")


def format_table(result: MetricResult, classes: ClassTable) -> str:
    """A per-class table for people: AP, GT count, MID and name, in class-list order."""
    lines = [f"{'AP':>8} {'num_gt':>8}  {'MID':<12} name"]
    for mid, r in result.per_class.items():
        ap = "-" if r.ap is None else f"{r.ap:.4f}"
        name = classes.name(mid) if mid in classes else ""
        lines.append(f"{ap:>8} {r.num_gt:>8}  {mid:<12} {name}")
    score = "-" if result.mean_ap is None else f"{result.mean_ap:.6f}"
    with_gt = sum(r.ap is not None for r in result.per_class.values())
    lines.append(f"mAP {score} over {with_gt} classes with ground truth, "
                 f"{result.num_images} images")
    return "\n".join(lines)


_INPUT_FLAGS = ("boxes", "labels", "classes", "hierarchy", "predictions")
_FORMATS = {  # what each input flag takes, for errors that do not say it themselves
    "classes": "--classes takes the class list CSV (MID,DisplayName rows, no header)",
    "hierarchy": "--hierarchy takes the nested JSON of LabelName/Subcategory/Part nodes "
                 "(challenge-2019-label500-hierarchy.json)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns its exit status (0, or 2 for a refused start or bad input)."""
    parser = errors.ArgumentParser(
        prog="python -m oid.metric",
        description="Open Images Challenge 2019 detection metric (mAP@0.5) of a Kaggle "
                    "submission; prints one JSON object. Bad input stops with one "
                    "'error: ...' line naming the flag or file, and exit status 2.")
    parser.add_argument("--boxes", required=True,
                        help="ground-truth box CSV "
                             "(ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf,...; .gz: gzipped)")
    parser.add_argument("--labels", required=True,
                        help="ground-truth image-level label CSV "
                             "(ImageID,Source,LabelName,Confidence; .gz: gzipped)")
    parser.add_argument("--hierarchy", default=None,
                        help="class hierarchy JSON (needed unless --no-expand)")
    parser.add_argument("--classes", required=True,
                        help="class list CSV: MID,DisplayName, no header")
    parser.add_argument("--predictions", required=True,
                        help="Kaggle submission CSV: ImageId,PredictionString (.gz: gzipped)")
    parser.add_argument("--output", default=None,
                        help="also write the JSON to this file (written whole or not at all)")
    parser.add_argument("--expand", action=argparse.BooleanOptionalAction, default=True,
                        help="expand the ground truth along --hierarchy, as the challenge does; "
                             "--no-expand when the CSVs are expanded already")
    parser.add_argument("--lenient", action="store_true",
                        help="skip and count malformed predictions (reported on stderr and in "
                             "the JSON) instead of stopping at the first")
    args = parser.parse_args(argv)
    if args.expand and not args.hierarchy:
        parser.error("--hierarchy is needed to expand the ground truth (or pass --no-expand)")

    # Every flag is checked before anything is read, so a typo costs no minutes of parsing.
    inputs = {f"--{k}": getattr(args, k) for k in _INPUT_FLAGS if getattr(args, k) is not None}
    try:
        for flag, path in inputs.items():
            fileio.check_input_file(flag, path)
        if args.output is not None:
            fileio.check_output_file("--output", args.output, inputs)
    except errors.UsageError as e:
        return errors.report(e)
    if args.hierarchy and not args.expand:
        _warn(f"--hierarchy={args.hierarchy} is not read: --no-expand takes the ground truth as "
              "expanded already")

    try:
        classes = _load("classes", args.classes, load_classes)
        hierarchy = _load("hierarchy", args.hierarchy, load_hierarchy) if args.expand else None
        result, report, coverage = evaluate_files(args.boxes, args.labels, classes, hierarchy,
                                                  args.predictions, lenient=args.lenient)
    except InputFileError as e:
        return errors.report(e)
    except OSError as e:  # a file that vanished or turned unreadable since the checks
        where = e.filename or "an input file"
        return errors.report(f"{where}: cannot be read ({e.strerror or e}); check the file and "
                             "run again")

    if report.skipped:
        print(report.summary(), file=sys.stderr)
        for line, reason, detail in report.skipped_lines[:10]:
            print(f"  {report.path}:{line}: {reason}: {detail}", file=sys.stderr)
    _warn_coverage(coverage, report.rows, result)
    output = {**result.to_json(), "submission": _submission_json(report, coverage)}
    text = json.dumps(output, allow_nan=False)
    if args.output:
        try:
            with fileio.atomic_output(args.output) as f:
                f.write(text + "\n")
        except OSError as e:
            print(f"error: --output={args.output}: cannot be written ({e.strerror or e}); "
                  "choose another path", file=sys.stderr)
            return 1
    print(text)
    if sys.stderr.isatty():
        print(format_table(result, classes), file=sys.stderr)
    return 0


def _load(name: str, path: str, loader):
    """loader(path), its errors completed with what the flag takes when they do not say it."""
    try:
        return loader(path)
    except InputFileError as e:
        if "; " in e.problem:
            raise
        raise InputFileError(e.path, e.line, f"{e.problem}; {_FORMATS[name]}") from None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _warn_coverage(coverage: Coverage, rows: int, result: MetricResult) -> None:
    """Warns of submission rows without ground truth and ground-truth images without a row."""
    if coverage.rows_without_ground_truth:
        _warn(f"{coverage.rows_without_ground_truth} of the {rows} submission rows are images "
              "without ground truth; their detections are ignored")
    if coverage.images_without_row:
        shown = ", ".join(coverage.examples_without_row)
        more = ", ..." if coverage.images_without_row > len(coverage.examples_without_row) else ""
        _warn(f"the submission has no row for {coverage.images_without_row} of the "
              f"{result.num_images} ground-truth images ({shown}{more}); their ground truth "
              "counts with no detections, which lowers the mAP: check that the submission is "
              "for this ground truth")
    if result.mean_ap is None:
        _warn("no class of the class list has ground-truth boxes, so there is no mAP (null)")


def _submission_json(report: SubmissionReport, coverage: Coverage) -> dict:
    """The "submission" part of the command's JSON: what was read, skipped and left out."""
    return {
        "path": report.path,
        "rows": report.rows,
        "detections": report.detections,
        "skipped_rows": {r: n for r, n in sorted(report.skipped.items()) if r in ROW_REASONS},
        "skipped_detections": {r: n for r, n in sorted(report.skipped.items())
                               if r not in ROW_REASONS},
        "rows_without_ground_truth": coverage.rows_without_ground_truth,
        "ground_truth_images_without_row": coverage.images_without_row,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    code = main()
    # Arrow's CSV reader threads can abort the interpreter's teardown now and then ("terminate
    # called without an active exception", exit -6; apache/arrow#34314) after a correct run.
    # Everything is written and closed by now, so leave without the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
