"""The records job end to end on a tiny dataset with one of each bad input."""

import csv
import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from apache_beam.testing import test_pipeline

from beam_jobs import make_records
from beam_jobs.plan import PlanConfig, plan_level
from oid import demo_data, levels, split
from oid.annotations import read_boxes, read_image_labels
from oid.classes import load_classes
from oid.hierarchy import load_hierarchy
from oid.levels import LevelSpec
from tests.beam_jobs import fixtures as fx
from tfrecords.decode import decode_example

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = {"max_side": 256, "jpeg_quality": 90, "num_shards": 2, "shard_size_mb": 150,
        "log_every": 0}


def read_records(level_dir, split_name):
    files = sorted(glob.glob(os.path.join(level_dir, f"{split_name}-*.tfrecord")))
    return {d["source_id"].numpy().decode(): d
            for d in map(decode_example, tf.data.TFRecordDataset(files))}


def plan_for(lay, level, val_fraction=0.5):
    classes = load_classes(lay.classes)
    boxes, br = read_boxes(lay.train_boxes, classes, lenient=True)
    labels, lr = read_image_labels(lay.train_labels, classes, lenient=True)
    return plan_level(boxes, labels, fx.SPEC.level(level), load_hierarchy(lay.hierarchy),
                      PlanConfig(val_fraction=val_fraction), (br, lr))


@pytest.fixture(scope="module")
def level1(tmp_path_factory):
    root = tmp_path_factory.mktemp("oid")
    lay = fx.make_dataset(str(root / "data"))
    out = str(root / "records" / "level1")
    plan = plan_for(lay, 1)
    image_dirs = {"train": lay.image_dir("train"), "test": lay.image_dir("test")}
    labels_json = [{"index": i, "mid": m, "name": m} for i, m in enumerate(fx.SPEC.level(1).classes)]
    stats = make_records.run_level(out, plan, image_dirs, make_records.SPLITS, labels_json,
                                   test_pipeline.TestPipeline, ARGS)
    return lay, out, plan, stats, image_dirs


def test_every_feature_round_trips(level1):
    _, out, plan, _, _ = level1
    records = {**read_records(out, "train"), **read_records(out, "val")}
    assert set(records) == set(fx.GOOD)
    for ann in plan.annotations:
        if ann.image_id not in records:
            continue
        d = records[ann.image_id]
        np.testing.assert_allclose(d["boxes"].numpy(), np.array(ann.boxes).reshape(-1, 4),
                                   rtol=1e-6)
        assert d["classes"].numpy().tolist() == ann.labels
        assert [m.decode() for m in d["mids"].numpy()] == ann.mids
        assert d["group_of"].numpy().astype(int).tolist() == ann.group_of
        assert d["occluded"].numpy().tolist() == ann.occluded
        assert d["truncated"].numpy().tolist() == ann.truncated
        assert [m.decode() for m in d["image_mids"].numpy()] == [m for m, _, _ in ann.image_labels]
        h, w = d["height"].numpy(), d["width"].numpy()
        assert d["image"].shape == (h, w, 3)
        assert max(h, w) <= ARGS["max_side"]


def test_sizes_and_conversions(level1):
    _, out, _, stats, _ = level1
    records = {**read_records(out, "train"), **read_records(out, "val")}
    good2 = records["good2"]  # 640x480 -> 256x192
    assert (good2["width"].numpy(), good2["height"].numpy()) == (256, 192)
    assert (good2["original_width"].numpy(), good2["original_height"].numpy()) == (640, 480)
    png1 = records["png1"]  # 200x100, not upscaled
    assert (png1["width"].numpy(), png1["height"].numpy()) == (200, 100)
    converted = {}
    for s in stats["splits"].values():
        for k, n in s["converted"].items():
            converted[k] = converted.get(k, 0) + n
    assert converted == {"cmyk": 1, "greyscale": 1, "not_jpeg": 1, "exif_rotated": 1}


def test_exif_rotated_boxes_still_right(level1):
    _, out, _, _, _ = level1
    d = {**read_records(out, "train"), **read_records(out, "val")}["exif1"]
    image = d["image"].numpy().astype(int)
    h, w, _ = image.shape
    assert (w, h) == (256, 192)  # displayed orientation, landscape
    ymin, xmin, ymax, xmax = d["boxes"].numpy()[0]
    inside = image[int(ymin * h) + 3:int(ymax * h) - 3, int(xmin * w) + 3:int(xmax * w) - 3]
    outside = image[int(ymax * h) + 5:, int(xmax * w) + 5:]
    assert np.abs(inside.mean(axis=(0, 1)) - [255, 0, 0]).max() < 30
    assert np.abs(outside.mean(axis=(0, 1)) - [255, 255, 255]).max() < 30


