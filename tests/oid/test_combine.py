"""python -m oid.combine and its per-image Combination: sources thresholded and capped, groups
fused, levels merged, parents stripped, boxes expanded, the final cap."""

import json

import numpy as np
import pytest

from oid.combine import Combination, CombineConfig, SourceSpec, main, nms_per_class
from oid.detection_cache import Chunk, ModelCache, cache_key
from oid.hierarchy import Hierarchy
from oid.submission import ImageDetections, SubmissionWriter, read_submission_rows

# green has two parents, shape and colour; red and blue are shapes.
TREE = {"LabelName": "/m/0bl9f", "Subcategory": [
    {"LabelName": "/m/shape", "Subcategory": [
        {"LabelName": "/m/red"}, {"LabelName": "/m/blue"}, {"LabelName": "/m/green"}]},
    {"LabelName": "/m/colour", "Subcategory": [{"LabelName": "/m/green"}]}]}
HIERARCHY = Hierarchy.from_json(TREE)
R, G = (0.1, 0.1, 0.5, 0.5), (0.2, 0.6, 0.4, 0.8)


def dets(image_id, *items):
    """(mid, score, box) triples."""
    return ImageDetections(image_id, np.array([b for _, _, b in items], np.float32).reshape(-1, 4),
                           np.array([s for _, s, _ in items], np.float32),
                           np.array([m for m, _, _ in items], object))


def rows(d):
    return [(m, round(float(s), 6), tuple(round(float(v), 6) for v in b))
            for m, s, b in zip(d.mids.tolist(), d.scores, d.boxes, strict=True)]


# -- Combination ------------------------------------------------------------------------------


def test_nms_per_class_keeps_the_best_of_overlapping_boxes_of_one_class():
    # a1 and a2 overlap by IoU 0.9 (a2 suppressed); a3 overlaps a1 by 0.25 (kept); b1 is
    # a1's box in another class (kept); equal scores keep their input order.
    d = dets("i", ("/m/a", 0.8, (0, 0, 1, 0.9)), ("/m/a", 0.9, (0, 0, 1, 1)),
             ("/m/b", 0.6, (0, 0, 1, 1)), ("/m/a", 0.7, (0, 0, 0.5, 0.5)),
             ("/m/c", 0.6, (0, 0, 1, 1)))
    out = nms_per_class(d, 0.5)
    assert rows(out) == [("/m/a", 0.9, (0, 0, 1, 1)), ("/m/a", 0.7, (0, 0, 0.5, 0.5)),
                         ("/m/b", 0.6, (0, 0, 1, 1)), ("/m/c", 0.6, (0, 0, 1, 1))]
    assert len(nms_per_class(d, 0.95)) == 5  # IoU 0.9 is not above 0.95


def test_each_source_is_thresholded_and_capped_before_the_merge():
    sources = [SourceSpec("l1", "level1", score_threshold=0.3, max_detections=1),
               SourceSpec("l2", "level2")]
    c = Combination(sources, CombineConfig(expand=False, score_threshold=0.0), None)
    one = dets("i", ("/m/red", 0.5, R), ("/m/red", 0.9, G), ("/m/blue", 0.2, R))
    two = dets("i", ("/m/blue", 0.1, G), ("/m/blue", 0.2, R))
    # Level 1: 0.2 < 0.3 dropped, then its best one (0.9); level 2 keeps both.
    assert rows(c("i", [one, two])) == [("/m/red", 0.9, G), ("/m/blue", 0.2, R),
                                        ("/m/blue", 0.1, G)]


def test_top_k_0_keeps_everything_above_the_threshold_and_top_k_caps_the_merged_row():
    d = dets("i", *[("/m/red", s, R) for s in (0.9, 0.5, 0.3, 0.1)])
    keep_all = Combination([SourceSpec("s", "g")], CombineConfig(expand=False, top_k=0,
                                                                 score_threshold=0.2), None)
    assert [s for _, s, _ in rows(keep_all("i", [d]))] == [0.9, 0.5, 0.3]
    capped = Combination([SourceSpec("s", "g")], CombineConfig(expand=False, top_k=2,
                                                               score_threshold=0.2), None)
    assert [s for _, s, _ in rows(capped("i", [d]))] == [0.9, 0.5]


