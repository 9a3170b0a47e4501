import pytest

from beam_jobs.plan import PlanConfig, plan_level, related_classes
from oid import split
from oid.annotations import read_boxes, read_image_labels
from oid.classes import load_classes
from oid.hierarchy import load_hierarchy
from tests.beam_jobs import fixtures as fx


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    lay = fx.make_dataset(str(tmp_path_factory.mktemp("oid")))
    classes = load_classes(lay.classes)
    boxes, br = read_boxes(lay.train_boxes, classes, lenient=True)
    labels, lr = read_image_labels(lay.train_labels, classes, lenient=True)
    return boxes, labels, (br, lr), load_hierarchy(lay.hierarchy)


def test_level_filtering(data):
    boxes, labels, reports, tree = data
    plan = plan_level(boxes, labels, fx.SPEC.level(1), tree, PlanConfig(val_fraction=0.5),
                      reports)
    by_id = {a.image_id: a for a in plan.annotations}
    # car1 has no dog or cat box; badbox1 and the escaping id are left out whole.
    assert set(by_id) == set(fx.GOOD) | {"corrupt1", "trunc1", "missing1"}
    assert dict(plan.skipped) == {"badbox1": "coordinate_out_of_range",
                                  "../../escape": "bad_image_id"}
    good2 = by_id["good2"]
    assert good2.mids == [fx.DOG] and good2.labels == [0] and good2.group_of == [1]
    assert good2.boxes == [[0.0, 0.0, 0.5, 0.5]]  # (ymin, xmin, ymax, xmax)
    good1 = by_id["good1"]
    assert good1.mids == [fx.DOG, fx.CAT] and good1.labels == [0, 1]
    assert good1.occluded == [1, 0] and good1.truncated == [0, 1]
    # Labels of related classes only (Animal is an ancestor; Car is unrelated).
    assert good1.image_labels == [(fx.ANIMAL, -1, 1.0), (fx.CAT, 1, 1.0), (fx.DOG, 0, 1.0)]


def test_split_is_the_oid_split_and_the_same_for_every_level(data):
    boxes, labels, reports, tree = data
    config = PlanConfig(val_fraction=0.5)
    sides = {}
    for level in fx.SPEC.levels:
        for a in plan_level(boxes, labels, level, tree, config, reports).annotations:
            assert a.split == split.split_of(a.image_id, 0.5)
            assert sides.setdefault(a.image_id, a.split) == a.split
    assert "good2" in sides  # in both levels (a dog and a car)


def test_related_classes(data):
    *_, tree = data
    assert related_classes(fx.SPEC.level(1), tree) == {fx.DOG, fx.CAT, fx.ANIMAL}
    assert related_classes(fx.SPEC.level(2), tree) == {fx.CAR, fx.ANIMAL, fx.DOG, fx.CAT}


def test_val_ground_truth_includes_descendants(data):
    boxes, labels, reports, tree = data
    config = PlanConfig(val_fraction=1.0, boxes_to_ancestors=False)
    plan = plan_level(boxes, labels, fx.SPEC.level(2), tree, config, reports)
    # Level 2 holds Animal: dog boxes on its images are Animal boxes after expansion.
    assert set(plan.val_boxes["ImageID"].astype(str)) == {"good2", "car1"}
    assert set(plan.val_boxes["LabelName"].astype(str)) == {fx.DOG, fx.CAR}
    assert set(plan.val_labels["ImageID"].astype(str)) == {"good2", "car1"}
    # With the copies (the default) every dog or cat image joins the level (the unreadable
    # ones are left out later, when the images are read), and its ground truth keeps the
    # official Dog and Cat rows: no Animal row is written.
    plan = plan_level(boxes, labels, fx.SPEC.level(2), tree, PlanConfig(val_fraction=1.0),
                      reports)
    assert set(plan.val_boxes["ImageID"].astype(str)) == {
        "car1", *fx.GOOD, "corrupt1", "trunc1", "missing1"}
    assert set(plan.val_boxes["LabelName"].astype(str)) == {fx.DOG, fx.CAT, fx.CAR}


