"""Train one level's RetinaNet.

    python train.py --flagfile=r101.flags --level 1 --records_dir RECORDS --model_dir runs/l1
    python train.py --flagfile=demo.flags --level 1 --records_dir demo_out/records \
        --model_dir demo_out/models/level1

Phases: flags -> configuration (saved as MODEL_DIR/config.json) -> strategy ->
model and optimizer in the strategy's scope -> input -> loop -> export.
Restarting the same command resumes from the last checkpoint in MODEL_DIR.

Every flag's default is the library's (the configuration dataclasses); flagfiles hold only
what a variant changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Callable

import keras
import tensorflow as tf
from absl import app, flags

from boxes.anchors import AnchorConfig
from boxes.assign import ASSIGNERS, LabelerConfig
from engine import cli, malloc
from engine.evaluation import LevelResult, training_callback
from engine.export import export_run, export_saved_model
from engine.run_dir import (
    BEST,
    CheckpointMismatchError,
    build_model,
    init_from_run,
    is_run_dir,
    latest_checkpoint,
    read_json,
    save_config,
)
from engine.strategy import make_strategy, wait_for_all_workers
from engine.trainer import TrainConfig, Trainer, TrainingStoppedError
from model.backbones import BACKBONES, IMAGENET, BackboneWeightsError
from model.config import BOX_LOSSES, CLS_LOSSES, LossConfig, ModelConfig
from oid import progress
from tfrecords.input_pipeline import DROPPED_BOXES, InputConfig, build_dataset, list_files
from tfrecords.layout import BoxCounts, LevelRecords, RecordsLayout
from tfrecords.reader import CORRUPTION

_INPUT = {f.name: f.default for f in dataclasses.fields(InputConfig)}
_MODEL = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
_LOSS, _TRAIN, _LABELER = LossConfig(), TrainConfig(), LabelerConfig()
_ANCHORS = AnchorConfig()


def _numbers(values) -> list[str]:
    return [repr(float(v)) for v in values]


FLAGS = flags.FLAGS
# Data.
flags.DEFINE_integer("level", 1, "Level to train (RECORDS_DIR/level{N}).")
flags.DEFINE_string("records_dir", None, "Output directory of beam_jobs/make_records.py.")
flags.DEFINE_string("model_dir", None, "Checkpoints, logs, config.json and the export.")
flags.DEFINE_integer("image_min_side", _INPUT["image_min_side"],
                     "Short side after resizing (pixels).")
flags.DEFINE_integer("image_max_side", _INPUT["image_max_side"], "Long side at most (pixels); "
                     "the canvas is this rounded up to a multiple of 128.")
flags.DEFINE_integer("max_boxes", None,
                     "Ground-truth boxes kept per image (the rest are counted and logged). "
                     "Default: the largest box count of a training image of the level, from "
                     "RECORDS/levelN/stats.json, so that every box is trained.")
flags.DEFINE_bool("flip", _INPUT["flip"], "Random horizontal flips.")
flags.DEFINE_list("scale_jitter", _numbers(_INPUT["scale_jitter"]),
                  "Random resize multiplier range low,high.")
flags.DEFINE_bool("repeat_factor_sampling", _INPUT["repeat_factor_sampling"],
                  "Sample images by their LVIS repeat factor.")
flags.DEFINE_integer("shuffle_buffer", _INPUT["shuffle_buffer"], "Examples in the shuffle buffer.")
flags.DEFINE_bool("cache", _INPUT["cache"], "Cache the records in memory (small data).")
flags.DEFINE_bool("label_in_pipeline", _TRAIN.label_in_pipeline,
                  "Compute anchor targets in tf.data (CPU) instead of the train step.")
flags.DEFINE_integer("seed", None, "Seed of the initial weights, the input order and the "
                     "augmentation (None: a random start).")
# Model.
flags.DEFINE_string("backbone", _MODEL["backbone"], "Backbone (see model/backbones.py).")
flags.DEFINE_string("backbone_weights", None,
                    "The backbone's starting weights: 'imagenet' (Keras applications' weights, "
                    "downloaded once into Keras' cache, KERAS_HOME/models or ~/.keras/models; "
                    "offline, pre-fetch them with tools/fetch_weights.py), a Keras "
                    "applications weights file (.h5 or .weights.h5), or a previous train.py "
                    "run's MODEL_DIR (its backbone from its last checkpoint). Empty: random.")
flags.DEFINE_bool("freeze_backbone_bn", None,
                  "Run the backbone's BatchNorm in inference mode with its statistics fixed "
                  "(default: whenever --backbone_weights is given, as the original system did).")
flags.DEFINE_integer("fpn_channels", _MODEL["fpn_channels"], "FPN channels.")
flags.DEFINE_integer("head_convs", _MODEL["head_convs"], "Convolutions in each head.")
flags.DEFINE_integer("head_channels", _MODEL["head_channels"],
                     "Channels of the head convolutions.")
flags.DEFINE_enum("head_norm", _MODEL["head_norm"], ["group", "batch", "none"],
                  "Normalization in the heads.")
flags.DEFINE_enum("backbone_norm", _MODEL["backbone_norm"], ["group", "batch"],
                  "Normalization in the small backbone (other backbones keep their own).")
flags.DEFINE_float("bn_momentum", _MODEL["bn_momentum"], "Moving-average momentum of the heads' "
                   "and the small backbone's BatchNorm (0.9 for runs of a few hundred steps).")
flags.DEFINE_float("backbone_width", _MODEL["backbone_width"],
                   "Channel multiplier of the small backbone.")
flags.DEFINE_integer("min_level", _ANCHORS.min_level, "Lowest pyramid level: 3 (P3, stride 8) "
                     "or 2 (adds P2, stride 4, from the backbone's C2, for small objects; give "
                     "one more --anchor_sizes entry).")
flags.DEFINE_integer("max_level", _ANCHORS.max_level, "Highest pyramid level: 5, 6 or 7.")
flags.DEFINE_list("anchor_sizes", _numbers(_ANCHORS.sizes),
                  "Anchor size per level, --min_level to --max_level (pixels).")
flags.DEFINE_list("anchor_ratios", _numbers(_ANCHORS.ratios), "Anchor height/width ratios.")
flags.DEFINE_list("anchor_scales", _numbers(_ANCHORS.scales),
                  "Anchor scales, multiples of the level's size (RetinaNet: 2^0, 2^1/3, 2^2/3).")
flags.DEFINE_list("box_variances", _numbers(_ANCHORS.variances),
                  "Box coder variances vy,vx,vh,vw (targets and decoding both use them).")
flags.DEFINE_bool("freeze_backbone", _MODEL["freeze_backbone"], "Train only the FPN and heads.")
flags.DEFINE_string("init_checkpoint", None,
                    "MODEL_DIR of a previous run (e.g. level 1) to start from: every weight "
                    "whose name and shape match is copied, except the class head's output "
                    "layer when the label sets (MIDs in order) differ; the log lists both.")
# Loss.
flags.DEFINE_float("focal_alpha", _LOSS.alpha, "Focal loss alpha.")
flags.DEFINE_float("focal_gamma", _LOSS.gamma, "Focal loss gamma.")
flags.DEFINE_enum("cls_loss", _LOSS.cls_loss, list(CLS_LOSSES),
                  "Classification loss: focal (RetinaNet) or quality_focal (GFL: the score of "
                  "a positive learns the IoU of its predicted box; --focal_gamma is its beta).")
flags.DEFINE_enum("box_loss", _LOSS.box_loss, list(BOX_LOSSES),
                  "Box regression loss: smooth_l1 = huber / box_delta (about L1 of the encoded "
                  "targets); huber weighs the boxes box_delta times less against the classes; "
                  "giou / diou: 1 - GIoU / DIoU of the decoded boxes.")
flags.DEFINE_float("box_delta", _LOSS.box_delta,
                   "Beta of smooth-L1 / delta of Huber (encoded units).")
flags.DEFINE_float("box_loss_weight", _LOSS.box_weight, "Multiplier of the box loss.")
flags.DEFINE_float("positive_iou", _LABELER.positive_iou,
                   "Anchors with IoU >= this to a box are its positives.")
flags.DEFINE_float("negative_iou", _LABELER.negative_iou, "Anchors with best IoU below this are "
                   "background; between this and --positive_iou they are ignored.")
flags.DEFINE_enum("assigner", _LABELER.assigner, list(ASSIGNERS),
                  "Anchor assignment: iou (--positive_iou/--negative_iou) or atss (per box an "
                  "IoU threshold from its nearest anchors; docs/training-recipes.md).")
flags.DEFINE_integer("atss_top_k", _LABELER.atss_top_k,
                     "ATSS: candidate anchors per pyramid level and box.")
flags.DEFINE_float("atss_ignore_iou", _LABELER.atss_ignore_iou,
                   "ATSS: anchors that are not positive but overlap a box by at least this IoU "
                   "are ignored instead of background (0: none, the paper's rule).")
# Optimization.
flags.DEFINE_integer("global_batch_size", _INPUT["global_batch_size"],
                     "Images per step over all replicas.")
flags.DEFINE_integer("epochs", _TRAIN.epochs, "Epochs.")
flags.DEFINE_integer("steps_per_epoch", _TRAIN.steps_per_epoch, "Steps per epoch.")
flags.DEFINE_enum("optimizer", _TRAIN.optimizer, ["adam", "adamw"], "Optimizer.")
flags.DEFINE_float("learning_rate", _TRAIN.learning_rate, "Peak learning rate.")
flags.DEFINE_float("weight_decay", _TRAIN.weight_decay, "AdamW weight decay.")
flags.DEFINE_float("clipnorm", _TRAIN.clipnorm or 0.0, "Per-tensor gradient norm limit (0: off).")
flags.DEFINE_enum("schedule", _TRAIN.schedule, ["plateau", "cosine"], "Learning-rate schedule.")
flags.DEFINE_float("plateau_factor", _TRAIN.plateau_factor,
                   "Plateau: multiply the learning rate by this ...")
flags.DEFINE_integer("plateau_patience", _TRAIN.plateau_patience,
                     "... after this many epochs without improvement.")
flags.DEFINE_float("min_learning_rate", _TRAIN.min_learning_rate, "Floor of the schedules.")
flags.DEFINE_integer("warmup_steps", _TRAIN.warmup_steps, "Cosine: linear warm-up steps.")
flags.DEFINE_bool("mixed_precision", _TRAIN.mixed_precision,
                  "float16 compute with loss scaling (GPUs).")
flags.DEFINE_float("ema_decay", _TRAIN.ema_decay, "Keep a moving average of the weights with "
                   "this momentum per step (e.g. 0.999); evaluation, prediction and the export "
                   "use it. 0: off. Fixed for the life of a run.")
flags.DEFINE_bool("jit_compile", _TRAIN.jit_compile, "Compile each replica's forward and "
                  "backward pass with XLA (not with BatchNorm synchronized over several replicas).")
flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker", "one_device",
                                       "default"],
                  "auto: MultiWorkerMirrored when TF_CONFIG is set, else Mirrored over all GPUs, "
                  "else (one CPU) the default strategy.")
flags.DEFINE_integer("checkpoint_every_steps", _TRAIN.checkpoint_every_steps,
                     "Checkpoint interval (and every epoch end).")
flags.DEFINE_integer("keep_checkpoints", _TRAIN.keep_checkpoints,
                     "Newest checkpoints kept in MODEL_DIR/checkpoints (with --eval_every_epochs "
                     "the best by validation mAP is also kept, in checkpoints/best/).")
flags.DEFINE_integer("log_every_steps", _TRAIN.log_every_steps, "Log and TensorBoard interval.")
flags.DEFINE_enum("progress", "auto", progress.MODES,
                  progress.FLAG_HELP + " log: a line every --log_every_steps.")
flags.DEFINE_bool("export", True, "Write the inference SavedModel at the end.")
# Evaluation during training.
flags.DEFINE_integer("eval_every_epochs", 0,
                     "Every N epochs evaluate the model on the level's val records (OID "
                     "challenge mAP to TensorBoard as eval/mAP, MODEL_DIR/eval/epoch-N/); 0: off.")
flags.DEFINE_string("eval_data_dir", None,
                    "With --eval_every_epochs: DATA_DIR whose label/ holds the class table and "
                    "hierarchy.")
flags.DEFINE_bool("strict_records", _INPUT["strict_records"],
                  "Stop at the first corrupt record instead of skipping, counting and logging it.")
flags.DEFINE_float("max_corrupt_fraction", _INPUT["max_corrupt_fraction"],
                   "A records file with more than this fraction of corrupt bytes stops the run.")
flags.mark_flags_as_required(["records_dir", "model_dir"])
for _name, _low in (("level", 0), ("image_min_side", 1), ("image_max_side", 1), ("max_boxes", 1),
                    ("shuffle_buffer", 1), ("fpn_channels", 1), ("head_convs", 0),
                    ("head_channels", 1), ("global_batch_size", 1), ("epochs", 1),
                    ("steps_per_epoch", 1), ("weight_decay", 0), ("clipnorm", 0),
                    ("plateau_patience", 1), ("min_learning_rate", 0), ("warmup_steps", 0),
                    ("checkpoint_every_steps", 1), ("log_every_steps", 1), ("keep_checkpoints", 1),
                    ("eval_every_epochs", 0), ("focal_gamma", 0), ("box_loss_weight", 0),
                    ("atss_top_k", 1)):
    cli.bound(_name, low=_low)
for _name in ("learning_rate", "backbone_width", "box_delta"):
    cli.bound(_name, above=0)
for _name in ("focal_alpha", "positive_iou", "negative_iou", "atss_ignore_iou"):
    cli.bound(_name, low=0, high=1)
cli.bound("bn_momentum", low=0, high=1)
cli.bound("min_level", low=2, high=3)
cli.bound("max_level", low=5, high=7)
flags.register_validator("ema_decay", lambda v: 0 <= v < 1, message="must be >= 0 and < 1")
cli.bound("plateau_factor", above=0, high=1)
cli.bound("max_corrupt_fraction", above=0, high=1)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run is configured with, resolved from the flags once."""

    level: LevelRecords
    labels: list[dict]
    input: InputConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    labeler: LabelerConfig


