"""A level's evaluation: detections streamed into the challenge evaluator, the level's mAP."""

import csv
import json

import pytest
import tensorflow as tf

from engine.evaluation import LevelEvaluation, make_epoch_callback, write_results
from engine.inference import Inference
from model.config import PostprocessConfig
from oid.classes import load_classes
from oid.hierarchy import load_hierarchy
from tests.inference_fixtures import (
    red_detector,
    red_image,
    save,
    write_ground_truth,
    write_label_files,
)
from tfrecords.inference_input import ImageFolderSource

POST = PostprocessConfig(score_threshold=0.5, max_detections=100, pre_nms_top_k=1000)
H, W = 96, 128  # scale 1 on the detector's 128 canvas


def _norm(box):
    y0, x0, y1, x1 = box
    return (y0 / H, x0 / W, y1 / H, x1 / W)


@pytest.fixture
def level(tmp_path):
    # Each red square is exactly an anchor (32 x 32, centred on the stride-16 grid), so the
    # red detector's best box has IoU 1 and score sigmoid(12) = 0.999994; every box that
    # survives NMS beside it overlaps it by less than 0.5, so it is a false positive with
    # IoU below 0.5 with the red pixels and score below sigmoid(20 x 0.1) = 0.881: every true
    # positive ranks above every false positive and AP(red) = 1. Image b also has a blue box
    # nothing detects: AP(blue) = 0. Expanded, both are shape boxes: AP(shape) = 0 (the
    # detector never says shape), but shape is not in the level. Level mAP = (1 + 0) / 2.
    red_a, red_b, blue_b = (8, 8, 40, 40), (40, 72, 72, 104), (60, 10, 90, 40)
    images = tmp_path / "images"
    images.mkdir()
    save(images / "a.png", red_image(H, W, red_a))
    save(images / "b.png", red_image(H, W, red_b, seed=1))
    boxes_csv, labels_csv = write_ground_truth(tmp_path, {
        "a": [("/m/red", _norm(red_a))],
        "b": [("/m/red", _norm(red_b)), ("/m/blue", _norm(blue_b))]})
    classes_path, hierarchy_path = write_label_files(tmp_path / "data")
    classes = load_classes(classes_path)
    evaluation = LevelEvaluation(classes, load_hierarchy(hierarchy_path), boxes_csv, labels_csv,
                                 ["/m/red", "/m/blue"])
    return evaluation, ImageFolderSource.from_dir(str(images)), classes


def test_level_map_is_the_mean_over_the_level_classes_with_ground_truth(level, tmp_path):
    evaluation, source, classes = level
    inference = Inference(tf.distribute.get_strategy(), [red_detector()], POST)
    result = evaluation.evaluate(inference, source, 2)
    assert result.metric.per_class["/m/red"].ap == 1.0
    assert result.metric.per_class["/m/red"].num_gt == 2
    assert result.metric.per_class["/m/blue"].ap == 0.0
    assert result.metric.per_class["/m/shape"].num_gt == 3  # expanded, outside the level
    assert result.metric.per_class["/m/green"].ap is None
    assert result.level_map == 0.5
    assert result.images == 2
    assert [m for m, _, _ in result.per_class()] == ["/m/red", "/m/blue"]  # best AP first

    # A second evaluation starts from the ground truth alone, not the first one's detections.
    assert evaluation.evaluate(inference, source, 1).level_map == 0.5

    write_results(result, str(tmp_path / "out"), classes, level=1)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["mAP"] == 0.5 and metrics["level"] == 1 and metrics["images"] == 2
    assert metrics["per_class"]["/m/red"] == {"name": "red", "ap": 1.0, "num_gt": 2}
    assert "/m/shape" not in metrics["per_class"]
    rows = list(csv.reader(open(tmp_path / "out" / "per_class.csv")))
    assert rows == [["mid", "name", "ap", "num_gt"], ["/m/red", "red", "1.000000", "2"],
                    ["/m/blue", "blue", "0.000000", "1"]]


def test_epoch_callback_evaluates_every_n_epochs_and_logs_to_tensorboard(level, tmp_path):
    evaluation, source, _ = level
    inference = Inference(tf.distribute.get_strategy(), [red_detector()], POST)
    step = tf.Variable(40, dtype=tf.int64)
    callback = make_epoch_callback(evaluation, inference, source, 2, every_epochs=2, step=step,
                                   output_dir=str(tmp_path / "eval"))
    writer = tf.summary.create_file_writer(str(tmp_path / "logs"))
    with writer.as_default():
        callback(1, {"loss": 1.0})
        assert not (tmp_path / "eval").exists()
        callback(2, {"loss": 1.0})
    writer.flush()
    assert json.loads((tmp_path / "eval" / "epoch-2" / "metrics.json").read_text())["mAP"] == 0.5
    events = [v for e in tf.compat.v1.train.summary_iterator(
        str(next((tmp_path / "logs").glob("events*")))) for v in e.summary.value]
    assert [(v.tag, round(float(tf.make_ndarray(v.tensor)), 4)) for v in events
            if v.tag == "eval/mAP"] == [("eval/mAP", 0.5)]
