"""oid.submission: detections per image, hierarchy expansion, level merging, WBF, the writer.

Boxes in this file are (ymin, xmin, ymax, xmax) like the library's; the submission
text puts x first, which the round-trip tests pin.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from oid import ROOT_MID, demo_data
from oid.classes import ClassTable
from oid.errors import InputFileError
from oid.hierarchy import Hierarchy
from oid.metric import main as metric_main
from oid.submission import (
    ImageDetections,
    SubmissionWriter,
    drop_duplicate_boxes,
    expand_to_ancestors,
    format_rows,
    keep_top_k,
    merge_by_image_id,
    merge_levels,
    read_submission,
    read_submission_rows,
    weighted_boxes_fusion,
)

THING, ANIMAL, TOY, DOG, TEDDY, TAIL = ("/m/0thing", "/m/0animal", "/m/0toy", "/m/0dog",
                                        "/m/0teddy", "/m/0tail")
# Thing ─┬─ Animal ─┬─ Dog (Part: Tail)
#        │          └─ Teddy          Teddy has two parents, Animal and Toy, which share
#        └─ Toy ──── Teddy            the grandparent Thing.
TINY = Hierarchy.from_json({"LabelName": ROOT_MID, "Subcategory": [
    {"LabelName": THING, "Subcategory": [
        {"LabelName": ANIMAL, "Subcategory": [
            {"LabelName": DOG, "Part": [{"LabelName": TAIL}]}, {"LabelName": TEDDY}]},
        {"LabelName": TOY, "Subcategory": [{"LabelName": TEDDY}]}]},
    {"LabelName": TAIL}]})

B1 = (0.1, 0.2, 0.3, 0.4)
B2 = (0.5, 0.5, 0.9, 0.8)


def dets(image_id: str, *rows) -> ImageDetections:
    """rows: (MID, score, box)."""
    if not rows:
        return ImageDetections.empty(image_id)
    return ImageDetections(image_id, [r[2] for r in rows], [r[1] for r in rows],
                           [r[0] for r in rows])


def rows_of(d: ImageDetections) -> list[tuple]:
    """(MID, score, box) rows, rounded to float32 precision, in order."""
    return [(m, round(float(s), 6), tuple(round(float(v), 6) for v in b))
            for m, s, b in zip(d.mids, d.scores, d.boxes, strict=True)]


# -- ImageDetections and keep_top_k ------------------------------------------------------------


def test_image_detections_converts_and_checks():
    d = ImageDetections(b"img", [[0, 0, 1, 1]], [1], np.array([b"/m/01"], object))
    assert d.image_id == "img" and d.mids[0] == "/m/01"
    assert d.boxes.dtype == np.float32 and d.scores.dtype == np.float32
    assert d.mids.dtype == object
    with pytest.raises(ValueError, match="1 boxes, 2 scores"):
        ImageDetections("x", [[0, 0, 1, 1]], [1, 2], ["/m/a"])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        ImageDetections("x", [[0, 0, 1]], [1], ["/m/a"])


def test_empty_has_the_right_shapes():
    e = ImageDetections.empty("img")
    assert len(e) == 0 and e.boxes.shape == (0, 4) and e.mids.dtype == object


def test_keep_top_k_threshold_inclusive_highest_first_ties_in_order():
    d = dets("i", ("/m/a", 0.2, B1), ("/m/b", 0.9, B1), ("/m/c", 0.5, B1), ("/m/d", 0.5, B2),
             ("/m/e", 0.1, B1))
    assert list(keep_top_k(d, 10, 0.2).mids) == ["/m/b", "/m/c", "/m/d", "/m/a"]
    assert list(keep_top_k(d, 2, 0.0).mids) == ["/m/b", "/m/c"]
    assert len(keep_top_k(d, 0, 0.0)) == 0
    assert len(keep_top_k(ImageDetections.empty("i"), 5, 0.0)) == 0


# -- hierarchy expansion -----------------------------------------------------------------------


def test_expansion_two_parents_sharing_a_grandparent_gives_it_once():
    # Teddy -> itself + Animal, Thing, Toy (sorted by MID); Thing once although reached twice.
    out = expand_to_ancestors(dets("i", (TEDDY, 0.9, B1)), TINY)
    assert rows_of(out) == [(TEDDY, 0.9, B1), (ANIMAL, 0.9, B1), (THING, 0.9, B1),
                            (TOY, 0.9, B1)]


def test_expansion_part_is_not_an_ancestor():
    # Tail is a Part of Dog: a tail box is no dog box, so it is not copied.
    assert rows_of(expand_to_ancestors(dets("i", (TAIL, 0.7, B1)), TINY)) == [(TAIL, 0.7, B1)]


def test_expansion_class_absent_from_hierarchy_keeps_its_rows():
    out = expand_to_ancestors(dets("i", ("/m/0unknown", 0.4, B1), (DOG, 0.8, B2)), TINY)
    # Highest score first: Dog, its copies (Animal, Thing), then the unknown class alone.
    assert rows_of(out) == [(DOG, 0.8, B2), (ANIMAL, 0.8, B2), (THING, 0.8, B2),
                            ("/m/0unknown", 0.4, B1)]


def test_expansion_accepts_an_ancestors_map():
    d = dets("i", (TEDDY, 0.9, B1), (TAIL, 0.5, B2))
    assert rows_of(expand_to_ancestors(d, TINY.ancestors_map())) == \
        rows_of(expand_to_ancestors(d, TINY))


def test_expansion_demo_hierarchy_star_has_two_parents():
    h = demo_data.hierarchy()
    d = dets("i", (demo_data.STAR, 0.9, B1), (demo_data.EYE, 0.6, B2),
             (demo_data.SQUARE, 0.5, B2))
    got = rows_of(expand_to_ancestors(d, h))
    # Star -> Polygon, Symbol; Eye is a Part of Smiley: not copied;
    # Square -> Quadrilateral, Polygon.
    assert got == [
        (demo_data.STAR, 0.9, B1), (demo_data.POLYGON, 0.9, B1), (demo_data.SYMBOL, 0.9, B1),
        (demo_data.EYE, 0.6, B2),
        (demo_data.SQUARE, 0.5, B2), (demo_data.POLYGON, 0.5, B2), (demo_data.QUAD, 0.5, B2)]


def test_expansion_dedups_identical_boxes_keeping_the_max_score():
    # A level-2 model's Animal box and a Dog box copied up to Animal with the same
    # coordinates are one Animal box, at the higher score (0.8); the Animal box at B2
    # differs in coordinates and stays.
    d = dets("i", (ANIMAL, 0.6, B1), (DOG, 0.8, B1), (ANIMAL, 0.3, B2))
    got = rows_of(expand_to_ancestors(d, TINY))
    assert got == [(DOG, 0.8, B1), (ANIMAL, 0.8, B1), (THING, 0.8, B1),
                   (ANIMAL, 0.3, B2), (THING, 0.3, B2)]


def test_dedup_keeps_different_classes_and_near_boxes():
    near = (0.1, 0.2, 0.3, 0.4000001)
    d = dets("i", (DOG, 0.5, B1), (TOY, 0.4, B1), (DOG, 0.3, near), (DOG, 0.7, B1))
    assert rows_of(drop_duplicate_boxes(d)) == [(DOG, 0.7, B1), (TOY, 0.4, B1),
                                                (DOG, 0.3, tuple(round(v, 6) for v in near))]


def test_expansion_of_empty_image():
    assert len(expand_to_ancestors(ImageDetections.empty("i"), TINY)) == 0


# -- merging levels ----------------------------------------------------------------------------


def test_merge_levels_concatenates_and_checks_ids():
    a, b = dets("x", (DOG, 0.9, B1)), dets("x", (TOY, 0.5, B2))
    assert rows_of(merge_levels([a, b])) == rows_of(a) + rows_of(b)
    with pytest.raises(ValueError, match="different images"):
        merge_levels([a, dets("y", (TOY, 0.5, B2))])
    with pytest.raises(ValueError):
        merge_levels([])


def test_merge_by_image_id_streams_in_different_orders_and_a_missing_image():
    level1 = [dets("A", (DOG, 0.9, B1)), dets("B", (DOG, 0.8, B1)), dets("C", (DOG, 0.7, B1))]
    level2 = [dets("C", (TOY, 0.6, B2)), dets("A", (TOY, 0.5, B2))]  # no B
    level3 = [dets("B", (TAIL, 0.4, B2)), dets("C"), dets("A", (TAIL, 0.3, B2))]
    out = {d.image_id: rows_of(d) for d in merge_by_image_id([level1, level2, level3])}
    assert out == {
        "A": [(DOG, 0.9, B1), (TOY, 0.5, B2), (TAIL, 0.3, B2)],
        "B": [(DOG, 0.8, B1), (TAIL, 0.4, B2)],  # missing from level 2: still comes out
        "C": [(DOG, 0.7, B1), (TOY, 0.6, B2)],
    }


def test_merge_by_image_id_same_order_streams_through():
    read = [0, 0]

    def stream(s: int, n: int):
        for k in range(n):
            read[s] += 1
            yield dets(f"img{k}", (DOG, 0.5, B1))

    for k, merged in enumerate(merge_by_image_id([stream(0, 50), stream(1, 50)])):
        assert merged.image_id == f"img{k}" and len(merged) == 2
        assert max(read) <= k + 1  # nothing read ahead: at most one image held


def test_merge_by_image_id_refuses_an_image_listed_twice():
    with pytest.raises(ValueError, match="stream 1 lists image 'A' twice"):
        list(merge_by_image_id([[dets("A"), dets("B")], [dets("A"), dets("A")]]))
    with pytest.raises(ValueError, match="stream 0 lists image 'A' twice"):
        list(merge_by_image_id([[dets("A"), dets("A")]]))


def test_merge_by_image_id_one_stream_and_none():
    assert [d.image_id for d in merge_by_image_id([[dets("A"), dets("B")]])] == ["A", "B"]
    assert list(merge_by_image_id([])) == []


# -- weighted boxes fusion ---------------------------------------------------------------------

A = (0.1, 0.1, 0.5, 0.5)
A_WIDE = (0.1, 0.1, 0.5, 0.7)  # IoU with A = 0.16 / 0.24 = 0.667
FAR = (0.7, 0.7, 0.9, 0.9)


def test_wbf_two_overlapping_boxes_fuse_to_the_weighted_mean():
    out = weighted_boxes_fusion([dets("i", (DOG, 0.9, A)), dets("i", (DOG, 0.6, A_WIDE))])
    # xmax = (0.9 * 0.5 + 0.6 * 0.7) / 1.5 = 0.58; score = mean(0.9, 0.6) * min(2, 2) / 2.
    assert rows_of(out) == [(DOG, 0.75, (0.1, 0.1, 0.5, 0.58))]


def test_wbf_model_weights():
    out = weighted_boxes_fusion([dets("i", (DOG, 0.9, A)), dets("i", (DOG, 0.6, A_WIDE))],
                                weights=[2, 1])
    # Weighted scores 1.8 and 0.6: xmax = (1.8 * 0.5 + 0.6 * 0.7) / 2.4 = 0.55;
    # score = mean(1.8, 0.6) * min(2, 2) / (2 + 1) = 0.8.
    assert rows_of(out) == [(DOG, 0.8, (0.1, 0.1, 0.5, 0.55))]


def test_wbf_non_overlapping_boxes_stay_and_are_demoted():
    out = weighted_boxes_fusion([dets("i", (DOG, 0.8, A)), dets("i", (DOG, 0.4, FAR))])
    # One member each out of two models: score * 1 / 2.
    assert rows_of(out) == [(DOG, 0.4, A), (DOG, 0.2, FAR)]


def test_wbf_different_classes_never_fuse():
    out = weighted_boxes_fusion([dets("i", (DOG, 0.8, A)), dets("i", (TOY, 0.6, A))])
    assert rows_of(out) == [(DOG, 0.4, A), (TOY, 0.3, A)]


def test_wbf_one_model_only():
    d = dets("i", (DOG, 0.8, A), (DOG, 0.5, FAR), (TOY, 0.3, A))
    assert rows_of(weighted_boxes_fusion([d])) == rows_of(d)
    # Its own overlapping boxes still fuse: score = mean(0.8, 0.4) * min(2, 1) / 1.
    fused = weighted_boxes_fusion([dets("i", (DOG, 0.8, A), (DOG, 0.4, A_WIDE))])
    assert rows_of(fused) == [(DOG, 0.6, (0.1, 0.1, 0.5, round(1.0 / 1.2 * 0.68, 6)))]


def test_wbf_matches_against_the_updated_fused_box():
    # A joins first (0.9); C = (0.1, 0.1, 0.5, 0.9) has IoU 0.16 / 0.32 = 0.5 with A, too
    # little, but after A_WIDE (0.6) the fused box reaches xmax 0.58: IoU 0.192 / 0.32 = 0.6.
    out = weighted_boxes_fusion([dets("i", (DOG, 0.9, A)), dets("i", (DOG, 0.6, A_WIDE)),
                                 dets("i", (DOG, 0.3, (0.1, 0.1, 0.5, 0.9)))])
    # xmax = (0.45 + 0.42 + 0.27) / 1.8 = 0.633333; score = 0.6 * 3 / 3.
    assert rows_of(out) == [(DOG, 0.6, (0.1, 0.1, 0.5, 0.633333))]


def test_wbf_skip_score_zero_area_and_errors():
    out = weighted_boxes_fusion([dets("i", (DOG, 0.8, A), (DOG, 0.05, FAR),
                                      (DOG, 0.9, (0.2, 0.2, 0.2, 0.6)))], skip_score=0.1)
    assert rows_of(out) == [(DOG, 0.8, A)]
    assert len(weighted_boxes_fusion([ImageDetections.empty("i")])) == 0
    with pytest.raises(ValueError, match="different images"):
        weighted_boxes_fusion([dets("i"), dets("j")])
    with pytest.raises(ValueError, match="1 weights for 2 models"):
        weighted_boxes_fusion([dets("i"), dets("i")], weights=[1])


def reference_wbf(models: list[ImageDetections], weights, iou_threshold) -> list[tuple]:
    """A straightforward box-by-box loop with the same semantics (ensemble-boxes' algorithm)."""
    rows = [(m, float(s) * weights[k], k, r, np.clip(b.astype(np.float64), 0, 1))
            for k, d in enumerate(models) for r, (m, s, b) in enumerate(
                zip(d.mids, d.scores, d.boxes, strict=True))]
    out = []
    for mid in dict.fromkeys(r[0] for r in rows):
        clusters: list[list] = []  # [sum_w, sum_box, n, box]
        for _, w, _, _, b in sorted((r for r in rows if r[0] == mid), key=lambda r: (-r[1], r[2],
                                                                                    r[3])):
            best, best_iou = None, iou_threshold
            for c in clusters:
                f = c[3]
                inter = (max(0.0, min(b[2], f[2]) - max(b[0], f[0]))
                         * max(0.0, min(b[3], f[3]) - max(b[1], f[1])))
                union = (b[2] - b[0]) * (b[3] - b[1]) + (f[2] - f[0]) * (f[3] - f[1]) - inter
                if inter / union > best_iou:
                    best, best_iou = c, inter / union
            if best is None:
                clusters.append([w, w * b, 1, b])
            else:
                best[0] += w
                best[1] = best[1] + w * b
                best[2] += 1
                best[3] = best[1] / best[0]
        out += [(mid, c[0] / c[2] * min(c[2], len(models)) / sum(weights), tuple(c[3]))
                for c in clusters]
    return sorted(out, key=lambda r: (-r[1], r[0], r[2]))


@pytest.mark.parametrize("seed", range(20))
def test_wbf_lockstep_equals_box_by_box_loop(seed):
    rng = np.random.default_rng(seed)
    models = []
    for _ in range(rng.integers(1, 4)):
        n = int(rng.integers(0, 25))
        centre = rng.choice([0.3, 0.6], (n, 2)) + rng.normal(0, 0.03, (n, 2))
        half = rng.uniform(0.05, 0.15, (n, 2))
        boxes = np.concatenate([centre - half, centre + half], 1)  # some cross the border
        models.append(ImageDetections("i", boxes, rng.uniform(0.05, 1, n),
                                      rng.choice([DOG, TOY, TEDDY], n)))
    weights = rng.uniform(0.5, 2, len(models)).tolist()
    got = weighted_boxes_fusion(models, weights, iou_threshold=0.55)
    want = reference_wbf(models, weights, 0.55)
    got_rows = sorted(zip(got.mids, got.scores, got.boxes.tolist(), strict=True),
                      key=lambda r: (-r[1], r[0], tuple(r[2])))
    assert len(got_rows) == len(want)
    for (m, s, b), (wm, ws, wb) in zip(got_rows, want, strict=True):
        assert m == wm
        np.testing.assert_allclose(s, ws, rtol=1e-6)
        np.testing.assert_allclose(b, wb, atol=1e-6)


# -- the writer --------------------------------------------------------------------------------


def read_lines(path) -> list[str]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        return f.read().splitlines()


def test_writer_coordinates_x_first_and_round_trip(tmp_path):
    path = tmp_path / "sub.csv"
    d = dets("img1", (DOG, 0.9, (0.1, 0.2, 0.3, 0.4)), (TOY, 0.123456789, B2))
    with SubmissionWriter(str(path)) as w:
        w.write(d)
    assert read_lines(path) == [
        "ImageId,PredictionString",
        f"img1,{DOG} 0.9 0.200000 0.100000 0.400000 0.300000 "  # XMin YMin XMax YMax
        f"{TOY} 0.123457 0.500000 0.500000 0.800000 0.900000"]
    (back,) = read_submission_rows(str(path))
    assert back.image_id == "img1" and list(back.mids) == [DOG, TOY]
    np.testing.assert_allclose(back.boxes, d.boxes, atol=5e-7)
    np.testing.assert_allclose(back.scores, [0.9, 0.123457], atol=1e-7)


def test_writer_empty_image_row(tmp_path):
    path = tmp_path / "sub.csv"
    with SubmissionWriter(str(path)) as w:
        w.write(ImageDetections.empty("nothing"))
        w.write(dets("one", (DOG, 0.5, B1)))
    assert read_lines(path)[1] == "nothing,"
    rows = list(read_submission_rows(str(path)))
    assert [r.image_id for r in rows] == ["nothing", "one"] and len(rows[0]) == 0
    assert w.stats.rows == 2 and w.stats.detections == 1 and w.stats.images_with_detections == 1


def test_writer_every_expected_id_present(tmp_path):
    path = tmp_path / "sub.csv"
    with SubmissionWriter(str(path), image_ids=["a", "b", "c", "d"]) as w:
        w.write(dets("c", (DOG, 0.5, B1)))
        w.write(dets("a"))
    stats = w.stats
    assert [line.split(",")[0] for line in read_lines(path)[1:]] == ["c", "a", "b", "d"]
    assert read_lines(path)[3:] == ["b,", "d,"]
    assert (stats.rows, stats.filled, stats.detections) == (4, 2, 1)


def test_writer_refuses_duplicates_unexpected_and_bad_values(tmp_path):
    w = SubmissionWriter(str(tmp_path / "sub.csv"), image_ids=["a", "b"])
    w.write(dets("a"))
    with pytest.raises(ValueError, match="'a' is written twice"):
        w.write(dets("a", (DOG, 0.5, B1)))
    with pytest.raises(ValueError, match="'z' is not among the 2 expected"):
        w.write(dets("z"))
    with pytest.raises(ValueError, match="not a finite number"):
        w.write(dets("b", (DOG, float("nan"), B1)))
    w.close()
    with pytest.raises(ValueError, match="lists 'x' twice"):
        SubmissionWriter(str(tmp_path / "other.csv"), image_ids=["x", "y", "x"])
    w = SubmissionWriter(str(tmp_path / "ids.csv"))
    with pytest.raises(ValueError, match="comma, quote or whitespace"):
        w.write(dets("a,b"))
    w.close()


def test_writer_label_that_is_no_mid_names_the_image(tmp_path):
    path = tmp_path / "sub.csv"
    with pytest.raises(ValueError, match="'img2' has the label 'Dog'"):
        with SubmissionWriter(str(path)) as w:
            w.write(dets("img1", (DOG, 0.5, B1)))
            w.write(dets("img2", ("Dog", 0.5, B1)))
    # The failed run left neither the submission nor its partial file.
    assert os.listdir(tmp_path) == []


def test_writer_gzip_round_trip(tmp_path):
    images = [dets(f"img{k}", *[(DOG if j % 2 else TEDDY, 0.1 * (j + 1), B1 if j % 3 else B2)
                                for j in range(k)]) for k in range(6)]
    plain, packed = str(tmp_path / "sub.csv"), str(tmp_path / "sub.csv.gz")
    for path in (plain, packed):
        # flush_detections=4: several flushes, the buffer is not the whole file.
        with SubmissionWriter(path, [d.image_id for d in images] + ["extra"],
                              flush_detections=4) as w:
            for d in images:
                w.write(d)
    with open(packed, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    assert read_lines(packed) == read_lines(plain)
    back = list(read_submission_rows(packed))
    assert [r.image_id for r in back] == [d.image_id for d in images] + ["extra"]
    for got, want in zip(back, images, strict=False):
        assert rows_of(got) == rows_of(want)
    # The metric's reader takes the gzipped file too, with the same result.
    classes = ClassTable((DOG, TEDDY), ("Dog", "Teddy bear"))
    (a, _), (b, _) = read_submission(plain, classes), read_submission(packed, classes)
    assert list(a.image_ids) == list(b.image_ids)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_writer_number_formats_match_printf():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(1e-4, 1, 500), [0.5078125, 1.0, 0.0001, 0.25]]
                            ).astype(np.float32)
    coords = np.concatenate([rng.uniform(-0.1, 1.1, 500), [0.5078125, 0.0, 1.0, -0.0, 1e-7]]
                            ).astype(np.float32)
    n = len(coords)
    d = ImageDetections("i", np.stack([coords] * 4, 1), np.resize(scores, n),
                        np.full(n, DOG, object))
    tokens = bytes(format_rows([d])).decode().strip().split(",")[1].split()
    groups = [tokens[k:k + 6] for k in range(0, len(tokens), 6)]
    for (mid, score, x0, y0, x1, y1), s, c in zip(groups, d.scores, coords, strict=True):
        assert mid == DOG
        assert score == f"{float(s):.6g}"  # scores >= 1e-4: no exponent
        assert x0 == y0 == x1 == y1 == f"{min(max(float(c), 0.0), 1.0) + 0.0:.6f}"  # -0.0 as 0


