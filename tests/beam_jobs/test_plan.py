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
    plan = plan_level(boxes, labels, fx.SPEC.level(2), tree, PlanConfig(val_fraction=1.0),
                      reports)
    # Level 2 holds Animal: dog boxes on its images are Animal boxes after expansion.
    assert set(plan.val_boxes["ImageID"].astype(str)) == {"good2", "car1"}
    assert set(plan.val_boxes["LabelName"].astype(str)) == {fx.DOG, fx.CAR}
    assert set(plan.val_labels["ImageID"].astype(str)) == {"good2", "car1"}


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
