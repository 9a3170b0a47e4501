import json
import os

import pandas as pd
import pytest

from oid import demo_data, levels
from oid.annotations import read_boxes
from oid.classes import ClassTable, load_classes
from oid.errors import InputFileError, UsageError
from oid.hierarchy import load_hierarchy
from oid.layout import DataLayout
from oid.levels import Level, LevelSpec, make_levels

COUNTS = {"/m/a": 10, "/m/b": 8, "/m/c": 8, "/m/d": 3}
ALL = ["/m/a", "/m/b", "/m/c", "/m/d", "/m/e"]  # /m/e has no boxes


def classes_of(spec):
    return [(lv.kind, list(lv.classes)) for lv in spec.levels]


def test_cut_by_count_ties_by_mid_empty_last():
    spec = make_levels(COUNTS, [2], all_classes=ALL)
    assert classes_of(spec) == [("count", ["/m/a", "/m/b"]),
                                ("count", ["/m/c", "/m/d", "/m/e"])]
    assert spec.level(2).class_index() == {"/m/c": 0, "/m/d": 1, "/m/e": 2}


def test_several_sizes_and_exact_fit():
    spec = make_levels(COUNTS, [1, 3])
    assert classes_of(spec) == [("count", ["/m/a"]), ("count", ["/m/b", "/m/c", "/m/d"])]


def test_sizes_larger_than_class_count_give_one_level():
    assert classes_of(make_levels(COUNTS, [100])) == [("count", ["/m/a", "/m/b", "/m/c", "/m/d"])]


def test_hard_and_parents_levels_are_taken_out_of_the_ranking():
    spec = make_levels(COUNTS, [2], hard_classes=["/m/b"], parent_classes=["/m/a", "/m/b"])
    # /m/b is hard (hard wins over parents), /m/a a parent: the count levels see c, d.
    assert classes_of(spec) == [("count", ["/m/c", "/m/d"]), ("hard", ["/m/b"]),
                                ("parents", ["/m/a"])]
    assert spec.level_of("/m/a") == 3


def test_parents_levels_cut_by_their_own_ranking():
    # Parents a, b, c ranked by the parents' counts (c 9, a 5, b 5: tie by MID), not by
    # COUNTS (a 10, b 8, c 8); sizes [1] gives [c] and the rest [a, b].
    parent_counts = {"/m/a": 5, "/m/b": 5, "/m/c": 9}
    spec = make_levels(COUNTS, [1], all_classes=ALL, parent_classes=["/m/a", "/m/b", "/m/c"],
                       parents_level_sizes=[1], parent_box_counts=parent_counts)
    assert classes_of(spec) == [("count", ["/m/d"]), ("count", ["/m/e"]),
                                ("parents", ["/m/c"]), ("parents", ["/m/a", "/m/b"])]
    # Sizes that use up every parent leave no empty level; an exact fit adds none.
    for sizes in ([1, 2], [1, 5]):
        spec = make_levels(COUNTS, [], parent_classes=["/m/a", "/m/b", "/m/c"],
                           parents_level_sizes=sizes, parent_box_counts=parent_counts)
        assert [lv.classes for lv in spec.levels if lv.kind == "parents"] == [
            ("/m/c",), ("/m/a", "/m/b")]
    with pytest.raises(ValueError, match="parents level sizes must be positive"):
        make_levels(COUNTS, [], parent_classes=["/m/a"], parents_level_sizes=[0])


def test_expanded_box_counts_counts_every_descendants_box_once_per_ancestor():
    from oid.hierarchy import Hierarchy

    # Shape > {Quad > Sq, Star}; Sym > Star (Star has two parents); Lone in no hierarchy.
    tree = Hierarchy.from_json({"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": "/m/shape", "Subcategory": [
            {"LabelName": "/m/quad", "Subcategory": [{"LabelName": "/m/sq"}]},
            {"LabelName": "/m/star"}]},
        {"LabelName": "/m/sym", "Subcategory": [{"LabelName": "/m/star"}]}]})
    own = {"/m/shape": 1, "/m/quad": 2, "/m/sq": 4, "/m/star": 8, "/m/lone": 16}
    assert levels.expanded_box_counts(own, tree) == {
        "/m/shape": 1 + 2 + 4 + 8, "/m/quad": 2 + 4, "/m/sq": 4, "/m/star": 8,
        "/m/sym": 0 + 8, "/m/lone": 16}


