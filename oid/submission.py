"""Detections per image, from the models' outputs to a Kaggle submission file.

No TensorFlow here: predict.py turns each model's batch outputs into one
`ImageDetections` per image and hands them to the functions below.

    one stream per level ──merge_by_image_id──▶ one ImageDetections an image, all levels
        (several models of one level: weighted_boxes_fusion first, image by image)
    ──expand_to_ancestors(hierarchy)──▶ each box copied to its Subcategory ancestors
    ──keep_top_k──▶ SubmissionWriter ──▶ ImageId,PredictionString CSV (.gz: gzipped)

Boxes are (ymin, xmin, ymax, xmax), normalized to the original image (after
EXIF rotation), like everywhere else in the project. Only the submission file
puts x first: a PredictionString is space-separated groups of
`MID score XMin YMin XMax YMax`, empty for an image without detections.

Format of the numbers written: scores rounded to 6 significant digits and
written in their shortest decimal form (0.5, 0.0123457); coordinates clipped to
[0, 1] and written with 6 decimals (0.250000), as Python's %.6f would.

Reading back: read_submission (for the metric: vectorized, checked against a
class list, strict or --lenient with a report) and read_submission_rows (the
same parser and checks but the class list's, one ImageDetections a row) are
the one reader of the format.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from oid import fileio
from oid.classes import MID_PATTERN, ClassTable
from oid.errors import InputFileError
from oid.hierarchy import Hierarchy

logger = logging.getLogger(__name__)

HEADER = "ImageId,PredictionString"
_BAD_ID_CHARACTER = re.compile(r'[,"\s]')  # would break the CSV row or the token split


def is_valid_image_id(image_id: str) -> bool:
    """Whether `image_id` can be a submission's ImageId: not empty, no comma, quote or
    whitespace (they would break the CSV row or the split of the PredictionString)."""
    return bool(image_id) and not _BAD_ID_CHARACTER.search(image_id)


# -- detections of one image -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDetections:
    """The detections of one image.

    Attributes:
      image_id: the ImageId (bytes, as from a TF string tensor, are decoded as UTF-8).
      boxes: [N, 4] float32 (ymin, xmin, ymax, xmax), normalized to the original image.
      scores: [N] float32.
      mids: [N] object array of MID strings (bytes are decoded).
    The constructor converts array-likes to these dtypes (no copy when they
    already match) and checks that the lengths agree.
    """

    image_id: str
    boxes: np.ndarray
    scores: np.ndarray
    mids: np.ndarray

    def __post_init__(self):
        image_id = self.image_id
        if isinstance(image_id, bytes | np.bytes_):
            image_id = bytes(image_id).decode("utf-8")
        elif not isinstance(image_id, str):
            raise TypeError(f"image_id must be a str, got {type(image_id).__name__}")
        boxes = np.asarray(self.boxes, np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"image {image_id}: boxes must be [N, 4] (ymin, xmin, ymax, xmax), "
                             f"got shape {boxes.shape}")
        scores = np.asarray(self.scores, np.float32).reshape(-1)
        mids = _as_mids(self.mids)
        if not len(scores) == len(mids) == len(boxes):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                             f"{len(mids)} MIDs; they must be equal")
        object.__setattr__(self, "image_id", str(image_id))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "mids", mids)

    @staticmethod
    def empty(image_id: str) -> ImageDetections:
        """An image without detections."""
        return ImageDetections(image_id, np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                               np.zeros(0, object))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, rows: np.ndarray) -> ImageDetections:
        """The rows `rows` (int indices or a bool mask), in that order."""
        return ImageDetections(self.image_id, self.boxes[rows], self.scores[rows], self.mids[rows])


def _as_mids(values) -> np.ndarray:
    mids = np.asarray(values, object).reshape(-1)
    if mids.dtype != object or (len(mids) and not isinstance(mids[0], str)):
        mids = np.array([m.decode("utf-8") if isinstance(m, bytes | np.bytes_) else str(m)
                         for m in mids.tolist()], object)
    return mids


def keep_top_k(dets: ImageDetections, k: int, score_threshold: float) -> ImageDetections:
    """The `k` highest-scoring detections with score >= score_threshold, highest first.

    Equal scores keep their input order.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    keep = np.flatnonzero(dets.scores >= score_threshold)
    order = keep[np.argsort(-dets.scores[keep], kind="stable")][:k]
    return dets.take(order)


# -- the hierarchy ---------------------------------------------------------------------------


class Relatives(dict):
    """MID -> (MID, its Subcategory ancestors in MID order): expand_to_ancestors's lookup,
    built once for many images (Relatives.of(hierarchy))."""

    @classmethod
    def of(cls, hierarchy: Hierarchy | Mapping[str, Iterable[str]]) -> Relatives:
        ancestors = hierarchy.ancestors_map() if isinstance(hierarchy, Hierarchy) else hierarchy
        return cls({m: (m, *sorted(set(a) - {m})) for m, a in ancestors.items()})


def expand_to_ancestors(dets: ImageDetections,
                        hierarchy: Hierarchy | Mapping[str, Iterable[str]] | Relatives,
                        ) -> ImageDetections:
    """Copies every box to each Subcategory ancestor of its class, then drops duplicates.

    The challenge metric expands the ground truth to ancestors (a Star box is
    also a Polygon and a Symbol box) but never the detections, so a submission
    must do it. Each ancestor gets one copy per box even when it is reached
    along two paths (a class with two parents that share a grandparent). Parts
    are not ancestors (an Eye box is no Smiley box). A class absent from the
    hierarchy keeps its rows and gets no copies.

    Then drop_duplicate_boxes: within the image and one class, rows with
    identical coordinates collapse to one with the highest score. A box that a
    level-2 model predicts as Polygon and a level-1 Triangle box copied up to
    Polygon with the same coordinates are one object: the metric would count
    the second identical box as a false positive (the ground-truth box is taken
    by the first), so keeping both only lowers the class's AP.

    Args:
      dets: one image's detections.
      hierarchy: a Hierarchy, a mapping MID -> its ancestors (e.g.
        Hierarchy.ancestors_map()), or Relatives.of(either) to look them up once
        for many images.
    Returns:
      The expanded detections, highest score first (equal scores in input order,
      each box followed by its copies in MID order).
    """
    if not len(dets):
        return dets
    codes, uniques = mid_codes(dets.mids)
    if isinstance(hierarchy, Relatives):
        relatives = [hierarchy.get(m, (m,)) for m in uniques.tolist()]
    else:
        ancestors = hierarchy.ancestors if isinstance(hierarchy, Hierarchy) \
            else hierarchy.__getitem__
        relatives = [[m, *sorted(set(ancestors(m)) - {m})] if m in hierarchy else [m]
                     for m in uniques.tolist()]
    counts = np.array([len(r) for r in relatives], np.int64)
    starts = np.cumsum(counts) - counts
    flat = np.array([m for r in relatives for m in r], object)
    per_row = counts[codes]
    rows = np.repeat(np.arange(len(dets)), per_row)
    picked = np.repeat(starts[codes], per_row) + ragged_arange(per_row)
    expanded = ImageDetections(dets.image_id, dets.boxes[rows], dets.scores[rows], flat[picked])
    flat_codes, _ = mid_codes(flat)  # the classes of the few relatives, not of every row
    return _drop_duplicates(expanded, flat_codes[picked])