def test_repeat_factor():
    import pandas as pd

    # 10 training images: class A in all, class B in one. With t = 0.5:
    # r_A = max(1, sqrt(0.5 / 1.0)) = 1; r_B = sqrt(0.5 / 0.1) = sqrt(5) = 2.236.
    rows = [(f"i{k}", "/m/a") for k in range(10)] + [("i3", "/m/b")]
    boxes = pd.DataFrame({
        "ImageID": pd.Categorical([r[0] for r in rows]),
        "LabelName": pd.Categorical([r[1] for r in rows]),
        "XMin": 0.1, "XMax": 0.2, "YMin": 0.1, "YMax": 0.2,
        "IsGroupOf": 0, "IsOccluded": 0, "IsTruncated": 0, "IsDepiction": 0})
    labels = pd.DataFrame({"ImageID": pd.Categorical([]), "LabelName": pd.Categorical([]),
                           "Confidence": pd.Series([], dtype="float32")})
    from oid.hierarchy import Hierarchy
    from oid.levels import Level

    tree = Hierarchy.from_json({"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": "/m/a"}, {"LabelName": "/m/b"}]})
    plan = plan_level(boxes, labels, Level(1, "count", ("/m/a", "/m/b")), tree,
                      PlanConfig(val_fraction=0.0, repeat_threshold=0.5))
    factors = {a.image_id: a.repeat_factor for a in plan.annotations}
    assert factors["i3"] == pytest.approx(5 ** 0.5)
    assert all(f == 1.0 for k, f in factors.items() if k != "i3")
    assert plan.stats["repeat_factor"]["images_above_1"] == 1


def test_dominant_filter(data):
    boxes, labels, reports, tree = data
    # Dominant = Dog (the top class): training images where more than 60% of
    # the level's boxes are dogs are left out; val images stay.
    config = PlanConfig(val_fraction=0.0, max_dominant_fraction=0.6, dominant_top_k=1)
    plan = plan_level(boxes, labels, fx.SPEC.level(1), tree, config, reports)
    kept = {a.image_id for a in plan.annotations}
    assert kept == {"good1", "grey1"}  # 50% dogs and 0% dogs
    assert plan.stats["dominant_classes"] == [fx.DOG]
    assert plan.stats["filtered"] == {"dominant_classes": 7}


# -- boxes_to_ancestors ----------------------------------------------------------------------
# A hierarchy like the demo's: Shape > {Tri, Quad > {Sq, Dia}, Star}, Sym > {Star, Cross};
# Face has Eye as a Part (not a kind of Face); Lone is in the class table but in no hierarchy.
SHAPE, TRI, QUAD, SQ, DIA, STAR = "/m/shape", "/m/tri", "/m/quad", "/m/sq", "/m/dia", "/m/star"
SYM, CROSS, FACE, EYE, LONE = "/m/sym", "/m/cross", "/m/face", "/m/eye", "/m/lone"
TREE = {"LabelName": "/m/0bl9f", "Subcategory": [
    {"LabelName": SHAPE, "Subcategory": [
        {"LabelName": TRI},
        {"LabelName": QUAD, "Subcategory": [{"LabelName": SQ}, {"LabelName": DIA}]},
        {"LabelName": STAR}]},
    {"LabelName": SYM, "Subcategory": [{"LabelName": STAR}, {"LabelName": CROSS}]},
    {"LabelName": FACE, "Part": [{"LabelName": EYE}]}]}
PARENTS = ("/m/shape", "/m/quad", "/m/sym", "/m/dia", "/m/cross")  # the level, in index order
A, B, C, D, E, F, G = ((0.1 * k, 0.1 * k, 0.1 * k + 0.05, 0.1 * k + 0.05) for k in range(7))


def _frame(rows):
    """rows: (ImageID, MID, (ymin, xmin, ymax, xmax), IsGroupOf, IsOccluded) -> boxes frame."""
    import pandas as pd

    return pd.DataFrame({
        "ImageID": pd.Categorical([r[0] for r in rows]),
        "LabelName": pd.Categorical([r[1] for r in rows]),
        "XMin": [r[2][1] for r in rows], "XMax": [r[2][3] for r in rows],
        "YMin": [r[2][0] for r in rows], "YMax": [r[2][2] for r in rows],
        "IsGroupOf": [r[3] for r in rows], "IsOccluded": [r[4] for r in rows],
        "IsTruncated": 0, "IsDepiction": 0})


BOX_ROWS = [
    ("i1", SQ, A, 1, 1),     # -> Quad (nearest), group-of and occluded carried over
    ("i1", TRI, B, 0, 0),    # -> Shape
    ("i2", STAR, C, 0, 0),   # -> Sym (fewer own boxes than Shape), but ...
    ("i2", SYM, C, 0, 0),    # ... Sym is annotated at that place already: one box kept
    ("i3", DIA, D, 0, 0),    # in the level itself: no copy to Quad or Shape
    ("i4", LONE, A, 0, 0),   # in no hierarchy: no copy, not in the level
    ("i5", EYE, A, 0, 0),    # a Part of Face, no Subcategory ancestor: no copy
    ("i6", SHAPE, E, 0, 0),
    ("i6", SHAPE, A, 0, 0),
    ("i6", CROSS, G, 0, 0),  # in the level (under Sym): trains as Cross
    ("i7", STAR, F, 0, 0),   # -> Sym ...
    ("i7", TRI, F, 0, 0),    # -> Shape at the same place: not made, Sym is preferred there
]


