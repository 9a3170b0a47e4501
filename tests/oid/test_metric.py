"""oid.metric: the worked examples and every edge case of OID_METRIC.md, golden values
from the reference evaluator, the command, and bad submissions.

Coordinates in the scenarios below are written (x0, y0, x1, y1) like a Kaggle
PredictionString; the helpers turn them into the evaluator's (ymin, xmin, ymax,
xmax) and the box CSV's XMin,XMax,YMin,YMax.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random

import numpy as np
import pytest

from oid.classes import ClassTable
from oid.errors import InputFileError
from oid.hierarchy import Hierarchy
from oid.metric import (
    ClassResult,
    OIDChallengeEvaluator,
    average_precision,
    main,
)
from oid.submission import (
    BAD_NUMBER,
    BAD_TOKEN_COUNT,
    COORD_OUT_OF_RANGE,
    DUPLICATE_IMAGE,
    MALFORMED_ROW,
    MIN_GT_MAX,
    SCORE_OUT_OF_RANGE,
    UNKNOWN_MID,
    read_submission,
)

ANIMAL, DOG, CAT, TOY, TEDDY = "/m/0jbk", "/m/0bt9lr", "/m/01yrx", "/m/0138tl", "/m/0kmg4"
CLASSES = ClassTable((ANIMAL, DOG, CAT, TOY, TEDDY), ("Animal", "Dog", "Cat", "Toy", "Teddy bear"))
# Animal -> {Dog, Cat, Teddy bear}; Toy -> Teddy bear (two parents).
HIERARCHY_JSON = {"LabelName": "/m/0bl9f", "Subcategory": [
    {"LabelName": ANIMAL, "Subcategory": [{"LabelName": DOG}, {"LabelName": CAT},
                                          {"LabelName": TEDDY}]},
    {"LabelName": TOY, "Subcategory": [{"LabelName": TEDDY}]},
]}
HIERARCHY = Hierarchy.from_json(HIERARCHY_JSON)
BOX_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
              "IsGroupOf,IsDepiction,IsInside")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Ground truth, predictions and the expected result (unexpanded GT, as downloaded).

    boxes: (image, MID, (x0, y0, x1, y1), is_group_of); labels: (image, MID, confidence);
    dets: (image, MID, score, (x0, y0, x1, y1)); ap: expected AP of every class with
    ground truth (classes not listed must have none); mean_ap: expected mAP.
    """

    boxes: tuple = ()
    labels: tuple = ()
    dets: tuple = ()
    ap: dict = dataclasses.field(default_factory=dict)
    mean_ap: float | None = None


def run_api(s: Scenario, hierarchy: Hierarchy | None = HIERARCHY):
    ev = OIDChallengeEvaluator(CLASSES, hierarchy)
    for image, mid, (x0, y0, x1, y1), group in s.boxes:
        ev.add_ground_truth(image, [[y0, x0, y1, x1]], [mid], [group])
    for image, mid, conf in s.labels:
        ev.add_image_labels(image, [mid], [conf])
    by_image: dict[str, list] = {}
    for image, mid, score, box in s.dets:
        by_image.setdefault(image, []).append((mid, score, box))
    for image, dets in by_image.items():
        ev.add_detections(image, [[y0, x0, y1, x1] for _, _, (x0, y0, x1, y1) in dets],
                          [d[1] for d in dets], [d[0] for d in dets])
    return ev.evaluate()


def write_files(s: Scenario, directory) -> dict[str, str]:
    """The scenario as the command's input files (official CSVs, Kaggle submission)."""
    paths = {k: os.path.join(directory, name) for k, name in (
        ("boxes", "boxes.csv"), ("labels", "labels.csv"), ("hierarchy", "hierarchy.json"),
        ("classes", "classes.csv"), ("predictions", "predictions.csv"))}
    with open(paths["boxes"], "w") as f:
        f.write(BOX_HEADER + "\n")
        for image, mid, (x0, y0, x1, y1), group in s.boxes:
            f.write(f"{image},xclick,{mid},1,{x0},{x1},{y0},{y1},0,0,{int(group)},0,0\n")
    with open(paths["labels"], "w") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
        f.writelines(f"{image},verification,{mid},{conf}\n" for image, mid, conf in s.labels)
    with open(paths["hierarchy"], "w") as f:
        json.dump(HIERARCHY_JSON, f)
    with open(paths["classes"], "w") as f:
        f.write(CLASSES.to_csv())
    rows: dict[str, list[str]] = {}
    for image, mid, score, (x0, y0, x1, y1) in s.dets:
        rows.setdefault(image, []).append(f"{mid} {score} {x0} {y0} {x1} {y1}")
    with open(paths["predictions"], "w") as f:
        f.write("ImageId,PredictionString\n")
        f.writelines(f"{image},{' '.join(parts)}\n" for image, parts in rows.items())
    return paths


def run_cli(paths: dict[str, str], capsys, *extra: str) -> dict:
    argv = [a for k in ("boxes", "labels", "hierarchy", "classes", "predictions")
            for a in (f"--{k}", paths[k])]
    assert main(argv + list(extra)) == 0
    return json.loads(capsys.readouterr().out)


def check(s: Scenario, tmp_path, capsys, api_only: bool = False) -> None:
    """The evaluator API and the command agree with the expected values."""
    result = run_api(s)
    got = {m: r.ap for m, r in result.per_class.items() if r.ap is not None}
    assert got == pytest.approx(s.ap, abs=1e-12)
    assert result.mean_ap == pytest.approx(s.mean_ap, abs=1e-12)
    if not api_only:
        out = run_cli(write_files(s, tmp_path), capsys)
        assert out["mAP"] == pytest.approx(s.mean_ap, abs=1e-12)
        assert {m: r["ap"] for m, r in out["per_class"].items() if r["ap"] is not None} \
            == pytest.approx(s.ap, abs=1e-12)


# -- OID_METRIC.md §10: the worked examples --------------------------------------------
# The expected values of these and of every scenario below are worked out by hand
# and were confirmed, all of them exactly, with the reference evaluator (see GOLDEN
# for the version) on the files that write_files writes; the reference is no test
# dependency.

B1 = (0.1, 0.1, 0.4, 0.4)
WORKED_EXAMPLE = Scenario(
    boxes=(("A", DOG, B1, False), ("A", DOG, (0.5, 0.5, 1.0, 1.0), True)),
    labels=(("A", DOG, 1), ("B", DOG, 0)),
    dets=(("A", DOG, 0.90, (0.10, 0.10, 0.40, 0.40)),
          ("A", DOG, 0.80, (0.12, 0.12, 0.42, 0.42)),
          ("A", DOG, 0.70, (0.60, 0.60, 0.70, 0.70)),
          ("A", DOG, 0.60, (0.80, 0.80, 0.90, 0.90)),
          ("A", CAT, 0.95, (0.10, 0.10, 0.40, 0.40)),
          ("A", ANIMAL, 0.85, (0.10, 0.10, 0.40, 0.40)),
          ("B", DOG, 0.75, (0.20, 0.20, 0.50, 0.50)),
          ("B", ANIMAL, 0.50, (0.20, 0.20, 0.50, 0.50))),
    ap={DOG: 0.75, ANIMAL: 0.5}, mean_ap=0.625)

