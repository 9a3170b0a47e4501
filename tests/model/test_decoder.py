import numpy as np
import tensorflow as tf

from boxes import coder
from boxes.anchors import AnchorConfig, generate_anchors
from boxes.assign import LabelerConfig, label_anchors
from boxes.canvas import canvas_to_normalized
from model.config import PostprocessConfig
from model.decoder import DetectionDecoder, detect

ANCHORS = np.array([[0, 0, 10, 10], [0, 1, 10, 11], [20, 20, 30, 30]], np.float32)
BIG = 10.0  # logit of a confident score (sigmoid ~ 1)


def run(logits, config=PostprocessConfig(max_detections=5)):
    logits = np.array([logits], np.float32)
    deltas = np.zeros((1, 3, 4), np.float32)  # boxes = anchors
    return {k: v.numpy()[0] for k, v in detect(logits, deltas, ANCHORS, config, 64.0, AnchorConfig().variances).items()}


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


def test_canvas_to_normalized():
    # Canvas box (6.4, 25.6, 32, 76.8) of an image 100 x 200 scaled by 0.64 -> the
    # normalized box (0.1, 0.2, 0.5, 0.6); a box past the image is clipped to 1.
    info = tf.constant([[[100, 200], [64, 128], [0.64, 0.64], [0, 0]]], tf.float32)
    boxes = tf.constant([[[6.4, 25.6, 32, 76.8], [0, 0, 80, 150]]], tf.float32)
    np.testing.assert_allclose(canvas_to_normalized(boxes, info).numpy()[0],
                               [[0.1, 0.2, 0.5, 0.6], [0, 0, 1, 1]], rtol=1e-5)


def test_non_default_variances_reach_the_decoder():
    # Targets assigned with variances (0.2, 0.2, 0.5, 0.5) and decoded by a DetectionDecoder
    # built from the same AnchorConfig give back the ground-truth box: both read the
    # variances from one place. With the default variances the decoded box would be off.
    anchor_config = AnchorConfig(sizes=(16, 32, 64, 128, 256), variances=(0.2, 0.2, 0.5, 0.5))
    anchors = generate_anchors(128, 128, anchor_config)
    box = np.array([[20.0, 30.0, 60.0, 90.0]], np.float32)  # canvas pixels
    cls, deltas = label_anchors(anchors, box, [0], 1, None, LabelerConfig(),
                                variances=anchor_config.variances)
    positive = int(np.flatnonzero(cls.numpy() == 0)[0])
    logits = np.full((1, len(anchors), 1), -20.0, np.float32)
    logits[0, positive, 0] = 20.0
    raw = np.zeros((1, len(anchors), 4), np.float32)
    raw[0, positive] = deltas.numpy()[positive]
    # A 128 x 128 image at scale 1: normalized = pixels / 128.
    info = np.array([[[128, 128], [128, 128], [1, 1], [0, 0]]], np.float32)
    decoder = DetectionDecoder(128, {**anchor_config.__dict__}, {"max_detections": 5})
    out = decoder(logits, raw, info)
    assert int(out["num_detections"][0]) == 1
    np.testing.assert_allclose(out["boxes"][0, 0].numpy(), box[0] / 128, atol=1e-5)
    # The same deltas decoded with the default variances miss the box.
    wrong = coder.decode(raw[0, positive], anchors[positive], AnchorConfig().variances)
    assert np.abs(wrong.numpy() - box[0]).max() > 2.0  # 3.7 px off here


def test_decoder_reads_anchor_configs_saved_before_variances_moved():
    # config.json files of earlier runs have no "variances" under "anchors": the defaults.
    saved = {"min_level": 3, "max_level": 7, "sizes": [16, 32, 64, 128, 256],
             "ratios": [0.5, 1.0, 2.0], "scales": [1.0, 1.26, 1.59]}
    decoder = DetectionDecoder(128, saved)
    assert decoder.anchor_config.variances == (0.1, 0.1, 0.2, 0.2)
    assert decoder.anchor_config.sizes == (16, 32, 64, 128, 256)
