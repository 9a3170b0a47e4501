import json

import pytest

from oid import ROOT_MID
from oid.errors import InputFileError
from oid.hierarchy import Hierarchy, UnknownClassError, load_hierarchy

# root -> Animal -> {Dog, Cat}; Toy -> Teddy; Teddy is also under Animal
# (two parents); Person has Part Face; Face is also top-level.
TINY = {
    "LabelName": ROOT_MID,
    "Subcategory": [
        {"LabelName": "/m/animal", "Subcategory": [
            {"LabelName": "/m/dog"},
            {"LabelName": "/m/cat"},
            {"LabelName": "/m/teddy"},
        ]},
        {"LabelName": "/m/toy", "Subcategory": [{"LabelName": "/m/teddy"}]},
        {"LabelName": "/m/person", "Part": [{"LabelName": "/m/face"}]},
        {"LabelName": "/m/face"},
    ],
}


@pytest.fixture
def tiny():
    return Hierarchy.from_json(TINY)


def test_root_excluded(tiny):
    assert ROOT_MID not in tiny
    assert ROOT_MID not in tiny.ancestors("/m/dog")
    assert tiny.ancestors("/m/animal") == frozenset()
    with pytest.raises(UnknownClassError, match="virtual root"):
        tiny.ancestors(ROOT_MID)


def test_ancestors_and_descendants(tiny):
    assert tiny.ancestors("/m/dog") == {"/m/animal"}
    assert tiny.descendants("/m/animal") == {"/m/dog", "/m/cat", "/m/teddy"}
    assert tiny.children("/m/animal") == {"/m/dog", "/m/cat", "/m/teddy"}
    assert tiny.is_leaf("/m/dog") and not tiny.is_leaf("/m/animal")
    assert tiny.depth("/m/dog") == 2


def test_two_parents(tiny):
    assert tiny.parents("/m/teddy") == {"/m/animal", "/m/toy"}
    assert tiny.ancestors("/m/teddy") == {"/m/animal", "/m/toy"}
    assert "/m/teddy" in tiny.descendants("/m/toy")


def test_part_is_not_an_ancestor(tiny):
    # A face box is no person box: Part edges are kept apart.
    assert tiny.ancestors("/m/face") == frozenset()
    assert tiny.descendants("/m/person") == frozenset()
    assert tiny.parts("/m/person") == {"/m/face"}
    assert tiny.wholes("/m/face") == {"/m/person"}
    assert tiny.wholes("/m/dog") == frozenset()


def test_unknown_mid(tiny):
    with pytest.raises(UnknownClassError, match=r"'/m/unicorn' is not in the hierarchy"):
        tiny.ancestors("/m/unicorn")
    with pytest.raises(KeyError):
        tiny.descendants("/m/unicorn")


def test_part_only_class_is_a_class():
    h = Hierarchy.from_json({"LabelName": ROOT_MID, "Subcategory": [
        {"LabelName": "/m/car", "Part": [{"LabelName": "/m/wheel"}]}]})
    assert "/m/wheel" in h and h.ancestors("/m/wheel") == frozenset()
    assert h.wholes("/m/wheel") == {"/m/car"}


def test_subcategory_under_a_part_is_still_subcategory():
    h = Hierarchy.from_json({"LabelName": ROOT_MID, "Subcategory": [
        {"LabelName": "/m/person", "Part": [
            {"LabelName": "/m/face", "Subcategory": [{"LabelName": "/m/smile"}]}]}]})
    assert h.ancestors("/m/smile") == {"/m/face"}
    assert "/m/person" not in h.ancestors("/m/smile")


def test_cycle_is_an_error():
    with pytest.raises(InputFileError, match="cycle"):
        Hierarchy.from_json({"LabelName": ROOT_MID, "Subcategory": [
            {"LabelName": "/m/a", "Subcategory": [
                {"LabelName": "/m/b", "Subcategory": [{"LabelName": "/m/a"}]}]}]})


def test_bad_nodes():
    with pytest.raises(InputFileError, match="unknown keys"):
        Hierarchy.from_json({"LabelName": ROOT_MID, "Subcategory": [
            {"LabelName": "/m/a", "Children": []}]})
    with pytest.raises(InputFileError, match="no string 'LabelName'"):
        Hierarchy.from_json({"LabelName": ROOT_MID, "Subcategory": [{"Name": "/m/a"}]})


def test_json_round_trip(tiny):
    again = Hierarchy.from_json(tiny.to_json())
    assert again.classes == tiny.classes
    for c in tiny.classes:
        assert again.ancestors(c) == tiny.ancestors(c)
        assert again.parts(c) == tiny.parts(c)


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "h.json"
    path.write_text('{\n "LabelName": "/m/0bl9f",\n "Subcategory": [\n}')
    with pytest.raises(InputFileError, match=r"h.json:4: not valid JSON"):
        load_hierarchy(str(path))


def test_real_v4_hierarchy(openimages_dir):
    h = load_hierarchy(openimages_dir / "bbox_labels_600_hierarchy.json")
    # Figures from third_party/openimages/README.md.
    assert len(h) == 601
    assert sum(len(h.parents(c)) > 1 for c in h.classes) == 45
    assert sum(1 for c in h.classes if not h.parents(c)) == 90
    assert sum(1 for c in h.classes if not h.is_leaf(c)) == 76
    assert sum(1 for c in h.classes if h.ancestors(c)) == 511
    assert max(h.depth(c) for c in h.classes) == 5
    assert max(len(h.ancestors(c)) for c in h.classes) == 6
    # Cookie has three parents; Teddy bear is both an animal and a toy.
    assert len(h.parents("/m/021mn")) == 3
    assert {"/m/0jbk", "/m/0138tl"} <= h.ancestors("/m/0kmg4")  # Animal, Toy
    # Person (/m/01g317) has Part Human body (/m/02p0tk3), which has Part
    # Human face (/m/0dzct): neither is a kind of the other.
    assert h.parts("/m/01g317") == {"/m/02p0tk3"}
    assert "/m/0dzct" in h.parts("/m/02p0tk3")
    assert h.wholes("/m/0dzct") == {"/m/02p0tk3"}
    assert not {"/m/01g317", "/m/02p0tk3"} & h.ancestors("/m/0dzct")
    assert len({p for c in h.classes for p in h.parts(c)}) == 38


def test_real_500_hierarchy_matches_class_table(openimages_dir):
    from oid.classes import load_classes

    h = load_hierarchy(openimages_dir / "bbox_labels_500_hierarchy.json")
    table = load_classes(openimages_dir / "challenge-2018-class-descriptions-500.csv")
    assert h.classes == set(table.mids)
    assert sum(len(h.parents(c)) > 1 for c in h.classes) == 16
    assert max(len(h.ancestors(c)) for c in h.classes) == 5
    assert all(not h.parts(c) for c in h.classes)
    # Each ancestor once, even when reachable by two paths.
    amap = h.ancestors_map()
    assert all(len(v) == len(set(v)) for v in amap.values())


def test_crlf_file_parses(tmp_path):
    path = tmp_path / "h.json"
    path.write_bytes(json.dumps(TINY, indent=2).replace("\n", "\r\n").encode())
    assert load_hierarchy(str(path)).ancestors("/m/dog") == {"/m/animal"}
