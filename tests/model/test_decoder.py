import numpy as np
import tensorflow as tf

from model.config import PostprocessConfig
from model.postprocess import detect, to_original

ANCHORS = np.array([[0, 0, 10, 10], [0, 1, 10, 11], [20, 20, 30, 30]], np.float32)
BIG = 10.0  # logit of a confident score (sigmoid ~ 1)


def run(logits, config=PostprocessConfig(max_detections=5)):
    logits = np.array([logits], np.float32)
    deltas = np.zeros((1, 3, 4), np.float32)  # boxes = anchors
    return {k: v.numpy()[0] for k, v in detect(logits, deltas, ANCHORS, config, 64.0).items()}


def test_nms_within_a_class():
    # Anchors 0 and 1 overlap (IoU 90/110 = 0.82) and both say class 0: one survives,
    # the higher score. Anchor 2 is elsewhere.
    out = run([[BIG, -BIG], [BIG - 1, -BIG], [BIG - 2, -BIG]])
    assert out["num_detections"] == 2
    np.testing.assert_allclose(out["boxes"][:2], ANCHORS[[0, 2]], atol=1e-4)
    assert out["classes"][:2].tolist() == [0, 0]
    assert out["classes"][2:].tolist() == [-1] * 3 and not out["scores"][2:].any()


def test_no_nms_across_classes():
    out = run([[BIG, -BIG], [-BIG, BIG - 1], [-BIG, -BIG]])
    assert out["num_detections"] == 2
    assert sorted(out["classes"][:2].tolist()) == [0, 1]


def test_score_threshold_and_no_detections():
    out = run([[-BIG, -BIG]] * 3)
    assert out["num_detections"] == 0 and (out["classes"] == -1).all()


def test_to_original():
    # Canvas box (6.4, 25.6, 32, 76.8) of an image 100 x 200 scaled by 0.64 -> the
    # normalized box (0.1, 0.2, 0.5, 0.6); a box past the image is clipped to 1.
    info = tf.constant([[[100, 200], [64, 128], [0.64, 0.64], [0, 0]]], tf.float32)
    boxes = tf.constant([[[6.4, 25.6, 32, 76.8], [0, 0, 80, 150]]], tf.float32)
    np.testing.assert_allclose(to_original(boxes, info).numpy()[0],
                               [[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], rtol=1e-5)
