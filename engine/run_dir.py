"""A training run's directory and the SavedModels it exports:

    MODEL_DIR/config.json          the resolved configuration (model, loss, train, input,
                                   labeler, level, labels)
    MODEL_DIR/checkpoints/ckpt-N   every weight (checkpoint_weights), optimizer, step
    MODEL_DIR/logs/                TensorBoard
    MODEL_DIR/export/              inference SavedModel (engine/export.py), described by its
                                   assets.extra/config.json

Writing the configuration, rebuilding a run's model from it, and checking that a model fits
the labels of the level it is used on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import keras
import tensorflow as tf

from boxes.anchors import AnchorConfig
from model.config import ModelConfig
from model.retinanet import build_retinanet
from tfrecords.layout import sorted_labels

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
EXPORT_METADATA = "assets.extra/config.json"  # inside a SavedModel directory


class CheckpointMismatchError(ValueError):
    """The model directory's checkpoint was written by a differently configured model."""


def save_config(path: str, **configs) -> None:
    """Writes the resolved configuration as JSON (dataclasses and plain values)."""
    def plain(v):
        return dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v

    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump({k: plain(v) for k, v in configs.items()}, f, indent=1, sort_keys=True,
                  default=str)


def read_json(path: str) -> dict | list:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def checkpoint_weights(model: keras.Model) -> dict:
    """Every weight of `model` (trainable or not) keyed by its path, for tf.train.Checkpoint.

    A Keras 3 model handed to tf.train.Checkpoint directly saves no variables of
    its own (only those the optimizer references), which would lose
    non-trainable state such as BatchNorm statistics.
    """
    weights = {w.path: w for w in model.weights}
    if len(weights) != len(model.weights):
        raise ValueError("two weights of the model share a path; layer names must be unique")
    return weights


def model_config_from_json(saved: dict) -> ModelConfig:
    """The "model" entry of a config.json -> ModelConfig (the backbone weights file is not
    needed: the checkpoint holds every weight)."""
    saved = dict(saved)
    saved["anchors"] = AnchorConfig.from_json(saved["anchors"])
    saved["backbone_weights"] = None
    return ModelConfig(**saved)


def latest_checkpoint(model_dir: str) -> str | None:
    """The newest MODEL_DIR/checkpoints/ckpt-N prefix, or None."""
    return tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINTS))


def load_model(model_dir: str, checkpoint: str | None = None) -> tuple[keras.Model, ModelConfig]:
    """(training model, its config) of a run: rebuilt from its config.json, weights from
    `checkpoint` (a path prefix such as MODEL_DIR/checkpoints/ckpt-400) or else its last
    checkpoint; of a run trained with an ema_decay, the averaged weights. Called in a
    strategy's scope, the weights are the strategy's variables."""
    config = model_config_from_json(read_json(os.path.join(model_dir, CONFIG))["model"])
    model = build_retinanet(config)
    latest = checkpoint or latest_checkpoint(model_dir)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir}/{CHECKPOINTS}")
    status = tf.train.Checkpoint(weights=checkpoint_weights(model)).restore(latest)
    status.expect_partial().assert_existing_objects_matched()  # the optimizer may be left out
    if any(name.startswith("ema/") for name, _ in tf.train.list_variables(latest)):
        # A run with --ema_decay: its moving averages replace the trainable weights.
        ema = {w.path: w for w in model.trainable_variables}
        tf.train.Checkpoint(ema=ema).restore(latest).expect_partial() \
            .assert_existing_objects_matched()
    return model, config


def is_saved_model(path: str) -> bool:
    return tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


def check_labels(name: str, model_labels: Sequence[dict], model_level: int | None,
                 labels: Sequence[dict], labels_source: str, level: int | None = None) -> None:
    """Refuses a model trained for other classes than `labels` (or another level).

    Args:
      name: the model, for the message.
      model_labels, model_level: what it was trained for.
      labels, labels_source, level: what it is about to be used on.

    Raises:
      ValueError naming both sides.
    """
    if level is not None and model_level is not None and model_level != level:
        raise ValueError(f"{name} was trained for level {model_level}, not level {level}")
    ours = [e["mid"] for e in sorted_labels(model_labels)]
    theirs = [e["mid"] for e in sorted_labels(labels)]
    if ours != theirs:
        diff = sorted(set(ours) ^ set(theirs))
        detail = (f"MIDs only on one side: {', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}"
                  if diff else "same MIDs in another order")
        raise ValueError(
            f"{name} was trained on {len(ours)} classes that do not match the "
            f"{len(theirs)} of {labels_source} ({detail}); use the model trained for this "
            "level")
