"""Evaluate one level's model on its val records with the Open Images Challenge metric.

    python eval.py --flagfile=r101.flags --level 1 --records_dir RECORDS --model_dir runs/l1 \\
        --data_dir DATA
    python eval.py --flagfile=demo.flags --level 1 --records_dir demo_out/records \\
        --model_dir demo_out/models/level1 --data_dir demo_out/data

Phases: flags -> the level's labels and ground truth -> strategy -> the model (a training
run's checkpoint or a SavedModel, in the strategy's scope) -> batched inference on every
replica streamed into the evaluator -> OUTPUT_DIR/metrics.json and per_class.csv
[+ the level's predictions as a Kaggle submission].

The model's architecture and canvas come from its own config.json, so a train.py flagfile
may be passed as is: the training flags in it that eval.py does not define are ignored
(on the command line an unknown flag is still an error).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys

import tensorflow as tf
from absl import app, flags

from engine import cli, malloc
from engine.evaluation import LevelEvaluation, format_result, label_files, write_results
from engine.inference import Detector, Inference, load_detector
from engine.run_dir import is_saved_model, latest_checkpoint, read_json
from engine.strategy import is_chief, make_strategy, wait_for_all_workers
from model.config import PostprocessConfig
from oid import progress
from oid.classes import load_classes
from oid.hierarchy import load_hierarchy
from oid.submission import ImageDetections, SubmissionWriter
from tfrecords.inference_input import RecordSource
from tfrecords.input_pipeline import list_files
from tfrecords.layout import LevelRecords, RecordsLayout

_POST = PostprocessConfig()

FLAGS = flags.FLAGS
flags.DEFINE_integer("level", 1, "Level to evaluate (RECORDS_DIR/level{N}).")
flags.DEFINE_string("records_dir", None, "Output directory of beam_jobs/make_records.py.")
flags.DEFINE_string("model_dir", None,
                    "A train.py run (config.json + checkpoints/) or an exported SavedModel.")
flags.DEFINE_string("checkpoint", None,
                    "A checkpoint of MODEL_DIR to evaluate (e.g. MODEL_DIR/checkpoints/ckpt-4000); "
                    "default the latest.")
flags.DEFINE_string("split", "val", "Records {split}-*.tfrecord with {split}-bbox.csv and "
                    "{split}-image-labels.csv beside them.")
flags.DEFINE_string("data_dir", None, "DATA_DIR whose label/ holds the class table and hierarchy.")
flags.DEFINE_string("classes", None, "Class table CSV (MID,DisplayName); default from --data_dir.")
flags.DEFINE_string("hierarchy", None, "Hierarchy JSON; default from --data_dir.")
flags.DEFINE_integer("batch_size", 8, "Images per step over all replicas.")
flags.DEFINE_float("score_threshold", _POST.score_threshold, "Detections scoring below are "
                   "dropped.")
flags.DEFINE_float("nms_iou", _POST.nms_iou, "Per-class NMS IoU threshold.")
flags.DEFINE_integer("max_detections", _POST.max_detections, "Detections kept per image.")
flags.DEFINE_integer("pre_nms_top_k", _POST.pre_nms_top_k,
                     "(anchor, class) candidates per image before NMS.")
flags.DEFINE_bool("flip_tta", False, "Also run the mirrored image and merge (per-class NMS).")
flags.DEFINE_string("output_dir", None, "metrics.json and per_class.csv; default MODEL_DIR/eval.")
flags.DEFINE_string("predictions_csv", None,
                    "Also write the level's detections as a Kaggle submission (.gz: gzipped).")
flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker", "one_device",
                                       "default"],
                  "auto: MultiWorkerMirrored when TF_CONFIG is set, else Mirrored over all GPUs, "
                  "else (one CPU) the default strategy.")
flags.DEFINE_float("log_every_seconds", 10.0, "Progress log interval.")
flags.DEFINE_enum("progress", "auto", progress.MODES,
                  progress.FLAG_HELP + " log: a line every --log_every_seconds.")
flags.mark_flags_as_required(["records_dir", "model_dir"])
for _name, _low in (("level", 0), ("batch_size", 1), ("max_detections", 1),
                    ("pre_nms_top_k", 1)):
    cli.bound(_name, low=_low)
cli.bound("score_threshold", low=0, high=1)
cli.bound("nms_iou", above=0, high=1)
cli.bound("log_every_seconds", low=0)


def postprocess_config() -> PostprocessConfig:
    """The post-processing flags (eval.py and predict.py share their names and defaults)."""
    return PostprocessConfig(score_threshold=FLAGS.score_threshold, nms_iou=FLAGS.nms_iou,
                             max_detections=FLAGS.max_detections,
                             pre_nms_top_k=FLAGS.pre_nms_top_k)


def read_level(level: LevelRecords) -> tuple[list[dict], int | None]:
    """The level's labels and the number of images of --split (for the ETA), after checking
    that the split's ground truth exists."""
    for path in (level.labels, level.boxes_csv(FLAGS.split), level.image_labels_csv(FLAGS.split)):
        cli.check(tf.io.gfile.exists(path),
                  f"{path} not found: run beam_jobs/make_records.py --level {FLAGS.level} "
                  f"--output_dir {FLAGS.records_dir} first")
    try:
        list_files(level.shards(FLAGS.split))
    except FileNotFoundError:
        cli.refuse(f"{level.dir} has no {FLAGS.split} shards ({level.shards(FLAGS.split)}); run "
                   f"beam_jobs/make_records.py --level {FLAGS.level} again")
    total = None
    if tf.io.gfile.exists(level.stats):
        total = read_json(level.stats).get("splits", {}).get(FLAGS.split, {}).get("images")
    return read_json(level.labels), total