def read_level() -> tuple[LevelRecords, list[dict]]:
    """The level's records folder and its labels.json."""
    level = RecordsLayout(FLAGS.records_dir).level(FLAGS.level)
    cli.check(tf.io.gfile.isdir(FLAGS.records_dir),
              f"--records_dir={FLAGS.records_dir}: not a directory; run "
              "beam_jobs/make_records.py --output_dir there first")
    cli.check(tf.io.gfile.exists(level.labels),
              f"{level.labels} not found: run beam_jobs/make_records.py --level {FLAGS.level} "
              f"--output_dir {FLAGS.records_dir} first")
    try:
        list_files(level.shards("train"))
    except FileNotFoundError:
        cli.refuse(f"{level.dir} has labels.json but no train shards ({level.shards('train')}); "
                   f"run beam_jobs/make_records.py --level {FLAGS.level} --output_dir "
                   f"{FLAGS.records_dir} again")
    try:
        labels = read_json(level.labels)
    except ValueError as e:
        cli.refuse(f"{level.labels}: not JSON ({e}); run beam_jobs/make_records.py again")
    cli.check(isinstance(labels, list) and len(labels) > 0,
              f"{level.labels}: expected a non-empty list of {{index, mid, name}}; run "
              "beam_jobs/make_records.py again")
    return level, labels