# Dog box n1 inside Dog group-of box G in image A; a Dog box in image B.
SECOND_EXAMPLE_GT = dict(boxes=(("A", DOG, (0.6, 0.6, 0.8, 0.8), False),
                                ("A", DOG, (0.5, 0.5, 1.0, 1.0), True),
                                ("B", DOG, (0.0, 0.0, 0.5, 0.5), False)))
DUP_IN_GROUP = Scenario(
    **SECOND_EXAMPLE_GT,
    dets=(("A", DOG, 0.9, (0.6, 0.6, 0.8, 0.8)),  # TP on n1
          ("A", DOG, 0.8, (0.61, 0.61, 0.81, 0.81)),  # duplicate of n1, inside G: absorbed
          ("A", DOG, 0.0, (0.7, 0.7, 0.9, 0.9)),  # inside G: absorbed
          ("B", DOG, 0.7, (0.0, 0.0, 0.5, 0.25))),  # IoU exactly 0.5: TP
    ap={DOG: 1.0, ANIMAL: 0.0}, mean_ap=0.5)
ZERO_SCORE_IN_GROUP = Scenario(
    **SECOND_EXAMPLE_GT,
    dets=(("A", DOG, 0.9, (0.6, 0.6, 0.8, 0.8)),
          ("A", DOG, 0.0, (0.7, 0.7, 0.9, 0.9)),  # G absorbs only a score of 0: no TP
          ("B", DOG, 0.7, (0.0, 0.0, 0.5, 0.2499))),  # IoU 0.4998: FP
    ap={DOG: 1 / 3, ANIMAL: 0.0}, mean_ap=1 / 6)


def test_worked_example_625(tmp_path, capsys):
    check(WORKED_EXAMPLE, tmp_path, capsys)
    result = run_api(WORKED_EXAMPLE)
    assert result.per_class[DOG].num_gt == 2 and result.per_class[ANIMAL].num_gt == 2
    assert result.per_class[CAT].ap is None and result.per_class[CAT].num_gt == 0
    assert result.num_images == 2


def test_dup_in_group(tmp_path, capsys):
    check(DUP_IN_GROUP, tmp_path, capsys)
    assert run_api(DUP_IN_GROUP).per_class[DOG].num_gt == 3


def test_zero_score_in_group(tmp_path, capsys):
    check(ZERO_SCORE_IN_GROUP, tmp_path, capsys)


# -- OID_METRIC.md §9: one test per row of the edge-case table -------------------------

BOX = (0.1, 0.1, 0.4, 0.4)
FAR = (0.6, 0.0, 0.9, 0.3)  # no overlap with BOX

