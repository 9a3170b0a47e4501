"""A training run's directory and the SavedModels it exports:

    MODEL_DIR/config.json          the resolved configuration (model, loss, train, input,
                                   labeler, level, labels)
    MODEL_DIR/checkpoints/ckpt-N   every weight (checkpoint_weights), optimizer, step; the
                                   last --keep_checkpoints of them
    MODEL_DIR/checkpoints/best/    with evaluation during training, the checkpoint of the best
                                   validation mAP so far (ckpt-N) and best.json {step, epoch,
                                   mAP}, apart from the rotation
    MODEL_DIR/logs/                TensorBoard
    MODEL_DIR/export/              inference SavedModel (engine/export.py), described by its
                                   assets.extra/config.json
    MODEL_DIR/export_best/         the same for the best checkpoint

Writing the configuration, building a run's model (with its backbone's starting weights),
rebuilding it from a run directory, starting from another run, and checking that a model fits
the labels of the level it is used on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence

import keras
import tensorflow as tf

from boxes.anchors import AnchorConfig
from model.backbones import IMAGENET, BackboneWeightsError
from model.config import ModelConfig
from model.retinanet import backbone_bn_frozen, backbone_layer, build_retinanet
from tfrecords.layout import sorted_labels

log = logging.getLogger(__name__)

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
BEST = "best"  # MODEL_DIR/checkpoints/best/
BEST_JSON = "best.json"
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
    """The "model" entry of a config.json -> ModelConfig. The backbone's starting weights are
    not needed (the checkpoint holds every weight), but whether its BatchNorm was frozen is
    kept, so that the rebuilt model trains the same variables."""
    saved = dict(saved)
    saved["anchors"] = AnchorConfig.from_json(saved["anchors"])
    saved.setdefault("freeze_backbone_bn", None)
    saved["freeze_backbone_bn"] = backbone_bn_frozen(ModelConfig(**saved))
    saved["backbone_weights"] = None
    return ModelConfig(**saved)


def is_run_dir(path: str) -> bool:
    """A train.py run directory (it has a config.json)."""
    return tf.io.gfile.exists(os.path.join(path, CONFIG))


def build_model(config: ModelConfig, load_backbone_weights: bool = True) -> keras.Model:
    """build_retinanet with the backbone's starting weights config.backbone_weights: None,
    "imagenet" or a weights file (model/backbones.py reads them), or a train.py run directory,
    whose backbone is copied from its last checkpoint (copy_backbone).

    Args:
      load_backbone_weights: False when every weight is about to be overwritten (a resumed
        run, --init_checkpoint): the backbone starts random, which needs no download or file,
        but its BatchNorm is frozen as with the weights.

    Raises:
      BackboneWeightsError (a ValueError) naming what cannot be read and the fix.
    """
    weights = config.backbone_weights
    run_dir = None
    if weights and weights != IMAGENET and tf.io.gfile.isdir(weights):
        if not is_run_dir(weights):
            raise BackboneWeightsError(
                f"{weights}: a directory, but not a train.py run directory (no {CONFIG}); "
                "pass a run's --model_dir, 'imagenet' or a weights file")
        run_dir = weights
    if run_dir or not load_backbone_weights:
        model = build_retinanet(dataclasses.replace(
            config, backbone_weights=None, freeze_backbone_bn=backbone_bn_frozen(config)))
    else:
        model = build_retinanet(config)
    if run_dir and load_backbone_weights:
        copied = copy_backbone(run_dir, model, config)
        log.info("backbone: %d weight tensors copied from %s", copied, run_dir)
    return model


def copy_backbone(run_dir: str, model: keras.Model, config: ModelConfig) -> int:
    """Copies the backbone of RUN_DIR's last checkpoint into `model` (built from `config`);
    returns the number of weight tensors.

    Raises:
      BackboneWeightsError: the run has no checkpoint, or trained another backbone.
    """
    try:
        source, source_config = load_model(run_dir)
    except FileNotFoundError as e:
        raise BackboneWeightsError(f"{run_dir}: {e}; train it first or pass another run") \
            from None
    ours = (config.backbone, config.backbone_norm, config.backbone_width)
    theirs = (source_config.backbone, source_config.backbone_norm, source_config.backbone_width)
    if config.backbone != "small":  # norm and width describe the small backbone only
        ours, theirs = ours[:1], theirs[:1]
    if ours != theirs:
        raise BackboneWeightsError(
            f"{run_dir} trained the backbone {', '.join(map(str, theirs))}, not "
            f"{', '.join(map(str, ours))}: pass --backbone (and --backbone_norm, "
            "--backbone_width) as that run did")
    src = {w.path: w for w in backbone_layer(source, source_config).weights}
    dst = backbone_layer(model, config).weights
    bad = [w.path for w in dst
           if w.path not in src or tuple(src[w.path].shape) != tuple(w.shape)]
    if bad or len(src) != len(dst):
        raise BackboneWeightsError(f"{run_dir}: its backbone's weights do not fit this one's "
                                   f"(e.g. {', '.join(bad[:3]) or 'another count'})")
    for w in dst:
        w.assign(src[w.path].numpy())
    return len(dst)


@dataclasses.dataclass(frozen=True)
class InitReport:
    """What init_from_run did, by layer (a weight's path without its variable name).

    Attributes:
      copied: layers whose weights came from the other run.
      fresh: (layer, reason) of those that kept their new initialization.
      same_labels: whether both runs' label sets (MIDs in index order) are equal.
    """

    copied: tuple[str, ...]
    fresh: tuple[tuple[str, str], ...]
    same_labels: bool

    def summary(self) -> str:
        groups: dict[str, int] = {}
        for layer in self.copied:
            top = layer.split("/")[0] if "/" in layer else "backbone"
            groups[top] = groups.get(top, 0) + 1
        copied = ", ".join(f"{g} ({n} layers)" for g, n in groups.items()) or "nothing"
        fresh = "; ".join(f"{layer} ({why})" for layer, why in self.fresh[:10]) or "nothing"
        if len(self.fresh) > 10:
            fresh += f"; and {len(self.fresh) - 10} more layers"
        return f"copied {copied}; started fresh: {fresh}"


def init_from_run(model: keras.Model, labels: Sequence[dict], run_dir: str) -> InitReport:
    """Starts `model` (for the classes `labels`) from RUN_DIR's last checkpoint: every weight
    whose path and shape agree is copied, except the class head's output layer when the two
    label sets (MIDs in index order) differ, since its channels are per class: a class count
    that happens to match would otherwise hand one class's detector to another."""
    source, _ = load_model(run_dir)
    source_labels = read_json(os.path.join(run_dir, CONFIG)).get("labels") or []
    same = ([e["mid"] for e in sorted_labels(source_labels)]
            == [e["mid"] for e in sorted_labels(labels)])
    per_class = {id(w) for w in model.get_layer("class_head").out.weights}
    src = {w.path: w for w in source.weights}
    copied: dict[str, None] = {}
    fresh: dict[str, str] = {}
    for w in model.weights:
        layer = w.path.rsplit("/", 1)[0]
        other = src.get(w.path)
        if id(w) in per_class and not same:
            fresh[layer] = "the label sets differ"
        elif other is None:
            fresh[layer] = f"not in {run_dir}"
        elif tuple(other.shape) != tuple(w.shape):
            fresh[layer] = f"shape {tuple(other.shape)} there, {tuple(w.shape)} here"
        else:
            w.assign(other.numpy())
            copied[layer] = None
    return InitReport(tuple(k for k in copied if k not in fresh), tuple(fresh.items()), same)


def resolve_checkpoint(model_dir: str, which: str | None = None) -> str:
    """The checkpoint prefix of MODEL_DIR that `which` names: None or "latest" (the last),
    "best" (the best by validation mAP) or "ckpt-N" (a path prefix is returned as is).

    Raises:
      FileNotFoundError naming the checkpoints there are.
    """
    ckpt_dir = os.path.join(model_dir, CHECKPOINTS)
    if which in (None, "", "latest"):
        path = latest_checkpoint(model_dir)
    elif which == BEST:
        path = tf.train.latest_checkpoint(os.path.join(ckpt_dir, BEST))
    elif re.fullmatch(r"ckpt-\d+", which):
        path = os.path.join(ckpt_dir, which)
        path = path if tf.io.gfile.exists(path + ".index") else None
    elif tf.io.gfile.exists(which + ".index"):
        path = which
    else:
        raise FileNotFoundError(f"checkpoint {which!r}: expected latest, best, ckpt-N or a "
                                "checkpoint path prefix")
    if path is None:
        names = [os.path.basename(p) for p in
                 tf.io.gfile.glob(os.path.join(ckpt_dir, "ckpt-*.index"))]
        have = [f"ckpt-{n}" for n in sorted(
            int(m[1]) for m in (re.fullmatch(r"ckpt-(\d+)\.index", n) for n in names) if m)]
        best = tf.train.latest_checkpoint(os.path.join(ckpt_dir, BEST))
        raise FileNotFoundError(
            f"no checkpoint {which or 'latest'} in {ckpt_dir}; there are: "
            f"{', '.join(have + (['best'] if best else [])) or 'none'}"
            + ("" if which != BEST else " (best is kept only with --eval_every_epochs)"))
    return path


def read_best(model_dir: str) -> dict | None:
    """MODEL_DIR/checkpoints/best/best.json ({step, epoch, mAP, checkpoint}) or None."""
    path = os.path.join(model_dir, CHECKPOINTS, BEST, BEST_JSON)
    return read_json(path) if tf.io.gfile.exists(path) else None


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