@pytest.mark.parametrize("fusion, expected", [
    # wbf: one fused box, (0.9 * 3 + 0.5 * 1) / 2 members * min(2, 2) / (3 + 1) = 0.8.
    ("wbf", [("/m/red", 0.8, R)]),
    # concat: scores x weight / the largest weight (3): 0.9 and 0.5 / 3.
    ("concat", [("/m/red", 0.9, R), ("/m/red", 0.166667, R)]),
    # nms: the same, then the identical second box suppressed.
    ("nms", [("/m/red", 0.9, R)]),
])
def test_an_ensemble_is_fused_with_its_weights(fusion, expected):
    sources = [SourceSpec("a", "level1", weight=3.0), SourceSpec("b", "level1", weight=1.0)]
    c = Combination(sources, CombineConfig(fusion=fusion, expand=False, score_threshold=0.0),
                    None)
    assert rows(c("i", [dets("i", ("/m/red", 0.9, R)), dets("i", ("/m/red", 0.5, R))])) == \
        expected


def test_strip_parents_then_expand_keeps_only_copies_of_leaf_boxes():
    # Level 2's own shape box at G goes; red R is copied to shape.
    sources = [SourceSpec("l1", "level1"), SourceSpec("l2", "level2")]
    c = Combination(sources, CombineConfig(strip_parents=True, score_threshold=0.0), HIERARCHY)
    out = c("i", [dets("i", ("/m/red", 0.5, R)), dets("i", ("/m/shape", 0.9, G))])
    assert rows(out) == [("/m/red", 0.5, R), ("/m/shape", 0.5, R)]
    leaves = Combination(sources, CombineConfig(expand=False, strip_parents=True,
                                                score_threshold=0.0), HIERARCHY)
    assert rows(leaves("i", [dets("i", ("/m/red", 0.5, R)), dets("i", ("/m/shape", 0.9, G))])) \
        == [("/m/red", 0.5, R)]


def test_groups_merge_in_the_given_order_and_a_missing_source_is_no_detections():
    sources = [SourceSpec("l2", "level2"), SourceSpec("l1", "level1")]
    c = Combination(sources, CombineConfig(expand=False, score_threshold=0.0), None,
                    group_order=["level1", "level2"])
    # Equal scores keep the merge order: level 1 first.
    out = c("i", [dets("i", ("/m/blue", 0.5, G)), dets("i", ("/m/red", 0.5, R))])
    assert out.mids.tolist() == ["/m/red", "/m/blue"]
    assert rows(c("i", [None, dets("i", ("/m/red", 0.5, R))])) == [("/m/red", 0.5, R)]
    assert len(c("i", [None, None])) == 0


def test_a_combination_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="need the hierarchy"):
        Combination([SourceSpec("s", "g")], CombineConfig(expand=True), None)
    with pytest.raises(ValueError, match="weight must be positive"):
        Combination([SourceSpec("s", "g", weight=0.0)], CombineConfig(expand=False), None)
    with pytest.raises(ValueError, match="fusion must be one of"):
        CombineConfig(fusion="mean")


# -- the command ------------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path):
    """DATA/label/ with the class list and hierarchy of the tests above."""
    label = tmp_path / "data" / "label"
    label.mkdir(parents=True)
    (label / "challenge-2019-classes-description-500.csv").write_text(
        "".join(f"{m},{m[3:]}\n" for m in ("/m/red", "/m/blue", "/m/green", "/m/shape",
                                            "/m/colour")))
    (label / "challenge-2019-label500-hierarchy.json").write_text(json.dumps(TREE))
    return tmp_path / "data"


def write_cache(root, level, per_image, digest, chunk_images=2):
    """A model's cache folder under `root`: per_image = [ImageDetections]."""
    mids = ["/m/red", "/m/blue", "/m/green", "/m/shape"]
    meta = {"key": cache_key({"digest": digest, "level": level}), "run_dir": f"runs/{digest}",
            "level": level, "checkpoint": "ckpt-1", "mids": mids, "settings": {}}
    cache = ModelCache.create(str(root), meta)
    for index, first in enumerate(range(0, len(per_image), chunk_images)):
        cache.write(index, Chunk(tuple(per_image[first:first + chunk_images])))
    return cache


def combine(tmp_path, *args):
    out = tmp_path / "out.csv"
    status = main([*args, f"--output={out}", "--log_every_seconds=0"])
    return status, out


