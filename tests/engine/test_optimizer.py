"""make_optimizer's cosine schedule: its values, and AdamW stepping with it traced once."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine.trainer import TrainConfig, learning_rate_schedule, make_optimizer

# 10 steps, 2 of warm-up from min_learning_rate to learning_rate, then 8 of cosine decay.
CONFIG = TrainConfig(epochs=2, steps_per_epoch=5, learning_rate=1e-3, min_learning_rate=1e-5,
                     warmup_steps=2, schedule="cosine", optimizer="adamw", weight_decay=0.1)


def _plain_keras_schedule():
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=1e-5, decay_steps=8, alpha=1e-5 / 1e-3, warmup_target=1e-3,
        warmup_steps=2)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])
def test_cosine_schedule_warms_up_then_decays_to_the_floor(traced):
    schedule = learning_rate_schedule(CONFIG)
    call = tf.function(schedule, autograph=False) if traced else schedule
    values = [float(call(tf.constant(step, tf.int64))) for step in (0, 1, 2, 6, 10)]
    # Warm-up is linear: 1e-5, then halfway (1e-5 + 1e-3) / 2 = 5.05e-4, then 1e-3 at step 2.
    # Cosine with alpha = 1e-5 / 1e-3: lr * ((1 - alpha) * (1 + cos(pi * t / 8)) / 2 + alpha).
    # t = 4 (step 6): (1e-3 + 1e-5) / 2 = 5.05e-4; t = 8 (step 10): the floor, 1e-5.
    np.testing.assert_allclose(values, [1e-5, 5.05e-4, 1e-3, 5.05e-4, 1e-5], rtol=1e-5)


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, activation="relu")(inputs)
    x = keras.layers.Dense(4, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def _train(optimizer, steps, traced):
    model = _model()
    variables = model.trainable_variables
    optimizer.build(variables)
    x = tf.constant(np.random.default_rng(1).normal(size=(5, 3)), tf.float32)

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - 1.0))
        optimizer.apply(tape.gradient(loss, variables), variables)

    run = tf.function(step, autograph=False) if traced else step
    for _ in range(steps):
        run()
    graph = run.get_concrete_function().graph if traced else None
    return [v.numpy() for v in variables], graph


def _count(graph, op_type):
    ops = list(graph.get_operations())
    for function in graph._functions.values():  # noqa: SLF001 - nested function bodies
        ops += list(function.graph.get_operations()) if hasattr(function, "graph") else []
    return sum(op.type == op_type for op in ops)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])
def test_adamw_steps_as_with_keras_own_schedule(traced):
    ours = make_optimizer(CONFIG)
    keras_own = keras.optimizers.AdamW(_plain_keras_schedule(), weight_decay=0.1)
    # 7 steps: through the warm-up and into the decay, weight decay on every kernel.
    weights, graph = _train(ours, 7, traced)
    expected, keras_graph = _train(keras_own, 7, traced)
    for w, e in zip(weights, expected, strict=True):
        np.testing.assert_allclose(w, e, rtol=1e-6, atol=1e-9)
    assert int(ours.iterations) == int(keras_own.iterations) == 7
    if traced:
        # The schedule's cosine is traced once; Keras's own traces one per decayed variable
        # (3 kernels; biases are decayed too in Keras 3, so 6) plus the update's own.
        assert _count(graph, "Cos") == 1
        assert _count(keras_graph, "Cos") > 1


def test_loss_scale_optimizer_steps_the_same_traced_and_eagerly():
    # With mixed precision the inner AdamW applies inside the loss scaler's tf.cond (finite
    # gradients or not): the schedule is traced in that branch's own graph.
    config = dataclasses.replace(CONFIG, mixed_precision=True)
    eager, _ = _train(make_optimizer(config), 3, traced=False)
    traced, _ = _train(make_optimizer(config), 3, traced=True)
    for t, e in zip(traced, eager, strict=True):
        np.testing.assert_allclose(t, e, rtol=1e-6, atol=1e-9)
    assert not np.allclose(eager[0], _model().trainable_variables[0].numpy())