SCENARIOS = {
    # A Cat detection where Cat is not verified would be an FP ranked first.
    "unverified_class_ignored": Scenario(
        boxes=(("i1", DOG, BOX, False), ("i2", CAT, BOX, False)),
        dets=(("i1", DOG, 0.9, BOX), ("i1", ANIMAL, 0.8, BOX), ("i1", CAT, 0.95, BOX),
              ("i2", CAT, 0.7, BOX), ("i2", ANIMAL, 0.6, BOX)),
        ap={DOG: 1.0, CAT: 1.0, ANIMAL: 1.0}, mean_ap=1.0),
    "verified_absent_is_fp": Scenario(
        boxes=(("i1", CAT, BOX, False),), labels=(("i2", CAT, 0),),
        dets=(("i2", CAT, 0.9, BOX), ("i1", CAT, 0.8, BOX), ("i1", ANIMAL, 0.7, BOX)),
        ap={CAT: 0.5, ANIMAL: 1.0}, mean_ap=0.75),
    # Absence propagates down: Animal absent makes Cat absent.
    "absent_via_ancestor_is_fp": Scenario(
        boxes=(("i1", CAT, BOX, False),), labels=(("i2", ANIMAL, 0),),
        dets=(("i2", CAT, 0.9, BOX), ("i1", CAT, 0.8, BOX), ("i1", ANIMAL, 0.7, BOX)),
        ap={CAT: 0.5, ANIMAL: 1.0}, mean_ap=0.75),
    "positive_label_without_boxes_is_fp": Scenario(
        boxes=(("i1", CAT, BOX, False),), labels=(("i2", CAT, 1),),
        dets=(("i2", CAT, 0.9, BOX), ("i1", CAT, 0.8, BOX), ("i1", ANIMAL, 0.7, BOX)),
        ap={CAT: 0.5, ANIMAL: 1.0}, mean_ap=0.75),
    # i1's box says "Animal": presence goes up only, so Dog is not verified there.
    "child_detection_where_only_parent_verified_ignored": Scenario(
        boxes=(("i1", ANIMAL, BOX, False), ("i3", DOG, BOX, False)),
        dets=(("i1", DOG, 0.9, BOX), ("i1", ANIMAL, 0.8, BOX), ("i3", ANIMAL, 0.7, BOX),
              ("i3", DOG, 0.5, BOX)),
        ap={DOG: 1.0, ANIMAL: 1.0}, mean_ap=1.0),
    # Dog absent says nothing about Animal: absence goes down only.
    "parent_detection_where_only_child_absent_ignored": Scenario(
        boxes=(("i1", DOG, BOX, False),), labels=(("i2", DOG, 0),),
        dets=(("i2", ANIMAL, 0.9, BOX), ("i1", DOG, 0.8, BOX), ("i1", ANIMAL, 0.7, BOX)),
        ap={DOG: 1.0, ANIMAL: 1.0}, mean_ap=1.0),
    "image_not_in_ground_truth_ignored": Scenario(
        boxes=(("i1", DOG, BOX, False),),
        dets=(("stranger", DOG, 0.99, BOX), ("i1", DOG, 0.5, BOX), ("i1", ANIMAL, 0.5, BOX)),
        ap={DOG: 1.0, ANIMAL: 1.0}, mean_ap=1.0),
    "gt_image_without_predictions_counts": Scenario(
        boxes=(("i1", DOG, BOX, False), ("i2", DOG, BOX, False)),
        dets=(("i1", DOG, 0.9, BOX), ("i1", ANIMAL, 0.9, BOX)),
        ap={DOG: 0.5, ANIMAL: 0.5}, mean_ap=0.5),
    "class_without_ground_truth_excluded": Scenario(
        boxes=(("i1", DOG, BOX, False),), labels=(("i1", CAT, 0),),
        dets=(("i1", DOG, 0.9, BOX), ("i1", ANIMAL, 0.8, BOX), ("i1", CAT, 0.7, FAR)),
        ap={DOG: 1.0, ANIMAL: 1.0}, mean_ap=1.0),
    # One TP at the max (0.6, ranked above the 0.5 FP); the absorbed 0.3 is no FP
    # (it would rank between the FP and the 0.2 TP).
    "several_in_group_one_tp_at_max": Scenario(
        boxes=(("i1", DOG, (0.5, 0.5, 1.0, 1.0), True), ("i2", DOG, BOX, False)),
        dets=(("i1", DOG, 0.3, (0.8, 0.8, 0.9, 0.9)), ("i1", DOG, 0.6, (0.6, 0.6, 0.7, 0.7)),
              ("i2", DOG, 0.5, FAR), ("i2", DOG, 0.2, BOX)),
        ap={DOG: 0.5 + 0.5 * 2 / 3, ANIMAL: 0.0}, mean_ap=(0.5 + 0.5 * 2 / 3) / 2),
    "tp_for_box_not_used_for_group": Scenario(
        boxes=(("i1", DOG, (0.6, 0.6, 0.8, 0.8), False), ("i1", DOG, (0.5, 0.5, 1.0, 1.0), True)),
        dets=(("i1", DOG, 0.9, (0.6, 0.6, 0.8, 0.8)),),
        ap={DOG: 0.5, ANIMAL: 0.0}, mean_ap=0.25),
    # 0.9 lies in G1 (IoA 0.69) and G2 (IoA 1): G2 takes it; 0.8 fills G1.
    "detection_in_two_groups_highest_ioa": Scenario(
        boxes=(("i1", DOG, (0.0, 0.0, 0.6, 0.6), True), ("i1", DOG, (0.3, 0.3, 1.0, 1.0), True)),
        dets=(("i1", DOG, 0.9, (0.35, 0.35, 0.65, 0.65)), ("i1", DOG, 0.8, (0.05, 0.05, 0.3, 0.3))),
        ap={DOG: 1.0, ANIMAL: 0.0}, mean_ap=0.5),
    # 0.9 lies wholly in both: the first (G1) takes it, and only G1; 0.8 lies in G1 only.
    "detection_in_two_groups_first_on_ties": Scenario(
        boxes=(("i1", DOG, (0.0, 0.0, 0.6, 0.6), True), ("i1", DOG, (0.3, 0.3, 1.0, 1.0), True)),
        dets=(("i1", DOG, 0.9, (0.35, 0.35, 0.55, 0.55)), ("i1", DOG, 0.8, (0.05, 0.05, 0.3, 0.3))),
        ap={DOG: 0.5, ANIMAL: 0.0}, mean_ap=0.25),
    "iou_exactly_half_matches": Scenario(
        boxes=(("i1", DOG, (0.0, 0.0, 0.5, 0.5), False),),
        dets=(("i1", DOG, 0.9, (0.0, 0.0, 0.5, 0.25)),),
        ap={DOG: 1.0, ANIMAL: 0.0}, mean_ap=0.5),
    "ioa_exactly_half_absorbed": Scenario(
        boxes=(("i1", DOG, (0.0, 0.0, 0.5, 0.5), True),),
        dets=(("i1", DOG, 0.9, (0.25, 0.0, 0.75, 0.5)),),
        ap={DOG: 1.0, ANIMAL: 0.0}, mean_ap=0.5),
    "degenerate_box_dropped": Scenario(
        boxes=(("i1", DOG, BOX, False),),
        dets=(("i1", DOG, 0.9, (0.2, 0.2, 0.2, 0.3)), ("i1", DOG, 0.85, (0.2, 0.3, 0.3, 0.3)),
              ("i1", DOG, 0.8, BOX)),
        ap={DOG: 1.0, ANIMAL: 0.0}, mean_ap=0.5),
    # Two identical rows: one TP, one FP at the same score (ranked FP first).
    "duplicate_detection_rows_each_count": Scenario(
        boxes=(("i1", DOG, BOX, False),),
        dets=(("i1", DOG, 0.9, BOX), ("i1", DOG, 0.9, BOX)),
        ap={DOG: 0.5, ANIMAL: 0.0}, mean_ap=0.25),
    # Our rule for equal scores (the reference leaves their order unspecified).
    "equal_scores_rank_false_positives_first": Scenario(
        boxes=(("i1", DOG, BOX, False), ("i2", DOG, BOX, False)),
        dets=(("i1", DOG, 0.5, BOX), ("i2", DOG, 0.5, FAR)),
        ap={DOG: 0.25, ANIMAL: 0.0}, mean_ap=0.125),
    # Only order matters; -0.5 in G gives no TP; -10 is dropped (else a TP on n2).
    "scores_outside_unit_interval": Scenario(
        boxes=(("i1", DOG, BOX, False), ("i1", DOG, (0.5, 0.5, 1.0, 1.0), True),
               ("i1", DOG, (0.0, 0.5, 0.3, 0.9), False)),
        dets=(("i1", DOG, 5.0, BOX), ("i1", DOG, -3.0, FAR), ("i1", DOG, -0.5, (0.6, 0.6, 0.7, 0.7)),
              ("i1", DOG, -10.0, (0.0, 0.5, 0.3, 0.9))),
        ap={DOG: 1 / 3, ANIMAL: 0.0}, mean_ap=1 / 6),
    # Two parents: the Teddy bear box is copied to Animal and to Toy, once each.
    "two_parents_each_ancestor_once": Scenario(
        boxes=(("i1", TEDDY, BOX, False),),
        dets=(("i1", TEDDY, 0.9, BOX), ("i1", ANIMAL, 0.8, BOX), ("i1", TOY, 0.7, BOX),
              ("i1", ANIMAL, 0.6, BOX)),
        ap={TEDDY: 1.0, ANIMAL: 1.0, TOY: 1.0}, mean_ap=1.0),
}
# Used through the evaluator API only: the command rejects coordinates outside [0, 1].
# Unclipped, the detection's IoU is 0.25/1.0; clipped it would be a perfect match.
OUTSIDE_UNIT = Scenario(boxes=(("i1", DOG, (0.5, 0.5, 1.0, 1.0), False),),
                        dets=(("i1", DOG, 0.9, (0.5, 0.5, 1.5, 1.5)),),
                        ap={DOG: 0.0, ANIMAL: 0.0}, mean_ap=0.0)


def test_unverified_class_ignored(tmp_path, capsys):
    check(SCENARIOS["unverified_class_ignored"], tmp_path, capsys)


def test_verified_absent_is_fp(tmp_path, capsys):
    check(SCENARIOS["verified_absent_is_fp"], tmp_path, capsys)


def test_absent_via_ancestor_is_fp(tmp_path, capsys):
    check(SCENARIOS["absent_via_ancestor_is_fp"], tmp_path, capsys)


def test_positive_label_without_boxes_is_fp(tmp_path, capsys):
    s = SCENARIOS["positive_label_without_boxes_is_fp"]
    check(s, tmp_path, capsys)
    assert run_api(s).per_class[CAT].num_gt == 1


def test_child_detection_where_only_parent_verified_ignored(tmp_path, capsys):
    check(SCENARIOS["child_detection_where_only_parent_verified_ignored"], tmp_path, capsys)