def check_paths() -> None:
    """Paths the run will read or write, checked before anything is written."""
    cli.check(not tf.io.gfile.exists(FLAGS.model_dir) or tf.io.gfile.isdir(FLAGS.model_dir),
              f"--model_dir={FLAGS.model_dir}: exists and is not a directory")
    cli.check(FLAGS.backbone in BACKBONES,
              f"--backbone={FLAGS.backbone}: not one of {', '.join(sorted(BACKBONES))}")
    weights = FLAGS.backbone_weights
    if weights and weights != IMAGENET:
        cli.check(is_run_dir(weights) or (tf.io.gfile.exists(weights)
                                          and not tf.io.gfile.isdir(weights)),
                  f"--backbone_weights={weights}: no such file or train.py run directory "
                  "(expected 'imagenet', a .h5 / .weights.h5 file or a run's MODEL_DIR)")
    if weights and FLAGS.backbone in BACKBONES and BACKBONES[FLAGS.backbone].build is None:
        cli.check(weights != IMAGENET and is_run_dir(weights),
                  f"--backbone_weights={weights}: the small backbone has no ImageNet weights "
                  "or weight files; pass a previous run's MODEL_DIR or nothing")
    if FLAGS.init_checkpoint:
        cli.check(tf.io.gfile.exists(os.path.join(FLAGS.init_checkpoint, "config.json")),
                  f"--init_checkpoint={FLAGS.init_checkpoint}: not a train.py run directory "
                  "(no config.json)")
    if FLAGS.eval_every_epochs:
        cli.check(bool(FLAGS.eval_data_dir), "--eval_every_epochs needs --eval_data_dir (the "
                  "class table and hierarchy)")
        cli.check(tf.io.gfile.isdir(FLAGS.eval_data_dir),
                  f"--eval_data_dir={FLAGS.eval_data_dir}: not a directory")