def _plan_parents(rows, on, val_fraction=0.0):
    import pandas as pd

    from oid.hierarchy import Hierarchy
    from oid.levels import Level

    labels = pd.DataFrame({"ImageID": pd.Categorical([]), "LabelName": pd.Categorical([]),
                           "Confidence": pd.Series([], dtype="float32")})
    return plan_level(_frame(rows), labels, Level(2, "parents", PARENTS),
                      Hierarchy.from_json(TREE),
                      PlanConfig(val_fraction=val_fraction, boxes_to_ancestors=on))


def test_nearest_ancestors_prefers_the_nearest_then_the_rarer():
    from beam_jobs.plan import nearest_ancestors
    from oid.hierarchy import Hierarchy
    from oid.levels import Level

    level = Level(2, "parents", PARENTS)
    tree = Hierarchy.from_json(TREE)
    # Star is a Shape and a Sym, both in the level and equally near: Sym has fewer boxes.
    assert nearest_ancestors(level, tree, {SHAPE: 2, SYM: 1}) == {
        SQ: QUAD, TRI: SHAPE, STAR: SYM}
    # Equal counts: the smaller MID (/m/shape < /m/sym).
    assert nearest_ancestors(level, tree, {})[STAR] == SHAPE
    # Quad out of the level: a Square box goes to Shape; Quad itself to Shape.
    level = Level(1, "count", (SHAPE, SYM))
    assert nearest_ancestors(level, tree, {SHAPE: 5}) == {
        TRI: SHAPE, QUAD: SHAPE, SQ: SHAPE, DIA: SHAPE, STAR: SYM, CROSS: SYM}


def test_boxes_to_ancestors_golden_boxes():
    plan = _plan_parents(BOX_ROWS, on=True)
    got = {a.image_id: list(zip(a.mids, map(tuple, a.boxes), a.group_of, a.occluded,
                                a.labels, strict=True))
           for a in plan.annotations}
    index = {m: i for i, m in enumerate(PARENTS)}
    # Worked out by hand from BOX_ROWS' comments: annotated boxes first, then copies.
    assert got == {
        "i1": [(QUAD, A, 1, 1, index[QUAD]), (SHAPE, B, 0, 0, index[SHAPE])],
        "i2": [(SYM, C, 0, 0, index[SYM])],
        "i3": [(DIA, D, 0, 0, index[DIA])],
        "i6": [(SHAPE, E, 0, 0, index[SHAPE]), (SHAPE, A, 0, 0, index[SHAPE]),
               (CROSS, G, 0, 0, index[CROSS])],
        "i7": [(SYM, F, 0, 0, index[SYM])],
    }
    copies = plan.stats["boxes_to_ancestors"]
    assert copies["added"] == {"train": 3, "val": 0}
    assert copies["added_per_class"] == {QUAD: 1, SHAPE: 1, SYM: 1}
    assert copies["images_only_through_copies"] == {"train": 2, "val": 0}  # i1, i7
    assert copies["not_copied_place_taken"] == 2  # i2's Star, i7's Tri
    assert copies["level_boxes_under_a_level_class"] == 2  # Dia, Cross
    assert copies["copied_to"] == {SQ: QUAD, STAR: SYM, TRI: SHAPE}


def test_boxes_to_ancestors_off_keeps_the_annotated_boxes_only():
    plan = _plan_parents(BOX_ROWS, on=False)
    assert {a.image_id: a.mids for a in plan.annotations} == {
        "i2": [SYM], "i3": [DIA], "i6": [SHAPE, SHAPE, CROSS]}
    assert "boxes_to_ancestors" not in plan.stats


def test_boxes_to_ancestors_leaves_the_val_ground_truth_official():
    plan = _plan_parents(BOX_ROWS, on=True, val_fraction=1.0)
    assert {a.split for a in plan.annotations} == {"val"}
    assert plan.stats["boxes_to_ancestors"]["added"] == {"train": 0, "val": 3}
    # The metric expands these rows itself; the copies never reach the CSV.
    gt = plan.val_boxes
    rows = set(zip(gt["ImageID"].astype(str), gt["LabelName"].astype(str), strict=True))
    assert rows == {("i1", SQ), ("i1", TRI), ("i2", STAR), ("i2", SYM), ("i3", DIA),
                    ("i6", SHAPE), ("i6", CROSS), ("i7", STAR), ("i7", TRI)}


def test_boxes_to_ancestors_without_boxes():
    plan = _plan_parents([], on=True)
    assert plan.annotations == []
    assert plan.stats["boxes_to_ancestors"]["added"] == {"train": 0, "val": 0}
    # Only classes outside the hierarchy or the level: nothing to copy.
    plan = _plan_parents([("i4", LONE, A, 0, 0), ("i5", EYE, A, 0, 0)], on=True)
    assert plan.annotations == []