def test_the_command_merges_levels_and_expands(tmp_path, data):
    cache = tmp_path / "sub.csv.cache"
    write_cache(cache, 1, [dets("a", ("/m/red", 0.9, R)), dets("b"), dets("c")], "l1")
    write_cache(cache, 2, [dets("a", ("/m/green", 0.6, G)), dets("b"), dets("c")], "l2")
    status, out = combine(tmp_path, f"--cache={cache}", f"--data_dir={data}")
    assert status == 0
    # Highest first, each box then its ancestors in MID order; R is (ymin, xmin, ymax, xmax)
    # = (0.1, 0.1, 0.5, 0.5) and G = (0.2, 0.6, 0.4, 0.8), written XMin YMin XMax YMax.
    r, g = "0.100000 0.100000 0.500000 0.500000", "0.600000 0.200000 0.800000 0.400000"
    assert out.read_text().splitlines() == [
        "ImageId,PredictionString",
        f"a,/m/red 0.9 {r} /m/shape 0.9 {r} /m/green 0.6 {g} /m/colour 0.6 {g} /m/shape 0.6 {g}",
        "b,", "c,"]
    status, out = combine(tmp_path, f"--cache={cache}", f"--data_dir={data}", "--levels=1",
                          "--no-expand")
    assert status == 0 and out.read_text().splitlines()[1] == f"a,/m/red 0.9 {r}"


def test_the_command_fuses_an_ensemble_with_weights(tmp_path, data):
    cache = tmp_path / "c"
    a = write_cache(cache, 1, [dets("a", ("/m/red", 0.9, R))], "run_a")
    write_cache(cache, 1, [dets("a", ("/m/red", 0.5, R))], "run_b")
    status, out = combine(tmp_path, f"--cache={cache}", f"--data_dir={data}", "--no-expand",
                          f"--weight={a.name}=3")
    assert status == 0  # (0.9 * 3 + 0.5) / 2 * 2 / 4
    assert out.read_text().splitlines()[1] == "a,/m/red 0.8 0.100000 0.100000 0.500000 0.500000"
    # The same by run directory, and a source threshold that drops run_b's box: run_a alone,
    # 0.9 * 3 / 2 members... one member: 2.7 * min(1, 2) / 4 = 0.675.
    status, out = combine(tmp_path, f"--cache={cache}", f"--data_dir={data}", "--no-expand",
                          "--weight=runs/run_a=3", "--source_threshold=runs/run_b=0.6")
    assert status == 0 and out.read_text().splitlines()[1].startswith("a,/m/red 0.675 ")


def test_the_command_fuses_submission_files(tmp_path, data):
    paths = []
    for k, score in enumerate((0.9, 0.5)):
        path = tmp_path / f"s{k}.csv"
        with SubmissionWriter(str(path)) as writer:
            writer.write(dets("a", ("/m/red", score, R), ("/m/shape", score, R)))
            writer.write(dets("b"))
        paths.append(path)
    status, out = combine(tmp_path, *[f"--submission={p}" for p in paths],
                          f"--data_dir={data}", "--strip_parents", "--fusion=wbf")
    assert status == 0
    got = {d.image_id: rows(d) for d in read_submission_rows(str(out))}
    # shape boxes stripped, red fused to (0.9 + 0.5) / 2 = 0.7, then copied to shape.
    assert got == {"a": [("/m/red", 0.7, R), ("/m/shape", 0.7, R)], "b": []}


def test_the_command_refuses_bad_sources_with_one_line(tmp_path, data, capsys):
    cache = tmp_path / "c"
    write_cache(cache, 1, [dets("a", ("/m/red", 0.9, R))], "l1")
    status, _ = combine(tmp_path, f"--cache={cache}", f"--data_dir={data}", "--weight=level9=2")
    assert status == 2
    assert "error: --weight=level9=2: matches no source" in capsys.readouterr().err
    status, _ = combine(tmp_path, f"--cache={tmp_path / 'nope'}", f"--data_dir={data}")
    assert status == 2 and "nope: no such folder" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    with SubmissionWriter(str(bad)) as writer:
        writer.write(dets("a", ("/m/zebra", 0.9, R)))
    status, _ = combine(tmp_path, f"--submission={bad}", f"--data_dir={data}")
    err = capsys.readouterr().err
    assert status == 2 and f"error: {bad}: ImageId 'a' has the LabelName '/m/zebra'" in err
    status, _ = combine(tmp_path, f"--cache={cache}", "--no-expand", "--top_k=-1")
    assert status == 2 and "--top_k=-1: must be >= 0" in capsys.readouterr().err
    status, _ = combine(tmp_path, f"--cache={cache}")
    assert status == 2 and "error: --hierarchy is needed" in capsys.readouterr().err