def resolve_max_boxes(level: LevelRecords) -> int:
    """--max_boxes, else the level's largest box count of a training image (stats.json);
    says how many images a smaller --max_boxes cuts, and names them."""
    counts = None
    if tf.io.gfile.exists(level.stats):
        try:
            counts = BoxCounts.from_stats(read_json(level.stats))
        except (ValueError, KeyError, TypeError) as e:
            logging.warning("%s: cannot read its boxes per image (%s)", level.stats, e)
    if FLAGS.max_boxes is None:
        if counts is None:
            fallback = _INPUT["max_boxes"]
            logging.warning("%s does not count boxes per image (records made by an earlier "
                            "make_records.py): max_boxes %d; images with more lose boxes, "
                            "counted in this log. Make the records again, or pass --max_boxes",
                            level.stats, fallback)
            return fallback
        logging.info("max_boxes %d: the most boxes of a training image of the level (%s)",
                     max(counts.max_boxes, 1), level.stats)
        return max(counts.max_boxes, 1)
    if counts is not None:
        images, lost = counts.past(FLAGS.max_boxes)
        if images:
            named = ", ".join(f"{i} ({n})" for n, i in counts.named_past(FLAGS.max_boxes))
            logging.warning("--max_boxes=%d: %d training images have more boxes and lose %d "
                            "of them each epoch (the records' most: %d); those with the most: "
                            "%s", FLAGS.max_boxes, images, lost, counts.max_boxes, named)
    return FLAGS.max_boxes