def load_model_to_evaluate(strategy, labels: list[dict], level: LevelRecords,
                           ) -> tuple[Detector, str | None]:
    """(the detector of --model_dir, the checkpoint it was read from: None for a SavedModel)."""
    checkpoint = FLAGS.checkpoint
    cli.check(tf.io.gfile.isdir(FLAGS.model_dir),
              f"--model_dir={FLAGS.model_dir}: not a directory")
    if checkpoint and is_saved_model(FLAGS.model_dir):
        cli.refuse(f"--checkpoint is for a training run's directory; {FLAGS.model_dir} is a "
                   "SavedModel")
    if checkpoint is None and not is_saved_model(FLAGS.model_dir):
        checkpoint = latest_checkpoint(FLAGS.model_dir)
    try:
        detector = load_detector(FLAGS.model_dir, strategy, checkpoint)
        detector.check_labels(labels, level.labels, FLAGS.level)
    except (FileNotFoundError, ValueError) as e:
        cli.refuse(str(e))
    return detector, checkpoint


def evaluate(evaluation: LevelEvaluation, inference: Inference, source: RecordSource,
             total: int | None, chief: bool):
    """Runs the evaluation, streaming the detections to --predictions_csv on the chief."""
    writer = None
    if FLAGS.predictions_csv and chief:
        tf.io.gfile.makedirs(os.path.dirname(FLAGS.predictions_csv) or ".")
        writer = SubmissionWriter(FLAGS.predictions_csv)
    # --progress: log keeps the inference loop's lines; bar and none replace them (its last
    # line, the summary, stays).
    mode = progress.resolve(FLAGS.progress, sys.stderr)
    bar = progress.Progress(total=total, unit="images", description="eval", mode=mode) \
        if mode != "log" else None

    def on_image(row, mids):
        if writer is not None:
            dets = row.detections[0]
            writer.write(ImageDetections(row.image_id, dets.boxes, dets.scores, mids))
        if bar is not None:
            bar.update(1)

    try:
        with bar or contextlib.nullcontext():
            result = evaluation.evaluate(
                inference, source, FLAGS.batch_size, total=total, on_image=on_image,
                log_every_seconds=FLAGS.log_every_seconds if bar is None else math.inf)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        stats = writer.close()
        logging.info("wrote %d rows, %d detections to %s", stats.rows, stats.detections,
                     FLAGS.predictions_csv)
    return result


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    malloc.tune()  # before the first step: engine/malloc.py
    # -- the level: labels, ground truth, records -----------------------------------------
    level = RecordsLayout(FLAGS.records_dir).level(FLAGS.level)
    labels, total = read_level(level)
    try:
        classes_path, hierarchy_path = label_files(FLAGS.data_dir, FLAGS.classes, FLAGS.hierarchy)
    except ValueError as e:
        cli.refuse(str(e))
    for flag, path in (("--classes", classes_path), ("--hierarchy", hierarchy_path)):
        cli.check(tf.io.gfile.exists(path), f"{flag}={path}: not found")
    out = FLAGS.output_dir
    cli.check(not out or not tf.io.gfile.exists(out) or tf.io.gfile.isdir(out),
              f"--output_dir={out}: exists and is not a directory")
    cli.check(not FLAGS.predictions_csv or not tf.io.gfile.isdir(FLAGS.predictions_csv),
              f"--predictions_csv={FLAGS.predictions_csv}: is a directory")
    try:
        classes = load_classes(classes_path)
        hierarchy = load_hierarchy(hierarchy_path)
    except (OSError, ValueError) as e:  # unreadable or malformed; the message names the file
        cli.refuse(str(e))

    # -- strategy and model ---------------------------------------------------------------
    strategy = make_strategy(FLAGS.strategy)
    logging.info("strategy %s with %d replicas", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    detector, checkpoint = load_model_to_evaluate(strategy, labels, level)
    logging.info("evaluating %s on %s", checkpoint or FLAGS.model_dir, level.dir)

    # -- evaluate -------------------------------------------------------------------------
    evaluation = LevelEvaluation(classes, hierarchy,
                                 level.boxes_csv(FLAGS.split),
                                 level.image_labels_csv(FLAGS.split),
                                 [e["mid"] for e in detector.labels])
    inference = Inference(strategy, [detector], postprocess_config(), FLAGS.flip_tta)
    chief = is_chief(strategy)
    result = evaluate(evaluation, inference, RecordSource(level.shards(FLAGS.split)), total,
                      chief)

    # -- results --------------------------------------------------------------------------
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.model_dir, "eval")
    if chief:
        write_results(result, output_dir, classes, level=FLAGS.level, split=FLAGS.split,
                      model=FLAGS.model_dir, checkpoint=checkpoint,
                      batch_size=FLAGS.batch_size, replicas=strategy.num_replicas_in_sync,
                      score_threshold=FLAGS.score_threshold, nms_iou=FLAGS.nms_iou,
                      max_detections=FLAGS.max_detections, pre_nms_top_k=FLAGS.pre_nms_top_k,
                      flip_tta=FLAGS.flip_tta)
        logging.info("level %d %s:\n%s\nwritten to %s/metrics.json and per_class.csv",
                     FLAGS.level, FLAGS.split, format_result(result, classes), output_dir)
    wait_for_all_workers(strategy)


if __name__ == "__main__":
    # A train.py flagfile may be passed as is: its flags that eval.py lacks are ignored.
    app.run(main, flags_parser=cli.flags_parser(known_only=True))
