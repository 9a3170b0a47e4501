"""Checkpoints of a run: how many are kept, the best by validation mAP, exporting a chosen
one; staged training (backbone frozen, then not); starting from another run."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from boxes.anchors import AnchorConfig
from engine import export
from engine.run_dir import (
    build_model,
    init_from_run,
    load_model,
    read_best,
    resolve_checkpoint,
    save_config,
)
from engine.trainer import TrainConfig, Trainer
from model.backbones import BackboneWeightsError
from model.config import LossConfig, ModelConfig
from model.retinanet import backbone_layer

CONFIG = ModelConfig(num_classes=2, backbone="small", image_size=128, fpn_channels=16,
                     head_convs=1, head_channels=16,
                     anchors=AnchorConfig(sizes=(16, 32, 64, 128, 256)))
LABELS = [{"index": 0, "mid": "/m/a", "name": "a"}, {"index": 1, "mid": "/m/b", "name": "b"}]
INPUT = {"image_min_side": 100, "image_max_side": 128}


def _batch():
    rng = np.random.default_rng(0)
    return {"image": tf.constant(rng.integers(0, 255, (2, 128, 128, 3)).astype(np.uint8)),
            "boxes": tf.constant([[[10, 10, 60, 70], [0, 0, 0, 0]],
                                  [[30, 20, 90, 120], [5, 5, 40, 40]]], tf.float32),
            "classes": tf.constant([[0, -1], [1, 0]], tf.int32),
            "num_boxes": tf.constant([1, 2], tf.int32),
            "group_of": tf.zeros((2, 2), tf.bool)}


def _data(ctx):
    del ctx
    return tf.data.Dataset.from_tensors(_batch()).repeat()


def _trainer(model_dir, config=CONFIG, labels=LABELS, **train):
    """A Trainer on MODEL_DIR with its config.json written as train.py writes it."""
    train = TrainConfig(**{"steps_per_epoch": 2, "epochs": 1, "learning_rate": 1e-2,
                           "clipnorm": None, "log_every_steps": 100, **train})
    keras.utils.set_random_seed(0)
    trainer = Trainer(tf.distribute.get_strategy(), config, LossConfig(), train,
                      str(model_dir), build_model=build_model)
    trainer.restore()
    save_config(os.path.join(model_dir, "config.json"), model=config, train=train, input=INPUT,
                level=1, labels=labels)
    return trainer


def _values(weights):
    return {w.path: w.numpy().copy() for w in weights}


def _step_to(trainer, step, nudge=0.0):
    """Stands in for training up to `step` (the loop itself is tested in tests/test_train.py):
    every trainable weight moves by `nudge`, then the step checkpoint is saved as fit() does."""
    for w in trainer.model.trainable_weights:
        w.assign_add(tf.fill(w.shape, nudge))
    trainer.step.assign(step)
    return trainer.save()


def _checkpoints(model_dir):
    return sorted(int(p.name[len("ckpt-"):-len(".index")])
                  for p in (model_dir / "checkpoints").glob("ckpt-*.index"))


# -- keep_checkpoints, best, export ------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 2, 5])
def test_keep_checkpoints_keeps_the_newest_n(tmp_path, keep):
    trainer = _trainer(tmp_path, keep_checkpoints=keep)
    for step in range(1, 5):
        _step_to(trainer, step)
    assert _checkpoints(tmp_path) == [1, 2, 3, 4][-keep:]


def test_the_best_checkpoint_is_kept_apart_from_the_rotation(tmp_path):
    # Epoch mAPs 0.3, 0.5, 0.2, 0.5: the best is epoch 2 (step 4); an equal mAP later
    # (epoch 4) does not replace it, and the rotation (1 kept) does not delete it.
    maps = {1: 0.3, 2: 0.5, 3: 0.2, 4: 0.5}
    trainer = _trainer(tmp_path, keep_checkpoints=1)
    at_best = {}
    for epoch, value in maps.items():
        _step_to(trainer, 2 * epoch, nudge=0.01)
        if trainer.save_best(value, epoch):
            at_best = _values(trainer.model.weights)
    assert _checkpoints(tmp_path) == [8]
    assert read_best(str(tmp_path)) == {"step": 4, "epoch": 2, "mAP": 0.5, "checkpoint": "ckpt-4"}
    assert os.path.basename(resolve_checkpoint(str(tmp_path), "best")) == "ckpt-4"
    best_model, _ = load_model(str(tmp_path), resolve_checkpoint(str(tmp_path), "best"))
    for path, value in _values(best_model.weights).items():
        np.testing.assert_array_equal(value, at_best[path], err_msg=path)

    # A resumed run knows the best so far: 0.4 is not better.
    again = _trainer(tmp_path, keep_checkpoints=1)
    assert again.best()["mAP"] == 0.5 and not again.save_best(0.4, 5)

    # (train.py exports it as MODEL_DIR/export_best: tests/test_train_eval.py)


@pytest.mark.slow
def test_export_of_ckpt_n_and_of_a_missing_checkpoint(tmp_path, capsys):
    trainer = _trainer(tmp_path)
    _step_to(trainer, 2, nudge=0.01)
    at_2 = _values(trainer.model.weights)
    _step_to(trainer, 4, nudge=0.01)
    assert _checkpoints(tmp_path) == [2, 4]
    # python -m engine.export --checkpoint ckpt-2, to the default folder.
    assert export.main(["--model_dir", str(tmp_path), "--checkpoint", "ckpt-2"]) == 0
    assert (tmp_path / "export_ckpt-2" / "saved_model.pb").exists()
    assert not (tmp_path / "export_ckpt-2.partial").exists()
    # It serves ckpt-2's weights (the model moved on by step 4).
    image = tf.constant(np.random.default_rng(2).integers(0, 255, (1, 128, 128, 3)), tf.uint8)
    loaded = tf.saved_model.load(str(tmp_path / "export_ckpt-2"))  # kept: its variables
    served = loaded.raw_outputs(image=image)
    model = build_model(CONFIG)
    model.set_weights([at_2[w.path] for w in model.weights])
    np.testing.assert_allclose(served["box_deltas"].numpy(),
                               model(image, training=False)["box_deltas"].numpy(), atol=1e-5)
    assert not np.allclose(served["box_deltas"].numpy(),
                           trainer.model(image, training=False)["box_deltas"].numpy(), atol=1e-5)
    meta = json.loads((tmp_path / "export_ckpt-2" / "assets.extra" / "config.json").read_text())
    assert meta["labels"] == LABELS and meta["level"] == 1
    assert meta["input"]["image_max_side"] == 128 and not meta["input"]["is_training"]
    # No best without evaluation; a checkpoint the rotation never wrote.
    for which in ("best", "ckpt-3"):
        assert export.main(["--model_dir", str(tmp_path), "--checkpoint", which]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: --model_dir={tmp_path} --checkpoint={which}: no "
                              f"checkpoint {which}")
        assert "there are: ckpt-2, ckpt-4" in err
    assert export.main(["--model_dir", str(tmp_path / "nowhere")]) == 2
    assert "not a train.py run directory" in capsys.readouterr().err


# -- staged training ---------------------------------------------------------------------


@pytest.mark.slow
def test_unfreezing_the_backbone_on_resume_keeps_weights_and_optimizer_state(tmp_path):
    frozen = _trainer(tmp_path, epochs=1, config=dataclasses.replace(CONFIG,
                                                                     freeze_backbone=True))
    backbone = backbone_layer(frozen.model, CONFIG)
    start = _values(backbone.weights)
    frozen.fit(_data, 2)
    after_stage_1 = _values(frozen.model.weights)
    for path, value in _values(backbone.weights).items():  # stage 1 leaves the backbone
        np.testing.assert_array_equal(value, start[path], err_msg=path)
    head_moments = {v.name: v.numpy().copy() for v in frozen.optimizer.variables
                    if v.name.startswith("class_head_")}
    assert head_moments and not any(n.startswith("small_s") for n in
                                    (v.name for v in frozen.optimizer.variables))

    # Stage 2, the same run directory, backbone trainable and two more epochs.
    unfrozen = _trainer(tmp_path, epochs=3)
    assert int(unfrozen.step.numpy()) == 2
    for path, value in _values(unfrozen.model.weights).items():  # every weight carried over
        np.testing.assert_array_equal(value, after_stage_1[path], err_msg=path)
    state = {v.name: v.numpy() for v in unfrozen.optimizer.variables}
    assert int(state["iteration"]) == 2
    for name, value in head_moments.items():  # the heads' Adam moments carried over
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    assert any(np.abs(value).max() > 0 for value in head_moments.values())
    fresh = [n for n in state if n.startswith("small_s")]
    assert fresh and all(not state[n].any() for n in fresh)  # the backbone's start at zero
    unfrozen.fit(_data, 2)
    backbone = backbone_layer(unfrozen.model, CONFIG)
    changed = [w.path for w in backbone.weights
               if not np.array_equal(w.numpy(), after_stage_1[w.path])]
    assert len(changed) == len(backbone.weights)  # now every backbone weight trains


def test_resuming_with_another_architecture_is_still_refused(tmp_path):
    _step_to(_trainer(tmp_path), 2)
    with pytest.raises(ValueError, match="does not fit this model"):
        _trainer(tmp_path, config=dataclasses.replace(CONFIG, head_channels=8))


# -- starting from another run -----------------------------------------------------------


@pytest.fixture(scope="module")
def level1(tmp_path_factory):
    """A trained run for the classes /m/a, /m/b."""
    run = tmp_path_factory.mktemp("level1")
    _step_to(_trainer(run), 2, nudge=0.01)
    return run


def _class_out(model):
    return [w.numpy() for w in model.get_layer("class_head").out.weights]


def test_init_from_a_run_with_the_same_label_set_copies_the_class_head(level1):
    source, _ = load_model(str(level1))
    keras.utils.set_random_seed(7)
    model = build_model(CONFIG)
    report = init_from_run(model, LABELS, str(level1))
    assert report.same_labels and report.fresh == ()
    for path, value in _values(source.weights).items():
        np.testing.assert_array_equal(_values(model.weights)[path], value, err_msg=path)
    assert "class_head/out" in report.copied
    assert report.summary().endswith("started fresh: nothing")


def test_init_from_a_run_with_other_mids_of_the_same_count_reinitialises_the_class_out(level1):
    source, _ = load_model(str(level1))
    keras.utils.set_random_seed(7)
    model = build_model(CONFIG)
    fresh_out = _class_out(model)
    other = [{"index": 0, "mid": "/m/b", "name": "b"}, {"index": 1, "mid": "/m/c", "name": "c"}]
    report = init_from_run(model, other, str(level1))
    assert not report.same_labels
    assert report.fresh == (("class_head/out", "the label sets differ"),)
    for got, kept in zip(_class_out(model), fresh_out, strict=True):
        np.testing.assert_array_equal(got, kept)  # still its own initialization
    assert not np.array_equal(_class_out(model)[0], _class_out(source)[0])
    tower = "class_head/conv0/kernel"  # the class head's tower is not per class: copied
    np.testing.assert_array_equal(_values(model.weights)[tower], _values(source.weights)[tower])
    assert "class_head/out (the label sets differ)" in report.summary()
    # The same MIDs in another order are another label set too.
    swapped = [{"index": 0, "mid": "/m/b", "name": "b"}, {"index": 1, "mid": "/m/a", "name": "a"}]
    assert not init_from_run(build_model(CONFIG), swapped, str(level1)).same_labels


def test_backbone_weights_from_a_run_copy_only_its_backbone(level1, tmp_path):
    source, _ = load_model(str(level1))
    keras.utils.set_random_seed(7)
    model = build_model(dataclasses.replace(CONFIG, backbone_weights=str(level1)))
    mine, theirs = _values(model.weights), _values(source.weights)
    for w in backbone_layer(model, CONFIG).weights:
        np.testing.assert_array_equal(mine[w.path], theirs[w.path], err_msg=w.path)
    assert not np.array_equal(mine["fpn/p6/kernel"], theirs["fpn/p6/kernel"])
    with pytest.raises(BackboneWeightsError, match="trained the backbone small, group, 1.0, "
                                                   "not small, group, 1.5"):
        build_model(dataclasses.replace(CONFIG, backbone_weights=str(level1),
                                        backbone_width=1.5))
    with pytest.raises(BackboneWeightsError, match="not a train.py run directory"):
        build_model(dataclasses.replace(CONFIG, backbone_weights=str(tmp_path)))
