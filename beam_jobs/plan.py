"""Planning a level's records from the annotation tables (driver side, no Beam, no images).

The plan says, for one level, which images go into its records, on which
side of the train/val split, with which boxes and image-level labels and
which repeat factor; which inputs are left out and why; and the level's val
ground truth as official CSV rows for `python -m oid.metric`.

With `boxes_to_ancestors`, a level that holds parent classes also trains them
on their descendants' boxes, as the challenge metric scores them (a Star box is
a Symbol box): see ancestor_copies.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pandas as pd

from oid import split as oid_split
from oid.annotations import ReadReport
from oid.hierarchy import Hierarchy
from oid.levels import Level
from tfrecords.example import ImageAnnotation

DOMINANT_FILTERED = "dominant_classes"


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """How a level's images are chosen and split.

    Attributes:
      val_fraction: share of images on the val side (by oid.split, per ImageID).
      split_salt: changes the split for every level alike (default: none).
      repeat_threshold: LVIS t; an image's repeat factor is the max over its
        classes of max(1, sqrt(t / f_c)), f_c the share of the level's training
        images that contain class c.
      max_dominant_fraction: if set, training images where more than this share
        of the level's boxes belong to the dominant classes are left out (the
        original system's "compressed level").
      dominant_classes: the dominant classes; default the top `dominant_top_k`
        of the level by box count.
      boxes_to_ancestors: also write each box of a class outside the level as a
        box of the level's nearest ancestor of its class (ancestor_copies).
    """

    val_fraction: float = 0.1
    split_salt: str = ""
    repeat_threshold: float = 0.001
    max_dominant_fraction: float | None = None
    dominant_classes: tuple[str, ...] = ()
    dominant_top_k: int = 1
    boxes_to_ancestors: bool = True


@dataclasses.dataclass
class Plan:
    """Attributes:
      annotations: one per kept image, train and val, sorted by ImageID.
      skipped: (ImageID, reason) of images left out because of bad annotation rows.
      val_boxes, val_labels: the val images' ground truth in official columns
        (boxes of the level's classes and their descendants; labels of every
        class related to the level by Subcategory), unexpanded.
      stats: counts describing the planning (filtered images, repeat factors).
    """

    annotations: list[ImageAnnotation]
    skipped: list[tuple[str, str]]
    val_boxes: pd.DataFrame
    val_labels: pd.DataFrame
    stats: dict


def related_classes(level: Level, hierarchy: Hierarchy) -> set[str]:
    """The level's classes with all their Subcategory ancestors and descendants.

    Image-level labels of these classes decide which of the level's classes are
    verified in an image once the official expansion has run (presence goes
    up, absence goes down).
    """
    out = set(level.classes)
    for mid in level.classes:
        if mid in hierarchy:
            out |= hierarchy.ancestors(mid) | hierarchy.descendants(mid)
    return out


def _mask(cat: pd.Series, wanted: set[str]) -> np.ndarray:
    categories = cat.cat.categories
    keep = np.fromiter((c in wanted for c in categories), dtype=bool, count=len(categories))
    codes = cat.cat.codes.to_numpy()
    return keep[codes] & (codes >= 0)


def plan_level(
    boxes: pd.DataFrame,
    labels: pd.DataFrame,
    level: Level,
    hierarchy: Hierarchy,
    config: PlanConfig,
    reports: tuple[ReadReport, ...] = (),
) -> Plan:
    """Plans one level.

    Args:
      boxes, labels: frames from oid.annotations.read_boxes / read_image_labels.
      level: the level (its classes in level-index order).
      hierarchy: for the labels and ground truth related to the level.
      config: split, repeat factor and filtering settings.
      reports: the readers' reports; images with a skipped row are left out
        whole (a partly annotated image would teach the model that an object
        is background) and listed in `skipped`.
    """
    level_index = level.class_index()
    skipped_images = _skipped_images(reports)
    copies, copy_stats = (ancestor_copies(boxes, level, hierarchy, skipped_images)
                          if config.boxes_to_ancestors else (None, None))
    runs = _ImageBoxes.of_level(boxes, level, skipped_images, copies)
    is_val = oid_split.val_mask(runs.image_ids, config.val_fraction, config.split_salt)
    related = related_classes(level, hierarchy)
    image_labels = _image_labels(labels, related, set(runs.image_ids), level_index)
    keep, filtered, dominant_stats = _dominant_filter(runs, is_val, config)
    stats: dict = {"level_images": int(len(runs.image_ids)), "filtered": filtered,
                   **dominant_stats}
    if copy_stats is not None:
        stats["boxes_to_ancestors"] = {**copy_stats, **_copies_per_split(runs, is_val & keep,
                                                                         ~is_val & keep)}
    repeat = _class_repeat_factors(runs, np.flatnonzero(keep & ~is_val), config.repeat_threshold)
    annotations = [_annotation(runs, i, bool(is_val[i]), repeat, image_labels, level_index)
                   for i in np.flatnonzero(keep)]
    stats["repeat_factor"] = _repeat_factor_stats(annotations, config.repeat_threshold)
    val_boxes, val_labels = _val_ground_truth(boxes, labels, annotations, level, hierarchy,
                                              related)
    return Plan(annotations, sorted(skipped_images.items()), val_boxes, val_labels, stats)


def _skipped_images(reports: tuple[ReadReport, ...]) -> dict[str, str]:
    """ImageID -> reason of every image with a skipped row, the first report's reason first."""
    skipped: dict[str, str] = {}
    for report in reports:
        for image_id, reason in report.skipped_images.items():
            skipped.setdefault(image_id, reason)
    return skipped


