"""Invariants of oid.metric on random ground truth and detections (hypothesis).

Coordinates come from a coarse grid and scores from a short list, so exact IoUs
of 0.5, ties between boxes and equal scores happen often.
"""

from __future__ import annotations

import collections
import random
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from oid import metric
from oid.classes import ClassTable
from oid.hierarchy import Hierarchy
from oid.metric import MAX_DETECTIONS, MIN_SCORE, OIDChallengeEvaluator, average_precision

# A -> {B, C}, B -> D, C -> D (D has two parents); E on its own.
A, B, C, D, E = "/m/0a", "/m/0b", "/m/0c", "/m/0d", "/m/0e"
CLASSES = ClassTable((A, B, C, D, E), ("A", "B", "C", "D", "E"))
HIERARCHY = Hierarchy.from_json({"LabelName": "/m/0bl9f", "Subcategory": [
    {"LabelName": A, "Subcategory": [{"LabelName": B, "Subcategory": [{"LabelName": D}]},
                                     {"LabelName": C, "Subcategory": [{"LabelName": D}]}]},
    {"LabelName": E}]})
SETTINGS = settings(max_examples=50, deadline=None)

coord = st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.8, 1.0])
score = st.sampled_from([-12.0, -10.0, -1.0, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
mid = st.sampled_from(CLASSES.mids)


@st.composite
def box(draw):
    """(ymin, xmin, ymax, xmax); sometimes degenerate."""
    y = sorted((draw(coord), draw(coord)))
    x = sorted((draw(coord), draw(coord)))
    return (y[0], x[0], y[1], x[1])


image_gt = st.fixed_dictionaries({
    "boxes": st.lists(st.tuples(mid, box(), st.booleans()), max_size=6),
    "labels": st.lists(st.tuples(mid, st.sampled_from([0, 1])), max_size=4),
})


@st.composite
def case(draw):
    """Ground truth of 1-4 images and detections on them and on one image without GT.

    Most detections copy a ground-truth box (its class or an ancestor's) with
    some coordinates moved along the grid, so that matches, duplicates,
    boxes inside group-of boxes and exact IoUs of 0.5 are common.
    """
    images = draw(st.lists(image_gt, min_size=1, max_size=4))
    gt = {f"img{i}": g for i, g in enumerate(images)}
    ids = [*gt, "stranger"]
    targets = [(image, m, b) for image, g in gt.items() for m, b, _ in g["boxes"]]
    dets = []
    for _ in range(draw(st.integers(0, 40))):
        if targets and draw(st.integers(0, 3)):
            image, m, b = draw(st.sampled_from(targets))
            m = draw(st.sampled_from(sorted({m, *HIERARCHY.ancestors(m)})))
            b = list(b)
            for k in draw(st.lists(st.integers(0, 3), max_size=2)):
                b[k] = draw(coord)
            b = (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
        else:
            image, m, b = draw(st.sampled_from(ids)), draw(mid), draw(box())
        dets.append((image, m, b, draw(score)))
    return gt, dets


def evaluate(gt: dict, dets: list, batched: bool = False):
    ev = OIDChallengeEvaluator(CLASSES, HIERARCHY)
    for image, g in gt.items():
        ev.add_ground_truth(image, [b for _, b, _ in g["boxes"]], [m for m, _, _ in g["boxes"]],
                            [grp for _, _, grp in g["boxes"]],
                            image_labels=[m for m, _ in g["labels"]],
                            image_label_confidences=[c for _, c in g["labels"]])
    if batched:
        if dets:
            ev.add_detections([d[0] for d in dets], [d[2] for d in dets], [d[3] for d in dets],
                              [d[1] for d in dets])
    else:
        for image, m, b, s in dets:
            ev.add_detections(image, [b], [s], [m])
    return ev.evaluate()


def expanded(gt: dict):
    """(boxes by (image, class), verified classes by image), straight from OID_METRIC.md §2-3."""
    boxes = collections.defaultdict(list)
    verified = collections.defaultdict(set)
    for image, g in gt.items():
        for m, b, group in g["boxes"]:
            for c in (m, *sorted(HIERARCHY.ancestors(m))):
                boxes[image, c].append((b, group))
                verified[image].add(c)
        for m, conf in g["labels"]:
            relatives = HIERARCHY.ancestors(m) if conf else HIERARCHY.descendants(m)
            verified[image] |= {m, *relatives}
    return boxes, verified


@SETTINGS
@given(case(), st.randoms(use_true_random=False))
def test_permuting_images_and_detections_changes_nothing(data, rnd: random.Random):
    gt, dets = data
    reference = evaluate(gt, dets)
    images = list(gt.items())
    rnd.shuffle(images)
    shuffled = list(dets)
    rnd.shuffle(shuffled)
    assert evaluate(dict(images), shuffled) == reference
    assert evaluate(gt, shuffled, batched=True) == reference


@st.composite
def disjoint_gt(draw):
    """Images whose boxes lie in distinct cells of a 4 x 4 grid: no two boxes overlap."""
    gt = {}
    for i in range(draw(st.integers(1, 4))):
        cells = draw(st.lists(st.integers(0, 15), unique=True, max_size=6))
        boxes = []
        for cell in cells:
            y, x = divmod(cell, 4)
            inset = draw(st.sampled_from([0.0, 0.05]))
            boxes.append((draw(mid), (y / 4 + inset, x / 4, (y + 1) / 4 - inset, (x + 1) / 4),
                          draw(st.booleans())))
        labels = draw(st.lists(st.tuples(mid, st.sampled_from([0, 1])), max_size=3))
        gt[f"img{i}"] = {"boxes": boxes, "labels": labels}
    return gt


@SETTINGS
@given(disjoint_gt(), st.lists(st.sampled_from([0.1, 0.5, 0.9, 1.0, 7.0]), min_size=1))
def test_perfect_submission_scores_one(gt, scores):
    boxes, _ = expanded(gt)
    dets = [(image, c, b, scores[k % len(scores)])
            for k, ((image, c), bs) in enumerate(sorted(boxes.items())) for b, _ in bs]
    result = evaluate(gt, dets)
    if not boxes:
        assert result.mean_ap is None
        return
    assert result.mean_ap == 1.0
    assert all(r.ap == 1.0 for r in result.per_class.values() if r.num_gt)


@SETTINGS
@given(case(), st.lists(st.tuples(st.integers(0, 5), mid, box(), score), min_size=1, max_size=10))
def test_detection_of_unverified_class_changes_nothing(data, extra):
    gt, dets = data
    _, verified = expanded(gt)
    images = [*gt, "stranger"]
    unverified = [(images[i % len(images)], m, b, s) for i, m, b, s in extra
                  if m not in verified[images[i % len(images)]]]
    assert evaluate(gt, dets + unverified) == evaluate(gt, dets)


@SETTINGS
@given(case())
def test_ap_is_in_unit_interval(data):
    result = evaluate(*data)
    for r in result.per_class.values():
        assert (r.ap is None) == (r.num_gt == 0)
        assert r.ap is None or 0.0 <= r.ap <= 1.0
    assert result.mean_ap is None or 0.0 <= result.mean_ap <= 1.0


def straightforward(gt: dict, dets: list) -> dict[str, float]:
    """OID_METRIC.md §4-§8 as a plain loop over images and classes, like the reference.

    Ties follow oid.metric's documented rule: matching visits equal scores in
    (ymin, xmin, ymax, xmax) order, and AP ranks false positives first.
    """
    boxes, verified = expanded(gt)
    entries = collections.defaultdict(list)
    for image in gt:
        for c in verified[image]:
            mine = sorted((d for d in dets if d[0] == image and d[1] == c
                           and d[2][0] < d[2][2] and d[2][1] < d[2][3] and d[3] > MIN_SCORE),
                          key=lambda d: (-d[3], d[2]))[:MAX_DETECTIONS]
            single = [b for b, group in boxes[image, c] if not group]
            groups = [b for b, group in boxes[image, c] if group]
            if not single and not groups:
                entries[c] += [(d[3], False) for d in mine]
                continue
            taken, tp = [False] * len(single), [False] * len(mine)
            for k, d in enumerate(mine):
                if single:
                    overlaps = [overlap(d[2], g, ioa=False) for g in single]
                    j = overlaps.index(max(overlaps))
                    if overlaps[j] >= 0.5 and not taken[j]:
                        tp[k] = taken[j] = True
            best = [0.0] * len(groups)
            for k, d in enumerate(mine):
                absorbed = False
                if groups and not tp[k]:
                    overlaps = [overlap(d[2], g, ioa=True) for g in groups]
                    j = overlaps.index(max(overlaps))
                    if overlaps[j] >= 0.5:
                        absorbed = True
                        best[j] = max(best[j], d[3])
                if not absorbed:
                    entries[c].append((d[3], tp[k]))
            entries[c] += [(s, True) for s in best if s > 0]
    num_gt = collections.Counter(c for (_, c), bs in boxes.items() for _ in bs)
    return {c: average_precision([s for s, _ in entries[c]], [t for _, t in entries[c]], n)
            for c, n in num_gt.items()}


def overlap(d, g, ioa: bool) -> float:
    height = max(0.0, min(d[2], g[2]) - max(d[0], g[0]))
    width = max(0.0, min(d[3], g[3]) - max(d[1], g[1]))
    inter = height * width
    area = (d[2] - d[0]) * (d[3] - d[1])
    return inter / area if ioa else inter / (area + (g[2] - g[0]) * (g[3] - g[1]) - inter)


@SETTINGS
@given(case())
def test_vectorized_equals_straightforward_loop(data):
    gt, dets = data
    with mock.patch.object(metric, "_PAIR_BUDGET", 3):  # many small chunks of pairs
        result = evaluate(gt, dets)
    expected = straightforward(gt, dets)
    got = {m: r.ap for m, r in result.per_class.items() if r.ap is not None}
    assert got.keys() == expected.keys()
    for m in got:
        assert abs(got[m] - expected[m]) <= 1e-12, m
    if expected:
        assert abs(result.mean_ap - np.mean(list(expected.values()))) <= 1e-12