def test_parent_detection_where_only_child_absent_ignored(tmp_path, capsys):
    check(SCENARIOS["parent_detection_where_only_child_absent_ignored"], tmp_path, capsys)


def test_image_not_in_ground_truth_ignored(tmp_path, capsys):
    s = SCENARIOS["image_not_in_ground_truth_ignored"]
    check(s, tmp_path, capsys)
    assert run_api(s).num_images == 1


def test_gt_image_without_predictions_counts(tmp_path, capsys):
    check(SCENARIOS["gt_image_without_predictions_counts"], tmp_path, capsys)


def test_class_without_ground_truth_excluded(tmp_path, capsys):
    s = SCENARIOS["class_without_ground_truth_excluded"]
    check(s, tmp_path, capsys)
    assert run_api(s).per_class[CAT] == ClassResult(None, 0)


def test_several_in_group_one_tp_at_max(tmp_path, capsys):
    check(SCENARIOS["several_in_group_one_tp_at_max"], tmp_path, capsys)


def test_tp_for_box_not_used_for_group(tmp_path, capsys):
    check(SCENARIOS["tp_for_box_not_used_for_group"], tmp_path, capsys)


def test_detection_in_two_groups_highest_ioa(tmp_path, capsys):
    check(SCENARIOS["detection_in_two_groups_highest_ioa"], tmp_path, capsys)


def test_detection_in_two_groups_first_on_ties(tmp_path, capsys):
    check(SCENARIOS["detection_in_two_groups_first_on_ties"], tmp_path, capsys)


def test_iou_exactly_half_matches(tmp_path, capsys):
    check(SCENARIOS["iou_exactly_half_matches"], tmp_path, capsys)


def test_ioa_exactly_half_absorbed(tmp_path, capsys):
    check(SCENARIOS["ioa_exactly_half_absorbed"], tmp_path, capsys)


def test_degenerate_box_dropped(tmp_path, capsys):
    check(SCENARIOS["degenerate_box_dropped"], tmp_path, capsys)


def test_duplicate_detection_rows_each_count(tmp_path, capsys):
    check(SCENARIOS["duplicate_detection_rows_each_count"], tmp_path, capsys)


def test_equal_scores_rank_false_positives_first(tmp_path, capsys):
    s = SCENARIOS["equal_scores_rank_false_positives_first"]
    check(s, tmp_path, capsys)
    check(dataclasses.replace(s, dets=s.dets[::-1]), tmp_path, capsys)


def test_equal_scores_matched_in_box_order():
    # Both detections match n1 (IoU 1 and 0.67); only b lies in G (IoA 0.6, a's is 0.4).
    # Our rule visits equal scores in (ymin, xmin, ymax, xmax) order: a takes n1, and
    # b, absorbed by G, gives G its TP. In either input order.
    n1, g = (0.0, 0.0, 1.0, 0.5), (0.0, 0.3, 1.0, 1.0)  # (x0, y0, x1, y1)
    a, b = n1, (0.0, 0.1, 1.0, 0.6)
    s = Scenario(boxes=(("i1", DOG, n1, False), ("i1", DOG, g, True)),
                 dets=(("i1", DOG, 0.5, b), ("i1", DOG, 0.5, a)))
    for dets in (s.dets, s.dets[::-1]):
        assert run_api(dataclasses.replace(s, dets=dets)).per_class[DOG].ap == 1.0


def test_scores_outside_unit_interval(tmp_path, capsys):
    # The evaluator API takes any finite score, as the reference does; the command
    # refuses a submission whose scores leave [0, 1] (tests/oid/test_user_errors.py).
    check(SCENARIOS["scores_outside_unit_interval"], tmp_path, capsys, api_only=True)


def test_coordinates_outside_unit_interval_used_as_given(tmp_path, capsys):
    check(OUTSIDE_UNIT, tmp_path, capsys, api_only=True)


def test_two_parents_each_ancestor_once(tmp_path, capsys):
    s = SCENARIOS["two_parents_each_ancestor_once"]
    check(s, tmp_path, capsys)
    assert {m: r.num_gt for m, r in run_api(s).per_class.items()} == \
        {ANIMAL: 1, DOG: 0, CAT: 0, TOY: 1, TEDDY: 1}


def test_more_than_10000_detections_capped():
    box = [[0.1, 0.1, 0.4, 0.4]]
    far = [[0.0, 0.6, 0.3, 0.9]]

    def ap_with(num_fp: int) -> float:
        ev = OIDChallengeEvaluator(CLASSES)
        ev.add_ground_truth("i1", box, [DOG])
        scores = 0.5 + np.arange(num_fp) * 1e-6
        ev.add_detections("i1", np.repeat(far, num_fp, 0), scores, [DOG] * num_fp)
        ev.add_detections("i1", box, [0.1], [DOG])  # the only TP, ranked last
        return ev.evaluate().per_class[DOG].ap

    assert ap_with(9_999) == pytest.approx(1e-4)
    assert ap_with(10_000) == 0.0  # the TP is the 10,001st detection: dropped


# -- the evaluator API -------------------------------------------------------------------


def test_batches_equal_single_images():
    one = run_api(WORKED_EXAMPLE)
    ev = OIDChallengeEvaluator(CLASSES, HIERARCHY)
    s = WORKED_EXAMPLE
    ev.add_detections([d[0] for d in s.dets],
                      [[y0, x0, y1, x1] for *_, (x0, y0, x1, y1) in s.dets],
                      np.array([d[2] for d in s.dets]),
                      np.array([CLASSES.index(d[1]) for d in s.dets]))  # class indices
    ev.add_ground_truth(np.array([b[0] for b in s.boxes]),
                        [[y0, x0, y1, x1] for _, _, (x0, y0, x1, y1), _ in s.boxes],
                        [b[1] for b in s.boxes], [b[3] for b in s.boxes])
    ev.add_image_labels([lab[0] for lab in s.labels], [lab[1] for lab in s.labels],
                        [lab[2] for lab in s.labels])
    assert ev.evaluate() == one


def test_reset_forgets_everything():
    ev = OIDChallengeEvaluator(CLASSES, HIERARCHY)
    ev.add_ground_truth("i1", [[0.1, 0.1, 0.4, 0.4]], [DOG])
    ev.add_detections("i1", [[0.6, 0.6, 0.9, 0.9]], [0.9], [DOG])
    assert ev.evaluate().per_class[DOG].ap == 0.0
    ev.reset()
    result = ev.evaluate()
    assert result.mean_ap is None and result.num_images == 0


def test_image_with_nothing_annotated_is_a_gt_image():
    ev = OIDChallengeEvaluator(CLASSES, HIERARCHY)
    ev.add_ground_truth(b"i1")  # bytes ids, as TF string tensors give them
    ev.add_detections("i1", [[0.1, 0.1, 0.4, 0.4]], [0.9], [DOG])
    result = ev.evaluate()
    assert result.num_images == 1 and result.mean_ap is None


