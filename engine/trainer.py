"""The custom training loop: one code path for every tf.distribute strategy.

Keras 3's Model.fit does not run under MultiWorkerMirroredStrategy
(keras-team/keras#20585); a loop over strategy.run with the same Keras model
does, and also runs under MirroredStrategy, OneDeviceStrategy and the default
strategy. Checkpoints hold the model, the optimizer, the step and the
learning-rate controller, so a killed run restarted with the same command
resumes where its last checkpoint left off; a run resumed with the backbone
frozen or unfrozen (staged training) keeps every weight and the optimizer state
of the variables that trained before. With evaluation during training the best
checkpoint by validation mAP is kept apart from the rotation (save_best).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
import weakref
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from boxes.anchors import generate_anchors
from boxes.assign import LabelerConfig, add_image_targets, add_targets
from engine.run_dir import (
    BEST,
    BEST_JSON,
    CHECKPOINTS,
    CONFIG,
    CheckpointMismatchError,
    checkpoint_weights,
    model_config_from_json,
    read_best,
    read_json,
)
from engine.strategy import is_chief, task_id
from model.config import LossConfig, ModelConfig
from model.losses import num_positives, retinanet_loss
from model.retinanet import backbone_layer, build_retinanet, set_backbone_trainable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Attributes:
      optimizer: "adam" (the original: Adam 1e-4, clipnorm 0.001) or "adamw".
      schedule: "plateau" (x plateau_factor when the epoch loss has not improved for
        plateau_patience epochs, floor min_learning_rate) or "cosine" (linear warm-up over
        warmup_steps, then cosine decay to min_learning_rate).
      clipnorm: per-tensor gradient norm limit applied to the gradient of the global batch.
      checkpoint_every_steps: also checkpoint at each epoch end.
      keep_checkpoints: the newest checkpoints kept (the best by validation mAP is kept
        apart from them).
      jit_compile: compile each replica's forward and backward pass with XLA (anchor
        labeling and the optimizer update, with their dynamic shapes and cross-replica
        sums, stay outside the compiled cluster).
      ema_decay: keep an exponential moving average of the trainable weights with this
        momentum per step (the Keras optimizer's use_ema; 0: off). Checkpoints hold it, and
        evaluation during training, eval.py, predict.py and the export use it.
    """

    epochs: int = 50
    steps_per_epoch: int = 1000
    learning_rate: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    clipnorm: float | None = 0.001
    schedule: str = "plateau"
    plateau_factor: float = 0.85
    plateau_patience: int = 2
    min_learning_rate: float = 5e-6
    warmup_steps: int = 500
    mixed_precision: bool = False
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    log_every_steps: int = 50
    label_in_pipeline: bool = False
    jit_compile: bool = False
    ema_decay: float = 0.0


