"""train.py --eval_every_epochs: the live model evaluated on the level's val records."""

import json
import os

import pytest

from tests import prewarmed
from tests.inference_fixtures import red_scene, write_label_files, write_level
from tests.train_fixtures import ENV, train_cmd

LABELS = [{"index": 0, "mid": "/m/red", "name": "red"}, {"index": 1, "mid": "/m/blue", "name": "blue"}]


@pytest.mark.slow
def test_eval_every_epoch_writes_metrics_and_tensorboard(tmp_path):
    import tensorflow as tf

    level_dir = tmp_path / "records" / "level1"
    scenes = {f"img{i}": red_scene(i, 100, 120) for i in range(6)}
    write_level(level_dir, LABELS, dict(list(scenes.items())[:4]), split="train")
    write_level(level_dir, LABELS, dict(list(scenes.items())[4:]), split="val")
    write_label_files(tmp_path / "data")
    model_dir = tmp_path / "run"
    out = prewarmed.run(train_cmd(str(tmp_path / "records"), str(model_dir), "--epochs=2",
                                  "--steps_per_epoch=2", "--eval_every_epochs=1",
                                  f"--eval_data_dir={tmp_path / 'data'}",
                                  "--keep_checkpoints=1"),
                        env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for epoch in (1, 2):
        metrics = json.loads((model_dir / "eval" / f"epoch-{epoch}" / "metrics.json").read_text())
        assert metrics["epoch"] == epoch and metrics["images"] == 2
        assert metrics["per_class"]["/m/red"]["num_gt"] == 2
        assert f"epoch {epoch} eval: mAP" in out.stderr
    tags = [(v.tag, e.step) for path in (model_dir / "logs").glob("events*")
            for e in tf.compat.v1.train.summary_iterator(str(path)) for v in e.summary.value]
    assert [t for t in tags if t[0] == "eval/mAP"] == [("eval/mAP", 2), ("eval/mAP", 4)]
    # The best epoch (the first with the highest mAP) is kept apart from the rotation, which
    # keeps one checkpoint, and exported beside the last weights.
    maps = {e: json.loads((model_dir / "eval" / f"epoch-{e}" / "metrics.json").read_text())["mAP"]
            for e in (1, 2)}
    best_epoch = 1 if maps[1] >= maps[2] else 2
    best = json.loads((model_dir / "checkpoints" / "best" / "best.json").read_text())
    assert best == {"epoch": best_epoch, "step": 2 * best_epoch, "mAP": maps[best_epoch],
                    "checkpoint": f"ckpt-{2 * best_epoch}"}
    assert sorted(p.name for p in (model_dir / "checkpoints").glob("ckpt-*.index")) == \
        ["ckpt-4.index"]
    assert (model_dir / "checkpoints" / "best" / f"ckpt-{2 * best_epoch}.index").exists()
    for export in ("export", "export_best"):
        assert (model_dir / export / "saved_model.pb").exists(), export
    assert f"best validation mAP so far ({maps[best_epoch]:.4f})" in out.stderr


def test_eval_every_epochs_needs_the_label_files(tmp_path):
    write_level(tmp_path / "records" / "level1", LABELS, {"a": red_scene(0)}, split="train")
    out = prewarmed.run(train_cmd(str(tmp_path / "records"), str(tmp_path / "run"),
                                  "--eval_every_epochs=1"),
                        env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "--eval_every_epochs needs --eval_data_dir" in out.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