def drop_duplicate_boxes(dets: ImageDetections) -> ImageDetections:
    """Collapses rows of one class with identical coordinates to the one of highest score.

    See expand_to_ancestors for why. Returns the rows kept, highest score
    first (equal scores in input order).
    """
    if len(dets) < 2:
        return dets
    return _drop_duplicates(dets, mid_codes(dets.mids)[0])


def _drop_duplicates(dets: ImageDetections, cls: np.ndarray) -> ImageDetections:
    """drop_duplicate_boxes with each row's class code given ([N] int64, equal codes for
    equal MIDs)."""
    n = len(dets)
    if n < 2:
        return dets
    b = dets.boxes + np.float32(0)  # -0.0 and 0.0 are the same coordinate
    # A hash of (class, coordinates' bits) (int64 arithmetic wraps): when every row's
    # differs, no two rows are duplicates and only the order changes (the common case,
    # found with one sort of N numbers instead of a sort on seven keys).
    words = b.view(np.int32).astype(np.int64)
    key = cls
    for k in range(4):
        key = key * np.int64(1_000_000_007) + words[:, k]
    if len(np.unique(key)) == n:
        return dets.take(np.argsort(-dets.scores, kind="stable"))
    rows = np.arange(n)
    order = np.lexsort((rows, -dets.scores, b[:, 3], b[:, 2], b[:, 1], b[:, 0], cls))
    keys = np.column_stack([cls[order], b[order].view(np.int32)])
    first = np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]
    kept = order[first]
    return dets.take(kept[np.lexsort((kept, -dets.scores[kept]))])


def mid_codes(mids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N] int64 code of each MID, [U] the distinct MIDs): codes number the MIDs in order
    of first appearance (a hash table in C, not a Python loop)."""
    codes, uniques = pd.factorize(mids)
    return codes.astype(np.int64, copy=False), np.asarray(uniques, object)


def ragged_arange(counts: np.ndarray) -> np.ndarray:
    """Concatenated aranges: [0..counts[0]), [0..counts[1]), ..."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - counts, counts)


# -- levels ----------------------------------------------------------------------------------


def merge_levels(per_level: Sequence[ImageDetections]) -> ImageDetections:
    """One image's detections from several levels' models, concatenated in the given order.

    Raises ValueError when the image ids differ or nothing is given.
    """
    if not per_level:
        raise ValueError("merge_levels needs the detections of at least one level")
    image_id = per_level[0].image_id
    other = next((d.image_id for d in per_level if d.image_id != image_id), None)
    if other is not None:
        raise ValueError(f"merge_levels got detections of different images: {image_id!r} and "
                         f"{other!r}; merge the levels' streams with merge_by_image_id")
    if len(per_level) == 1:
        return per_level[0]
    return ImageDetections(image_id, np.concatenate([d.boxes for d in per_level]),
                           np.concatenate([d.scores for d in per_level]),
                           np.concatenate([d.mids for d in per_level]))


def merge_by_image_id(streams: Sequence[Iterable[ImageDetections]]) -> Iterator[ImageDetections]:
    """Joins several levels' streams of ImageDetections by ImageId, whatever their order.

    join_by_image_id, each image's rows concatenated (merge_levels, streams in
    the given order): an image missing from a stream comes out with the other
    levels' rows.

    Raises:
      ValueError when a stream lists the same ImageId twice.
    """
    for _, slots in join_by_image_id(streams):
        yield merge_levels([d for d in slots if d is not None])


def join_by_image_id(streams: Sequence[Iterable[ImageDetections]],
                     ) -> Iterator[tuple[str, list[ImageDetections | None]]]:
    """Joins several streams of ImageDetections by ImageId, whatever their order.

    Yields (image_id, one slot per stream: its ImageDetections, or None when
    the stream does not list the image). The streams are read in lockstep, one
    image from each in turn. An image is yielded as soon as every stream that
    has not ended has listed it; an image missing from a stream comes out when
    that stream ends.

    Memory: only the images read from some stream and not yet from every
    stream still running are held. When the streams list their images in the
    same order (predict.py's caches and submissions do), that is at most one
    image and everything streams. In general, if an image's positions in two
    streams differ by at most D, at most (number of streams) x D images are
    held, plus the images a stream never lists, which wait until it ends. The
    ids already yielded are remembered (about 70 bytes an image) to refuse a
    stream that lists an image twice.

    Raises:
      ValueError when a stream lists the same ImageId twice.
    """
    iterators = [iter(s) for s in streams]
    n = len(iterators)
    live = [True] * n
    pending: dict[str, list[ImageDetections | None]] = {}
    done: set[str] = set()

    def complete(slots: list[ImageDetections | None]) -> bool:
        return all(d is not None or not live[t] for t, d in enumerate(slots))

    def joined(image_id: str) -> tuple[str, list[ImageDetections | None]]:
        done.add(image_id)
        return image_id, pending.pop(image_id)

    while any(live):
        for s in range(n):
            if not live[s]:
                continue
            dets = next(iterators[s], None)
            if dets is None:
                live[s] = False
                for image_id in [i for i, slots in pending.items() if complete(slots)]:
                    yield joined(image_id)
                continue
            image_id = dets.image_id
            slots = pending.get(image_id)
            if slots is None:
                if image_id in done:
                    raise ValueError(f"stream {s} lists image {image_id!r} twice")
                slots = pending[image_id] = [None] * n
            elif slots[s] is not None:
                raise ValueError(f"stream {s} lists image {image_id!r} twice")
            slots[s] = dets
            if complete(slots):
                yield joined(image_id)


# -- several models of one level -------------------------------------------------------------


def weighted_boxes_fusion(dets_list: Sequence[ImageDetections],
                          weights: Sequence[float] | None = None, iou_threshold: float = 0.55,
                          skip_score: float = 0.0) -> ImageDetections:
    """Weighted boxes fusion (Solovyev et al. 2019) of one image's detections by several models.

    Per class, boxes are visited in descending weighted score (score x its
    model's weight). A box joins the fused box of its class it overlaps most
    if that IoU is > iou_threshold, else it starts a new one. A fused box is
    the weighted-score-weighted mean of its members' coordinates, updated as
    members join (later boxes are matched against the updated mean). Its score
    is the mean weighted score of its members x min(members, models) / sum of
    weights: a box that only some models found is demoted. These are the
    semantics of the ensemble-boxes package (conf_type "avg", no overflow);
    equal weighted scores are visited in input order (models in the given
    order). Coordinates are clipped to [0, 1] first; boxes with score <
    skip_score, a weighted score <= 0 or no area are dropped.

    The boxes of all classes are processed in lockstep, one box of every class
    per step, so the Python loop runs (largest class's box count) times: about
    10-20 ms an image for 3 models x 300 boxes over 500 long-tailed classes.

    Args:
      dets_list: [M] detections of the same image by M models.
      weights: [M] positive model weights (default all 1).
      iou_threshold: a box joins a fused box when their IoU is strictly above it.
      skip_score: boxes scoring below it are ignored.
    Returns:
      The fused detections, highest score first.
    """
    image_id, w = _fusion_weights(dets_list, weights)
    pool = _FusionInput.sorted_by_class(dets_list, w, skip_score)
    if not len(pool.cls):
        return ImageDetections.empty(image_id)
    fused = _FusedBoxes(pool.cls)
    for t in range(int(fused.size.max())):
        active = np.flatnonzero(fused.size > t)  # the classes with a t-th box
        row = fused.start[active] + t
        slot = fused.match(active, pool.boxes[row], pool.area[row], iou_threshold)
        fused.add(slot, pool.boxes[row], pool.weighted[row])

    slots = fused.start.repeat(fused.count) + ragged_arange(fused.count)
    members = fused.members[slots]
    score = (fused.sum_weight[slots] / members) * np.minimum(members, len(dets_list)) / w.sum()
    out = np.lexsort((slots, -score))
    slots, score = slots[out], score[out]
    return ImageDetections(image_id, fused.boxes[slots].astype(np.float32),
                           score.astype(np.float32), pool.mids[slots])