def test_ground_truth_already_expanded():
    ev = OIDChallengeEvaluator(CLASSES)  # no hierarchy: nothing is copied
    ev.add_ground_truth("i1", [[0.1, 0.1, 0.4, 0.4]], [DOG])
    assert ev.evaluate().per_class[ANIMAL].num_gt == 0


def test_unknown_or_unexpandable_class_raises():
    ev = OIDChallengeEvaluator(CLASSES, HIERARCHY)
    with pytest.raises(KeyError, match="/m/0unknown"):
        ev.add_ground_truth("i1", [[0.1, 0.1, 0.4, 0.4]], ["/m/0unknown"])
    partial = Hierarchy.from_json({"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": "/m/0zoo", "Subcategory": [{"LabelName": DOG}]}]})
    ev = OIDChallengeEvaluator(CLASSES, partial)
    with pytest.raises(ValueError, match="/m/0zoo, which is not in the class list"):
        ev.add_ground_truth("i1", [[0.1, 0.1, 0.4, 0.4]], [DOG])
    with pytest.raises(ValueError, match=f"class {CAT} is not in the hierarchy"):
        ev.add_image_labels("i1", [CAT], [1])


def test_bad_arrays_raise():
    ev = OIDChallengeEvaluator(CLASSES)
    with pytest.raises(ValueError, match="ymin, xmin, ymax, xmax"):
        ev.add_detections("i1", [[0.1, 0.2, 0.3]], [0.9], [DOG])
    with pytest.raises(ValueError, match="finite"):
        ev.add_detections("i1", [[0.1, 0.2, np.nan, 0.4]], [0.9], [DOG])
    with pytest.raises(ValueError, match="2 scores for 1 boxes"):
        ev.add_detections("i1", [[0.1, 0.2, 0.3, 0.4]], [0.9, 0.8], [DOG])
    with pytest.raises(ValueError, match="0 .absent. or 1"):
        ev.add_image_labels("i1", [DOG], [0.5])


def test_average_precision_worked_example():
    # OID_METRIC.md §10, Dog: 0.90 TP, 0.80 FP, 0.75 FP, 0.70 TP of 2.
    assert average_precision([0.75, 0.9, 0.7, 0.8], [False, True, True, False], 2) == 0.75
    assert average_precision([], [], 3) == 0.0


# -- golden values from the reference evaluator ------------------------------------------