def resolve_config(level: LevelRecords, labels: list[dict]) -> RunConfig:
    """Flags -> the configuration dataclasses; a bad combination exits with its reason."""
    try:
        anchors = AnchorConfig(min_level=FLAGS.min_level, max_level=FLAGS.max_level,
                               sizes=tuple(float(s) for s in FLAGS.anchor_sizes),
                               ratios=tuple(float(r) for r in FLAGS.anchor_ratios),
                               scales=tuple(float(s) for s in FLAGS.anchor_scales),
                               variances=tuple(float(v) for v in FLAGS.box_variances))
    except ValueError as e:
        cli.refuse(f"--min_level/--max_level/--anchor_sizes/--anchor_ratios/--anchor_scales/"
                   f"--box_variances: {e}")
    cli.check(0.0 < FLAGS.negative_iou <= FLAGS.positive_iou <= 1.0,
              f"need 0 < --negative_iou <= --positive_iou <= 1, got {FLAGS.negative_iou} and "
              f"{FLAGS.positive_iou}")
    try:
        jitter = tuple(float(s) for s in FLAGS.scale_jitter)
    except ValueError:
        jitter = ()
    cli.check(len(jitter) == 2 and 0 < jitter[0] <= jitter[1],
              f"--scale_jitter={','.join(FLAGS.scale_jitter)}: expected low,high with "
              "0 < low <= high")
    input_config = InputConfig(
        file_pattern=level.shards("train"), is_training=True,
        global_batch_size=FLAGS.global_batch_size, image_min_side=FLAGS.image_min_side,
        image_max_side=FLAGS.image_max_side, max_boxes=resolve_max_boxes(level), flip=FLAGS.flip,
        scale_jitter=jitter, shuffle_buffer=FLAGS.shuffle_buffer,
        repeat_factor_sampling=FLAGS.repeat_factor_sampling, cache=FLAGS.cache,
        strict_records=FLAGS.strict_records, max_corrupt_fraction=FLAGS.max_corrupt_fraction,
        seed=FLAGS.seed)
    model = ModelConfig(
        num_classes=len(labels), backbone=FLAGS.backbone,
        backbone_weights=FLAGS.backbone_weights or None, freeze_backbone_bn=FLAGS.freeze_backbone_bn,
        image_size=input_config.output_size, fpn_channels=FLAGS.fpn_channels,
        head_convs=FLAGS.head_convs, head_channels=FLAGS.head_channels, head_norm=FLAGS.head_norm,
        backbone_norm=FLAGS.backbone_norm, bn_momentum=FLAGS.bn_momentum, anchors=anchors,
        backbone_width=FLAGS.backbone_width, freeze_backbone=FLAGS.freeze_backbone)
    loss = LossConfig(alpha=FLAGS.focal_alpha, gamma=FLAGS.focal_gamma, box_loss=FLAGS.box_loss,
                      box_delta=FLAGS.box_delta, box_weight=FLAGS.box_loss_weight,
                      cls_loss=FLAGS.cls_loss)
    train = TrainConfig(
        epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
        learning_rate=FLAGS.learning_rate, optimizer=FLAGS.optimizer,
        weight_decay=FLAGS.weight_decay, clipnorm=FLAGS.clipnorm or None,
        schedule=FLAGS.schedule, plateau_factor=FLAGS.plateau_factor,
        plateau_patience=FLAGS.plateau_patience, min_learning_rate=FLAGS.min_learning_rate,
        warmup_steps=FLAGS.warmup_steps, mixed_precision=FLAGS.mixed_precision,
        jit_compile=FLAGS.jit_compile, checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        keep_checkpoints=FLAGS.keep_checkpoints,
        log_every_steps=FLAGS.log_every_steps, label_in_pipeline=FLAGS.label_in_pipeline,
        ema_decay=FLAGS.ema_decay)
    labeler = LabelerConfig(positive_iou=FLAGS.positive_iou, negative_iou=FLAGS.negative_iou,
                            assigner=FLAGS.assigner, atss_top_k=FLAGS.atss_top_k,
                            atss_ignore_iou=FLAGS.atss_ignore_iou)
    return RunConfig(level, labels, input_config, model, loss, train, labeler)