def _fusion_weights(dets_list: Sequence[ImageDetections],
                    weights: Sequence[float] | None) -> tuple[str, np.ndarray]:
    """(the one ImageId of `dets_list`, [M] float64 model weights, default all 1).

    Raises ValueError for no models, detections of different images, or a
    weight count other than M or a weight that is not positive and finite.
    """
    if not dets_list:
        raise ValueError("weighted_boxes_fusion needs the detections of at least one model")
    image_id = dets_list[0].image_id
    for d in dets_list:
        if d.image_id != image_id:
            raise ValueError(f"weighted_boxes_fusion got different images: {image_id!r} and "
                             f"{d.image_id!r}")
    num_models = len(dets_list)
    w = np.ones(num_models) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(w) != num_models:
        raise ValueError(f"{len(w)} weights for {num_models} models")
    if not (np.isfinite(w) & (w > 0)).all():
        raise ValueError(f"model weights must be positive and finite, got {w.tolist()}")
    return image_id, w


@dataclasses.dataclass(frozen=True)
class _FusionInput:
    """The boxes that take part in a fusion, in the order they are visited.

    Sorted by class, then descending weighted score, then input order (models
    in the given order). K boxes.

    Attributes:
      cls: [K] int64 class code, non-decreasing (codes in order of first appearance).
      boxes: [K, 4] float64 (ymin, xmin, ymax, xmax), normalized, clipped to [0, 1].
      weighted: [K] float64 score x its model's weight, > 0.
      area: [K] float64 box area, > 0.
      mids: [K] object MIDs.
    """

    cls: np.ndarray
    boxes: np.ndarray
    weighted: np.ndarray
    area: np.ndarray
    mids: np.ndarray

    @staticmethod
    def sorted_by_class(dets_list: Sequence[ImageDetections], w: np.ndarray,
                        skip_score: float) -> _FusionInput:
        """All models' boxes clipped to [0, 1], less those that score below skip_score,
        have a weighted score <= 0 or have no area.

        Args:
          dets_list: [M] detections of one image by M models.
          w: [M] float64 model weights.
        """
        boxes = np.clip(np.concatenate([d.boxes for d in dets_list]).astype(np.float64),
                        0.0, 1.0)
        scores = np.concatenate([d.scores for d in dets_list]).astype(np.float64)
        model = np.repeat(np.arange(len(dets_list)), [len(d) for d in dets_list])
        mids = np.concatenate([d.mids for d in dets_list])
        weighted = scores * w[model]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = np.flatnonzero((scores >= skip_score) & (weighted > 0) & (area > 0))
        cls, _ = mid_codes(mids[keep])
        order = keep[np.lexsort((keep, -weighted[keep], cls))]
        return _FusionInput(np.sort(cls, kind="stable"), boxes[order], weighted[order],
                            area[order], mids[order])


class _FusedBoxes:
    """The fused boxes of every class while a fusion runs, C classes, K input boxes.

    Class c's input boxes are rows [start[c], start[c] + size[c]) of the
    _FusionInput arrays. Its fused boxes live in the same slots, the first
    count[c] of them: a class never has more fused boxes than boxes.

    Attributes:
      start, size, count: [C] int64.
      boxes: [K, 4] float64 (ymin, xmin, ymax, xmax): the current fused box of
        each slot, the weighted-score-weighted mean of its members.
      area: [K] float64 area of `boxes`.
      sum_weight: [K] float64 sum of the members' weighted scores.
      sum_box: [K, 4] float64 sum of weighted score x coordinates.
      members: [K] int64 member count.
    """

    def __init__(self, cls: np.ndarray):
        """cls: [K] non-decreasing class code of each input box."""
        n = len(cls)
        self.start = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
        self.size = np.diff(np.r_[self.start, n])
        self.count = np.zeros(len(self.start), np.int64)
        self.boxes = np.zeros((n, 4))
        self.area = np.zeros(n)
        self.sum_weight = np.zeros(n)
        self.sum_box = np.zeros((n, 4))
        self.members = np.zeros(n, np.int64)

    def match(self, active: np.ndarray, box: np.ndarray, area: np.ndarray,
              iou_threshold: float) -> np.ndarray:
        """The slot each box joins: its class's best-overlapping fused box, or a new one.

        Args:
          active: [A] classes, each with one box to place.
          box: [A, 4] float64 (ymin, xmin, ymax, xmax) of those boxes; area: [A].
          iou_threshold: a box joins when its best IoU is strictly above it.
        Returns:
          [A] slots. Classes whose box opens a new fused box have their count
          raised.
        """
        n = len(self.boxes)
        count = self.count[active]
        slot = self.start[active] + count  # where a new fused box would go
        k = int(count.max())
        if not k:
            self.count[active] += 1
            return slot
        # Every class is padded to k candidates; the padding is masked out below.
        cand = np.minimum(self.start[active, None] + np.arange(k), n - 1)  # [A, k]
        valid = np.arange(k) < count[:, None]
        iou = _iou_one_to_many(box, area, self.boxes[cand], self.area[cand])
        iou = np.where(valid, iou, -1.0)
        best = np.argmax(iou, axis=1)
        joins = iou[np.arange(len(active)), best] > iou_threshold
        self.count[active[~joins]] += 1
        return np.where(joins, cand[np.arange(len(active)), best], slot)

    def add(self, slot: np.ndarray, box: np.ndarray, weighted: np.ndarray) -> None:
        """Adds each box to the fused box of its slot and moves that box to the new mean.

        Args:
          slot: [A] distinct slots.
          box: [A, 4] float64 (ymin, xmin, ymax, xmax), normalized.
          weighted: [A] float64 weighted scores.
        """
        self.sum_weight[slot] += weighted
        self.sum_box[slot] += weighted[:, None] * box
        self.members[slot] += 1
        fused = self.sum_box[slot] / self.sum_weight[slot][:, None]
        self.boxes[slot] = fused
        self.area[slot] = (fused[:, 2] - fused[:, 0]) * (fused[:, 3] - fused[:, 1])