def test_each_bad_input_is_skipped_with_its_reason(level1):
    _, out, _, stats, _ = level1
    with open(os.path.join(out, "skipped.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageID", "reason"]
    assert dict(rows[1:]) == fx.BAD
    assert stats["skipped"] == {r: 1 for r in fx.BAD.values()}


def test_split_and_stats(level1):
    _, out, _, stats, _ = level1
    for name in ("train", "val"):
        ids = read_records(out, name)
        assert all(split.split_of(i, 0.5) == name for i in ids)
        assert stats["splits"][name]["images"] == len(ids)
    total_boxes = sum(s["boxes"] for s in stats["splits"].values())
    assert total_boxes == 7  # good1: 2, good2/cmyk1/grey1/png1/exif1: 1 each
    # Box counts per image: good1 has 2 boxes, the other five images 1 each.
    good1_side = split.split_of("good1", 0.5)
    for name, s in stats["splits"].items():
        assert s["max_boxes"] == (2 if name == good1_side else 1)
        assert sum(s["boxes_per_image"].values()) == s["images"]
        assert sum(int(n) * k for n, k in s["boxes_per_image"].items()) == s["boxes"]
        assert len(s["most_boxes"]) == s["images"]  # fewer than MOST_BOXES_LISTED images
    assert stats["splits"][good1_side]["most_boxes"][0] == [2, "good1"]
    with open(os.path.join(out, "stats.json")) as f:
        assert json.load(f) == stats
    with open(os.path.join(out, "labels.json")) as f:
        assert [e["mid"] for e in json.load(f)] == [fx.DOG, fx.CAT]


def test_shards_and_no_leftovers(level1):
    _, out, _, _, _ = level1
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(".tfrecord")] == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord",
        "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    assert not [n for n in names if n.startswith(("beam-temp", "_plan"))]


def test_val_ground_truth_csvs(level1):
    lay, out, _, _, _ = level1
    classes = load_classes(lay.classes)
    boxes, report = read_boxes(os.path.join(out, "val-bbox.csv"), classes)
    labels, _ = read_image_labels(os.path.join(out, "val-image-labels.csv"), classes)
    val_ids = set(read_records(out, "val"))
    assert set(boxes["ImageID"].astype(str)) == val_ids
    assert report.num_skipped == 0
    assert set(labels["ImageID"].astype(str)) <= val_ids


def test_rerun_leaves_no_partial_or_stale_shards(level1, tmp_path):
    lay, _, _, _, image_dirs = level1
    out = str(tmp_path / "level1")
    os.makedirs(os.path.join(out, "beam-temp-train-deadbeef"))
    for name in ("train-00000-of-00007.tfrecord", "beam-temp-train-deadbeef/partial"):
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"half a shard")
    plan = plan_for(lay, 1)
    make_records.run_level(out, plan, image_dirs, make_records.SPLITS, None, test_pipeline.TestPipeline,
                           {**ARGS, "num_shards": 1})
    assert sorted(n for n in os.listdir(out) if n.endswith(".tfrecord") or "beam" in n) == [
        "train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"]
    assert set(read_records(out, "train")) | set(read_records(out, "val")) == set(fx.GOOD)


def test_command_line_level_and_test_split(tmp_path):
    lay = fx.make_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "records")
    common = ["make_records", f"--data_dir={lay.data_dir}", f"--output_dir={out}",
              "--runner=DirectRunner", "--max_side=128", "--num_shards=1", "--val_fraction=0.5"]
    level2 = os.path.join(out, "level2")
    # By default the dog and cat boxes are Animal boxes too, so their images join the level.
    results = make_records.run(common + ["--level=2"])
    ids = set(read_records(level2, "train")) | set(read_records(level2, "val"))
    assert ids == {"good2", "car1"} | set(fx.GOOD)
    assert results["level2"]["boxes_to_ancestors"]["copied_to"] == {fx.DOG: fx.ANIMAL,
                                                                    fx.CAT: fx.ANIMAL}
    # Without the copies, level 2 has only car boxes among its own classes: good2, car1.
    results = make_records.run(common + ["--level=2", "--noboxes_to_ancestors"])
    assert set(read_records(level2, "train")) | set(read_records(level2, "val")) == {
        "good2", "car1"}
    assert results["level2"]["splits"] and "boxes_to_ancestors" not in results["level2"]
    results = make_records.run(common + ["--split=test"])
    test_ids = set(read_records(os.path.join(out, "test"), "test"))
    assert test_ids == {"test1", "test2"}
    with open(os.path.join(out, "test", "skipped.csv")) as f:
        assert list(csv.reader(f))[1:] == [["bad name", "bad_image_id"]]
    d = read_records(os.path.join(out, "test"), "test")["test1"]
    assert d["boxes"].shape == (0, 4)


