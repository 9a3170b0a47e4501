"""The XLA-compiled forward and backward pass, and the strategy a lone CPU trains under."""

import keras
import numpy as np
import tensorflow as tf

from boxes.anchors import AnchorConfig
from engine.trainer import TrainConfig, Trainer
from model.config import LossConfig, ModelConfig


def _batch():
    rng = np.random.default_rng(0)
    return {"image": tf.constant(rng.integers(0, 255, (2, 128, 128, 3)).astype(np.uint8)),
            "boxes": tf.constant([[[10, 10, 60, 70], [0, 0, 0, 0]],
                                  [[30, 20, 90, 120], [5, 5, 40, 40]]], tf.float32),
            "classes": tf.constant([[0, -1], [1, 2]], tf.int32),
            "num_boxes": tf.constant([1, 2], tf.int32),
            "group_of": tf.zeros((2, 2), tf.bool)}


def test_jit_compiled_step_matches_the_plain_step(tmp_path):
    config = ModelConfig(num_classes=3, backbone="small", image_size=128, fpn_channels=16,
                         head_convs=1, head_channels=16, head_norm="batch",
                         backbone_norm="batch", bn_momentum=0.9,
                         anchors=AnchorConfig(sizes=(16, 32, 64, 128, 256)))
    results = {}
    for jit in (False, True):
        keras.utils.set_random_seed(3)
        trainer = Trainer(tf.distribute.get_strategy(), config, LossConfig(),
                          TrainConfig(jit_compile=jit, clipnorm=None), str(tmp_path / str(jit)))
        assert getattr(trainer._gradients, "_jit_compile", None) is (True if jit else None)
        losses, grads = tf.function(trainer.replica_step, autograph=False)(_batch())
        results[jit] = (losses, grads)
    (l0, g0), (l1, g1) = results[False], results[True]
    assert float(l0["loss"]) > 0
    for k in l0:
        np.testing.assert_allclose(l1[k].numpy(), l0[k].numpy(), rtol=1e-4, err_msg=k)
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-5)


def test_one_cpu_trains_under_the_default_strategy():
    # OneDeviceStrategy("/cpu:0") runs the same train step at 0.6-0.7x the speed
    # (benchmarks/bench_strategy.py), so auto and mirrored fall back to no strategy at all.
    from engine.strategy import make_strategy

    assert len(tf.config.list_logical_devices("CPU")) == 1
    assert not tf.config.list_logical_devices("GPU")
    assert make_strategy("auto") is tf.distribute.get_strategy()
    assert make_strategy("mirrored") is tf.distribute.get_strategy()
    assert isinstance(make_strategy("one_device"), tf.distribute.OneDeviceStrategy)