def _iou_one_to_many(box: np.ndarray, area: np.ndarray, others: np.ndarray,
                     others_area: np.ndarray) -> np.ndarray:
    """IoU of box[a] ([A, 4]) with each of others[a] ([A, K, 4]) -> [A, K]."""
    low = np.maximum(box[:, None, :2], others[..., :2])
    high = np.minimum(box[:, None, 2:], others[..., 2:])
    inter = np.prod(np.clip(high - low, 0.0, None), axis=-1)
    union = area[:, None] + others_area - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# -- the submission file ---------------------------------------------------------------------


@dataclasses.dataclass
class SubmissionStats:
    """What a SubmissionWriter wrote.

    Attributes:
      path: the submission file.
      rows: rows written (one an image, the header excluded).
      detections: detections written.
      images_with_detections: rows with a non-empty PredictionString.
      filled: expected image ids never passed to write(), written by close()
        with an empty PredictionString.
      text_bytes: size of the CSV text (before gzip, for a .gz path).
    """

    path: str
    rows: int = 0
    detections: int = 0
    images_with_detections: int = 0
    filled: int = 0
    text_bytes: int = 0


class SubmissionWriter:
    """Writes a Kaggle submission row by row, never holding more than a small buffer.

        with SubmissionWriter("submission.csv.gz", image_ids=test_ids) as writer:
            for dets in detections:          # one ImageDetections an image, any order
                writer.write(dets)
        print(writer.stats)

    Rows are buffered until about `flush_detections` detections and then
    formatted together with Arrow string kernels (no Python string per
    detection). The file is written under `PATH.partial` and renamed to PATH by
    close(), so a run that fails never leaves a complete-looking submission;
    leaving the `with` block by an exception deletes the partial file. (Remote
    paths are written in place: object stores publish a file only when it is
    closed.) A path ending in .gz is gzipped.
    """

    def __init__(self, path: str, image_ids: Iterable[str] | None = None, *,
                 flush_detections: int = 1 << 15, compresslevel: int = 6):
        """Args:
          path: the submission file to write; .gz: gzipped.
          image_ids: every ImageId the submission must have (e.g. the test
            set's). close() writes an empty row for each one never written and
            write() refuses others. None: rows only for what is written.
          flush_detections: detections buffered before formatting and writing.
          compresslevel: gzip level for a .gz path.
        """
        self.path = str(path)
        self._expected: list[str] | None = None
        self._expected_set: set[str] = set()
        if image_ids is not None:
            self._expected = [i.decode("utf-8") if isinstance(i, bytes) else str(i)
                              for i in image_ids]
            self._expected_set = set(self._expected)
            if len(self._expected_set) != len(self._expected):
                seen: set[str] = set()
                for image_id in self._expected:
                    if image_id in seen:
                        raise ValueError(f"image_ids lists {image_id!r} twice")
                    seen.add(image_id)
        self._written: set[str] = set()
        self._buffer: list[ImageDetections] = []
        self._buffered = 0
        self._flush_detections = max(1, flush_detections)
        self.stats = SubmissionStats(self.path)
        self._closed = False
        self._temp = self.path if "://" in self.path else self.path + ".partial"
        self._file = fileio.open_maybe_gzip(self._temp, "wb", gzipped=self.path.endswith(".gz"),
                                            compresslevel=compresslevel)
        self._put(memoryview((HEADER + "\n").encode()))

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, dets: ImageDetections) -> None:
        """Adds the row of one image.

        Raises:
          ValueError for an ImageId already written, one not among `image_ids`,
          an ImageId with a comma, quote or whitespace, or a box or score that
          is not finite. A label that is no MID is found when the buffer is
          formatted: the error names its image and the writer is aborted.
        """
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        image_id = dets.image_id
        if image_id in self._written:
            raise ValueError(f"{self.path}: ImageId {image_id!r} is written twice; put all "
                             "detections of an image in one row (merge_levels)")
        if self._expected is not None and image_id not in self._expected_set:
            raise ValueError(f"{self.path}: ImageId {image_id!r} is not among the "
                             f"{len(self._expected)} expected image ids")
        if not is_valid_image_id(image_id):
            raise ValueError(f"{self.path}: ImageId {image_id!r} is empty or has a comma, quote "
                             "or whitespace")
        if len(dets) and not (np.isfinite(dets.boxes).all() and np.isfinite(dets.scores).all()):
            raise ValueError(f"{self.path}: ImageId {image_id!r} has a box or score that is not "
                             "a finite number")
        self._written.add(image_id)
        self._buffer.append(dets)
        self._buffered += len(dets)
        if self._buffered >= self._flush_detections:
            self._flush()

    def close(self) -> SubmissionStats:
        """Writes the buffer and an empty row for every expected id never written.

        Renames the file into place and returns the stats (also `self.stats`).
        Closing twice is harmless.
        """
        if self._closed:
            return self.stats
        try:
            self._flush()
            if self._expected is not None:
                missing = [i for i in self._expected if i not in self._written]
                for k in range(0, len(missing), 1 << 16):
                    chunk = missing[k:k + (1 << 16)]
                    text = "".join(f"{i},\n" for i in chunk).encode()
                    self._put(memoryview(text))
                    self.stats.rows += len(chunk)
                self.stats.filled = len(missing)
                if missing:
                    logger.info("%s: %d of %d expected images had no row; written empty",
                                self.path, len(missing), len(self._expected))
            self._file.close()
        except BaseException:
            self.abort()
            raise
        if self._temp != self.path:
            os.replace(self._temp, self.path)
        self._closed = True
        return self.stats

    def abort(self) -> None:
        """Closes without finishing: deletes the partial file (local paths)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.close()
        finally:
            if self._temp != self.path and os.path.exists(self._temp):
                os.remove(self._temp)

    def _put(self, data: memoryview | pa.Buffer) -> None:
        self._file.write(data)
        self.stats.text_bytes += len(data)

    def _flush(self) -> None:
        if not self._buffer:
            return
        buffer, self._buffer, self._buffered = self._buffer, [], 0
        try:
            text = format_rows(buffer)
        except _BadMidError as e:
            self.abort()  # a programming error (names for MIDs?): no half-written file
            bad = next(d.image_id for d in buffer if e.mid in set(d.mids.tolist()))
            raise ValueError(f"{self.path}: ImageId {bad!r} has the label {e.mid!r}, which is "
                             "not a MID (/m/... or /g/...); the partial file is deleted") from None
        self._put(text)
        self.stats.rows += len(buffer)
        counts = [len(d) for d in buffer]
        self.stats.detections += sum(counts)
        self.stats.images_with_detections += sum(c > 0 for c in counts)


class _BadMidError(ValueError):
    def __init__(self, mid: str):
        super().__init__(mid)
        self.mid = mid


def format_rows(images: Sequence[ImageDetections]) -> pa.Buffer:
    """The CSV rows (`ImageId,PredictionString` lines, each ending in a newline) of `images`.

    Vectorized: scores and coordinates are formatted by numpy and Arrow
    kernels, the strings joined by Arrow. Raises ValueError for a label that
    is not a MID.
    """
    counts = np.array([len(d) for d in images], np.int64)
    ids = pa.array([d.image_id for d in images], pa.string())
    n = int(counts.sum())
    if n:
        boxes = np.concatenate([d.boxes for d in images])
        scores = np.concatenate([d.scores for d in images])
        mids = pa.array(np.concatenate([d.mids for d in images]), pa.string())
        labels = pc.dictionary_encode(mids).dictionary
        for mid in labels.to_pylist():
            if not MID_PATTERN.match(mid):
                raise _BadMidError(mid)
        groups = pc.binary_join_element_wise(mids, _format_scores(scores),
                                             _format_coordinates(boxes), " ")
    else:
        groups = pa.array([], pa.string())
    offsets = pa.array(np.r_[0, np.cumsum(counts)].astype(np.int32 if n < 2**31 else np.int64))
    strings = pc.binary_join(_list_array(offsets, groups), " ")
    # A last empty line makes the join end in a newline.
    lines = pa.concat_arrays([pc.binary_join_element_wise(ids, strings, ","), pa.array([""])])
    text = pc.binary_join(_list_array(pa.array([0, len(lines)], offsets.type), lines), "\n")
    return text[0].as_buffer()


def _list_array(offsets: pa.Array, values: pa.Array) -> pa.Array:
    if offsets.type == pa.int64():
        return pa.LargeListArray.from_arrays(offsets, values)
    return pa.ListArray.from_arrays(offsets, values)


def _format_scores(scores: np.ndarray) -> pa.Array:
    """Scores rounded to 6 significant digits, in their shortest decimal form.

    n / 10^k with integer n and k <= 22 is the double nearest to that decimal
    (IEEE division rounds correctly), so Arrow's shortest round-trip form
    prints exactly the rounded digits: 0.5, 0.123457, 1.23457e-7.
    """
    s = scores.astype(np.float64)
    magnitude = np.abs(s)
    exponent = np.floor(np.log10(np.where(magnitude > 0, magnitude, 1.0)))
    k = 5 - exponent  # decimals that keep 6 significant digits
    small = (k > 0) & (k <= 22)
    big = (k <= 0) & (k >= -22)
    rounded = s.copy()
    scale = 10.0 ** np.abs(np.clip(k, -22, 22))
    rounded[small] = np.rint(s[small] * scale[small]) / scale[small]
    rounded[big] = np.rint(s[big] / scale[big]) * scale[big]
    return pc.cast(pa.array(rounded + 0.0), pa.string())  # + 0.0: no "-0"


# One detection's coordinates: four 8-byte "d.dddddd" separated by spaces (35 bytes).
_COORDINATES = np.dtype({"names": ["c0", "s0", "c1", "s1", "c2", "s2", "c3"],
                         "formats": ["<u8", "u1", "<u8", "u1", "<u8", "u1", "<u8"],
                         "offsets": [0, 8, 9, 17, 18, 26, 27], "itemsize": 35})


@functools.cache
def _micro_text() -> np.ndarray:
    """[10^6 + 1] uint64: the 8 ASCII bytes of "%.6f" % (i / 10^6), little-endian (8 MB)."""
    value = np.arange(1_000_001)
    text = np.empty((len(value), 8), np.uint8)
    text[:, 0] = ord("0") + value // 1_000_000
    text[:, 1] = ord(".")
    rest = value % 1_000_000
    for k in range(7, 1, -1):
        text[:, k] = ord("0") + rest % 10
        rest //= 10
    return text.view("<u8").reshape(-1)


def _format_coordinates(boxes: np.ndarray) -> pa.Array:
    """"XMin YMin XMax YMax" of [N, 4] (ymin, xmin, ymax, xmax) boxes, clipped to [0, 1], %.6f.

    Each coordinate is rounded to an integer number of millionths (half to
    even, like %.6f for a float32 input, whose product with 10^6 is exact) and
    its text looked up whole, one 8-byte word, instead of digit by digit.
    """
    micro = np.clip(boxes[:, [1, 0, 3, 2]], 0.0, 1.0).astype(np.float64)
    micro *= 1e6
    micro = np.rint(micro, out=micro).astype(np.int32)
    table = _micro_text()
    out = np.empty(len(boxes), _COORDINATES)
    for k in range(4):
        out[f"c{k}"] = table[micro[:, k]]
    for k in range(3):
        out[f"s{k}"] = ord(" ")
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(35), len(boxes),
                                                 [None, pa.py_buffer(out)])
    return pc.cast(pc.cast(fixed, pa.binary()), pa.string())


# -- reading back ----------------------------------------------------------------------------

# Why a row or detection is skipped under --lenient (and named in the error otherwise).
MALFORMED_ROW = "malformed_row"  # a CSV row without exactly the header's fields
DUPLICATE_IMAGE = "duplicate_image_id"  # a second row for the same ImageId
BAD_TOKEN_COUNT = "bad_token_count"  # tokens not in groups of six
BAD_NUMBER = "bad_number"  # a score or coordinate that is not a finite number
UNKNOWN_MID = "unknown_mid"  # a LabelName not in the class list
COORD_OUT_OF_RANGE = "coordinate_out_of_range"  # a coordinate outside [0, 1]
SCORE_OUT_OF_RANGE = "score_out_of_range"  # a score outside [0, 1]
MIN_GT_MAX = "min_greater_than_max"  # XMin > XMax or YMin > YMax (the name the GT reader uses)
# Counted in rows; the other reasons are counted in detections.
ROW_REASONS = (MALFORMED_ROW, DUPLICATE_IMAGE, BAD_TOKEN_COUNT)

_FIXES = {
    MALFORMED_ROW: "a row is ImageId,PredictionString",
    DUPLICATE_IMAGE: "put all detections of an image in one row",
    BAD_TOKEN_COUNT: "a PredictionString is groups of six: LabelName Score XMin YMin XMax YMax",
    BAD_NUMBER: "scores and coordinates are finite decimal numbers",
    UNKNOWN_MID: "use MIDs of the class list (--classes)",
    COORD_OUT_OF_RANGE: "coordinates are normalized to [0, 1]",
    SCORE_OUT_OF_RANGE: "scores are confidences in [0, 1]",
    MIN_GT_MAX: "a detection is LabelName Score XMin YMin XMax YMax, with XMin <= XMax and "
                "YMin <= YMax",
}
_PREDICTION_FIELDS = ("Score", "XMin", "YMin", "XMax", "YMax")  # Kaggle order after LabelName
_NUMBER = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
MAX_LISTED = 1000  # skipped detections kept with their details; counts are always complete


@dataclasses.dataclass
class Submission:
    """The detections of a submission file, in file order.

    Attributes:
      image_ids: [R] the ImageId of every row kept.
      row: [N] the row (index into image_ids) of each detection.
      labels: [N] class indices into the class list.
      scores: [N] float64.
      boxes: [N, 4] float64 (ymin, xmin, ymax, xmax), normalized — reordered
        from the string's XMin YMin XMax YMax (a transposed view of [4, N] rows).
    """

    image_ids: np.ndarray
    row: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


@dataclasses.dataclass
class SubmissionReport:
    """What read_submission kept and skipped.

    Attributes:
      path: the file read.
      rows: rows kept; detections: detections kept.
      skipped: reason -> rows (MALFORMED_ROW, DUPLICATE_IMAGE, BAD_TOKEN_COUNT)
        or detections (the other reasons) skipped for it.
      skipped_lines: (line, reason, detail) of the first MAX_LISTED skips.
    """

    path: str
    rows: int = 0
    detections: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped_lines: list[tuple[int | None, str, str]] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.path}: {self.rows} rows, {self.detections} detections"
        if self.skipped:
            unit = {r: "rows" if r in ROW_REASONS else "detections" for r in self.skipped}
            text += " kept; skipped " + ", ".join(
                f"{n} {unit[r]} ({r})" for r, n in sorted(self.skipped.items()))
        return text


@dataclasses.dataclass
class _Parsed:
    """Tokens of a submission before validation (internal)."""

    image_ids: np.ndarray  # [R] object: the ImageId of every row
    row: np.ndarray  # [N] int64: the row of each detection
    label_names: list[str]  # the distinct LabelName tokens
    label_codes: np.ndarray  # [N] int32 index into label_names
    # [5, N] float64: rows score, ymin, xmin, ymax, xmax (_ROWS); NaN where a token
    # is no number. Rows, not columns, so that the evaluator takes them without copies.
    numbers: np.ndarray
    token_counts: np.ndarray | None = None  # [R] tokens per row; None: all multiples of 6
    bad_tokens: dict[tuple[int, int], str] = dataclasses.field(default_factory=dict)
    malformed: list[str] = dataclasses.field(default_factory=list)  # rows skipped by Arrow
    # (path, header fields) to find the physical line of each row when one is
    # needed; None when every row is on line row + 2 (the fast path).
    lines_from: tuple[str, int] | None = None


_ROWS = ("Score", "YMin", "XMin", "YMax", "XMax")  # rows of _Parsed.numbers
_ROW_OF_TOKEN = (0, 2, 1, 4, 3)  # Kaggle token 1..5 (Score XMin YMin XMax YMax) -> row
_BLOCK_BYTES = 32 << 20


def read_submission(path: str, classes: ClassTable, *,
                    lenient: bool = False) -> tuple[Submission, SubmissionReport]:
    """Reads a Kaggle submission (`ImageId,PredictionString`), plain or gzipped (`.gz`).

    A PredictionString is whitespace-separated groups of
    `LabelName Score XMin YMin XMax YMax` (score and coordinates in [0, 1]);
    empty means no detections. A box with min == max (no area) is kept here
    (the metric drops it); min > max is a malformed detection. Vectorized: the
    tokens never become Python objects.

    Returns:
      The Submission (boxes [N, 4] float64 (ymin, xmin, ymax, xmax), labels as
      indices into `classes`) and the report of what was kept and skipped.
    Raises:
      InputFileError naming the line and ImageId of the first problem: a token
      count that is not a multiple of six, a score or coordinate that is not a
      finite number, a MID not in `classes`, a coordinate or score outside
      [0, 1], XMin > XMax or YMin > YMax, a repeated ImageId, a malformed CSV
      row. With `lenient`, such rows or detections are skipped and counted in
      the report instead. A file that cannot be read to its end (a cut-short
      .gz, bytes that are not UTF-8) or that has no header is an error even
      with `lenient`: what it holds past the damage is unknowable.
    """
    path = str(path)
    return _validate_submission(_parse(path, lenient), classes, lenient, SubmissionReport(path))


def read_submission_rows(path: str) -> Iterator[ImageDetections]:
    """The rows of a submission file (plain or .gz) as ImageDetections, in file order.

    For re-reading a submission to merge or inspect it, without a class list.
    The file is parsed and checked whole by read_submission's parser (every
    check but the class list's), then yielded row by row: boxes [N, 4]
    (ymin, xmin, ymax, xmax), normalized; an empty PredictionString gives an
    image without detections.

    Raises:
      InputFileError (on the first next()) naming the line of the first
      problem, as read_submission without `lenient`.
    """
    path = str(path)
    parsed = _parse(path, lenient=False)
    submission, _ = _validate_submission(parsed, None, False, SubmissionReport(path))
    # Without a class list, labels index the file's distinct LabelNames.
    mids = np.array(parsed.label_names, object)[submission.labels]
    # Detections are in file order, so each row's are one slice.
    bounds = np.searchsorted(submission.row, np.arange(len(submission.image_ids) + 1))
    for r, image_id in enumerate(submission.image_ids.tolist()):
        rows = slice(bounds[r], bounds[r + 1])
        yield ImageDetections(image_id, submission.boxes[rows], submission.scores[rows],
                              mids[rows])


def _parse(path: str, lenient: bool) -> _Parsed:
    """The tokens of a submission file, by the fast parser when the file allows it."""
    parsed = _parse_fast(path)
    if parsed is None:  # anything unusual: the general parser handles and reports it
        parsed = _parse_general(path, lenient)
    return parsed


def _parse_fast(path: str) -> _Parsed | None:
    """The common file shape, parsed at disk speed; None for anything else.

    Handles the common shape only (gzipped files are decompressed on the way):
    the header ImageId,PredictionString, no quotes, tabs, CRs, blank lines or
    other punctuation, single spaces between tokens, token counts that are
    multiples of six and numbers that parse. Each block of rows is rewritten in
    place into a CSV of one detection per line for Arrow's multi-threaded
    parser, so neither the 24M tokens of a 4M-detection file nor their text
    ever become Python objects.
    """
    parts = []
    rows = 0
    with fileio.open_maybe_gzip(path, "rb") as f:
        header = next(csv.reader([f.readline().decode("utf-8-sig", "replace").rstrip("\r\n")]), [])
        if header not in (["ImageId", "PredictionString"], ["ImageID", "PredictionString"]):
            return None
        carry = np.zeros(0, np.uint8)
        while True:
            data = f.read(_BLOCK_BYTES)
            buf = np.empty(len(carry) + len(data) + 1, np.uint8)
            buf[:len(carry)] = carry
            buf[len(carry):-1] = np.frombuffer(data, np.uint8)
            if data:
                cut = _after_last_newline(buf[:-1])
                buf, carry = buf[:cut], buf[cut:-1].copy()
            elif len(carry) and carry[-1] != 10:
                buf[-1] = 10  # a last row without its newline
            else:
                buf = buf[:-1]
            if len(buf):
                part = _parse_fast_block(buf, rows)
                if part is None:
                    return None
                parts.append(part)
                rows += len(part[0])
            if not data:
                break
    names: dict[str, int] = {}
    codes = []
    for _, _, block_names, block_codes, _ in parts:
        lut = np.array([names.setdefault(n, len(names)) for n in block_names] + [0], np.int32)
        codes.append(lut[block_codes])
    return _Parsed(
        image_ids=np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, object),
        row=np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64),
        label_names=list(names),
        label_codes=np.concatenate(codes) if codes else np.zeros(0, np.int32),
        numbers=np.concatenate([p[4] for p in parts], axis=1) if parts else np.zeros((5, 0)))


def _after_last_newline(buf: np.ndarray) -> int:
    """Index after the last newline of `buf` (0 if none), looking at its tail first."""
    width = 1 << 16
    while True:
        lo = max(0, len(buf) - width)
        hits = np.flatnonzero(buf[lo:] == 10)
        if len(hits):
            return lo + int(hits[-1]) + 1
        if not lo:
            return 0
        width *= 8


def _parse_fast_block(buf: np.ndarray, first_row: int):
    """Whole rows (ending in a newline) -> (image ids, row, label names, label codes, numbers)."""
    end = np.flatnonzero(buf == 10)
    comma = np.flatnonzero(buf == 44)
    space = np.flatnonzero(buf == 32)
    if np.count_nonzero(buf < 45) != len(end) + len(comma) + len(space):
        return None  # quotes, tabs, CRs, other control characters or punctuation
    start = np.r_[0, end[:-1] + 1]
    if len(comma) != len(end) or (comma < start + 1).any() or (comma >= end).any():
        return None  # blank lines, empty ImageIds, commas in a PredictionString
    first_space = np.searchsorted(space, start)
    num_spaces = np.searchsorted(space, end) - first_space
    nonempty = comma + 1 < end
    if ((np.searchsorted(space, comma) != first_space).any()  # a space in an ImageId
            or (np.diff(space) < 2).any()  # runs of spaces
            or (buf[comma[nonempty] + 1] == 32).any() or (buf[end[nonempty] - 1] == 32).any()):
        return None
    tokens = np.where(nonempty, num_spaces + 1, 0)
    if (tokens % 6).any():
        return None
    per_row = tokens // 6
    try:
        view = memoryview(buf)
        image_ids = np.array([bytes(view[a:b]).decode("utf-8")
                              for a, b in zip(start.tolist(), comma.tolist(), strict=True)], object)
    except UnicodeDecodeError:
        return None
    # Spaces become commas and every sixth a newline. The ImageId line becomes a
    # row of its own with six fields ("xx...x,,,,,"): an ImageId of 5 or more
    # bytes is overwritten in place, shorter ones get commas inserted.
    buf[space] = 44
    more = np.maximum(per_row - 1, 0)
    buf[space[np.repeat(first_space + 5, more) + 6 * ragged_arange(more)]] = 10
    if (comma - start).min() >= 5:
        length = comma - start
        buf[np.repeat(start, length) + ragged_arange(length)] = ord("x")
        buf[np.repeat(comma - 5, 5) + np.tile(np.arange(5), len(comma))] = 44
    else:
        buf = np.insert(buf, np.repeat(comma, 5), np.uint8(44))
        comma = comma + 5 * np.arange(1, len(comma) + 1)
    buf[comma] = 10
    names = ["LabelName", *_PREDICTION_FIELDS]
    try:
        table = pacsv.read_csv(
            pa.py_buffer(buf),
            read_options=pacsv.ReadOptions(column_names=names, block_size=8 << 20),
            convert_options=pacsv.ConvertOptions(
                column_types={"LabelName": pa.dictionary(pa.int32(), pa.string()),
                              **{c: pa.float64() for c in names[1:]}},
                null_values=[""], strings_can_be_null=False))
    except pa.ArrowInvalid:
        return None  # a token that is no number: the general parser names it
    del buf
    num_dets = int(per_row.sum())
    if table.num_rows != len(end) + num_dets:
        return None
    # Output line of each ImageId row: its row index plus the detections before it.
    detection = np.ones(table.num_rows, bool)
    detection[np.arange(len(end)) + np.cumsum(per_row) - per_row] = False
    labels = table.column("LabelName").unify_dictionaries()
    label_names = labels.chunk(0).dictionary.to_pylist() if labels.num_chunks else []
    label_codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False)
                                  for c in labels.chunks])[detection]
    numbers = np.empty((5, num_dets))
    for k, name in enumerate(names[1:]):
        numbers[_ROW_OF_TOKEN[k]] = table.column(name).to_numpy()[detection]
    row = np.repeat(np.arange(first_row, first_row + len(end)), per_row)
    return image_ids, row, label_names, label_codes, numbers


def _parse_general(path: str, lenient: bool) -> _Parsed:
    """Any CSV Arrow reads: quotes, CRLF, blank lines, tabs, runs of spaces, bad tokens."""
    id_column, num_fields = _header(path)
    on_invalid_row, malformed = fileio.invalid_row_collector(lenient)

    try:
        with fileio.open_maybe_gzip(path, "rb") as f:
            table = pacsv.read_csv(
                f, read_options=pacsv.ReadOptions(block_size=16 << 20),
                parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in (id_column, "PredictionString")},
                    include_columns=[id_column, "PredictionString"],
                    strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid as e:
        if "UTF8" in str(e):
            raise fileio.not_utf8_error(path, *fileio.first_non_utf8_line(path)) from None
        line, text = next(((n, t) for n, t, ok in _scan_rows(path, num_fields) if not ok),
                          (None, ""))
        raise InputFileError(path, line, f"{MALFORMED_ROW}: {text!r} does not have the "
                                         f"{num_fields} fields of the header; "
                                         f"{_FIXES[MALFORMED_ROW]}") from None
    image_ids = table.column(id_column).to_numpy(zero_copy_only=False).astype(object)
    strings = pc.ascii_trim_whitespace(table.column("PredictionString").combine_chunks())
    del table
    # An empty string would split into one empty token: make it null (no tokens).
    strings = pc.if_else(pc.equal(pc.binary_length(strings), 0), pa.scalar(None, pa.string()),
                         strings)
    lists = pc.ascii_split_whitespace(strings)  # (runs of whitespace are one separator)
    del strings
    token_counts = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(
        zero_copy_only=False).astype(np.int64)
    whole = token_counts % 6 == 0
    flat = pc.list_flatten(lists.filter(pa.array(whole)))
    del lists
    row = np.repeat(np.arange(len(token_counts)), np.where(whole, token_counts // 6, 0))
    n = len(row)
    labels = pc.dictionary_encode(flat.take(pa.array(np.arange(0, 6 * n, 6, dtype=np.int64))))
    numbers = np.empty((5, n))
    bad_tokens: dict[tuple[int, int], str] = {}
    for k in range(5):
        column = flat.take(pa.array(np.arange(k + 1, 6 * n, 6, dtype=np.int64)))
        valid = pc.match_substring_regex(column, _NUMBER).to_numpy(zero_copy_only=False)
        if not valid.all():
            for d in np.flatnonzero(~valid)[:MAX_LISTED].tolist():
                bad_tokens[d, _ROW_OF_TOKEN[k]] = column[d].as_py()
            column = pc.if_else(pa.array(valid), column, pa.scalar(None, pa.string()))
        numbers[_ROW_OF_TOKEN[k]] = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    return _Parsed(image_ids, row, labels.dictionary.to_pylist(),
                   labels.indices.to_numpy(zero_copy_only=False), numbers, token_counts,
                   bad_tokens, malformed, (path, num_fields))


def _header(path: str) -> tuple[str, int]:
    """The ImageId column's name (ImageId or ImageID) and the number of header fields."""
    with fileio.open_maybe_gzip(path, "rb") as f:
        raw = f.readline()
    if not raw:
        raise InputFileError(path, None, f"the file is empty; a submission starts with the "
                                         f"header {HEADER}")
    first = fileio.decode_utf8(raw, path).rstrip("\r\n")
    header = [h.strip() for h in next(csv.reader([first]), [])]
    id_column = next((h for h in ("ImageId", "ImageID") if h in header), None)
    if id_column is None or "PredictionString" not in header:
        raise InputFileError(path, 1, f"expected the header {HEADER}, found "
                                      f"{','.join(header) or 'an empty line'}; a submission "
                                      "is a CSV file with that header")
    return id_column, len(header)