@dataclasses.dataclass(frozen=True)
class _ImageBoxes:
    """The level's boxes, grouped by image: I images sorted by ImageID, B boxes.

    Image i's boxes are rows [starts[i], ends[i]) of the box arrays: the annotated
    boxes in file order, then the ancestor copies (ancestor_copies) in file order.

    Attributes:
      image_ids: [I] str ImageIDs.
      starts, ends: [I] int64.
      mids: [B] str LabelName of each box.
      coords: [B, 4] float64 (ymin, xmin, ymax, xmax), normalized.
      flags: [B, 4] int64 (IsGroupOf, IsOccluded, IsTruncated, IsDepiction).
      is_copy: [B] bool, the box is a descendant's box copied to a class of the level.
    """

    image_ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    mids: np.ndarray
    coords: np.ndarray
    flags: np.ndarray
    is_copy: np.ndarray

    @staticmethod
    def of_level(boxes: pd.DataFrame, level: Level, skipped_images: dict[str, str],
                 copies: pd.DataFrame | None = None) -> _ImageBoxes:
        """The boxes of the level's classes, without the images in `skipped_images`,
        followed by `copies` (ancestor_copies' frame, already without those images)."""
        lb = boxes.loc[_mask(boxes["LabelName"], set(level.classes))]
        if skipped_images:
            lb = lb.loc[~_mask(lb["ImageID"], set(skipped_images))]
        parts = [lb] if copies is None else [lb, copies]
        image_ids = np.concatenate([np.asarray(f["ImageID"].astype(str), dtype=object)
                                    for f in parts])
        mids = np.concatenate([np.asarray(f["LabelName"].astype(str), dtype=object)
                               for f in parts])
        coords = np.concatenate([f[list(_COORDS)].to_numpy(np.float64).reshape(-1, 4)
                                 for f in parts])
        flags = np.concatenate([f[list(_FLAGS)].to_numpy(np.int64).reshape(-1, 4)
                                for f in parts])
        is_copy = np.concatenate([np.full(len(f), k > 0) for k, f in enumerate(parts)])
        order = np.argsort(image_ids, kind="stable")
        image_ids, mids, coords, flags, is_copy = (
            a[order] for a in (image_ids, mids, coords, flags, is_copy))
        starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]]) \
            if len(image_ids) else np.empty(0, np.int64)
        ends = np.r_[starts[1:], len(image_ids)].astype(np.int64)
        return _ImageBoxes(image_ids[starts], starts, ends, mids, coords, flags, is_copy)


