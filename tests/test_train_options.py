"""train.py with the training-recipe options (docs/training-recipes.md): ATSS labeling in
tf.data, GIoU and quality focal losses, a P2 pyramid level and weight averaging; the run
directory and its export give the same detections (the decoder follows config.json)."""

import json

import numpy as np
import pytest
from PIL import Image

from tests import prewarmed
from tests.train_fixtures import ENV, make_records, train_cmd

pytestmark = pytest.mark.slow

OPTIONS = ["--min_level=2", "--anchor_sizes=8,16,32,64,128,256", "--assigner=atss",
           "--atss_top_k=5", "--atss_ignore_iou=0.4", "--box_loss=giou", "--cls_loss=quality_focal", "--ema_decay=0.9",
           "--label_in_pipeline"]


def test_options_train_export_and_reload_alike(tmp_path):
    import tensorflow as tf

    from engine.inference import Inference, load_detector
    from model.config import PostprocessConfig
    from tfrecords.inference_input import ImageFolderSource

    make_records(str(tmp_path / "records" / "level1"))
    bad = prewarmed.run(train_cmd(str(tmp_path / "records"), str(tmp_path / "bad"),
                                  "--min_level=2"),
                        env=ENV, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "--min_level/--max_level/--anchor_sizes" in bad.stderr
    assert "5 sizes for levels 2-7: give one size per level (6)" in bad.stderr

    run = tmp_path / "run"
    out = prewarmed.run(train_cmd(str(tmp_path / "records"), str(run), "--epochs=1",
                                  "--steps_per_epoch=2", *OPTIONS),
                        env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["anchors"]["min_level"] == 2
    assert (config["labeler"]["assigner"], config["labeler"]["atss_top_k"]) == ("atss", 5)
    assert config["labeler"]["atss_ignore_iou"] == 0.4
    assert (config["loss"]["box_loss"], config["loss"]["cls_loss"]) == ("giou", "quality_focal")
    assert config["train"]["ema_decay"] == 0.9
    export_config = json.loads((run / "export" / "assets.extra" / "config.json").read_text())
    assert export_config["model"]["anchors"]["min_level"] == 2

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3)).astype(np.uint8)).save(
        tmp_path / "x.png")
    source = ImageFolderSource((str(tmp_path / "x.png"),))
    strategy = tf.distribute.get_strategy()
    post = PostprocessConfig(score_threshold=0.0, max_detections=20)
    results = []
    for path in (run, run / "export"):
        detector = load_detector(str(path), strategy)
        (row,) = list(Inference(strategy, [detector], post).run(source, 1))
        results.append(row.detections[0])
    run_dets, export_dets = results
    assert len(run_dets) == len(export_dets) == 20
    np.testing.assert_allclose(export_dets.boxes, run_dets.boxes, atol=1e-5)
    np.testing.assert_allclose(export_dets.scores, run_dets.scores, atol=1e-6)