def test_written_submission_scores_map_one_with_oid_metric(tmp_path, capsys):
    """Ground-truth boxes written as detections (expanded) score mAP 1.0 with oid.metric."""
    D = demo_data  # noqa: N806 (short for the many demo_data names below)
    classes_csv = tmp_path / "classes.csv"
    classes_csv.write_text("".join(f"{m},{n}\n" for m, n in D.CLASSES))
    hierarchy_json = tmp_path / "hierarchy.json"
    hierarchy_json.write_text(json.dumps(D.HIERARCHY_JSON))
    # (image, MID, (ymin, xmin, ymax, xmax)): a Star (two parents), a Square (grandparent
    # Polygon), an Eye (a Part: not expanded), a Circle.
    gt = [("img1", D.STAR, (0.1, 0.1, 0.4, 0.3)), ("img1", D.EYE, (0.5, 0.5, 0.6, 0.6)),
          ("img2", D.SQUARE, (0.2, 0.3, 0.7, 0.9)), ("img2", D.CIRCLE, (0.0, 0.0, 0.25, 0.5))]
    boxes_csv = tmp_path / "boxes.csv"
    boxes_csv.write_text(D.BOX_HEADER + "\n" + "".join(
        f"{i},xclick,{m},1,{b[1]},{b[3]},{b[0]},{b[2]},0,0,0,0,0\n" for i, m, b in gt))
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text(D.LABEL_HEADER + "\n" + "".join(
        f"{i},verification,{m},1\n" for i, m, _ in gt))
    hierarchy = D.hierarchy()

    def score(path: str, expand: bool) -> float:
        with SubmissionWriter(path, image_ids=["img1", "img2", "img3"]) as w:
            for image in ("img2", "img1"):
                d = dets(image, *[(m, 0.9, b) for i, m, b in gt if i == image])
                w.write(expand_to_ancestors(d, hierarchy) if expand else d)
        assert w.stats.filled == 1  # img3 (no detections) gets an empty row
        assert metric_main(["--boxes", str(boxes_csv), "--labels", str(labels_csv),
                            "--hierarchy", str(hierarchy_json), "--classes", str(classes_csv),
                            "--predictions", path]) == 0
        return json.loads(capsys.readouterr().out)["mAP"]

    assert score(str(tmp_path / "sub.csv.gz"), expand=True) == 1.0
    # Without the copies to ancestors, the four expanded classes (Polygon, Symbol,
    # Quadrilateral, Round shape) have AP 0 and the four boxed ones AP 1: 4 / 8.
    assert score(str(tmp_path / "plain.csv"), expand=False) == 0.5