_COORDS = ("YMin", "XMin", "YMax", "XMax")
_FLAGS = ("IsGroupOf", "IsOccluded", "IsTruncated", "IsDepiction")
_PLACE = ("ImageID", "XMin", "XMax", "YMin", "YMax")


def nearest_ancestors(level: Level, hierarchy: Hierarchy,
                      own_boxes: dict[str, int]) -> dict[str, str]:
    """MID of each class outside the level that has a Subcategory ancestor in it -> the one
    of those ancestors its boxes are copied to.

    That is the nearest such ancestor (one that is no ancestor of another of them: a Square
    box goes to Quadrilateral rather than Polygon, and prediction copies a Quadrilateral
    detection to Polygon). Between ancestors equally near (Star is a Polygon and a Symbol),
    the one with fewer boxes of its own in `own_boxes` (MID -> boxes), which gains most;
    then the smaller MID. Classes missing from the hierarchy have no ancestors.
    """
    in_level = set(level.classes)
    out = {}
    for mid in sorted(hierarchy.classes - in_level):
        held = hierarchy.ancestors(mid) & in_level
        if not held:
            continue
        nearest = [a for a in held if not any(a in hierarchy.ancestors(b) for b in held)]
        out[mid] = min(nearest, key=lambda a: (own_boxes.get(a, 0), a))
    return out


def ancestor_copies(boxes: pd.DataFrame, level: Level, hierarchy: Hierarchy,
                    skipped_images: dict[str, str]) -> tuple[pd.DataFrame, dict]:
    """The boxes of classes outside the level, copied to the level's nearest ancestor of
    their class (nearest_ancestors), one box per place.

    The challenge metric counts a descendant's box as a box of every ancestor, so a parent
    class in a level is scored on boxes that the level's records would otherwise not hold
    (Symbol has no box of its own in the demo; Star boxes are Symbol boxes). A copy keeps
    the coordinates and the IsGroupOf, IsOccluded, IsTruncated, IsDepiction flags of its box.

    One box per place (ImageID and exact coordinates): the target assignment
    (boxes/assign.py) trains one class per anchor, so a second class at the same place
    would be taught as background where the first one wins. Hence no copy is made where the
    level already has a box (its own annotation of the parent at that place, or of a
    descendant that the level holds: a Diamond box in a level with Diamond keeps Diamond),
    and of several copies at one place the first of nearest_ancestors' order is kept.

    Args:
      boxes: the training boxes (oid.annotations.read_boxes; categorical ImageID, LabelName).
      skipped_images: images left out whole; no copies are made in them.

    Returns:
      (copies with columns ImageID, LabelName (str), YMin, XMin, YMax, XMax and the four
      flags, in file order of their boxes; stats: the class -> ancestor map used, copies
      not made because the place already held a box of the level, and boxes of the level's
      own classes under another class of the level, which train as themselves).
    """
    own = {str(m): int(n) for m, n in boxes["LabelName"].value_counts().items() if n}
    target = nearest_ancestors(level, hierarchy, own)
    in_level = set(level.classes)
    under_level_class = sum(n for m, n in own.items() if m in in_level and m in hierarchy
                            and hierarchy.ancestors(m) & in_level)
    stats = {"copied_to": dict(sorted((m, a) for m, a in target.items() if m in own)),
             "not_copied_place_taken": 0, "level_boxes_under_a_level_class": under_level_class}
    columns = ["ImageID", "LabelName", *_COORDS, *_FLAGS]
    keep = ~_mask(boxes["ImageID"], set(skipped_images)) if skipped_images \
        else np.ones(len(boxes), bool)
    src = boxes.loc[_mask(boxes["LabelName"], set(target)) & keep]
    if not len(src):
        return pd.DataFrame({c: [] for c in columns}), stats
    originals = boxes.loc[_mask(boxes["LabelName"], in_level) & keep]
    to = src["LabelName"].astype(str).map(target)
    # Originals first, then the copies in order of preference: duplicated() keeps the first.
    places = pd.concat([
        pd.DataFrame({"image": originals["ImageID"].cat.codes.to_numpy(),
                      **{c: originals[c].to_numpy() for c in _PLACE[1:]},
                      "pref": -1, "row": -1}),
        pd.DataFrame({"image": src["ImageID"].cat.codes.to_numpy(),
                      **{c: src[c].to_numpy() for c in _PLACE[1:]},
                      "pref": to.map(own).fillna(0).to_numpy(np.int64),
                      "mid": to.to_numpy(), "row": np.arange(len(src))}),
    ], ignore_index=True)
    places = places.sort_values(["pref", "mid", "row"], kind="stable", na_position="first")
    taken = places.duplicated(subset=["image", *_PLACE[1:]], keep="first")
    rows = np.sort(places.loc[~taken & (places["row"] >= 0), "row"].to_numpy(np.int64))
    stats["not_copied_place_taken"] = int(len(src) - len(rows))
    kept = src.iloc[rows]
    copies = pd.DataFrame({"ImageID": kept["ImageID"].astype(str).to_numpy(),
                           "LabelName": to.iloc[rows].to_numpy(),
                           **{c: kept[c].to_numpy() for c in (*_COORDS, *_FLAGS)}})
    return copies, stats