def test_the_original_systems_levels_on_the_challenge_classes(openimages_dir):
    """Four count levels, a hard level and two parents levels from flags alone, on the
    real class table and hierarchy (57 classes with Subcategory children)."""
    classes = load_classes(str(openimages_dir / "challenge-2018-class-descriptions-500.csv"))
    tree = load_hierarchy(str(openimages_dir / "bbox_labels_500_hierarchy.json"))
    parents = levels.parent_classes(classes, tree)
    assert len(parents) == 57
    counts = {m: 1000 - i for i, m in enumerate(classes.mids)}  # any ranking will do
    hard = [m for m in classes.mids if m not in parents][:3]
    spec = make_levels(counts, [100, 100, 100], all_classes=classes.mids, hard_classes=hard,
                       parent_classes=parents, parents_level_sizes=[20],
                       parent_box_counts=levels.expanded_box_counts(counts, tree))
    assert [(lv.kind, len(lv.classes)) for lv in spec.levels] == [
        ("count", 100), ("count", 100), ("count", 100), ("count", 500 - 57 - 3 - 300),
        ("hard", 3), ("parents", 20), ("parents", 37)]
    scored = levels.expanded_box_counts(counts, tree)
    # The first parents level holds the 20 parents scored on the most boxes.
    first, second = spec.level(6).classes, spec.level(7).classes
    assert min(scored[m] for m in first) >= max(scored[m] for m in second)


def test_unknown_hard_class():
    with pytest.raises(ValueError, match="hard classes not among the classes: /m/zzz"):
        make_levels(COUNTS, [2], hard_classes=["/m/zzz"])


def test_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        make_levels(COUNTS, [0])


def test_spec_round_trip_and_checks(tmp_path):
    spec = make_levels(COUNTS, [2], all_classes=ALL)
    path = str(tmp_path / "levels.json")
    spec.save(path)
    assert LevelSpec.load(path) == spec
    assert json.load(open(path))["levels"][0] == {
        "index": 1, "name": "level1", "kind": "count", "classes": ["/m/a", "/m/b"]}
    with pytest.raises(ValueError, match="no level 3"):
        spec.level(3)
    with pytest.raises(ValueError, match="in level 1 and level 2"):
        LevelSpec((Level(1, "count", ("/m/a",)), Level(2, "count", ("/m/a",))))
    with pytest.raises(ValueError, match="version"):
        LevelSpec.from_json({"version": 99, "levels": []})


def test_level_table():
    boxes = pd.DataFrame({
        "ImageID": pd.Categorical(["i1", "i1", "i2", "i3", "i3", "i3"]),
        "LabelName": pd.Categorical(["/m/a", "/m/b", "/m/a", "/m/c", "/m/c", "/m/d"]),
    })
    spec = make_levels({"/m/a": 2, "/m/b": 1, "/m/c": 2, "/m/d": 1}, [2])
    table = levels.level_table(spec, boxes)
    # level1 = {a, c}: boxes on i1, i2, i3 (4 boxes); level2 = {b, d}: i1, i3 (2 boxes).
    assert table[["classes", "images", "boxes"]].values.tolist() == [[2, 3, 4], [2, 2, 2]]
    assert table["boxes_per_image"].tolist() == pytest.approx([4 / 3, 1.0])


def test_command_on_demo_data(tmp_path, capsys):
    data = tmp_path / "data"
    demo_data.write_dataset(str(data), seed=3, images=30, test_images=2, progress=False)
    out, plot = tmp_path / "levels.json", tmp_path / "levels.png"
    assert levels.main(["--data_dir", str(data), "--level_sizes", "5", "--parents_level",
                        "--out", str(out), "--plot", str(plot)]) == 0
    spec = LevelSpec.load(str(out))
    kinds = [lv.kind for lv in spec.levels]
    assert kinds == ["count", "count", "parents"]
    # Parents: the demo's classes with Subcategory children.
    assert set(spec.level(3).classes) == {demo_data.POLYGON, demo_data.QUAD, demo_data.ROUND,
                                          demo_data.SYMBOL}
    assert sum(len(lv.classes) for lv in spec.levels) == len(demo_data.CLASSES)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "level kind" in printed and "parents" in printed