def start_trainer(run: RunConfig, strategy: tf.distribute.Strategy) -> Trainer:
    """Model and optimizer in the strategy's scope, resumed from MODEL_DIR's last checkpoint
    (or started from --init_checkpoint); config.json written once the checkpoint fits. The
    backbone's starting weights are read only when nothing overwrites them."""
    if FLAGS.seed is not None:
        keras.utils.set_random_seed(FLAGS.seed)  # the initial weights
    fresh = latest_checkpoint(FLAGS.model_dir) is None and not FLAGS.init_checkpoint

    def build(config: ModelConfig) -> keras.Model:
        return build_model(config, load_backbone_weights=fresh)

    try:
        trainer = Trainer(strategy, run.model, run.loss, run.train, FLAGS.model_dir, run.labeler,
                          build_model=build)
    except BackboneWeightsError as e:
        cli.refuse(f"--backbone_weights={FLAGS.backbone_weights}: {e}")
    except ValueError as e:  # a combination of flags the model cannot run
        cli.refuse(str(e))
    try:  # a resumed run must be the same model; checked before config.json is replaced
        resumed_step = trainer.restore()
    except CheckpointMismatchError as e:
        cli.refuse(str(e))
    if trainer.is_chief:
        save_config(os.path.join(FLAGS.model_dir, "config.json"), model=run.model, loss=run.loss,
                    train=run.train, input=run.input, labeler=run.labeler, level=FLAGS.level,
                    labels=run.labels)
    if FLAGS.init_checkpoint and resumed_step == 0:
        report = init_from_run(trainer.model, run.labels, FLAGS.init_checkpoint)
        logging.info("started from %s (%s label set): %s", FLAGS.init_checkpoint,
                     "the same" if report.same_labels else "another", report.summary())
    return trainer