def make_random_case(seed: int, num_images: int = 200, num_classes: int = 20,
                     max_dets: int = 30) -> dict:
    """A random case: forest hierarchy with a two-parent class, boxes of every level,
    group-of boxes with boxes inside, present and absent labels, images with labels only
    or boxes only, detections near boxes / inside groups / at random / degenerate / on
    images without ground truth, distinct scores. Uses `random.Random` so that the
    files (and so the golden values) do not depend on the numpy version.
    """
    rng = random.Random(seed)
    mids = [f"/m/0c{seed % 100:02d}{i:03d}" for i in range(num_classes)]
    parents: dict[int, list[int]] = {0: []}
    for i in range(1, num_classes):
        parents[i] = [] if rng.random() < 0.25 else [rng.randrange(i)]
    extra = [j for j in range(num_classes - 1) if j not in parents[num_classes - 1]]
    parents[num_classes - 1] = parents[num_classes - 1] + [rng.choice(extra[: num_classes // 2])]
    children = {i: [c for c in range(num_classes) if i in parents[c]] for i in range(num_classes)}

    def node(i):
        out = {"LabelName": mids[i]}
        if children[i]:
            out["Subcategory"] = [node(c) for c in children[i]]
        return out

    hierarchy = {"LabelName": "/m/0bl9f",
                 "Subcategory": [node(i) for i in range(num_classes) if not parents[i]]}

    def ancestors(i):
        out = set()
        for p in parents[i]:
            out |= {p} | ancestors(p)
        return out

    def coord(decimals):
        return round(rng.random(), decimals)

    def box(decimals=2):
        while True:
            x0, x1 = sorted((coord(decimals), coord(decimals)))
            y0, y1 = sorted((coord(decimals), coord(decimals)))
            if x1 > x0 and y1 > y0:
                return x0, x1, y0, y1

    box_rows, label_rows, gt = [], [], {}
    for n in range(num_images):
        image = f"img{seed:03d}x{n:04d}"
        kind = rng.random()
        boxes = []
        if kind > 0.1:
            for _ in range(rng.randrange(0, 7)):
                c = rng.randrange(num_classes)
                group = rng.random() < 0.15
                b = box(rng.choice((1, 2, 2, 3)))
                boxes.append((c, group, b))
                box_rows.append([image, "xclick", mids[c], "1", *map(str, b), "0", "0",
                                 str(int(group)), "0", "0"])
            if boxes and boxes[-1][1] and rng.random() < 0.5:
                c, _, (x0, x1, y0, y1) = boxes[-1]
                b = (x0, round((x0 + x1) / 2, 4), y0, round((y0 + y1) / 2, 4))
                boxes.append((c, False, b))
                box_rows.append([image, "xclick", mids[c], "1", *map(str, b), "0", "0", "0", "0",
                                 "0"])
        if kind < 0.95:
            boxed = sorted({c for c, _, _ in boxes})
            for c in boxed:
                if rng.random() < 0.6:
                    label_rows.append([image, "verification", mids[c], "1"])
            for _ in range(rng.randrange(0, 4)):
                c = rng.randrange(num_classes)
                if c not in boxed:
                    label_rows.append([image, "verification", mids[c], str(rng.choice((0, 1)))])
        gt[image] = boxes

    pending = []
    for image in list(gt) + [f"nogt{seed:03d}x{k}" for k in range(5)]:
        dets = []
        for c, group, (x0, x1, y0, y1) in gt.get(image, []):
            for _ in range(rng.choice((0, 1, 1, 2, 3))):
                label = c if rng.random() < 0.7 or not ancestors(c) \
                    else rng.choice(sorted(ancestors(c)))
                if group and rng.random() < 0.6:
                    w, h = x1 - x0, y1 - y0
                    a, b = sorted((x0 + w * coord(2), x0 + w * coord(2)))
                    d, e = sorted((y0 + h * coord(2), y0 + h * coord(2)))
                    dets.append([label, round(a, 4), round(d, 4), round(b, 4), round(e, 4)])
                else:
                    j = 0.05 * rng.choice((0, 0, 1, 2))
                    dets.append([label] + [round(min(1, max(0, v + j * (rng.random() - 0.5))), 4)
                                           for v in (x0, y0, x1, y1)])
        for _ in range(rng.randrange(0, max_dets // 2)):
            x0, x1, y0, y1 = box(rng.choice((2, 3)))
            if rng.random() < 0.03:
                x1 = x0
            dets.append([rng.randrange(num_classes), x0, y0, x1, y1])
        rng.shuffle(dets)
        pending.append((image, dets[:max_dets]))
    scores = rng.sample(range(-20000, 1000000), sum(len(d) for _, d in pending))
    rows, k = [], 0
    for image, dets in pending:
        parts = []
        for label, x0, y0, x1, y1 in dets:
            parts.append(f"{mids[label]} {scores[k] / 1e6:.6f} {x0} {y0} {x1} {y1}")
            k += 1
        rows.append((image, " ".join(parts)))
    rng.shuffle(rows)
    return {"mids": mids, "hierarchy": hierarchy, "boxes": box_rows, "labels": label_rows,
            "predictions": rows}


def write_random_case(case: dict, directory) -> dict[str, str]:
    paths = {k: os.path.join(directory, f"{k}.{'json' if k == 'hierarchy' else 'csv'}")
             for k in ("hierarchy", "classes", "boxes", "labels", "predictions")}
    with open(paths["hierarchy"], "w") as f:
        json.dump(case["hierarchy"], f)
    with open(paths["classes"], "w") as f:
        f.writelines(f"{m},Class {i}\n" for i, m in enumerate(case["mids"]))
    with open(paths["boxes"], "w") as f:
        f.write(BOX_HEADER + "\n")
        f.writelines(",".join(r) + "\n" for r in case["boxes"])
    with open(paths["labels"], "w") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
        f.writelines(",".join(r) + "\n" for r in case["labels"])
    with open(paths["predictions"], "w") as f:
        f.write("ImageId,PredictionString\n")
        f.writelines(f"{i},{p}\n" for i, p in case["predictions"])
    return paths


# Computed with the reference: tf-object-detection==0.0.3 (TF OD API, July 2020;
# TF 2.12 CPU, numpy 1.23.5, pandas 1.5.3 with .as_matrix aliased to .values), GT
# expanded by its oid_hierarchical_labels_expansion.py, scored by its
# oid_challenge_evaluation.py (OpenImagesChallengeEvaluator) on the files that
# write_random_case writes. mAP, then per-class AP in class-list order (None: no GT).
GOLDEN: dict[tuple[int, int, int, int], tuple[float, list[float | None]]] = {
    (1, 200, 20, 30): (0.3031188531809267, [
        0.2857091784817882, 0.204072333134395, 0.32618973318770483, 0.10910202331677522,
        0.1418752543752544, 0.26180875576036866, 0.2591943501660747, 0.3871619938612281,
        0.36364169256876133, 0.2203733766233766, 0.3781204567789934, 0.4549560621696845,
        0.15775189092341196, 0.2637241411189415, 0.49369948764685606, 0.4290816187993608,
        0.11373001069700445, 0.38687857621681143, 0.3041371850195379, 0.5211689427722036,]),
    (7, 500, 23, 40): (0.31053707777334544, [
        0.15454549722091818, 0.2785636094908395, 0.06770788308339784, 0.3227777264998576,
        0.08495173961866287, 0.07375225154800749, 0.22644012433938734, 0.4542000328552155,
        0.29851528164984004, 0.2845651443516508, 0.30180870563743234, 0.5316423420867776,
        0.5851319122151635, 0.23093764519436133, 0.31175145647459623, 0.5354452355480408,
        0.48810309852418454, 0.32026310309099854, 0.10810322156476003, 0.28248113187121143,
        0.33152262609953564, 0.48183338966804556, 0.3873096301540605,]),
    (9, 200, 8, 70): (0.12484126300773907, [
        0.09079006654410579, 0.16840834639085375, 0.1663559148154332, 0.0782704026780936,
        0.07903828312558366, 0.07925580406892524, 0.2313770262767804, 0.10523426016213694,]),
    (5, 200, 38, 10): (0.4034984382778843, [
        0.17579849927687974, 0.11898253856435284, 0.2217783899602081, 0.7982954545454546,
        0.24567099567099568, 0.41688411922525637, 0.11011834109423664, 0.29077866577866573, 0.375,
        0.1930501930501931, 0.20723684210526322, 0.4329254248118345, 0.11481286009587896,
        0.5575757575757576, 0.6388888888888888, 0.7041666666666666, 0.6324404761904763,
        0.5353535353535355, 0.6662428480610298, 0.1526315789473684, 0.2007783882783883,
        0.5097222222222222, 0.2664351851851852, 0.38901044607566354, 0.6646989374262102,
        0.4441176470588235, 0.4939393939393939, 0.5125, 0.3091856060606061, 0.5810439560439561,
        0.5095238095238095, 0.40384615384615385, 0.296969696969697, 0.35584415584415585,
        0.4759803921568627, 0.49043481028775143, 0.5277777777777778, 0.3125,]),
}


def score_files_with_api(paths: dict[str, str]):
    """A random case's files scored as the command scores them, but for the submission:
    the ground truth read by load_ground_truth, the predictions parsed here and added with
    add_detections, which takes any finite score and min > max boxes (dropped, §4) like the
    reference. The command refuses both (scores must be in [0, 1]), and the random cases
    have both, so that the golden values cover them."""
    from oid.classes import load_classes
    from oid.hierarchy import load_hierarchy
    from oid.metric import load_ground_truth

    ev = load_ground_truth(paths["boxes"], paths["labels"], load_classes(paths["classes"]),
                           load_hierarchy(paths["hierarchy"]))
    skipped = {"score_out_of_range": 0, "min_greater_than_max": 0}
    with open(paths["predictions"]) as f:
        next(f)
        for line in f:
            image, text = line.rstrip("\n").split(",", 1)
            tokens = text.split()
            numbers = np.array([tokens[k + 1:k + 6] for k in range(0, len(tokens), 6)],
                               np.float64).reshape(-1, 5)  # Score XMin YMin XMax YMax
            ev.add_detections(image, numbers[:, [2, 1, 4, 3]], numbers[:, 0], tokens[0::6])
            bad_score = (numbers[:, 0] < 0) | (numbers[:, 0] > 1)
            skipped["score_out_of_range"] += int(bad_score.sum())
            skipped["min_greater_than_max"] += int((~bad_score & (
                (numbers[:, 1] > numbers[:, 3]) | (numbers[:, 2] > numbers[:, 4]))).sum())
    return ev.evaluate(), skipped


@pytest.mark.parametrize("spec", sorted(GOLDEN))
def test_matches_reference_golden(spec, tmp_path, capsys):
    seed, num_images, num_classes, max_dets = spec
    paths = write_random_case(make_random_case(seed, num_images, num_classes, max_dets), tmp_path)
    result, skipped = score_files_with_api(paths)
    mean_ap, per_class = GOLDEN[spec]
    assert result.mean_ap == pytest.approx(mean_ap, abs=1e-9)
    got = [r.ap for r in result.per_class.values()]
    assert [g is None for g in got] == [p is None for p in per_class]
    assert [g for g in got if g is not None] == \
        pytest.approx([p for p in per_class if p is not None], abs=1e-9)
    # The command skips exactly those detections with --lenient (and refuses them without).
    out = run_cli(paths, capsys, "--lenient")
    assert out["submission"]["skipped_detections"] == skipped
    assert main([a for k in ("boxes", "labels", "hierarchy", "classes", "predictions")
                 for a in (f"--{k}", paths[k])]) == 2


# -- the command -----------------------------------------------------------------------


def test_cli_output_file_and_shape(tmp_path, capsys):
    paths = write_files(WORKED_EXAMPLE, tmp_path)
    out_path = str(tmp_path / "out.json")
    out = run_cli(paths, capsys, "--output", out_path)
    with open(out_path) as f:
        assert json.load(f) == out
    assert set(out) == {"mAP", "per_class", "num_images", "submission"}
    assert out["submission"] == {
        "path": paths["predictions"], "rows": 2, "detections": 8, "skipped_rows": {},
        "skipped_detections": {}, "rows_without_ground_truth": 0,
        "ground_truth_images_without_row": 0}
    assert out["per_class"][CAT] == {"ap": None, "num_gt": 0}
    assert out["num_images"] == 2


def test_cli_no_expand_on_expanded_ground_truth(tmp_path, capsys):
    expanded = dataclasses.replace(
        WORKED_EXAMPLE,
        boxes=WORKED_EXAMPLE.boxes + tuple((i, ANIMAL, b, g) for i, _, b, g in WORKED_EXAMPLE.boxes),
        labels=WORKED_EXAMPLE.labels + (("A", ANIMAL, 1), ("A", ANIMAL, 1)))  # repeats are fine
    paths = write_files(expanded, tmp_path)
    argv = ["--boxes", paths["boxes"], "--labels", paths["labels"], "--classes", paths["classes"],
            "--predictions", paths["predictions"], "--no-expand"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["mAP"] == 0.625


def test_cli_general_parser_agrees_with_fast_path(tmp_path, capsys):
    paths = write_files(WORKED_EXAMPLE, tmp_path)
    fast = run_cli(paths, capsys)
    with open(paths["predictions"]) as f:
        header, *rows = f.read().splitlines()
    # Quotes, CRLF, tabs, runs of spaces and blank lines send it down the general parser.
    with open(paths["predictions"], "w", newline="") as f:
        f.write(header + "\r\n\r\n")
        for row in rows:
            image, text = row.split(",", 1)
            spaced = text.replace(" ", " \t ")
            f.write(f'{image},"  {spaced} "\r\n\r\n')
    assert run_cli(paths, capsys) == fast


def test_cli_empty_prediction_strings(tmp_path, capsys):
    paths = write_files(WORKED_EXAMPLE, tmp_path)
    with open(paths["predictions"], "a") as f:
        f.write("C,\n")
    assert run_cli(paths, capsys)["mAP"] == 0.625
    with open(paths["predictions"], "w") as f:
        f.write("ImageId,PredictionString\n")
    assert run_cli(paths, capsys)["mAP"] == 0.0


def test_cli_bad_ground_truth_names_the_file(tmp_path, capsys):
    paths = write_files(WORKED_EXAMPLE, tmp_path)
    with open(paths["boxes"], "a") as f:
        f.write("C,xclick,/m/0unknown,1,0.1,0.2,0.1,0.2,0,0,0,0,0\n")
    argv = [a for k in ("boxes", "labels", "hierarchy", "classes", "predictions")
            for a in (f"--{k}", paths[k])]
    assert main(argv) == 2
    assert f"{paths['boxes']}:4: unknown_mid" in capsys.readouterr().err


def test_cli_needs_hierarchy_to_expand(tmp_path):
    paths = write_files(WORKED_EXAMPLE, tmp_path)
    with pytest.raises(SystemExit):
        main(["--boxes", paths["boxes"], "--labels", paths["labels"], "--classes",
              paths["classes"], "--predictions", paths["predictions"]])


# -- bad submissions: strict names the row, --lenient skips and counts ---------------------

GOOD_ROW = f"A,{DOG} 0.9 0.1 0.1 0.4 0.4 {ANIMAL} 0.85 0.1 0.1 0.4 0.4"
BAD_ROWS = {
    BAD_TOKEN_COUNT: (f"B,{DOG} 0.75 0.2 0.2 0.5", "has 5 tokens", 1, "rows"),
    BAD_NUMBER: (f"B,{DOG} high 0.2 0.2 0.5 0.5", "Score 'high' is not a finite number", 1, "detections"),
    UNKNOWN_MID: ("B,/m/0zebra 0.75 0.2 0.2 0.5 0.5", "'/m/0zebra' is not in the class list", 1,
                  "detections"),
    COORD_OUT_OF_RANGE: (f"B,{DOG} 0.75 0.2 0.2 1.5 0.5", "XMax=1.5 is outside [0, 1]", 1,
                         "detections"),
    SCORE_OUT_OF_RANGE: (f"B,{DOG} 1.25 0.2 0.2 0.5 0.5", "Score=1.25 is outside [0, 1]", 1,
                         "detections"),
    MIN_GT_MAX: (f"B,{DOG} 0.75 0.2 0.5 0.5 0.2", "YMin=0.5 > YMax=0.2", 1, "detections"),
    DUPLICATE_IMAGE: (f"A,{DOG} 0.75 0.2 0.2 0.5 0.5", "'A' already has a row", 1, "rows"),
    MALFORMED_ROW: (f"B,{DOG} 0.75 0.2 0.2 0.5 0.5,extra", "does not have the 2 fields", 1, "rows"),
}


def write_submission(tmp_path, rows: list[str]) -> str:
    path = str(tmp_path / "submission.csv")
    with open(path, "w") as f:
        f.write("ImageId,PredictionString\n" + "".join(r + "\n" for r in rows))
    return path


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_bad_submission_strict_names_the_row(reason, tmp_path):
    bad, detail, _, _ = BAD_ROWS[reason]
    path = write_submission(tmp_path, [GOOD_ROW, f"C,{DOG} 0.5 0.1 0.1 0.2 0.2", bad])
    with pytest.raises(InputFileError) as e:
        read_submission(path, CLASSES)
    assert e.value.line == 4
    assert reason in e.value.problem and detail in e.value.problem
    if reason != MALFORMED_ROW:
        assert "ImageId 'B'" in e.value.problem or "ImageId 'A'" in e.value.problem


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_bad_submission_lenient_skips_and_counts(reason, tmp_path):
    bad, _, count, unit = BAD_ROWS[reason]
    path = write_submission(tmp_path, [GOOD_ROW, f"C,{DOG} 0.5 0.1 0.1 0.2 0.2", bad])
    submission, report = read_submission(path, CLASSES, lenient=True)
    assert report.skipped == {reason: count}
    assert report.detections == 3 and len(submission.scores) == 3
    assert report.skipped_lines[0][:2] == (4, reason)
    assert f"{count} {unit} ({reason})" in report.summary()


def test_bad_submission_in_the_cli(tmp_path, capsys):
    paths = write_files(WORKED_EXAMPLE, tmp_path)
    with open(paths["predictions"], "a") as f:
        f.write(f"C,{DOG} 0.9 0.1 0.1 0.4\n")
    argv = [a for k in ("boxes", "labels", "hierarchy", "classes", "predictions")
            for a in (f"--{k}", paths[k])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{paths['predictions']}:4: ImageId 'C', bad_token_count" in err
    assert main(argv + ["--lenient"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["mAP"] == 0.625
    assert "1 rows (bad_token_count)" in captured.err


def test_bad_submission_lines_with_blank_lines_and_many_problems(tmp_path):
    path = str(tmp_path / "submission.csv")
    with open(path, "w") as f:
        f.write(f"ImageId,PredictionString\n\n{GOOD_ROW}\n\nB,{DOG} 0.5 nan 0.1 0.2 0.2 "
                f"{DOG} 0.5 0.1 0.1 0.2 0.2 /m/0zebra 0.4 0.1 0.1 0.2 0.2\n")
    with pytest.raises(InputFileError) as e:
        read_submission(path, CLASSES)
    assert e.value.line == 5 and "detection 1," in e.value.problem
    submission, report = read_submission(path, CLASSES, lenient=True)
    assert report.skipped == {BAD_NUMBER: 1, UNKNOWN_MID: 1}
    assert [line for line, _, _ in report.skipped_lines] == [5, 5]
    assert len(submission.scores) == 3
    np.testing.assert_array_equal(submission.boxes[-1], [0.1, 0.1, 0.2, 0.2])


def test_gzipped_submission_reads_like_the_plain_file(tmp_path):
    import gzip

    def both(rows: list[str]) -> tuple[str, str]:
        plain = write_submission(tmp_path, rows)
        with open(plain, "rb") as f, gzip.open(plain + ".gz", "wb") as g:
            g.write(f.read())
        return plain, plain + ".gz"

    # A well-formed file takes the fast parser, one with CRLF and quotes the general one.
    for rows in ([GOOD_ROW, f"C,{DOG} 0.5 0.1 0.1 0.2 0.2"],
                 [GOOD_ROW + "\r", f'C,"{DOG} 0.5 0.1 0.1 0.2 0.2"\r', "D,\r"]):
        (a, _), (b, _) = (read_submission(p, CLASSES) for p in both(rows))
        assert a.image_ids.tolist() == b.image_ids.tolist()
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
    # After a blank line, the bad row's line is found by scanning the (gzipped) text.
    for path in both(["", GOOD_ROW + "\r", BAD_ROWS[UNKNOWN_MID][0] + "\r"]):
        with pytest.raises(InputFileError) as e:
            read_submission(path, CLASSES)
        assert e.value.line == 4 and UNKNOWN_MID in e.value.problem


def test_submission_boxes_are_reordered_to_ymin_xmin_ymax_xmax(tmp_path):
    path = write_submission(tmp_path, [f"A,{DOG} 0.9 0.1 0.2 0.3 0.4"])
    submission, _ = read_submission(path, CLASSES)
    np.testing.assert_array_equal(submission.boxes, [[0.2, 0.1, 0.4, 0.3]])
    assert submission.scores.tolist() == [0.9] and submission.labels.tolist() == [1]


def test_general_parser_empty_and_blank_prediction_strings(tmp_path):
    path = str(tmp_path / "submission.csv")
    with open(path, "w") as f:
        f.write(f'ImageId,PredictionString\nA,\nB,"   "\n\nC,\t{DOG} 0.5 0.1 0.1 0.2 0.2 \n')
    submission, report = read_submission(path, CLASSES)
    assert report.rows == 3 and report.detections == 1
    assert submission.image_ids[submission.row].tolist() == ["C"]


def test_scores_equal_in_float32_are_ranked_exactly():
    # 0.5 and 0.5 + 1e-9 are one float32: the ranking must still use the exact scores.
    ev = OIDChallengeEvaluator(CLASSES)
    ev.add_ground_truth("i1", [[0.1, 0.1, 0.4, 0.4], [0.1, 0.6, 0.4, 0.9]], [DOG, DOG])
    ev.add_detections("i1", [[0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9], [0.1, 0.6, 0.4, 0.9]],
                      [0.5 + 1e-9, 0.5, 0.5 - 1e-9], [DOG, DOG, DOG])
    assert ev.evaluate().per_class[DOG].ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_many_small_additions_are_merged(monkeypatch):
    from oid import metric

    plain = run_api(WORKED_EXAMPLE)
    monkeypatch.setattr(metric._Chunks, "_MERGE_EVERY", 3)
    ev = OIDChallengeEvaluator(CLASSES, HIERARCHY)
    for image, mid, (x0, y0, x1, y1), group in WORKED_EXAMPLE.boxes:
        ev.add_ground_truth(image, [[y0, x0, y1, x1]], [mid], [group])
    for image, mid, conf in WORKED_EXAMPLE.labels:
        ev.add_image_labels(image, [mid], [conf])
    for image, mid, score, (x0, y0, x1, y1) in WORKED_EXAMPLE.dets:  # one at a time
        ev.add_detections(image, [[y0, x0, y1, x1]], [score], [mid])
    assert len(ev._dets.merged) == 2 and len(ev._dets.recent) == 2
    assert ev.evaluate() == plain


def test_table_for_people():
    from oid.metric import format_table

    table = format_table(run_api(WORKED_EXAMPLE), CLASSES)
    assert "  0.7500        2  /m/0bt9lr    Dog" in table
    assert "       -        0  /m/01yrx     Cat" in table
    assert table.splitlines()[-1] == "mAP 0.625000 over 2 classes with ground truth, 2 images"


def test_fast_parser_equals_general_parser_across_blocks(tmp_path, monkeypatch):
    from oid import submission

    path = write_random_case(make_random_case(3, num_images=60), tmp_path)["predictions"]
    general = submission._parse_general(path, lenient=False)
    monkeypatch.setattr(submission, "_BLOCK_BYTES", 1000)  # rows straddle many blocks
    fast = submission._parse_fast(path)
    assert fast is not None and fast.lines_from is None
    assert fast.image_ids.tolist() == general.image_ids.tolist()
    np.testing.assert_array_equal(fast.row, general.row)
    np.testing.assert_array_equal(fast.numbers, general.numbers)
    assert [fast.label_names[c] for c in fast.label_codes] == \
        [general.label_names[c] for c in general.label_codes]


def test_cli_unexpandable_ground_truth_names_the_file(tmp_path, capsys):
    paths = write_files(WORKED_EXAMPLE, tmp_path)
    with open(paths["hierarchy"], "w") as f:  # Dog under a class that is not in the list
        json.dump({"LabelName": "/m/0bl9f", "Subcategory": [
            {"LabelName": "/m/0zoo", "Subcategory": [{"LabelName": DOG}]}]}, f)
    argv = [a for k in ("boxes", "labels", "hierarchy", "classes", "predictions")
            for a in (f"--{k}", paths[k])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{paths['boxes']}: ImageID A: class {DOG} has the ancestor /m/0zoo" in err