def test_read_submission_rows_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(f"ImageId,PredictionString\na,\nb,{DOG} 0.5 0.1 0.2\n")
    with pytest.raises(InputFileError,
                       match=r"bad.csv:3: ImageId 'b', bad_token_count: .* has 4 tokens"):
        list(read_submission_rows(str(path)))
    path.write_text("ImageID,Score\n")
    with pytest.raises(InputFileError, match="bad.csv:1: expected the header"):
        list(read_submission_rows(str(path)))
    path.write_text(f"ImageId,PredictionString\na,{DOG} x 0.1 0.2 0.3 0.4\n")
    with pytest.raises(InputFileError, match="bad.csv:2"):
        list(read_submission_rows(str(path)))


def test_read_submission_rows_checks_like_read_submission_but_the_class_list(tmp_path):
    # One parser: the metric's checks hold here too, except that any label is kept.
    path = tmp_path / "sub.csv"
    path.write_text(f"ImageId,PredictionString\na,/m/0any 0.5 0.1 0.2 0.3 0.4\n"
                    f"b,{DOG} 0.5 0.1 0.2 0.3 0.4\na,\n")
    with pytest.raises(InputFileError, match=r"sub.csv:4: ImageId 'a', duplicate_image_id"):
        list(read_submission_rows(str(path)))
    path.write_text("ImageId,PredictionString\na,/m/0any 0.5 0.1 0.2 1.5 0.4\n")
    with pytest.raises(InputFileError, match=r"sub.csv:2: .*XMax=1.5 is outside \[0, 1\]"):
        list(read_submission_rows(str(path)))
    path.write_text("ImageId,PredictionString\na,/m/0any 0.5 0.1 0.2 0.3 0.4\n")
    (row,) = read_submission_rows(str(path))
    assert row.mids.tolist() == ["/m/0any"]