def keep_best(trainer: Trainer, evaluate: Callable[[int, dict], LevelResult | None]
              ) -> Callable[[int, dict], None]:
    """An on_epoch_end that evaluates and keeps the best checkpoint by validation mAP."""

    def on_epoch_end(epoch: int, losses: dict) -> None:
        result = evaluate(epoch, losses)
        if result is not None and result.level_map is not None and \
                trainer.save_best(result.level_map, epoch):
            logging.info("epoch %d: best validation mAP so far (%.4f), kept in %s", epoch,
                         result.level_map, trainer.best_manager.latest_checkpoint)

    return on_epoch_end


def step_progress(run: RunConfig, start: int, global_batch_size: int
                  ) -> tuple[contextlib.AbstractContextManager, Callable[[int, dict], None] | None]:
    """(context, Trainer.fit's progress hook) for --progress: bar, a bar over the run's steps
    from `start` with the epoch, loss and images/s; none, silence; log, no hook (the trainer's
    own line every --log_every_steps)."""
    mode = progress.resolve(FLAGS.progress, sys.stderr)
    total = run.train.epochs * run.train.steps_per_epoch
    if mode == "log" or start >= total:
        return contextlib.nullcontext(), None
    bar = progress.Progress(total=total, unit="steps", description="train", mode=mode,
                            initial=start)

    def on_step(step: int, losses: dict) -> None:
        bar.update(1, epoch=f"{(step - 1) // run.train.steps_per_epoch + 1}/{run.train.epochs}",
                   loss=losses["loss"], **{"images/s": f"{bar.rate * global_batch_size:.1f}"})

    return bar, on_step


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    malloc.tune()  # before the first step: engine/malloc.py
    # -- configuration -------------------------------------------------------------------
    check_paths()
    run = resolve_config(*read_level())
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")

    # -- strategy ------------------------------------------------------------------------
    strategy = make_strategy(FLAGS.strategy)
    logging.info("strategy %s with %d replicas", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    cli.check(FLAGS.global_batch_size % strategy.num_replicas_in_sync == 0,
              f"--global_batch_size={FLAGS.global_batch_size}: not a multiple of the "
              f"{strategy.num_replicas_in_sync} replicas")

    # -- model, optimizer, checkpoint ----------------------------------------------------
    trainer = start_trainer(run, strategy)
    on_epoch_end = None
    if FLAGS.eval_every_epochs:
        on_epoch_end = keep_best(trainer, training_callback(
            trainer, run.level.dir, FLAGS.eval_data_dir, run.labels, FLAGS.level,
            FLAGS.image_min_side, FLAGS.image_max_side, FLAGS.eval_every_epochs,
            FLAGS.global_batch_size))

    # -- train ---------------------------------------------------------------------------
    label_fn = trainer.pipeline_label_fn()
    shown, on_step = step_progress(run, trainer.restore(), FLAGS.global_batch_size)
    try:
        with shown:
            trainer.fit(lambda ctx: build_dataset(run.input, ctx, label_fn),
                        FLAGS.global_batch_size, on_epoch_end=on_epoch_end,
                        stop_reason=lambda: CORRUPTION.fatal, progress=on_step)
    except (TrainingStoppedError, tf.errors.OutOfRangeError):
        if not CORRUPTION.fatal:  # the input ran dry for another reason
            raise
        logging.info("%s", CORRUPTION.summary())
        cli.refuse(CORRUPTION.fatal)
    logging.info("%s", CORRUPTION.summary())
    logging.info("%s", DROPPED_BOXES.summary())

    # -- export --------------------------------------------------------------------------
    if FLAGS.export and trainer.is_chief:
        with trainer.averaged_weights() as model:  # with --ema_decay, the moving average
            path = export_saved_model(model, run.model, run.labels, run.input,
                                      os.path.join(FLAGS.model_dir, "export"), level=FLAGS.level)
        logging.info("exported the inference model to %s", path)
        if trainer.best() is not None:
            path = export_run(FLAGS.model_dir, BEST, os.path.join(FLAGS.model_dir, "export_best"))
            logging.info("exported the best checkpoint (%s, validation mAP %.4f) to %s",
                         trainer.best()["checkpoint"], trainer.best()["mAP"], path)
    wait_for_all_workers(strategy)  # the others wait for the chief's export before exiting
    logging.info("finished; the run is in %s", FLAGS.model_dir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser())
