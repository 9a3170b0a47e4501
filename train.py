"""Train one level's RetinaNet.

    python train.py --flagfile=r101.flags --level 1 --records_dir RECORDS --model_dir runs/l1
    python train.py --flagfile=demo.flags --level 1 --records_dir demo_out/records \
        --model_dir demo_out/models/level1

Phases: flags -> configuration (saved as MODEL_DIR/config.json) -> strategy ->
input -> model and optimizer in the strategy's scope -> loop -> export.
Restarting the same command resumes from the last checkpoint in MODEL_DIR.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
# Data.
flags.DEFINE_integer("level", 1, "Level to train (RECORDS_DIR/level{N}).")
flags.DEFINE_string("records_dir", None, "Output directory of beam_jobs/make_records.py.")
flags.DEFINE_string("model_dir", None, "Checkpoints, logs, config.json and the export.")
flags.DEFINE_integer("image_min_side", 768, "Short side after resizing (pixels).")
flags.DEFINE_integer("image_max_side", 1024, "Long side at most (pixels); the canvas is this "
                     "rounded up to a multiple of 128.")
flags.DEFINE_integer("max_boxes", 100, "Ground-truth boxes kept per image.")
flags.DEFINE_bool("flip", True, "Random horizontal flips.")
flags.DEFINE_list("scale_jitter", ["1.0", "1.0"], "Random resize multiplier range low,high.")
flags.DEFINE_bool("repeat_factor_sampling", False, "Sample images by their LVIS repeat factor.")
flags.DEFINE_integer("shuffle_buffer", 512, "Examples in the shuffle buffer.")
flags.DEFINE_bool("cache", False, "Cache the records in memory (small data).")
flags.DEFINE_bool("label_in_pipeline", False,
                  "Compute anchor targets in tf.data (CPU) instead of the train step.")
flags.DEFINE_integer("seed", None, "Seed of the initial weights, the input order and the "
                     "augmentation (None: a random start).")
# Model.
flags.DEFINE_string("backbone", "resnet50", "Backbone (see model/backbones.py).")
flags.DEFINE_string("backbone_weights", None, "Local weights file for the backbone.")
flags.DEFINE_integer("fpn_channels", 256, "FPN channels.")
flags.DEFINE_integer("head_convs", 4, "Convolutions in each head.")
flags.DEFINE_integer("head_channels", 256, "Channels of the head convolutions.")
flags.DEFINE_enum("head_norm", "group", ["group", "batch", "none"], "Normalization in the heads.")
flags.DEFINE_enum("backbone_norm", "group", ["group", "batch"],
                  "Normalization in the small backbone (other backbones keep their own).")
flags.DEFINE_float("bn_momentum", 0.99, "Moving-average momentum of the heads' and the small "
                   "backbone's BatchNorm (0.9 for runs of a few hundred steps).")
flags.DEFINE_float("backbone_width", 1.0, "Channel multiplier of the small backbone.")
flags.DEFINE_list("anchor_sizes", ["32", "64", "128", "256", "512"], "Anchor size per level P3-P7.")
flags.DEFINE_list("anchor_ratios", ["0.5", "1.0", "2.0"], "Anchor height/width ratios.")
flags.DEFINE_list("anchor_scales", ["1.0", "1.2599210498948732", "1.5874010519681994"],
                  "Anchor scales, multiples of the level's size (RetinaNet: 2^0, 2^1/3, 2^2/3).")
flags.DEFINE_bool("freeze_backbone", False, "Train only the FPN and heads.")
flags.DEFINE_string("init_checkpoint", None,
                    "MODEL_DIR of a previous run (e.g. level 1) to start from; layers whose "
                    "shapes differ (the class head's output) start fresh.")
# Loss.
flags.DEFINE_float("focal_alpha", 0.25, "Focal loss alpha.")
flags.DEFINE_float("focal_gamma", 2.0, "Focal loss gamma.")
flags.DEFINE_enum("box_loss", "smooth_l1", ["smooth_l1", "huber"],
                  "Box regression loss: smooth_l1 = huber / box_delta (about L1 of the encoded "
                  "targets); huber weighs the boxes box_delta times less against the classes.")
flags.DEFINE_float("box_delta", 1.0 / 9.0, "Beta of smooth-L1 / delta of Huber (encoded units).")
flags.DEFINE_float("box_loss_weight", 1.0, "Multiplier of the box loss.")
flags.DEFINE_float("positive_iou", 0.5, "Anchors with IoU >= this to a box are its positives.")
flags.DEFINE_float("negative_iou", 0.4, "Anchors with best IoU below this are background; "
                   "between this and --positive_iou they are ignored.")
# Optimization.
flags.DEFINE_integer("global_batch_size", 8, "Images per step over all replicas.")
flags.DEFINE_integer("epochs", 50, "Epochs.")
flags.DEFINE_integer("steps_per_epoch", 1000, "Steps per epoch.")
flags.DEFINE_enum("optimizer", "adam", ["adam", "adamw"], "Optimizer.")
flags.DEFINE_float("learning_rate", 1e-4, "Peak learning rate.")
flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay.")
flags.DEFINE_float("clipnorm", 0.001, "Per-tensor gradient norm limit (0: off).")
flags.DEFINE_enum("schedule", "plateau", ["plateau", "cosine"], "Learning-rate schedule.")
flags.DEFINE_float("plateau_factor", 0.85, "Plateau: multiply the learning rate by this ...")
flags.DEFINE_integer("plateau_patience", 2, "... after this many epochs without improvement.")
flags.DEFINE_float("min_learning_rate", 5e-6, "Floor of the schedules.")
flags.DEFINE_integer("warmup_steps", 500, "Cosine: linear warm-up steps.")
flags.DEFINE_bool("mixed_precision", False, "float16 compute with loss scaling (GPUs).")
flags.DEFINE_bool("jit_compile", False, "Compile each replica's forward and backward pass with "
                  "XLA (not with BatchNorm synchronized over several replicas).")
flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker", "one_device",
                                       "default"],
                  "auto: MultiWorkerMirrored when TF_CONFIG is set, else Mirrored over all GPUs, "
                  "else (one CPU) the default strategy.")
flags.DEFINE_integer("checkpoint_every_steps", 1000, "Checkpoint interval (and every epoch end).")
flags.DEFINE_integer("log_every_steps", 50, "Log and TensorBoard interval.")
flags.DEFINE_bool("export", True, "Write the inference SavedModel at the end.")
# Evaluation during training.
flags.DEFINE_integer("eval_every_epochs", 0,
                     "Every N epochs evaluate the model on the level's val records (OID "
                     "challenge mAP to TensorBoard as eval/mAP, MODEL_DIR/eval/epoch-N/); 0: off.")
flags.DEFINE_string("eval_data_dir", None,
                    "With --eval_every_epochs: DATA_DIR whose label/ holds the class table and "
                    "hierarchy.")
flags.mark_flags_as_required(["records_dir", "model_dir"])


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    import keras

    from model.anchors import AnchorConfig
    from model.config import LossConfig, ModelConfig
    from model.labeler import LabelerConfig
    from model.training import (
        CheckpointMismatchError,
        TrainConfig,
        Trainer,
        make_strategy,
        save_config,
        wait_for_all_workers,
    )
    from tfrecords.input_pipeline import InputConfig, build_dataset

    # -- configuration -------------------------------------------------------------------
    level_dir = os.path.join(FLAGS.records_dir, f"level{FLAGS.level}")
    labels_path = os.path.join(level_dir, "labels.json")
    import tensorflow as tf

    if not tf.io.gfile.exists(labels_path):
        sys.exit(f"{labels_path} not found: run beam_jobs/make_records.py --level {FLAGS.level} "
                 f"--output_dir {FLAGS.records_dir} first")
    with tf.io.gfile.GFile(labels_path) as f:
        labels = json.load(f)
    if FLAGS.eval_every_epochs and not FLAGS.eval_data_dir:
        sys.exit("--eval_every_epochs needs --eval_data_dir (the class table and hierarchy)")
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        anchors = AnchorConfig(sizes=tuple(float(s) for s in FLAGS.anchor_sizes),
                               ratios=tuple(float(r) for r in FLAGS.anchor_ratios),
                               scales=tuple(float(s) for s in FLAGS.anchor_scales))
    except ValueError as e:
        sys.exit(f"bad anchor flags: {e}")
    if not 0.0 < FLAGS.negative_iou <= FLAGS.positive_iou <= 1.0:
        sys.exit(f"need 0 < --negative_iou <= --positive_iou <= 1, got {FLAGS.negative_iou} "
                 f"and {FLAGS.positive_iou}")
    labeler = LabelerConfig(positive_iou=FLAGS.positive_iou, negative_iou=FLAGS.negative_iou)
    input_config = InputConfig(
        file_pattern=os.path.join(level_dir, "train-*.tfrecord"), is_training=True,
        global_batch_size=FLAGS.global_batch_size, image_min_side=FLAGS.image_min_side,
        image_max_side=FLAGS.image_max_side, max_boxes=FLAGS.max_boxes, flip=FLAGS.flip,
        scale_jitter=tuple(float(s) for s in FLAGS.scale_jitter),
        shuffle_buffer=FLAGS.shuffle_buffer, repeat_factor_sampling=FLAGS.repeat_factor_sampling,
        cache=FLAGS.cache, label_in_pipeline=FLAGS.label_in_pipeline, seed=FLAGS.seed,
        anchors=anchors, labeler=labeler)
    model_config = ModelConfig(
        num_classes=len(labels), backbone=FLAGS.backbone, backbone_weights=FLAGS.backbone_weights,
        image_size=input_config.output_size, fpn_channels=FLAGS.fpn_channels,
        head_convs=FLAGS.head_convs, head_channels=FLAGS.head_channels, head_norm=FLAGS.head_norm,
        backbone_norm=FLAGS.backbone_norm, bn_momentum=FLAGS.bn_momentum, anchors=anchors,
        backbone_width=FLAGS.backbone_width,
        freeze_backbone=FLAGS.freeze_backbone)
    loss_config = LossConfig(alpha=FLAGS.focal_alpha, gamma=FLAGS.focal_gamma,
                             box_loss=FLAGS.box_loss, box_delta=FLAGS.box_delta,
                             box_weight=FLAGS.box_loss_weight)
    train_config = TrainConfig(
        epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
        learning_rate=FLAGS.learning_rate, optimizer=FLAGS.optimizer,
        weight_decay=FLAGS.weight_decay, clipnorm=FLAGS.clipnorm or None,
        schedule=FLAGS.schedule, plateau_factor=FLAGS.plateau_factor,
        plateau_patience=FLAGS.plateau_patience, min_learning_rate=FLAGS.min_learning_rate,
        warmup_steps=FLAGS.warmup_steps, mixed_precision=FLAGS.mixed_precision,
        jit_compile=FLAGS.jit_compile,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        log_every_steps=FLAGS.log_every_steps, label_in_pipeline=FLAGS.label_in_pipeline)

    # -- strategy ------------------------------------------------------------------------
    strategy = make_strategy(FLAGS.strategy)
    logging.info("strategy %s with %d replicas", type(strategy).__name__,
                 strategy.num_replicas_in_sync)

    # -- model, optimizer, checkpoint ----------------------------------------------------
    if FLAGS.seed is not None:
        keras.utils.set_random_seed(FLAGS.seed)  # the initial weights
    try:
        trainer = Trainer(strategy, model_config, loss_config, train_config, FLAGS.model_dir,
                          labeler)
    except ValueError as e:  # a combination of flags the model cannot run
        sys.exit(str(e))
    try:  # a resumed run must be the same model; checked before config.json is replaced
        resumed_step = trainer.restore()
    except CheckpointMismatchError as e:
        sys.exit(str(e))
    if trainer.is_chief:
        save_config(os.path.join(FLAGS.model_dir, "config.json"), model=model_config,
                    loss=loss_config, train=train_config, input=input_config,
                    level=FLAGS.level, labels=labels)
    if FLAGS.init_checkpoint and resumed_step == 0:
        from model.export import load_model

        previous, _ = load_model(FLAGS.init_checkpoint)
        copied = copy_matching_weights(previous, trainer.model)
        logging.info("initialized %d weight tensors from %s", copied, FLAGS.init_checkpoint)

    on_epoch_end = None
    if FLAGS.eval_every_epochs:
        from model.evaluation import training_callback

        on_epoch_end = training_callback(
            trainer, level_dir, FLAGS.eval_data_dir, labels, FLAGS.level,
            FLAGS.image_min_side, FLAGS.image_max_side, FLAGS.eval_every_epochs,
            FLAGS.global_batch_size)

    # -- train ---------------------------------------------------------------------------
    trainer.fit(lambda ctx: build_dataset(input_config, ctx), FLAGS.global_batch_size,
                on_epoch_end=on_epoch_end)

    # -- export --------------------------------------------------------------------------
    if FLAGS.export and trainer.is_chief:
        from model.export import export_saved_model

        path = export_saved_model(trainer.model, model_config, labels, input_config,
                                  os.path.join(FLAGS.model_dir, "export"), level=FLAGS.level)
        logging.info("exported the inference model to %s", path)
    wait_for_all_workers(strategy)  # the others wait for the chief's export before exiting
    logging.info("finished; the run is in %s", FLAGS.model_dir)


def copy_matching_weights(source, target) -> int:
    """Copies weights between models layer by layer where names and shapes agree."""
    src = {w.path: w for w in source.weights}
    copied = 0
    for w in target.weights:
        other = src.get(w.path)
        if other is not None and tuple(other.shape) == tuple(w.shape):
            w.assign(other.numpy())
            copied += 1
    return copied


if __name__ == "__main__":
    app.run(main)