def test_command_makes_the_original_shape_on_demo_data(tmp_path, capsys):
    data = tmp_path / "data"
    demo_data.write_dataset(str(data), seed=3, images=30, test_images=2, progress=False)
    out = tmp_path / "levels.json"
    assert levels.main(["--data_dir", str(data), "--level_sizes", "2,2,2", "--hard_classes",
                        demo_data.EYE, "--parents_level_sizes", "2", "--out", str(out)]) == 0
    spec = LevelSpec.load(str(out))
    assert [(lv.kind, len(lv.classes)) for lv in spec.levels] == [
        ("count", 2), ("count", 2), ("count", 2), ("count", 2), ("hard", 1), ("parents", 2),
        ("parents", 2)]
    # Polygon (parent of Triangle, Quadrilateral, Square, Diamond, Star) is scored on the
    # most boxes of the four parents: it is in the first parents level.
    assert demo_data.POLYGON in spec.level(6).classes
    assert "with descendants" in capsys.readouterr().out


def test_levels_from_boxes_is_the_command_with_its_defaults(tmp_path):
    data = tmp_path / "data"
    demo_data.write_dataset(str(data), seed=2, images=20, test_images=1, progress=False)
    out = tmp_path / "levels.json"
    assert levels.main(["--data_dir", str(data), "--level_sizes", "4", "--parents_level",
                        "--out", str(out), "--plot", str(tmp_path / "levels.png")]) == 0
    lay = DataLayout(str(data))
    classes = load_classes(lay.classes)
    boxes, _ = read_boxes(lay.train_boxes, classes)
    assert levels.levels_from_boxes(boxes, classes, load_hierarchy(lay.hierarchy), [4],
                                    parents_level=True) == LevelSpec.load(str(out))
    default = levels.levels_from_boxes(boxes, classes)
    assert [len(lv.classes) for lv in default.levels] == [len(demo_data.CLASSES)]
    assert levels.DEFAULT_LEVEL_SIZES == (100, 150)


@pytest.mark.parametrize("text, sizes", [("100,150", [100, 150]), (" 5 ,", [5]), ("", [])])
def test_parse_level_sizes(text, sizes):
    assert levels.parse_level_sizes(text) == sizes


@pytest.mark.parametrize("text", ["abc", "0", "-5", "3,1.5"])
def test_parse_level_sizes_refuses(text):
    with pytest.raises(UsageError, match=f"^--level_sizes={text}: "):
        levels.parse_level_sizes(text)


@pytest.mark.parametrize("text, line, problem", [
    ('{"version": 1,\n "levels": [', 2, "not valid JSON"),
    ('[1, 2]', None, "expected a JSON object"),
    ('{"version": 1, "levels": [{"index": 1, "classes": []}]}', None, "needs 'index'"),
    ('{"version": 1, "levels": [{"index": 1, "kind": "big", "classes": ["/m/a"]}]}', None,
     "kind 'big'"),
])
def test_load_names_the_file_for_a_broken_spec(tmp_path, text, line, problem):
    path = tmp_path / "levels.json"
    path.write_text(text)
    with pytest.raises(InputFileError, match=problem) as e:
        LevelSpec.load(str(path))
    assert (e.value.path, e.value.line) == (str(path), line)


def test_check_classes_names_the_line_of_an_unknown_mid(tmp_path):
    path = tmp_path / "levels.json"
    make_levels(COUNTS, [2]).save(str(path))
    table = ClassTable(("/m/a", "/m/b", "/m/c"), ("A", "B", "C"))  # no /m/d
    with pytest.raises(InputFileError, match="class /m/d of level 2 is not in the class table"
                       ) as e:
        LevelSpec.load(str(path)).check_classes(table, str(path), "classes.csv")
    lines = [line.strip() for line in path.read_text().splitlines()]
    assert e.value.line == lines.index('"/m/d"') + 1


def test_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "levels.json"
    spec = make_levels(COUNTS, [2])
    monkeypatch.setattr(levels.json, "dump", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        spec.save(str(path))
    assert os.listdir(tmp_path) == []