def _copies_per_split(runs: _ImageBoxes, val: np.ndarray, train: np.ndarray) -> dict:
    """Copies written per split and per class, and images in the level only through copies.

    val, train: [I] bool masks of the images written to each split.
    """
    per_image = np.add.reduceat(runs.is_copy.astype(np.int64), runs.starts) \
        if len(runs.starts) else np.zeros(0, np.int64)
    only = per_image == (runs.ends - runs.starts)
    in_split = {"train": train, "val": val}
    written = np.repeat(train | val, runs.ends - runs.starts) & runs.is_copy
    return {
        "added": {s: int(per_image[m].sum()) for s, m in in_split.items()},
        "added_per_class": dict(sorted(Counter(runs.mids[written]).items())),
        "images_only_through_copies": {s: int((only & m).sum()) for s, m in in_split.items()},
    }


def _image_labels(labels: pd.DataFrame, related: set[str], image_ids: set[str],
                  level_index: dict[str, int]) -> dict[str, list[tuple[str, int, float]]]:
    """ImageID -> (MID, level index or -1, confidence) of its labels of related classes."""
    lab = labels.loc[_mask(labels["LabelName"], related) & _mask(labels["ImageID"], image_ids)]
    out: dict[str, list[tuple[str, int, float]]] = {}
    for iid, mid, conf in zip(lab["ImageID"].astype(str), lab["LabelName"].astype(str),
                              lab["Confidence"].to_numpy(np.float64), strict=True):
        out.setdefault(iid, []).append((mid, level_index.get(mid, -1), float(conf)))
    return out


