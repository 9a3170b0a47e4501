"""The train step with the ATSS assigner (in the step and in tf.data), decoded-box losses, a
P2 pyramid, and the moving average of the weights (its checkpoints and load_model)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from boxes.anchors import AnchorConfig
from boxes.assign import LabelerConfig, add_targets
from engine.run_dir import load_model, save_config
from engine.trainer import TrainConfig, Trainer
from model.config import LossConfig, ModelConfig

ANCHORS = AnchorConfig(sizes=(16, 32, 64, 128, 256))
P2 = AnchorConfig(min_level=2, sizes=(8, 16, 32, 64, 128, 256))


def _config(anchors=ANCHORS):
    return ModelConfig(num_classes=3, backbone="small", image_size=128, fpn_channels=16,
                       head_convs=1, head_channels=16, head_norm="group", anchors=anchors)


def _images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (2, 128, 128, 3)).astype(np.uint8)


def _batch():
    return {"image": tf.constant(_images()),
            "boxes": tf.constant([[[10, 10, 60, 70], [0, 0, 0, 0]],
                                  [[30, 20, 90, 120], [5, 5, 12, 14]]], tf.float32),
            "classes": tf.constant([[0, -1], [1, 2]], tf.int32),
            "num_boxes": tf.constant([1, 2], tf.int32),
            "group_of": tf.constant([[False, False], [True, False]])}


@pytest.mark.parametrize("anchors", [ANCHORS, P2], ids=["p3", "p2"])
def test_atss_labels_the_same_in_the_step_and_in_tf_data(tmp_path, anchors):
    keras.utils.set_random_seed(1)
    trainer = Trainer(tf.distribute.get_strategy(), _config(anchors),
                      LossConfig(box_loss="giou", cls_loss="quality_focal"),
                      TrainConfig(clipnorm=None, label_in_pipeline=True), str(tmp_path),
                      LabelerConfig(assigner="atss"))
    label_fn = trainer.pipeline_label_fn()
    batch = _batch()
    per_image = tf.data.Dataset.from_tensor_slices(batch).map(label_fn).batch(2)
    labeled = next(iter(per_image))
    # What replica_step does when the batch comes unlabeled (eagerly, and traced).
    in_step = add_targets(batch, trainer.anchors, trainer.labeler, anchors.variances,
                          trainer.level_counts)
    traced = tf.function(add_targets, autograph=False)(
        batch, trainer.anchors, trainer.labeler, anchors.variances, trainer.level_counts)
    for other in (labeled, traced):
        np.testing.assert_array_equal(other["cls_targets"].numpy(),
                                      in_step["cls_targets"].numpy())
        np.testing.assert_allclose(other["box_targets"].numpy(),
                                   in_step["box_targets"].numpy(), atol=1e-6)
    losses, grads = trainer.replica_step(batch)  # eagerly: labels, GIoU and QFL
    for k in losses:
        assert np.isfinite(float(losses[k])), k
    assert float(losses["box_loss"]) > 0
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    positives = int(tf.reduce_sum(tf.cast(labeled["cls_targets"] >= 0, tf.int32)))
    assert positives >= 3  # every real box has at least one positive


def test_ema_follows_the_keras_formula_checkpoints_and_loads(tmp_path):
    decay = 0.5
    model_dir = str(tmp_path / "run")
    keras.utils.set_random_seed(2)
    config = _config()
    trainer = Trainer(tf.distribute.get_strategy(), config, LossConfig(),
                      TrainConfig(clipnorm=None, learning_rate=1e-2, ema_decay=decay),
                      model_dir)
    step = trainer._make_train_step()
    iterator = iter(tf.data.Dataset.from_tensors(_batch()).repeat())
    variable = trainer.model.get_layer("class_head").out.kernel
    expected = None
    for _ in range(3):
        step(iterator)
        w = variable.numpy()
        # The first update copies the weights; then average = d * average + (1 - d) * w.
        expected = w if expected is None else decay * expected + (1 - decay) * w
    index = [v.path for v in trainer.model.trainable_variables].index(variable.path)
    np.testing.assert_allclose(trainer._averages()[index].numpy(), expected, rtol=1e-5)
    trained = variable.numpy()
    assert not np.allclose(trained, expected)
    with trainer.averaged_weights() as model:
        np.testing.assert_allclose(model.get_layer("class_head").out.kernel.numpy(), expected,
                                   rtol=1e-5)
    np.testing.assert_array_equal(variable.numpy(), trained)  # the trained weights are back

    trainer.save()
    save_config(os.path.join(model_dir, "config.json"), model=config)
    loaded, _ = load_model(model_dir)  # what eval.py and predict.py run
    np.testing.assert_allclose(loaded.get_layer("class_head").out.kernel.numpy(), expected,
                               rtol=1e-5)
    # Non-trainable state (GroupNorm has none; the step counter) and resuming: the averages
    # come back with the optimizer.
    again = Trainer(tf.distribute.get_strategy(), config, LossConfig(),
                    TrainConfig(clipnorm=None, ema_decay=decay), model_dir)
    assert again.restore() == 3
    np.testing.assert_allclose(again._averages()[index].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(again.model.get_layer("class_head").out.kernel.numpy(), trained)


def test_ema_cannot_be_switched_on_in_a_running_run(tmp_path):
    # The optimizer's variables are saved by position: the averages shift them, so a run
    # keeps the --ema_decay it started with (on or off), and says so.
    from engine.run_dir import CheckpointMismatchError

    model_dir = str(tmp_path / "run")
    config = _config()
    Trainer(tf.distribute.get_strategy(), config, LossConfig(), TrainConfig(clipnorm=None),
            model_dir).save()
    with_ema = Trainer(tf.distribute.get_strategy(), config, LossConfig(),
                       TrainConfig(clipnorm=None, ema_decay=0.9), model_dir)
    with pytest.raises(CheckpointMismatchError, match="ema_decay"):
        with_ema.restore()


def test_bad_ema_decay():
    with pytest.raises(ValueError, match="ema_decay"):
        Trainer(tf.distribute.get_strategy(), _config(), LossConfig(),
                TrainConfig(ema_decay=1.0), "/tmp/unused_ema")
