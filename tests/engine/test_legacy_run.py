"""Run directories and SavedModels written before the package layering still load and give
the same outputs (testdata/legacy_run/README.md says how they were made)."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import tensorflow as tf

from engine.inference import Inference, load_detector
from engine.run_dir import load_model, read_json
from engine.trainer import TrainConfig, Trainer
from model.config import LossConfig, PostprocessConfig
from tfrecords.inference_input import ImageFolderSource

LEGACY = pathlib.Path(__file__).parent / "testdata" / "legacy_run"
EXPECTED = np.load(LEGACY / "expected_outputs.npz")


def _canvas() -> np.ndarray:
    """The 96 x 128 image at the top left of its 128 x 128 canvas (scale 1), [1, S, S, 3]."""
    image = tf.io.decode_png((LEGACY / "image.png").read_bytes(), channels=3).numpy()
    canvas = np.zeros((1, 128, 128, 3), np.uint8)
    canvas[0, :96, :128] = image
    return canvas


def test_old_config_json_and_checkpoint_rebuild_the_same_model():
    # config.json of the old layout: anchors without variances, input.anchors and
    # input.labeler entries that the new InputConfig no longer has.
    saved = read_json(str(LEGACY / "config.json"))
    assert "variances" not in saved["model"]["anchors"] and "labeler" in saved["input"]
    model, config = load_model(str(LEGACY))
    assert config.anchors.variances == (0.1, 0.1, 0.2, 0.2)
    out = model(_canvas(), training=False)
    np.testing.assert_allclose(out["cls_logits"].numpy(), EXPECTED["cls_logits"], atol=1e-5)
    np.testing.assert_allclose(out["box_deltas"].numpy(), EXPECTED["box_deltas"], atol=1e-5)


def test_old_saved_model_serves_the_same_detections():
    loaded = tf.saved_model.load(str(LEGACY / "export"))
    dets = loaded.serving_default(encoded=tf.constant([(LEGACY / "image.png").read_bytes()]))
    for key in ("boxes", "scores", "classes", "num_detections"):
        np.testing.assert_allclose(dets[key].numpy(), EXPECTED[key], atol=1e-5)


def test_old_run_and_export_give_the_old_detections_through_todays_inference(tmp_path):
    # Today's decoder on the old run's weights (and on the old export's raw outputs) gives
    # the detections the old export's own decoder gave: same anchors, variances and NMS.
    shutil.copy(LEGACY / "image.png", tmp_path / "image.png")
    source = ImageFolderSource((str(tmp_path / "image.png"),))
    strategy = tf.distribute.get_strategy()
    # After two training steps every score is near the 0.01 prior: the low_* detections
    # were decoded by the old code with score_threshold 0.001 and 50 detections.
    post = PostprocessConfig(score_threshold=0.001, max_detections=50)
    n = int(EXPECTED["low_num_detections"][0])
    assert n == 50
    for path in (LEGACY, LEGACY / "export"):
        detector = load_detector(str(path), strategy)
        assert detector.level == 1 and [e["mid"] for e in detector.labels] == ["/m/c0", "/m/c1"]
        (row,) = list(Inference(strategy, [detector], post).run(source, 1))
        dets = row.detections[0]
        assert len(dets) == n, path
        np.testing.assert_allclose(dets.boxes, EXPECTED["low_boxes"][0, :n], atol=1e-5)
        np.testing.assert_allclose(dets.scores, EXPECTED["low_scores"][0, :n], atol=1e-6)
        np.testing.assert_array_equal(dets.classes, EXPECTED["low_classes"][0, :n])


def test_old_checkpoint_resumes_with_its_optimizer_state(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(LEGACY, run)
    saved = read_json(str(run / "config.json"))
    _, model_config = load_model(str(run))
    trainer = Trainer(tf.distribute.get_strategy(), model_config, LossConfig(**saved["loss"]),
                      TrainConfig(**saved["train"]), str(run))
    assert trainer.restore() == 2
    assert int(trainer.optimizer.iterations.numpy()) == 2
