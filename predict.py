"""Predict the test set with one model (or an ensemble) per level and write a Kaggle submission.

    python predict.py --model level1=runs/l1 --model level2=runs/l2 \\
        --images DATA/test --data_dir DATA --output submission.csv.gz
    python predict.py --model level1=demo_out/models/level1 --model level2=demo_out/models/level2 \\
        --records 'demo_out/records/test/test-*.tfrecord' --data_dir demo_out/data \\
        --output demo_out/submission.csv.gz --visualize 5

Phases: flags -> strategy -> every model in the strategy's scope (a train.py run's latest
checkpoint or an exported SavedModel), each checked against its levelN= key -> the images in
chunks: per chunk, each model's detections from the detection cache (OUTPUT.cache/, complete
chunks of an earlier run of the same model) or by inference (every model missing the chunk
runs on every batch on every replica; the chief writes the chunk to the cache) -> per image:
levels merged, ensembles fused, boxes copied to ancestor classes, everything above
--score_threshold (or the --top_k best) -> the submission, streamed (every image gets a row,
an unreadable one an empty row) [-> PNGs of a few images]. A killed run, run again, resumes
from its complete chunks and writes the same bytes; `python -m oid.combine --cache` rebuilds
or re-combines the submission from the cache without TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys

import tensorflow as tf
from absl import app, flags

from engine import cli, malloc
from engine.evaluation import label_files
from engine.inference import Detector, load_detector
from engine.prediction import (
    ChunkedPrediction,
    Combiner,
    cache_meta,
    combine_chunk,
    model_identity,
    open_caches,
    plan_chunks,
)
from engine.strategy import is_chief, make_strategy, wait_for_all_workers
from model.config import PostprocessConfig
from oid import progress
from oid.classes import ClassTable, load_classes
from oid.combine import FUSIONS
from oid.detection_cache import ModelCache
from oid.hierarchy import load_hierarchy
from oid.levels import LevelSpec
from oid.submission import SubmissionWriter, is_valid_image_id
from oid.visualize import draw_detections
from tfrecords.inference_input import (
    ImageFolderSource,
    RecordSource,
    Source,
    image_id_of,
    read_images,
)

_POST = PostprocessConfig()

FLAGS = flags.FLAGS
flags.DEFINE_multi_string(
    "model", None,
    "levelN=DIR, once per model: DIR is a train.py run (config.json + checkpoints/) or an "
    "exported SavedModel. Several models of one level are an ensemble (weighted boxes fusion).")
flags.DEFINE_string("images", None, "Folder of JPEG/PNG images; the ImageId is the file stem.")
flags.DEFINE_string("records", None, "Or: TFRecords (glob, comma-separated) from "
                    "beam_jobs/make_records.py, e.g. 'RECORDS/test/test-*.tfrecord'.")
flags.DEFINE_string("output", None, "The submission CSV (.gz: gzipped).")
flags.DEFINE_string("data_dir", None, "DATA_DIR whose label/ holds the class table and hierarchy.")
flags.DEFINE_string("classes", None, "Class table CSV (MID,DisplayName); default from --data_dir.")
flags.DEFINE_string("hierarchy", None, "Hierarchy JSON; default from --data_dir.")
flags.DEFINE_bool("expand", True, "Copy each box to every ancestor class (the challenge's "
                  "ground truth is expanded, so a submission must be).")
flags.DEFINE_string("levels_spec", None, "levels.json (python -m oid.levels): each model's "
                    "classes must be its level's, in order.")
flags.DEFINE_integer("top_k", 0, "Detections kept per image after merging the levels and "
                     "copying boxes to ancestors; 0: all above --score_threshold (a lower-scored "
                     "extra detection never lowers a class's AP; --max_detections caps each "
                     "model before the merge).")
flags.DEFINE_float("score_threshold", _POST.score_threshold,
                   "Detections scoring below are dropped.")
flags.DEFINE_integer("max_detections", _POST.max_detections,
                     "Detections per image and model, after NMS and before the merge.")
flags.DEFINE_float("nms_iou", _POST.nms_iou,
                   "Per-class NMS IoU threshold (and of the flip TTA merge).")
flags.DEFINE_integer("pre_nms_top_k", _POST.pre_nms_top_k,
                     "(anchor, class) candidates per image before NMS.")
flags.DEFINE_bool("flip_tta", False, "Also run every model on the mirrored image and merge "
                  "both passes by per-class NMS.")
flags.DEFINE_float("wbf_iou", 0.55, "Ensembles: boxes of one class fuse above this IoU.")
flags.DEFINE_enum("fusion", "wbf", list(FUSIONS), "Ensembles (several models of a level): "
                  "weighted boxes fusion, concatenation, or concatenation then per-class NMS "
                  "at --nms_iou.")
flags.DEFINE_bool("cache", True, "Keep each model's raw detections in --cache_dir and reuse "
                  "the complete chunks of an earlier run of the same model and settings (a "
                  "killed run resumes; python -m oid.combine re-combines offline).")
flags.DEFINE_string("cache_dir", None, "The detection cache folder; default OUTPUT.cache "
                    "beside --output. Several hosts: on storage every worker sees.")
flags.DEFINE_integer("cache_chunk_images", 1000, "Images per cache chunk (the unit of "
                     "resuming) for --images; with --records a chunk is one record file.")
flags.DEFINE_integer("batch_size", 8, "Images per step over all replicas.")
flags.DEFINE_enum("strategy", "auto", ["auto", "mirrored", "multi_worker", "one_device",
                                       "default"],
                  "auto: MultiWorkerMirrored when TF_CONFIG is set, else Mirrored over all GPUs, "
                  "else (one CPU) the default strategy.")
flags.DEFINE_integer("visualize", 0, "Draw the detections of the first N images as PNGs.")
flags.DEFINE_string("visualize_dir", None, "Where the PNGs go; default OUTPUT's folder/visualize.")
flags.DEFINE_float("visualize_threshold", 0.3, "Boxes scoring below are not drawn.")
flags.DEFINE_float("log_every_seconds", 10.0, "Progress log interval.")
flags.DEFINE_enum("progress", "auto", progress.MODES,
                  progress.FLAG_HELP + " log: a line every --log_every_seconds.")
flags.mark_flags_as_required(["model", "output"])
for _name, _low in (("top_k", 0), ("cache_chunk_images", 1), ("max_detections", 1), ("pre_nms_top_k", 1), ("batch_size", 1),
                    ("visualize", 0)):
    cli.bound(_name, low=_low)
for _name in ("score_threshold", "visualize_threshold"):
    cli.bound(_name, low=0, high=1)
for _name in ("nms_iou", "wbf_iou"):
    cli.bound(_name, above=0, high=1)
cli.bound("log_every_seconds", low=0)

_MODEL_FLAG = re.compile(r"level(\d+)=(.+)")


def parse_models(values: list[str]) -> dict[int, list[str]]:
    """["level1=DIR", "level1=DIR2", "level2=DIR3"] -> {1: [DIR, DIR2], 2: [DIR3]}."""
    levels: dict[int, list[str]] = {}
    for value in values:
        match = _MODEL_FLAG.fullmatch(value)
        if not match:
            raise ValueError(f"--model {value!r}: expected levelN=DIR, e.g. level1=runs/level1")
        levels.setdefault(int(match[1]), []).append(match[2])
    return levels


def load_models(strategy: tf.distribute.Strategy, models: dict[int, list[str]],
                spec: LevelSpec | None, classes: ClassTable | None, classes_path: str | None,
                ) -> tuple[list[Detector], dict[int, list[int]], list[dict]]:
    """Every --model in the strategy's scope, each checked against its levelN= key (and the
    levels spec, the other models of its level, the class table). Returns the detectors,
    level -> indices of its detectors, and each detector's identity (model_identity)."""
    detectors: list[Detector] = []
    identities: list[dict] = []
    levels: dict[int, list[int]] = {}
    for level, dirs in sorted(models.items()):
        for path in dirs:
            try:
                # The checkpoint is chosen once, so that the cache key names the weights
                # that are loaded even if training writes a newer checkpoint meanwhile.
                identity = model_identity(path)
                checkpoint = identity["checkpoint"] if identity["checkpoint"] != "saved_model" \
                    else None
                detector = load_detector(path, strategy, checkpoint)
                if detector.level is None:
                    raise ValueError(f"{path} does not say which level it was trained for; "
                                     "export it again with train.py")
                expected = [{"index": i, "mid": m} for i, m in enumerate(
                    spec.level(level).classes)] if spec else detector.labels
                detector.check_labels(expected, f"level {level} of {FLAGS.levels_spec}", level)
                if levels.get(level):
                    first = detectors[levels[level][0]]
                    detector.check_labels(first.labels, f"the other level {level} model "
                                          f"{first.name}", level)
                if classes is not None:
                    unknown = [m for m in detector.mids if m not in classes]
                    if unknown:
                        raise ValueError(f"{path} predicts {unknown[0]}, which is not in "
                                         f"{classes_path}")
            except (FileNotFoundError, ValueError) as e:
                cli.refuse(f"--model level{level}={path}: {e}")
            levels.setdefault(level, []).append(len(detectors))
            detectors.append(detector)
            identities.append(identity)
            logging.info("level %d: %s (%d classes, %s)", level, path, len(detector.labels),
                         os.path.basename(identity["checkpoint"]))
    return detectors, levels, identities