def _scan_rows(path: str, num_fields: int):
    """(first line, text, well-formed) of every non-blank data row, as Arrow counts them."""
    # Bytes that are not UTF-8 were reported already where they matter (Arrow's
    # string columns); here they only need to keep their line.
    with fileio.open_maybe_gzip(path, "r", errors="replace") as f:
        reader = csv.reader(f)
        last = 0
        for index, fields in enumerate(reader):
            line, last = last + 1, reader.line_num
            if fields and index:
                yield line, ",".join(fields), len(fields) == num_fields


def _validate_submission(parsed: _Parsed, classes: ClassTable | None, lenient: bool,
                         report: SubmissionReport) -> tuple[Submission, SubmissionReport]:
    """Checks the parsed tokens; classes None: any LabelName, labels index parsed.label_names."""
    row, numbers = parsed.row, parsed.numbers
    num_rows = len(parsed.image_ids)
    names = parsed.label_names
    if classes is None:
        labels = np.asarray(parsed.label_codes, np.int32)
    else:
        # MIDs are looked up once per distinct label, not once per detection.
        lut = np.array([classes.index(m) if m in classes else -1 for m in names] + [-1],
                       np.int32)
        labels = lut[parsed.label_codes]
    finite = np.isfinite(numbers)
    all_finite = finite.all(axis=0)
    outside = finite[1:] & ((numbers[1:] < 0) | (numbers[1:] > 1))
    score_outside = finite[0] & ((numbers[0] < 0) | (numbers[0] > 1))
    # Rows of `numbers`: 1 YMin, 2 XMin, 3 YMax, 4 XMax. NaN compares False (a bad_number).
    x_flipped = numbers[2] > numbers[4]
    flipped = x_flipped | (numbers[1] > numbers[3])

    def detail(reason: str, r: int, d: int) -> str:
        if reason == BAD_TOKEN_COUNT:
            return f"the PredictionString has {parsed.token_counts[r]} tokens"
        if reason == DUPLICATE_IMAGE:
            return f"ImageId {parsed.image_ids[r]!r} already has a row"
        if reason == UNKNOWN_MID:
            return f"LabelName {names[parsed.label_codes[d]]!r} is not in the class list"
        if reason == BAD_NUMBER:
            k = int(np.argmin(finite[:, d]))
            text = parsed.bad_tokens.get((d, k))
            value = repr(text) if text is not None else str(numbers[k, d])
            return f"{_ROWS[k]} {value} is not a finite number"
        if reason == SCORE_OUT_OF_RANGE:
            return f"Score={numbers[0, d]:g} is outside [0, 1]"
        if reason == MIN_GT_MAX:
            lo, hi = (2, 4) if x_flipped[d] else (1, 3)
            return f"{_ROWS[lo]}={numbers[lo, d]:g} > {_ROWS[hi]}={numbers[hi, d]:g}"
        k = int(np.argmax(outside[:, d])) + 1
        return f"{_ROWS[k]}={numbers[k, d]:g} is outside [0, 1]"

    def where(r: int, d: int) -> str:
        nth = f"detection {d - int(np.searchsorted(row, r)) + 1}, " if d >= 0 else ""
        return f"ImageId {parsed.image_ids[r]!r}, {nth}"

    scanned: list = []  # the file's rows, scanned once and only to name lines

    def rows_scanned() -> list[tuple[int, str, bool]]:
        if not scanned and parsed.lines_from is not None:
            scanned.extend(_scan_rows(*parsed.lines_from))
        return scanned

    def line_of(r: int) -> int:
        if parsed.lines_from is None:
            return r + 2
        return [line for line, _, ok in rows_scanned() if ok][r]

    # Rows, then detections; each is counted under its first reason only.
    token_rows = (parsed.token_counts % 6 != 0) if parsed.token_counts is not None \
        else np.zeros(num_rows, bool)
    repeated = pd.Series(parsed.image_ids, dtype=object).duplicated().to_numpy()
    bad_row = {BAD_TOKEN_COUNT: token_rows, DUPLICATE_IMAGE: repeated & ~token_rows}
    row_ok = ~(token_rows | repeated)
    remaining = row_ok[row]
    bad_det = {}
    for reason, mask in ((BAD_NUMBER, ~all_finite), (UNKNOWN_MID, labels < 0),
                         (COORD_OUT_OF_RANGE, outside.any(axis=0)),
                         (SCORE_OUT_OF_RANGE, score_outside), (MIN_GT_MAX, flipped)):
        bad_det[reason] = mask & remaining
        remaining &= ~mask

    found = [(r, -1, reason) for reason, mask in bad_row.items()
             for r in np.flatnonzero(mask)[:MAX_LISTED].tolist()]
    found += [(int(row[d]), d, reason) for reason, mask in bad_det.items()
              for d in np.flatnonzero(mask)[:MAX_LISTED].tolist()]
    found.sort()
    if not lenient and found:
        r, d, reason = found[0]
        raise InputFileError(report.path, line_of(r),
                             f"{where(r, d)}{reason}: {detail(reason, r, d)}; "
                             f"{_FIXES[reason]} (or pass --lenient to skip and count them)")
    if parsed.malformed:
        for line, text, ok in rows_scanned():
            if not ok and len(report.skipped_lines) < MAX_LISTED:
                report.skipped_lines.append((line, MALFORMED_ROW, f"{text!r} does not have the "
                                                                  "header's fields"))
    if found:
        well_formed = [line for line, _, ok in rows_scanned() if ok]
        for r, d, reason in found[:MAX_LISTED - len(report.skipped_lines)]:
            line = well_formed[r] if parsed.lines_from is not None else r + 2
            report.skipped_lines.append((line, reason, where(r, d) + detail(reason, r, d)))
        report.skipped_lines.sort(key=lambda x: (x[0] is None, x[0] or 0))
    counts = {MALFORMED_ROW: len(parsed.malformed),
              **{k: int(m.sum()) for k, m in bad_row.items()},
              **{k: int(m.sum()) for k, m in bad_det.items()}}
    report.skipped.update({k: n for k, n in counts.items() if n})
    report.rows = int(row_ok.sum())
    report.detections = int(remaining.sum())
    if not remaining.all():
        row, labels, numbers = row[remaining], labels[remaining], numbers[:, remaining]
    submission = Submission(image_ids=parsed.image_ids, row=row, labels=labels,
                            scores=numbers[0], boxes=numbers[1:].T)
    return submission, report