def test_read_submission_rows_refuses_scores_and_boxes_the_metric_refuses(tmp_path):
    # predict.py's files pass: its scores (sigmoids, and their fusion with equal weights)
    # lie in [0, 1], and clipping to [0, 1] keeps min <= max.
    path = tmp_path / "sub.csv"
    path.write_text(f"ImageId,PredictionString\na,{DOG} 1.5 0.1 0.2 0.3 0.4\n")
    with pytest.raises(InputFileError, match=r"sub.csv:2: .*score_out_of_range: Score=1.5"):
        list(read_submission_rows(str(path)))
    path.write_text(f"ImageId,PredictionString\na,{DOG} 0.5 0.3 0.2 0.1 0.4\n")
    with pytest.raises(InputFileError, match=r"sub.csv:2: .*min_greater_than_max: XMin=0.3 > "
                                             r"XMax=0.1"):
        list(read_submission_rows(str(path)))


def test_a_cut_gzip_submission_is_an_error_naming_the_file_even_when_lenient(tmp_path):
    from oid.submission import read_submission

    path = tmp_path / "sub.csv.gz"
    text = "ImageId,PredictionString\n" + f"a,{DOG} 0.5 0.1 0.2 0.3 0.4\n" * 500
    packed = gzip.compress(text.encode())
    path.write_bytes(packed[:len(packed) // 2])
    classes = ClassTable((DOG,), ("Dog",))
    for lenient in (False, True):
        with pytest.raises(InputFileError, match=r"sub.csv.gz: truncated or not gzip: .*cut "
                                                 r"short.*not even --lenient") as e:
            read_submission(str(path), classes, lenient=lenient)
        assert e.value.path == str(path) and e.value.line is None
    with pytest.raises(InputFileError, match="truncated or not gzip"):
        list(read_submission_rows(str(path)))