class CosineDecayOncePerGraph(keras.optimizers.schedules.CosineDecay):
    """keras.optimizers.schedules.CosineDecay whose value is traced once per graph and step.

    AdamW's weight decay asks the optimizer for its learning rate once per variable
    (keras/src/backend/tensorflow/optimizer.py, `_apply_weight_decay`), and each ask traced the
    schedule's ops again: about 90 copies in the demo model's train step, a third of its tracing
    time (532 for ResNet-101's). The value is the same (every ask reads the step before the
    optimizer increments it); eagerly the schedule is computed on every call as before. Keyed
    by graph, so a tf.cond or loop body (its own FuncGraph) traces its own copy rather than
    reaching into the outer graph.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._traced = weakref.WeakKeyDictionary()  # graph -> (step, learning rate tensor)

    def __call__(self, step):
        if tf.executing_eagerly():
            return super().__call__(step)
        graph = tf.compat.v1.get_default_graph()
        traced = self._traced.get(graph)
        if traced is None or traced[0] is not step:
            traced = (step, super().__call__(step))
            self._traced[graph] = traced
        return traced[1]


def learning_rate_schedule(config: TrainConfig) -> keras.optimizers.schedules.LearningRateSchedule | float:
    """The cosine schedule (linear warm-up from min_learning_rate, then cosine decay back to
    it at the last step), or with schedule="plateau" the starting learning rate."""
    total = config.epochs * config.steps_per_epoch
    if config.schedule == "cosine":
        warmup = min(config.warmup_steps, max(total - 1, 0))
        return CosineDecayOncePerGraph(
            initial_learning_rate=config.min_learning_rate, decay_steps=max(total - warmup, 1),
            alpha=config.min_learning_rate / config.learning_rate,
            warmup_target=config.learning_rate, warmup_steps=warmup)
    if config.schedule == "plateau":
        return config.learning_rate
    raise ValueError(f"schedule must be plateau or cosine, got {config.schedule!r}")


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    lr = learning_rate_schedule(config)
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {config.ema_decay}")
    ema = {"use_ema": config.ema_decay > 0, "ema_momentum": config.ema_decay or 0.99}
    if config.optimizer == "adam":
        opt = keras.optimizers.Adam(lr, **ema)
    elif config.optimizer == "adamw":
        opt = keras.optimizers.AdamW(lr, weight_decay=config.weight_decay, **ema)
    else:
        raise ValueError(f"optimizer must be adam or adamw, got {config.optimizer!r}")
    if config.mixed_precision:
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


class Plateau(tf.Module):
    """Learning rate x factor when the epoch loss has not improved for `patience` epochs.

    State lives in variables so that it is checkpointed with the model.
    """

    def __init__(self, factor: float, patience: int, floor: float):
        super().__init__()
        self.factor, self.patience, self.floor = factor, patience, floor
        self.best = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False)

    def update(self, epoch_loss: float, lr_variable) -> float:
        """Called once per epoch; returns the learning rate for the next epoch."""
        if epoch_loss < self.best.numpy():
            self.best.assign(epoch_loss)
            self.wait.assign(0)
        else:
            self.wait.assign_add(1)
            if self.wait.numpy() >= self.patience:
                lr_variable.assign(max(float(lr_variable.numpy()) * self.factor, self.floor))
                self.wait.assign(0)
        return float(lr_variable.numpy())


def _base_optimizer(opt):
    return getattr(opt, "inner_optimizer", opt)


def _clip_per_tensor(grads, clipnorm):
    return [None if g is None else tf.clip_by_norm(g, clipnorm) for g in grads]


class Trainer:
    """Builds model and optimizer in the strategy's scope and runs the loop.

    Args:
      strategy: any tf.distribute strategy.
      model_config, loss_config, train_config: the resolved configuration.
      model_dir: checkpoints, TensorBoard logs and config.json go here.
      labeler: anchor matching settings.
    """

    def __init__(self, strategy: tf.distribute.Strategy, model_config: ModelConfig,
                 loss_config: LossConfig, train_config: TrainConfig, model_dir: str,
                 labeler: LabelerConfig = LabelerConfig(),
                 build_model: Callable[[ModelConfig], keras.Model] | None = None):
        self.strategy = strategy
        self.model_config = model_config
        self.loss_config = loss_config
        self.config = train_config
        self.model_dir = model_dir
        self._restored: str | None = None  # the checkpoint restore() has read
        self.labeler = labeler
        self.anchors = tf.constant(generate_anchors(model_config.image_size,
                                                    model_config.image_size,
                                                    model_config.anchors))
        self.level_counts = model_config.anchors.level_counts(model_config.image_size,
                                                              model_config.image_size)
        with strategy.scope():
            self.model = (build_model or build_retinanet)(model_config)
        if train_config.jit_compile and strategy.num_replicas_in_sync > 1 \
                and _synchronized_batch_norms(self.model):
            # A cross-replica sum inside an XLA cluster needs merge_call, which TF refuses
            # in a nested function ("merge_call called while defining a new graph").
            raise ValueError(
                f"jit_compile with BatchNorm synchronized over "
                f"{strategy.num_replicas_in_sync} replicas is not supported: use GroupNorm "
                f"(--head_norm=group --backbone_norm=group), one replica, or no jit_compile")
        with strategy.scope():
            self.optimizer = make_optimizer(train_config)
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.plateau = Plateau(train_config.plateau_factor, train_config.plateau_patience,
                                   train_config.min_learning_rate)
        extra = {}
        if train_config.ema_decay:
            # The averages again under the weights' own paths, so that load_model (eval.py,
            # predict.py) restores them without building an optimizer.
            extra["ema"] = dict(zip((w.path for w in self.model.trainable_variables),
                                    self._averages(), strict=True))
        self.checkpoint = tf.train.Checkpoint(weights=checkpoint_weights(self.model),
                                              optimizer=self.optimizer, step=self.step,
                                              plateau=self.plateau, **extra)
        self.is_chief = is_chief(strategy)
        if self.is_chief:
            ckpt_dir = os.path.join(model_dir, CHECKPOINTS)
        else:
            # Every worker takes part in a save (reading a variable may need a collective),
            # but only the chief's copy is kept; the others write to a local temporary
            # directory, never inside MODEL_DIR, which save() deletes.
            ckpt_dir = tempfile.mkdtemp(prefix=f"ckpt_worker{task_id(strategy)}_")
        self.manager = tf.train.CheckpointManager(self.checkpoint, ckpt_dir,
                                                  max_to_keep=train_config.keep_checkpoints)
        self.best_manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(model_dir, CHECKPOINTS, BEST) if self.is_chief
            else tempfile.mkdtemp(prefix=f"best_worker{task_id(strategy)}_"), max_to_keep=1)
        self._best: dict | None = None  # read from best.json on first use
        self._train_step = None
        self._gradients = tf.function(self._loss_and_gradients, jit_compile=True) \
            if train_config.jit_compile else self._loss_and_gradients

    # -- steps ---------------------------------------------------------------------------

    def pipeline_label_fn(self) -> Callable[[dict], dict] | None:
        """With label_in_pipeline, the per-image target assignment to hand the training input
        (tfrecords.input_pipeline.build_dataset's label_fn); None when the train step labels."""
        if not self.config.label_in_pipeline:
            return None
        anchors = generate_anchors(self.model_config.image_size, self.model_config.image_size,
                                   self.model_config.anchors)
        variances = self.model_config.anchors.variances
        counts = self.level_counts
        return lambda example: add_image_targets(example, tf.constant(anchors), self.labeler,
                                                 variances, counts)

    def replica_step(self, batch: dict) -> dict:
        """Forward, loss and gradients on one replica; returns its losses and gradients
        (gradients are those of the global-batch loss restricted to this replica's images)."""
        if "cls_targets" not in batch:  # labeling on the accelerator
            batch = add_targets(batch, self.anchors, self.labeler,
                                self.model_config.anchors.variances, self.level_counts)
        ctx = tf.distribute.get_replica_context()
        normalizer = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                    num_positives(batch["cls_targets"]))
        return self._gradients(batch["image"], batch["cls_targets"], batch["box_targets"],
                               normalizer)

    def _loss_and_gradients(self, images, cls_targets, box_targets, normalizer):
        """[B, S, S, 3] images and [B, A] / [B, A, 4] targets -> (losses, gradients)."""
        with tf.GradientTape() as tape:
            out = self.model(images, training=True)
            losses = retinanet_loss(cls_targets, box_targets, out["cls_logits"],
                                    out["box_deltas"], self.loss_config, normalizer,
                                    self.anchors, self.model_config.anchors.variances)
            loss = losses["loss"]
            if self.config.mixed_precision:
                loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, self.model.trainable_variables)
        return losses, grads

    def _apply(self, grads):
        variables = self.model.trainable_variables
        if self.config.clipnorm:
            # Keras clips each replica's partial gradient before summing them; clip the
            # gradient of the global batch instead, then hand the optimizer 1/N of it per
            # replica so that its own cross-replica sum restores it.
            ctx = tf.distribute.get_replica_context()
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            if self.config.mixed_precision:
                scale = tf.cast(self.optimizer.dynamic_scale, grads[0].dtype)
                grads = [g / scale for g in grads]
            grads = _clip_per_tensor(grads, self.config.clipnorm)
            if self.config.mixed_precision:
                grads = [g * scale for g in grads]
            n = tf.cast(ctx.num_replicas_in_sync, grads[0].dtype)
            grads = [g / n for g in grads]
        self.optimizer.apply(grads, variables)

    def _make_train_step(self):
        def step_fn(batch):
            losses, grads = self.replica_step(batch)
            self._apply(grads)
            return losses

        # No AutoGraph: the step has no data-dependent Python control flow, and converting
        # the model, loss and optimizer code took a fifth of a run's start-up.
        @tf.function(autograph=False)
        def train_step(iterator):
            per_replica = self.strategy.run(step_fn, args=(next(iterator),))
            self.step.assign_add(1)
            return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                    for k, v in per_replica.items()}

        return train_step

    # -- weight averaging ----------------------------------------------------------------

    def _averages(self) -> list:
        """The optimizer's moving averages, in the order of model.trainable_variables."""
        return list(_base_optimizer(self.optimizer)._model_variables_moving_average)

    @contextlib.contextmanager
    def averaged_weights(self):
        """Within the block the model holds the moving average of its trainable weights
        (with ema_decay; otherwise it is unchanged); the trained weights come back after."""
        if not self.config.ema_decay:
            yield self.model
            return
        variables = self.model.trainable_variables
        trained = [tf.identity(v) for v in variables]
        for v, average in zip(variables, self._averages(), strict=True):
            v.assign(average)
        try:
            yield self.model
        finally:
            for v, value in zip(variables, trained, strict=True):
                v.assign(value)

    # -- loop ----------------------------------------------------------------------------

    def latest_checkpoint(self) -> str | None:
        """The chief's latest checkpoint in MODEL_DIR/checkpoints (which every worker reads)."""
        return tf.train.latest_checkpoint(os.path.join(self.model_dir, CHECKPOINTS))

    def restore(self) -> int:
        """Restores the latest checkpoint of this run if any; returns the step."""
        latest = self.latest_checkpoint()
        if latest and latest == self._restored:
            return int(self.step.numpy())  # train.py checks before fit(); read it once
        if latest:
            try:
                self.checkpoint.restore(latest).assert_existing_objects_matched()
            except (AssertionError, ValueError) as e:  # missing variables; other shapes
                if self._restore_other_trainables(latest):
                    self._restored = latest
                    return int(self.step.numpy())
                raise CheckpointMismatchError(
                    f"{latest} does not fit this model: it was written by a run with another "
                    f"configuration (backbone, normalization, heads, anchors, classes, or "
                    f"weight averaging: --ema_decay on or off). "
                    f"Resume with that run's flags, or train in a new --model_dir. "
                    f"Detail: {str(e)[:300]}") from e
            self._restored = latest
            log.info("resumed from %s at step %d", latest, int(self.step.numpy()))
        return int(self.step.numpy())

    def _restore_other_trainables(self, latest: str) -> bool:
        """Restores a checkpoint of this run written with another freeze_backbone or
        freeze_backbone_bn (staged training): every weight, the step, the learning-rate
        controller, and the optimizer state (iterations, learning rate, moments) of the
        variables that trained before; the newly trainable ones start with fresh moments.
        False when the run's config.json says the model differs otherwise."""
        path = os.path.join(self.model_dir, CONFIG)
        if not tf.io.gfile.exists(path):
            return False
        before = model_config_from_json(read_json(path)["model"])
        now = model_config_from_json(dataclasses.asdict(self.model_config))

        def architecture(c: ModelConfig) -> ModelConfig:
            return dataclasses.replace(c, freeze_backbone=False, freeze_backbone_bn=None)

        if architecture(before) != architecture(now) or before == now:
            return False
        backbone = backbone_layer(self.model, self.model_config)
        set_backbone_trainable(backbone, before)
        trained_before = list(self.model.trainable_variables)
        set_backbone_trainable(backbone, self.model_config)
        with self.strategy.scope():
            previous = make_optimizer(self.config)
            previous.build(trained_before)
        tf.train.Checkpoint(weights=checkpoint_weights(self.model), optimizer=previous,
                            step=self.step, plateau=self.plateau
                            ).restore(latest).expect_partial().assert_existing_objects_matched()
        state = {v.name: v for v in previous.variables}
        carried = 0
        for v in self.optimizer.variables:
            if v.name in state:
                v.assign(state[v.name])
                carried += 1
        changes = ", ".join(f"{f} {getattr(before, f)} -> {getattr(now, f)}"
                            for f in ("freeze_backbone", "freeze_backbone_bn")
                            if getattr(before, f) != getattr(now, f))
        log.info("resumed from %s at step %d with %s: %d variables trained before, %d now; "
                 "optimizer state carried over for %d of its %d variables, the others start "
                 "fresh", latest, int(self.step.numpy()), changes, len(trained_before),
                 len(self.model.trainable_variables), carried, len(self.optimizer.variables))
        return True

    def best(self) -> dict | None:
        """{step, epoch, mAP, checkpoint} of the best checkpoint so far, or None."""
        if self._best is None:
            self._best = read_best(self.model_dir)
        return self._best

    def save_best(self, metric: float, epoch: int) -> bool:
        """Keeps the current weights as the best checkpoint (MODEL_DIR/checkpoints/best/,
        apart from the rotation, replacing the previous best) if `metric` (validation mAP)
        beats the best so far; returns whether it did. Call it on every worker alike."""
        best = self.best()
        if best is not None and metric <= best["mAP"]:
            return False
        path = self.best_manager.save(checkpoint_number=int(self.step.numpy()))
        self._best = {"step": int(self.step.numpy()), "epoch": epoch, "mAP": float(metric),
                      "checkpoint": os.path.basename(path)}
        if self.is_chief:
            with tf.io.gfile.GFile(os.path.join(self.best_manager.directory, BEST_JSON),
                                   "w") as f:
                json.dump(self._best, f, indent=1)
        else:
            tf.io.gfile.rmtree(self.best_manager.directory)
        return True

    def save(self) -> str:
        """Checkpoints the step on every worker; returns the path (on a non-chief worker,
        of its deleted temporary copy)."""
        path = self.manager.save(checkpoint_number=int(self.step.numpy()))
        if not self.is_chief:
            tf.io.gfile.rmtree(self.manager.directory)
        return path

    def fit(self, make_dataset: Callable[[tf.distribute.InputContext], tf.data.Dataset],
            global_batch_size: int,
            on_epoch_end: Callable[[int, dict], None] | None = None,
            stop_reason: Callable[[], str | None] | None = None,
            progress: Callable[[int, dict], None] | None = None) -> dict:
        """Trains until epochs x steps_per_epoch steps; returns the last epoch's mean losses.

        Args:
          make_dataset: InputContext -> per-replica batched dataset (build_dataset).
          global_batch_size: images per step over all replicas (for images/s).
          on_epoch_end: called with (epoch, mean losses) after each epoch's checkpoint.
          stop_reason: called after every step; a message stops the run with TrainingStoppedError
            (e.g. the input found a broken records file).
          progress: called after every step with (step, its losses); it reports progress
            (e.g. an oid.progress.Progress bar) instead of the log line every log_every_steps
            (TensorBoard gets its scalars either way).

        Raises:
          TrainingStoppedError: with stop_reason's message.
        """
        cfg = self.config
        total = cfg.epochs * cfg.steps_per_epoch
        start = self.restore()
        if start >= total:
            log.info("already trained for %d steps", start)
            return {}
        dataset = self.strategy.distribute_datasets_from_function(make_dataset)
        iterator = iter(dataset)
        if self._train_step is None:
            self._train_step = self._make_train_step()
        writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "logs")) \
            if self.is_chief else tf.summary.create_noop_writer()
        lr_var = _base_optimizer(self.optimizer).learning_rate
        means: dict = {}
        step = start
        with writer.as_default():
            while step < total:
                epoch = step // cfg.steps_per_epoch
                sums: dict = {}
                n = 0
                t_epoch = t_log = time.monotonic()
                images_since_log = 0
                while step < (epoch + 1) * cfg.steps_per_epoch:
                    losses = {k: float(v) for k, v in self._train_step(iterator).items()}
                    step += 1
                    reason = stop_reason() if stop_reason is not None else None
                    if reason:
                        raise TrainingStoppedError(reason)
                    if not math.isfinite(losses["loss"]):
                        raise FloatingPointError(
                            f"the loss became {losses['loss']} at step {step} "
                            f"(cls {losses['cls_loss']}, box {losses['box_loss']}); lower "
                            f"--learning_rate, check --clipnorm and the records; the last "
                            f"checkpoint is {self.latest_checkpoint()}")
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    n += 1
                    images_since_log += global_batch_size
                    if progress is not None:
                        progress(step, losses)
                    if step % cfg.log_every_steps == 0 or step == total:
                        now = time.monotonic()
                        rate = images_since_log / max(now - t_log, 1e-9)
                        lr = float(_current_lr(self.optimizer))
                        for k, v in losses.items():
                            tf.summary.scalar(f"train/{k}", v, step=step)
                        tf.summary.scalar("train/learning_rate", lr, step=step)
                        tf.summary.scalar("train/images_per_second", rate, step=step)
                        if progress is None:
                            log.info("step %d/%d epoch %d: loss %.4f (cls %.4f, box %.4f), "
                                     "lr %.2e, %.1f images/s", step, total, epoch + 1,
                                     losses["loss"], losses["cls_loss"], losses["box_loss"], lr,
                                     rate)
                        t_log, images_since_log = now, 0
                    if step % cfg.checkpoint_every_steps == 0:
                        self.save()
                means = {k: v / max(n, 1) for k, v in sums.items()}
                if cfg.schedule == "plateau":
                    self.plateau.update(means["loss"], lr_var)
                for k, v in means.items():
                    tf.summary.scalar(f"epoch/{k}", v, step=step)
                path = self.save()
                log.info("epoch %d done in %.0f s: mean loss %.4f; checkpoint %s", epoch + 1,
                         time.monotonic() - t_epoch, means["loss"], path)
                if on_epoch_end is not None:
                    with self.averaged_weights():  # evaluate what the export will hold
                        on_epoch_end(epoch + 1, means)
        return means


class TrainingStoppedError(RuntimeError):
    """Trainer.fit's stop_reason asked to stop; the message says why."""


def _synchronized_batch_norms(model: keras.Model) -> list:
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)
            and getattr(layer, "synchronized", False)]


def _current_lr(optimizer) -> float:
    base = _base_optimizer(optimizer)
    lr = base.learning_rate
    return float(lr.numpy()) if hasattr(lr, "numpy") else float(lr)


