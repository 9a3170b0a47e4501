"""train.py's max_boxes: from the records' stats.json unless given; boxes past it are counted
and the images that lose them named, in the training log."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests import prewarmed
from tests.train_fixtures import ENV, train_cmd

# ImageID -> boxes: two images with 3 boxes, four with 1.
BOXES = {"many0": 3, "many1": 3, "one0": 1, "one1": 1, "one2": 1, "one3": 1}


def make_level(level_dir):
    """Records of BOXES' images (100x120 grey JPEGs, boxes of class c0 side by side) and the
    stats.json that make_records.py writes for them (its boxes-per-image part)."""
    from tfrecords import proto
    from tfrecords.example import ImageAnnotation, build_example

    os.makedirs(level_dir)
    buf = io.BytesIO()
    Image.fromarray(np.full((100, 120, 3), 90, np.uint8)).save(buf, "JPEG")
    with open(os.path.join(level_dir, "train-00000-of-00001.tfrecord"), "wb") as f:
        for image_id, n in BOXES.items():
            boxes = [[0.1, 0.05 + 0.3 * k, 0.6, 0.3 + 0.3 * k] for k in range(n)]
            ann = ImageAnnotation(image_id, "train", boxes, [0] * n, ["/m/c0"] * n, [0] * n,
                                  [0] * n, [0] * n, [0] * n)
            proto.write_tfrecord(f, build_example(ann, buf.getvalue(), 100, 120, 100, 120)
                                 .SerializeToString())
    with open(os.path.join(level_dir, "labels.json"), "w") as f:
        json.dump([{"index": 0, "mid": "/m/c0", "name": "c0"}], f)
    with open(os.path.join(level_dir, "stats.json"), "w") as f:
        json.dump({"splits": {"train": {
            "images": 6, "boxes": 10, "max_boxes": 3, "boxes_per_image": {"1": 4, "3": 2},
            "most_boxes": [[3, "many0"], [3, "many1"], [1, "one0"], [1, "one1"],
                           [1, "one2"], [1, "one3"]]}}}, f)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    make_level(str(root / "level1"))
    return root


def train(records, run, *extra):
    # One step of 2 images; a shuffle buffer of 1 keeps the file's order: many0, many1 first.
    out = prewarmed.run(train_cmd(str(records), str(run), "--epochs=1", "--steps_per_epoch=1",
                                  "--export=false", "--shuffle_buffer=1", *extra),
                        env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr, json.loads((run / "config.json").read_text())


@pytest.mark.slow
def test_max_boxes_comes_from_the_records_and_no_box_is_lost(records, tmp_path):
    log, config = train(records, tmp_path / "run")
    assert config["input"]["max_boxes"] == 3
    assert "max_boxes 3: the most boxes of a training image of the level" in log
    assert "boxes past max_boxes: none, every ground-truth box was trained" in log


@pytest.mark.slow
def test_a_smaller_max_boxes_names_the_images_that_lose_boxes(records, tmp_path):
    log, config = train(records, tmp_path / "run", "--max_boxes=2")
    assert config["input"]["max_boxes"] == 2
    # Before training, from stats.json: 2 images of 3 boxes lose one each.
    assert ("--max_boxes=2: 2 training images have more boxes and lose 2 of them each epoch "
            "(the records' most: 3); those with the most: many0 (3), many1 (3)") in log
    # While training, from the pipeline: each image once, then the total.
    for image_id in ("many0", "many1"):
        assert log.count(f"image {image_id} has 3 boxes, more than max_boxes=2") == 1
    summary = next(line for line in log.splitlines() if "boxes past max_boxes:" in line)
    assert "2 images lost boxes" in summary and "many0 (1 of 3), many1 (1 of 3)" in summary