def write_submission(prediction: ChunkedPrediction, combine: Combiner, source: Source,
                     ) -> list:
    """The images in chunks, each model's detections from the cache or by inference, every
    image's combined detections to --output (on the chief). Returns the ImageDetections of
    the first --visualize readable images."""
    plan = plan_chunks(source, FLAGS.cache_chunk_images)
    missing = prediction.missing(plan)
    # Every worker has read the cache before the chief writes to it, so that all run the
    # same chunks (a chunk the chief completed first would otherwise be skipped by some).
    wait_for_all_workers(prediction.strategy)
    chief = prediction.chief
    shown = []
    writer = None
    if chief:
        tf.io.gfile.makedirs(os.path.dirname(FLAGS.output) or ".")
        writer = SubmissionWriter(FLAGS.output, image_ids=source.image_ids
                                  if isinstance(source, ImageFolderSource) else None)
    # --progress: log keeps the inference loop's lines; bar and none replace them (each
    # chunk's line stays). Images read from the cache advance the bar a chunk at a time.
    mode = progress.resolve(FLAGS.progress, sys.stderr)
    total = sum(len(c.image_ids) for c in plan if c.image_ids is not None) or None
    bar = progress.Progress(total=total, unit="images", description="predict", mode=mode) \
        if mode != "log" and chief else None
    try:
        with bar or contextlib.nullcontext():
            for _, chunks in prediction.run(
                    plan, missing, FLAGS.batch_size,
                    FLAGS.log_every_seconds if bar is None else math.inf,
                    advance=bar.update if bar is not None else None):
                for dets, readable in combine_chunk(combine, chunks):
                    writer.write(dets)
                    if readable and len(shown) < FLAGS.visualize:
                        shown.append(dets)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        written = writer.close()
        logging.info("wrote %s: %d rows (%d with detections, %d unreadable images), %d "
                     "detections; %d images inferred, %d read from the cache", FLAGS.output,
                     written.rows, written.images_with_detections, len(prediction.unreadable),
                     written.detections, prediction.images_inferred,
                     prediction.images - prediction.images_inferred)
    return shown


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)
    malloc.tune()  # before the first step: engine/malloc.py
    # -- flags -> inputs ----------------------------------------------------------------------
    if bool(FLAGS.images) == bool(FLAGS.records):
        cli.refuse("pass exactly one of --images DIR and --records PATTERN")
    try:
        models = parse_models(FLAGS.model)
    except ValueError as e:
        cli.refuse(str(e))
    for level, dirs in models.items():
        for path in dirs:
            cli.check(tf.io.gfile.isdir(path), f"--model level{level}={path}: not a directory "
                      "(a train.py run or an exported SavedModel)")
    cli.check(not tf.io.gfile.isdir(FLAGS.output), f"--output={FLAGS.output}: is a directory")
    classes_path = hierarchy_path = None
    if FLAGS.expand or FLAGS.data_dir or FLAGS.classes:
        try:
            classes_path, hierarchy_path = label_files(FLAGS.data_dir, FLAGS.classes,
                                                       FLAGS.hierarchy)
        except ValueError as e:
            cli.refuse(f"{e} (or --noexpand to leave boxes in their predicted classes)")
        for flag, path in (("--classes", classes_path), ("--hierarchy", hierarchy_path)):
            cli.check(tf.io.gfile.exists(path), f"{flag}={path}: not found")
    try:
        classes = load_classes(classes_path) if classes_path else None
        hierarchy = load_hierarchy(hierarchy_path) if FLAGS.expand else None
        spec = LevelSpec.load(FLAGS.levels_spec) if FLAGS.levels_spec else None
    except (OSError, ValueError) as e:  # unreadable or malformed; the message names the file
        cli.refuse(str(e))
    try:
        source = ImageFolderSource.from_dir(FLAGS.images) if FLAGS.images \
            else RecordSource(FLAGS.records)
    except (FileNotFoundError, ValueError) as e:
        cli.refuse(str(e))
    if isinstance(source, ImageFolderSource):
        # Every file must name a valid ImageId before hours of inference, not at the writer.
        bad = [p for p in source.paths if not is_valid_image_id(image_id_of(p))]
        cli.check(not bad, f"--images={FLAGS.images}: {len(bad)} file names cannot be "
                  f"submission ImageIds (a comma, quote or whitespace in the stem): "
                  f"{', '.join(os.path.basename(p) for p in bad[:10])}"
                  f"{' ...' if len(bad) > 10 else ''}; rename them")

    # -- strategy and models ----------------------------------------------------------------
    strategy = make_strategy(FLAGS.strategy)
    logging.info("strategy %s with %d replicas", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    detectors, levels, identities = load_models(strategy, models, spec, classes, classes_path)

    # -- the cache ------------------------------------------------------------------------
    post = PostprocessConfig(score_threshold=FLAGS.score_threshold, nms_iou=FLAGS.nms_iou,
                             max_detections=FLAGS.max_detections,
                             pre_nms_top_k=FLAGS.pre_nms_top_k)
    metas = [cache_meta(i, d, post, FLAGS.flip_tta) for i, d in zip(identities, detectors,
                                                                    strict=True)]
    # An ensemble is fused in the order python -m oid.combine takes the cache's folders (by
    # name, levelN-KEY), so that both write the same bytes whatever the --model order.
    levels = {level: sorted(ks, key=lambda k: ModelCache.folder_name(level, metas[k]["key"]))
              for level, ks in levels.items()}
    chief = is_chief(strategy)
    cache_dir = (FLAGS.cache_dir or FLAGS.output + ".cache") if FLAGS.cache else None
    caches = open_caches(cache_dir, metas, chief)
    if cache_dir:
        logging.info("detection cache: %s", cache_dir)

    # -- predict ----------------------------------------------------------------------------
    prediction = ChunkedPrediction(strategy, detectors, post, FLAGS.flip_tta, caches, chief)
    combine = Combiner(detectors, levels, hierarchy, FLAGS.top_k, FLAGS.score_threshold,
                       FLAGS.wbf_iou, fusion=FLAGS.fusion)
    shown = write_submission(prediction, combine, source)

    # -- a few pictures -----------------------------------------------------------------------
    if shown and chief:
        out_dir = FLAGS.visualize_dir or os.path.join(os.path.dirname(FLAGS.output) or ".",
                                                      "visualize")
        visualize(shown, source, classes, detectors, out_dir, FLAGS.visualize_threshold)
    wait_for_all_workers(strategy)


def visualize(shown, source, classes, detectors, out_dir: str, threshold: float) -> None:
    """OUT_DIR/{ImageId}.png for each ImageDetections of `shown`, with class names."""
    names = {e["mid"]: e["name"] for d in detectors for e in d.labels}
    if classes is not None:
        names.update({m: classes.name(m) for m in classes.mids})
    wanted = {d.image_id for d in shown}
    if isinstance(source, ImageFolderSource):
        pictures = {i: p for i, p in zip(source.image_ids, source.paths, strict=True)
                    if i in wanted}
    else:
        pictures = read_images(source, wanted)
    drawn = 0
    for dets in shown:
        if dets.image_id in pictures:  # a record that no longer decodes is left out
            draw_detections(pictures[dets.image_id], dets, names,
                            os.path.join(out_dir, f"{dets.image_id}.png"), threshold)
            drawn += 1
    logging.info("drew %d images in %s", drawn, out_dir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser())