def test_boxes_to_ancestors_on_the_command_line(tmp_path):
    lay = fx.make_dataset(str(tmp_path / "data"))
    out = str(tmp_path / "records")
    # Flags keep their values between in-process runs: restore them afterwards, and give
    # --split (an earlier test's run may have left it at test).
    with flagsaver.flagsaver():
        results = make_records.run(["make_records", f"--data_dir={lay.data_dir}",
                                    f"--output_dir={out}", "--runner=DirectRunner",
                                    "--max_side=64", "--num_shards=1", "--val_fraction=0.5",
                                    "--split=train", "--level=2", "--boxes_to_ancestors"])
    level2 = os.path.join(out, "level2")
    records = {**read_records(level2, "train"), **read_records(level2, "val")}
    # Level 2 (Car, Animal): every dog and cat box is also an Animal box now, so the images
    # with only dogs and cats join good2 and car1 (badbox1 is left out whole; corrupt1,
    # trunc1 and missing1 are skipped as images).
    assert set(records) == {"good2", "car1", "good1", "cmyk1", "grey1", "png1", "exif1"}
    animal, car = 1, 0  # level-local indices: the spec lists (Car, Animal)
    good1 = records["good1"]
    assert [m.decode() for m in good1["mids"].numpy()] == [fx.ANIMAL, fx.ANIMAL]
    assert good1["classes"].numpy().tolist() == [animal, animal]
    np.testing.assert_allclose(good1["boxes"].numpy(), [[0.2, 0.1, 0.6, 0.4], [0.5, 0.5, 0.9, 0.9]],
                               atol=1e-6)  # the dog's and the cat's (ymin, xmin, ymax, xmax)
    good2 = records["good2"]
    assert good2["classes"].numpy().tolist() == [car, animal]  # the car, then the dog's copy
    assert good2["group_of"].numpy().tolist() == [0, 1]  # the dog box is a group-of box
    copies = results["level2"]["boxes_to_ancestors"]
    assert copies["added_per_class"] == {fx.ANIMAL: 10}  # every dog and cat box of the plan
    assert sum(copies["images_only_through_copies"].values()) == 8  # all but good2, car1
    with open(os.path.join(level2, "stats.json")) as f:
        assert json.load(f)["boxes_to_ancestors"] == copies
    # The val ground truth stays the official rows: dogs and cats, never "Animal" copies.
    with open(os.path.join(level2, "val-bbox.csv")) as f:
        labels = {row["LabelName"] for row in csv.DictReader(f)}
    assert fx.ANIMAL not in labels and labels <= {fx.DOG, fx.CAT, fx.CAR}


def run_job(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "beam_jobs/make_records.py", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


# What Beam's SDK workers and runner print when left to themselves (see beam_jobs/logs.py).
BEAM_NOISE = ("semi_persistent_directory", "apitools", "Pipeline_options", "gcp_oauth_scopes",
              "Worker: severity", "Logging handler created", "sdk harness", "INFO:", "WARNING:")


@pytest.mark.slow
def test_fresh_data_dir_computes_the_levels_and_prints_only_our_lines(tmp_path):
    """The headline command on data that never met `python -m oid.levels`."""
    data, out = tmp_path / "data", tmp_path / "records"
    demo_data.write_dataset(str(data), seed=0, images=40, test_images=2, progress=False)
    result = run_job("--data_dir", data, "--output_dir", out, "--level", "1", "--log_every=5")
    assert result.returncode == 0, result.stderr[-3000:]
    # The levels python -m oid.levels makes by default, pinned in the output.
    assert levels.main(["--data_dir", str(data), "--out", str(tmp_path / "cli.json"),
                        "--plot", str(tmp_path / "cli.png")]) == 0
    assert LevelSpec.load(str(out / "levels.json")) == LevelSpec.load(str(tmp_path / "cli.json"))
    assert glob.glob(str(out / "level1" / "train-*.tfrecord"))
    err = result.stderr
    for marker in BEAM_NOISE:
        assert marker not in err, marker
    assert "Traceback" not in err
    assert re.search(r"levels: .*computed from the training boxes.*written to .*levels\.json; "
                     r"pass --levels_spec", err)
    assert re.search(r"INFO worker \d+: 5 images", err)  # a worker's progress, in our format
    assert re.search(r"level1: wrote 40 images in", err)
    assert result.stdout.startswith("level1: train ")


@pytest.mark.slow
def test_beam_log_level_brings_beams_own_lines_back(tmp_path):
    lay = fx.make_dataset(str(tmp_path / "data"))
    result = run_job("--data_dir", lay.data_dir, "--output_dir", tmp_path / "records",
                     "--split=test", "--beam_log_level=INFO")
    assert result.returncode == 0, result.stderr[-3000:]
    for marker in ("semi_persistent_directory", "apitools", "Pipeline_options"):
        assert marker in result.stderr, marker