def _dominant_filter(runs: _ImageBoxes, is_val: np.ndarray,
                     config: PlanConfig) -> tuple[np.ndarray, dict, dict]:
    """The compressed level: leaves out training images crowded by the dominant classes.

    Args:
      runs: the level's boxes by image (I images).
      is_val: [I] bool, the val side (never filtered: the metric sees every image).
    Returns:
      ([I] bool images kept, {DOMINANT_FILTERED: count} or {} when nothing is
      filtered, the stats of the filter: {} when it is off).
    """
    keep = np.ones(len(runs.image_ids), dtype=bool)
    if config.max_dominant_fraction is None:
        return keep, {}, {}
    if config.dominant_classes:
        dominant = set(config.dominant_classes)
    else:
        counts = Counter(runs.mids)
        dominant = {m for m, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                    [: config.dominant_top_k]}
    stats = {"dominant_classes": sorted(dominant),
             "max_dominant_fraction": config.max_dominant_fraction}
    if not dominant:
        return keep, {}, stats
    is_dom = np.fromiter((m in dominant for m in runs.mids), dtype=bool, count=len(runs.mids))
    dom_share = np.add.reduceat(is_dom.astype(np.float64), runs.starts) \
        / (runs.ends - runs.starts) if len(runs.starts) else np.empty(0)
    keep &= is_val | (dom_share <= config.max_dominant_fraction)
    return keep, {DOMINANT_FILTERED: int((~keep).sum())}, stats


def _class_repeat_factors(runs: _ImageBoxes, train: np.ndarray,
                          threshold: float) -> dict[str, float]:
    """MID -> LVIS repeat factor max(1, sqrt(t / f_c)) over the training images `train`.

    train: [T] indices into runs.image_ids. f_c is the share of them with a box
    of class c. A threshold <= 0 turns repeats off (an empty mapping).
    """
    class_images = Counter()
    for i in train:
        class_images.update(set(runs.mids[runs.starts[i]:runs.ends[i]]))
    n_train = max(len(train), 1)
    return {m: max(1.0, math.sqrt(threshold / (n / n_train)))
            for m, n in class_images.items()} if threshold > 0 else {}


def _annotation(runs: _ImageBoxes, i: int, is_val: bool, repeat: dict[str, float],
                image_labels: dict[str, list[tuple[str, int, float]]],
                level_index: dict[str, int]) -> ImageAnnotation:
    """The annotation of image i; a training image repeats as its rarest class asks."""
    s, e = runs.starts[i], runs.ends[i]
    iid = str(runs.image_ids[i])
    image_mids = [str(m) for m in runs.mids[s:e]]
    f = runs.flags[s:e]
    split = "val" if is_val else "train"
    factor = max((repeat.get(m, 1.0) for m in image_mids), default=1.0) \
        if split == "train" else 1.0
    return ImageAnnotation(
        image_id=iid, split=split, boxes=runs.coords[s:e].tolist(),
        labels=[level_index[m] for m in image_mids], mids=image_mids,
        group_of=f[:, 0].tolist(), occluded=f[:, 1].tolist(), truncated=f[:, 2].tolist(),
        depiction=f[:, 3].tolist(), image_labels=sorted(image_labels.get(iid, [])),
        repeat_factor=factor)


def _repeat_factor_stats(annotations: list[ImageAnnotation], threshold: float) -> dict:
    """Mean, max and count above 1 of the training images' repeat factors."""
    factors = np.array([a.repeat_factor for a in annotations if a.split == "train"])
    return {
        "threshold": threshold,
        "mean": float(factors.mean()) if len(factors) else 1.0,
        "max": float(factors.max()) if len(factors) else 1.0,
        "images_above_1": int((factors > 1).sum()),
    }


def _val_ground_truth(boxes: pd.DataFrame, labels: pd.DataFrame,
                      annotations: list[ImageAnnotation], level: Level, hierarchy: Hierarchy,
                      related: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The val images' boxes and labels in official columns, for `python -m oid.metric`.

    Boxes of the level's classes and their descendants (the metric expands them
    to the level's classes); labels of every related class. Unexpanded.
    """
    val_ids = {a.image_id for a in annotations if a.split == "val"}
    gt_classes = set(level.classes)
    for mid in level.classes:
        if mid in hierarchy:
            gt_classes |= hierarchy.descendants(mid)
    val_boxes = boxes.loc[_mask(boxes["ImageID"], val_ids) & _mask(boxes["LabelName"], gt_classes)]
    val_labels = labels.loc[_mask(labels["ImageID"], val_ids) & _mask(labels["LabelName"], related)]
    return val_boxes, val_labels
