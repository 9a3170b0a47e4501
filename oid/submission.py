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
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from oid import fileio
from oid.classes import MID_PATTERN
from oid.errors import InputFileError
from oid.hierarchy import Hierarchy

logger = logging.getLogger(__name__)

HEADER = "ImageId,PredictionString"
_BAD_ID_CHARACTER = re.compile(r'[,"\s]')  # would break the CSV row or the token split


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


def expand_to_ancestors(dets: ImageDetections,
                        hierarchy: Hierarchy | Mapping[str, Iterable[str]]) -> ImageDetections:
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
      hierarchy: a Hierarchy, or a mapping MID -> its ancestors (e.g.
        Hierarchy.ancestors_map(), to look them up once for many images).
    Returns:
      The expanded detections, highest score first (equal scores in input order,
      each box followed by its copies in MID order).
    """
    if not len(dets):
        return dets
    ancestors = hierarchy.ancestors if isinstance(hierarchy, Hierarchy) else hierarchy.__getitem__
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(m, len(index)) for m in dets.mids.tolist()),
                        np.int64, len(dets))
    relatives = [[m, *sorted(set(ancestors(m)) - {m})] if m in hierarchy else [m]
                 for m in index]
    counts = np.array([len(r) for r in relatives], np.int64)
    starts = np.cumsum(counts) - counts
    flat = np.array([m for r in relatives for m in r], object)
    per_row = counts[codes]
    rows = np.repeat(np.arange(len(dets)), per_row)
    mids = flat[np.repeat(starts[codes], per_row) + _ragged_arange(per_row)]
    expanded = ImageDetections(dets.image_id, dets.boxes[rows], dets.scores[rows], mids)
    return drop_duplicate_boxes(expanded)


def drop_duplicate_boxes(dets: ImageDetections) -> ImageDetections:
    """Collapses rows of one class with identical coordinates to the one of highest score.

    See expand_to_ancestors for why. Returns the rows kept, highest score
    first (equal scores in input order).
    """
    n = len(dets)
    if n < 2:
        return dets
    index: dict[str, int] = {}
    cls = np.fromiter((index.setdefault(m, len(index)) for m in dets.mids.tolist()), np.int64, n)
    b = dets.boxes + np.float32(0)  # -0.0 and 0.0 are the same coordinate
    rows = np.arange(n)
    order = np.lexsort((rows, -dets.scores, b[:, 3], b[:, 2], b[:, 1], b[:, 0], cls))
    keys = np.column_stack([cls[order], b[order].view(np.int32)])
    first = np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)]
    kept = order[first]
    return dets.take(kept[np.lexsort((kept, -dets.scores[kept]))])


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
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

    The streams are read in lockstep, one image from each in turn. An image is
    yielded (merge_levels, streams in the given order) as soon as every stream
    that has not ended has listed it; an image missing from a stream comes out
    when that stream ends, with the other levels' rows.

    Memory: only the images read from some stream and not yet from every
    stream still running are held. When the streams list their images in the
    same order (predict.py reads the same test records for every level), that
    is at most one image and everything streams. In general, if an image's
    positions in two streams differ by at most D, at most (number of streams) x D
    images are held, plus the images a stream never lists, which wait until it
    ends. The ids already yielded are remembered (about 70 bytes an image) to
    refuse a stream that lists an image twice.

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

    def merged(image_id: str) -> ImageDetections:
        done.add(image_id)
        return merge_levels([d for d in pending.pop(image_id) if d is not None])

    while any(live):
        for s in range(n):
            if not live[s]:
                continue
            dets = next(iterators[s], None)
            if dets is None:
                live[s] = False
                for image_id in [i for i, slots in pending.items() if complete(slots)]:
                    yield merged(image_id)
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
                yield merged(image_id)


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

    boxes = np.clip(np.concatenate([d.boxes for d in dets_list]).astype(np.float64), 0.0, 1.0)
    scores = np.concatenate([d.scores for d in dets_list]).astype(np.float64)
    model = np.repeat(np.arange(num_models), [len(d) for d in dets_list])
    mids = np.concatenate([d.mids for d in dets_list])
    weighted = scores * w[model]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = np.flatnonzero((scores >= skip_score) & (weighted > 0) & (area > 0))
    if not len(keep):
        return ImageDetections.empty(image_id)
    index: dict[str, int] = {}
    cls = np.fromiter((index.setdefault(m, len(index)) for m in mids[keep].tolist()), np.int64,
                      len(keep))
    order = keep[np.lexsort((keep, -weighted[keep], cls))]
    cls = np.sort(cls, kind="stable")
    boxes, weighted, area = boxes[order], weighted[order], area[order]
    n = len(order)

    # Class c's boxes are rows [start[c], start[c] + size[c]) of the sorted arrays; its
    # fused boxes live in the same slots (a class never has more fused boxes than boxes).
    start = np.flatnonzero(np.r_[True, cls[1:] != cls[:-1]])
    size = np.diff(np.r_[start, n])
    num_fused = np.zeros(len(start), np.int64)
    fused = np.zeros((n, 4))  # current fused box of each slot
    fused_area = np.zeros(n)
    sum_weight = np.zeros(n)  # sum of members' weighted scores
    sum_box = np.zeros((n, 4))  # sum of weighted score x coordinates
    members = np.zeros(n, np.int64)
    for t in range(int(size.max())):
        active = np.flatnonzero(size > t)
        row = start[active] + t
        box, wt = boxes[row], weighted[row]
        slot = start[active] + num_fused[active]  # where a new fused box would go
        k = int(num_fused[active].max())
        if k:
            cand = np.minimum(start[active, None] + np.arange(k), n - 1)  # [A, k]
            valid = np.arange(k) < num_fused[active, None]
            iou = _iou_one_to_many(box, area[row], fused[cand], fused_area[cand])
            iou = np.where(valid, iou, -1.0)
            best = np.argmax(iou, axis=1)
            joins = iou[np.arange(len(active)), best] > iou_threshold
            slot = np.where(joins, cand[np.arange(len(active)), best], slot)
            num_fused[active[~joins]] += 1
        else:
            num_fused[active] += 1
        sum_weight[slot] += wt
        sum_box[slot] += wt[:, None] * box
        members[slot] += 1
        fused[slot] = sum_box[slot] / sum_weight[slot][:, None]
        fused_area[slot] = (fused[slot, 2] - fused[slot, 0]) * (fused[slot, 3] - fused[slot, 1])

    slots = start.repeat(num_fused) + _ragged_arange(num_fused)
    score = (sum_weight[slots] / members[slots]) * np.minimum(members[slots], num_models) / w.sum()
    out = np.lexsort((slots, -score))
    slots, score = slots[out], score[out]
    return ImageDetections(image_id, fused[slots].astype(np.float32), score.astype(np.float32),
                           mids[order[slots]])


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
        if not image_id or _BAD_ID_CHARACTER.search(image_id):
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


def read_submission_rows(path: str) -> Iterator[ImageDetections]:
    """The rows of a submission file (plain or .gz) as ImageDetections, in file order.

    Streams: one row in memory at a time. Boxes come back in (ymin, xmin,
    ymax, xmax) order. For scoring a whole file, oid.metric.read_submission is
    much faster; this is for re-reading a submission to merge or inspect it.

    Raises:
      InputFileError naming the line of a bad header, a row without two
      fields, a token count that is not a multiple of six or a number that
      does not parse.
    """
    path = str(path)
    with fileio.open_maybe_gzip(path, "r") as f:
        reader = csv.reader(f)
        header = [h.strip().lstrip("\ufeff") for h in next(reader, [])]
        if header not in (["ImageId", "PredictionString"], ["ImageID", "PredictionString"]):
            raise InputFileError(path, 1, f"expected the header {HEADER}, found "
                                          f"{','.join(header) or 'nothing'}")
        for fields in reader:
            if not fields:
                continue
            if len(fields) != 2:
                raise InputFileError(path, reader.line_num,
                                     f"expected 2 fields ImageId,PredictionString, found "
                                     f"{len(fields)}")
            yield _parse_row(path, reader.line_num, fields[0], fields[1])


def _parse_row(path: str, line: int, image_id: str, text: str) -> ImageDetections:
    tokens = text.split()
    if len(tokens) % 6:
        raise InputFileError(path, line, f"ImageId {image_id!r}: {len(tokens)} tokens; a "
                                         "PredictionString is groups of six: "
                                         "LabelName Score XMin YMin XMax YMax")
    if not tokens:
        return ImageDetections.empty(image_id)
    groups = np.array(tokens, object).reshape(-1, 6)
    try:
        numbers = groups[:, 1:].astype(np.float64)  # Score XMin YMin XMax YMax
    except ValueError as e:
        raise InputFileError(path, line, f"ImageId {image_id!r}: {e}") from None
    return ImageDetections(image_id, numbers[:, [2, 1, 4, 3]], numbers[:, 0], groups[:, 0])


def detections_by_image(image_ids: Sequence[str], boxes: np.ndarray, scores: np.ndarray,
                        mids: np.ndarray, num_detections: np.ndarray | None = None,
                        ) -> list[ImageDetections]:
    """Splits a batch of padded model outputs into one ImageDetections an image.

    Args:
      image_ids: [B] ids (str or bytes).
      boxes: [B, M, 4] (ymin, xmin, ymax, xmax) normalized to the original image.
      scores: [B, M].
      mids: [B, M] MIDs (str or bytes); padding rows may hold anything.
      num_detections: [B] valid rows of each image (default M).
    """
    boxes, scores, mids = np.asarray(boxes), np.asarray(scores), np.asarray(mids)
    count = (np.full(len(image_ids), scores.shape[1]) if num_detections is None
             else np.asarray(num_detections).reshape(-1))
    return [ImageDetections(image_ids[b], boxes[b, :count[b]], scores[b, :count[b]],
                            mids[b, :count[b]]) for b in range(len(image_ids))]

