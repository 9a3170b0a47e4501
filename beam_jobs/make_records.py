"""Open Images -> sharded TFRecords for one level (or all), on any Beam runner.

    python beam_jobs/make_records.py --data_dir DATA --output_dir RECORDS --level 1
    python beam_jobs/make_records.py ... --level all --runner=DataflowRunner --project=... \\
        --temp_location=gs://... --setup_file=./setup.py

writes, for level N,

    RECORDS/levelN/train-00000-of-000NN.tfrecord ...   shuffled, resized, ~150 MB shards
    RECORDS/levelN/val-00000-of-000NN.tfrecord ...
    RECORDS/levelN/labels.json                          [{index, mid, name}] of the level
    RECORDS/levelN/stats.json                           images, boxes, boxes per class and
                                                        per image per split, skipped inputs
                                                        by reason, ancestor copies
    RECORDS/levelN/val-bbox.csv, val-image-labels.csv   val ground truth, official format
    RECORDS/levelN/skipped.csv                          ImageID,reason of every input left out

(`--split test`: RECORDS/test/test-*.tfrecord of the unlabelled test images.)

The levels come from --levels_spec, else from DATA/levels.json (what `python -m oid.levels`
writes by default), else they are computed from the training boxes as that command does
by default and written to RECORDS/levels.json.

Every flag is checked before anything is written: a bad one, or a bad input file, ends the
run with exit status 2 and one last line `error: <flag or file>: <problem>; <fix>`.

The driver reads and validates the CSVs and plans the level (beam_jobs/plan.py);
the plan goes to JSON-lines files that the pipeline reads, so the same job runs
on the DirectRunner (all local cores by default), Dataflow, Flink or Spark, and
every path may be gs://. Any flag this job does not define is a Beam pipeline
option. By default it runs locally on every core, and prints only its own lines: Beam's
own logging shows from --beam_log_level (default ERROR) up (beam_jobs/logs.py).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Run under the package name, so that flags are defined once and DoFns
    # pickle by reference (beam_jobs.make_records.WriteShard), not as __main__.
    import os as _os

    sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    from beam_jobs import logs

    logs.setup(logs.level_from_argv(sys.argv))  # before Beam's first import, which logs
    from beam_jobs import make_records

    sys.exit(make_records.main())

import csv
import dataclasses
import difflib
import io
import json
import logging
import math
import os
import re
import shlex
import time
import uuid
from collections import Counter
from collections.abc import Callable

import apache_beam as beam
import numpy as np
import pandas as pd
from absl import flags
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.transforms.environments import SubprocessSDKEnvironment

from beam_jobs import images as image_ops
from beam_jobs import logs, watch, worker
from beam_jobs.plan import Plan, PlanConfig, plan_level
from oid import errors, fileio, progress
from oid.annotations import (
    BOX_COLUMNS,
    IMAGE_ID_PATTERN,
    LABEL_COLUMNS,
    ReadReport,
    read_boxes,
    read_image_labels,
)
from oid.classes import ClassTable, load_classes
from oid.errors import InputFileError, UsageError
from oid.hierarchy import Hierarchy, load_hierarchy
from oid.layout import DataLayout
from oid.levels import (
    DEFAULT_LEVEL_SIZES,
    Level,
    LevelSpec,
    check_data_dir,
    check_mids,
    levels_from_boxes,
)
from tfrecords import proto
from tfrecords.example import ImageAnnotation, build_example
from tfrecords.layout import LevelRecords, RecordsLayout, shard_name

SPLITS = ("train", "val")
SKIPPED_TAG = "skipped"
TEMP_DIR = "beam-temp-shards"  # shards being written; renamed into level_dir when complete
STATS_TAG = "stats"
DEFAULT_IMAGE_BYTES = 150_000  # per-image guess when no sample could be read
SPEC_FILE = "levels.json"  # in DATA_DIR (python -m oid.levels' default) and in OUTPUT_DIR

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Official layout: label/ CSVs and JSON, train/ and test/.")
flags.DEFINE_string("output_dir", None, "Where level{N}/ (or test/) directories are written.")
flags.DEFINE_string("levels_spec", None,
                    "Level spec from python -m oid.levels. Default: DATA_DIR/levels.json if it "
                    "exists, else levels computed from the boxes with that command's defaults "
                    "and written to OUTPUT_DIR/levels.json.")
flags.DEFINE_string("level", "1", "Level number, or 'all'.")
flags.DEFINE_enum("split", "train", ["train", "test"],
                  "train: labelled images, split into train/val records; test: unlabelled images.")
flags.DEFINE_float("val_fraction", 0.1, "Share of each level's images on the val side.")
flags.DEFINE_string("split_salt", "", "Changes the (ImageID-hash) split for every level alike.")
flags.DEFINE_integer("max_side", 1024,
                     "Longer image side at most this, pixels (aspect kept, no upscaling).")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of re-encoded images.")
flags.DEFINE_integer("num_shards", 0, "Shards per split; 0 sizes them by --shard_size_mb.")
flags.DEFINE_float("shard_size_mb", 150.0, "Target shard size when --num_shards is 0.")
flags.DEFINE_float("repeat_threshold", 0.001, "LVIS repeat-factor threshold t stored per image.")
flags.DEFINE_float("max_dominant_fraction", None,
                   "Leave out training images where more than this share of the level's boxes "
                   "belong to the dominant classes (e.g. 0.95).")
flags.DEFINE_list("dominant_classes", [], "MIDs of the dominant classes (default: top-K).")
flags.DEFINE_integer("dominant_top_k", 1, "Dominant classes = the level's K largest by boxes.")
flags.DEFINE_bool("boxes_to_ancestors", True,
                  "Also write each box of a class outside the level as a box of the level's "
                  "nearest Subcategory ancestor of its class (a Star box as a Symbol box), as "
                  "the challenge metric scores the level's parent classes; one box per place. "
                  "stats.json counts the copies (docs/records.md). --noboxes_to_ancestors "
                  "keeps the annotated boxes only.")
flags.DEFINE_bool("strict", False, "Fail on the first bad annotation row instead of skipping it.")
flags.DEFINE_integer("log_every", 500, "Progress line every N images per worker "
                     "(--progress=log).")
flags.DEFINE_enum("progress", "auto", progress.MODES,
                  progress.FLAG_HELP + " Counts the images done per split, watched by the "
                  "driver; log: a line every 30 s and each worker's line every --log_every "
                  "images.")
flags.DEFINE_integer("shuffle_seed", 0, "Seed of the record order within and across shards.")
flags.DEFINE(flags.EnumParser(logs.LEVELS, case_sensitive=False), "beam_log_level",
             logs.DEFAULT_BEAM_LEVEL,
             f"<{'|'.join(logs.LEVELS)}>: Apache Beam's own log records show from this level "
             "up (INFO: all of its worker start-up and runner chatter); this job's lines "
             "always show.", serializer=flags.ArgumentSerializer())


# -- DoFns ---------------------------------------------------------------------------------


class WriteShard(beam.DoFn):
    """((split, shard), plan lines) -> one finished TFRecord shard. Needs no TensorFlow.

    Shards are assigned in the driver, so only the small plan lines are
    grouped; image bytes are read, converted and written by one worker and
    never travel between workers. The shard is written under a temporary name
    in TEMP_DIR and renamed into place when complete, so a crash never leaves
    a partial shard under a final name (a retried bundle simply rewrites it).

    Outputs: SKIPPED_TAG (ImageID, reason) for unusable images, STATS_TAG a
    small summary per written image, and the shard's final path as main output.
    """

    def __init__(self, level_dir: str, image_dirs: dict[str, str], num_shards: dict[str, int],
                 max_side: int, quality: int, total: int = 0, log_every: int = 500):
        self._level_dir = level_dir
        self._image_dirs = image_dirs
        self._num_shards = num_shards
        self._max_side = max_side
        self._quality = quality
        self._total = total
        self._log_every = log_every

    def setup(self):
        self._read = Metrics.counter("make_records", "images_read")
        self._written = Metrics.counter("make_records", "images_written")
        self._skips: dict[str, object] = {}
        self._count = 0
        self._t0 = time.monotonic()

    def _skip(self, image_id: str, reason: str):
        if reason not in self._skips:
            self._skips[reason] = Metrics.counter("make_records", f"skipped_{reason}")
        self._skips[reason].inc()
        return beam.pvalue.TaggedOutput(SKIPPED_TAG, (image_id, reason))

    def _progress(self):
        self._count += 1
        if self._log_every and self._count % self._log_every == 0:
            rate = self._count / max(time.monotonic() - self._t0, 1e-9)
            workers = max(1, os.cpu_count() or 1)
            left = max(0.0, self._total / workers - self._count) / rate if self._total else 0
            logging.info("worker %d: %d images, %.1f images/s, about %.0f s left",
                         os.getpid(), self._count, rate, left)

    def process(self, element):
        (split, shard), lines = element
        entries = sorted(json.loads(line) for line in lines)  # [position, annotation]
        name = shard_name(split, shard, self._num_shards[split])
        final = LevelRecords(self._level_dir).path(name)
        tmp = fileio.join(self._level_dir, TEMP_DIR, f"{name}.{uuid.uuid4().hex}")
        with FileSystems.create(tmp) as writer:
            for _, obj in entries:
                ann = ImageAnnotation.from_json(obj)
                try:
                    serialized, summary = self._one(ann)
                except _Skip as skip:
                    yield self._skip(ann.image_id, skip.reason)
                    continue
                proto.write_tfrecord(writer, serialized)
                yield beam.pvalue.TaggedOutput(STATS_TAG, summary)
                self._progress()
        if FileSystems.exists(final):  # a retried bundle, or a rerun with the same shard count
            FileSystems.delete([final])
        FileSystems.rename([tmp], [final])
        yield final

    def _one(self, ann: ImageAnnotation) -> tuple[bytes, dict]:
        """(serialized example, summary) of one image; raises _Skip for an unusable one."""
        source_split = "test" if ann.split == "test" else "train"
        path = fileio.join(self._image_dirs[source_split], f"{ann.image_id}.jpg")
        try:
            with FileSystems.open(path) as f:
                data = f.read()
        except OSError:
            raise _Skip(image_ops.MISSING) from None
        self._read.inc()
        try:
            prepared = image_ops.prepare_image(data, self._max_side, self._quality)
        except image_ops.BadImageError as e:
            logging.warning("skipping %s: %s", path, e)
            raise _Skip(e.reason) from None
        self._written.inc()
        example = build_example(ann, prepared.jpeg, prepared.height, prepared.width,
                                      prepared.original_height, prepared.original_width)
        summary = {"split": ann.split, "image_id": ann.image_id, "boxes": len(ann.mids),
                   "classes": dict(Counter(ann.mids)), "notes": list(prepared.notes),
                   "bytes": len(prepared.jpeg)}
        return example.SerializeToString(), summary


class _Skip(Exception):  # noqa: N818 (control flow inside WriteShard, never escapes it)
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


MOST_BOXES_LISTED = 20  # images named per split in stats.json's most_boxes


def _empty_split() -> dict:
    return {"images": 0, "boxes": 0, "bytes": 0, "boxes_per_class": {}, "converted": {},
            "max_boxes": 0, "boxes_per_image": {}, "most_boxes": []}


def _most_boxes(entries) -> list:
    """The MOST_BOXES_LISTED [boxes, ImageID] pairs with the most boxes, most first."""
    return sorted(entries, key=lambda e: (-e[0], e[1]))[:MOST_BOXES_LISTED]


class MergeStats(beam.CombineFn):
    """Per-image summaries -> counts per split (images, boxes, per class, conversions, bytes).

    Per split also: max_boxes, the largest box count of an image (train.py's default
    --max_boxes); boxes_per_image, images per box count ({"3": 120, ...}), from which
    train.py tells how many images a smaller --max_boxes cuts; most_boxes, the
    [boxes, ImageID] of the images with the most boxes.
    """

    def create_accumulator(self):
        return {}

    def add_input(self, acc, s):
        split = acc.setdefault(s["split"], _empty_split())
        split["images"] += 1
        split["boxes"] += s["boxes"]
        split["bytes"] += s["bytes"]
        for m, n in s["classes"].items():
            split["boxes_per_class"][m] = split["boxes_per_class"].get(m, 0) + n
        for note in s["notes"]:
            split["converted"][note] = split["converted"].get(note, 0) + 1
        split["max_boxes"] = max(split["max_boxes"], s["boxes"])
        key = str(s["boxes"])
        split["boxes_per_image"][key] = split["boxes_per_image"].get(key, 0) + 1
        split["most_boxes"] = _most_boxes(split["most_boxes"] + [[s["boxes"], s["image_id"]]])
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            for split, s in acc.items():
                t = out.setdefault(split, _empty_split())
                for k in ("images", "boxes", "bytes"):
                    t[k] += s[k]
                for k in ("boxes_per_class", "converted", "boxes_per_image"):
                    for m, n in s[k].items():
                        t[k][m] = t[k].get(m, 0) + n
                t["max_boxes"] = max(t["max_boxes"], s["max_boxes"])
                t["most_boxes"] = _most_boxes(t["most_boxes"] + s["most_boxes"])
        return out

    def extract_output(self, acc):
        return acc


class WriteSummaries(beam.DoFn):
    """Writes stats.json and skipped.csv once every image is done."""

    def __init__(self, level_dir: str, base_stats: dict, planned_skips: list):
        self._level_dir = level_dir
        self._base_stats = base_stats
        self._planned_skips = planned_skips

    def process(self, _, stats, skipped):
        skipped = sorted(set(map(tuple, self._planned_skips)) | set(map(tuple, skipped)))
        per_reason = Counter(reason for _, reason in skipped)
        out = {**self._base_stats, "splits": stats, "skipped": dict(sorted(per_reason.items()))}
        files = LevelRecords(self._level_dir)
        with FileSystems.create(files.stats) as f:
            f.write(json.dumps(out, indent=1, sort_keys=True).encode() + b"\n")
        lines = ["ImageID,reason"] + [f"{_csv_field(i)},{r}" for i, r in skipped]
        with FileSystems.create(files.skipped) as f:
            f.write(("\n".join(lines) + "\n").encode())
        yield len(skipped)


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


# -- pipeline ------------------------------------------------------------------------------


def build_pipeline(
    p: beam.Pipeline,
    plan_pattern: str,
    level_dir: str,
    image_dirs: dict[str, str],
    num_shards: dict[str, int],
    max_side: int = 1024,
    quality: int = 95,
    base_stats: dict | None = None,
    planned_skips: list | None = None,
    total: int = 0,
    log_every: int = 500,
):
    """Adds the records job to `p`.

    Args:
      plan_pattern: glob of JSON-lines plan files; each line is
        {"split", "shard", "position", "annotation"} (see write_plan).
      level_dir: output directory of the level (or of the test split).
      image_dirs: {"train": dir, "test": dir} holding {ImageID}.jpg.
      num_shards: shards per split written (splits with 0 shards are absent).
      base_stats: planning figures merged into stats.json.
      planned_skips: (ImageID, reason) pairs left out before the pipeline.

    Returns:
      The PCollection of written shard paths.
    """
    grouped = (p | "ReadPlan" >> beam.io.ReadFromText(plan_pattern)
               | "KeyByShard" >> beam.Map(_shard_key)
               | "GroupByShard" >> beam.GroupByKey())
    outputs = grouped | "WriteShards" >> beam.ParDo(
        WriteShard(level_dir, image_dirs, num_shards, max_side, quality, total, log_every)
    ).with_outputs(SKIPPED_TAG, STATS_TAG, main="shards")
    stats = outputs[STATS_TAG] | "MergeStats" >> beam.CombineGlobally(MergeStats())
    skipped = outputs[SKIPPED_TAG] | "ListSkipped" >> beam.combiners.ToList()
    _ = (p | "Once" >> beam.Create([None])
         | "WriteSummaries" >> beam.ParDo(
             WriteSummaries(level_dir, base_stats or {}, planned_skips or []),
             beam.pvalue.AsSingleton(stats), beam.pvalue.AsSingleton(skipped)))
    return outputs.shards


def _shard_key(line: str) -> tuple[tuple[str, int], str]:
    entry = json.loads(line)
    return (entry["split"], entry["shard"]), json.dumps([entry["position"], entry["annotation"]])


# -- driver --------------------------------------------------------------------------------


def write_plan(annotations: list[ImageAnnotation], plan_dir: str, num_shards: dict[str, int],
               seed: int = 0, lines_per_file: int = 20000) -> str:
    """Shuffles each split with `seed`, deals its images round-robin onto its shards and
    writes the plan as JSON-lines files; returns their glob pattern.

    An image's position fixes its order within its shard, so the records are
    the same for the same plan and seed on every runner.
    """
    rng = np.random.default_rng(seed)
    entries = []
    for split, n in num_shards.items():
        members = [a for a in annotations if a.split == split]
        for position, k in enumerate(rng.permutation(len(members))):
            entries.append({"split": split, "shard": position % n, "position": position,
                            "annotation": members[k].to_json()})
    n_files = max(1, math.ceil(len(entries) / lines_per_file))
    for k in range(n_files):
        chunk = entries[k * lines_per_file:(k + 1) * lines_per_file]
        with FileSystems.create(fileio.join(plan_dir, f"plan-{k:05d}-of-{n_files:05d}.jsonl")) as f:
            f.write("".join(json.dumps(e) + "\n" for e in chunk).encode())
    return fileio.join(plan_dir, "plan-*.jsonl")


def estimate_image_bytes(annotations: list[ImageAnnotation], image_dirs: dict[str, str],
                         max_side: int, quality: int, sample: int = 8) -> float:
    """Mean output size of a few images spread over the plan."""
    if not annotations:
        return DEFAULT_IMAGE_BYTES
    sizes = []
    step = max(1, len(annotations) // sample)
    for ann in annotations[::step][:sample]:
        path = fileio.join(image_dirs["test" if ann.split == "test" else "train"],
                           f"{ann.image_id}.jpg")
        try:
            with FileSystems.open(path) as f:
                sizes.append(len(image_ops.prepare_image(f.read(), max_side, quality).jpeg))
        except (OSError, image_ops.BadImageError):
            continue
    return sum(sizes) / len(sizes) if sizes else DEFAULT_IMAGE_BYTES


def shard_counts(annotations: list[ImageAnnotation], splits, bytes_per_image: float,
                 num_shards: int, shard_size_mb: float) -> dict[str, int]:
    """Shards per split: --num_shards, or sized by shard_size_mb; never more than images."""
    counts = Counter(a.split for a in annotations)
    wanted = {s: num_shards if num_shards > 0 else
              image_ops.estimate_shards(counts[s] * bytes_per_image, shard_size_mb)
              for s in splits}
    return {s: min(n, counts[s]) for s, n in wanted.items()}


def _delete(paths: list[str]) -> None:
    if paths:
        FileSystems.delete(paths)


def remove_leftovers(level_dir: str) -> None:
    """Deletes Beam temp directories (and plan files) that a crashed run left behind."""
    found = FileSystems.match([fileio.join(level_dir, "beam-temp-*/*"),
                               fileio.join(level_dir, f"{TEMP_DIR}/*"),
                               fileio.join(level_dir, "_plan/*")])
    stale = sorted({m.path.rsplit("/", 1)[0] for r in found for m in r.metadata_list})
    if stale:
        logging.info("removing leftovers of an earlier run: %s", ", ".join(stale))
        _delete(stale)


def remove_stale_shards(level_dir: str, splits, num_shards: dict[str, int]) -> None:
    """Deletes shards of earlier runs that this run did not write (another shard count)."""
    for split in splits:
        keep = f"-of-{num_shards[split]:05d}.tfrecord" if num_shards.get(split) else "//none"
        found = FileSystems.match([fileio.join(level_dir, f"{split}-*-of-*.tfrecord")])[0]
        _delete([m.path for m in found.metadata_list if not m.path.endswith(keep)])


def _write_csv(frame, columns, path: str, exclude: set[str]) -> None:
    frame = frame[~frame["ImageID"].astype(str).isin(exclude)]
    with fileio.open_file(path, "w") as f:
        frame.to_csv(f, columns=list(columns), index=False, float_format="%.6g")


def run_level(level_dir: str, plan: Plan, image_dirs: dict[str, str], splits, labels_json,
              make_pipeline, args: dict) -> dict:
    """Runs the pipeline for one planned level and writes the files around it.

    Args:
      make_pipeline: () -> beam.Pipeline (e.g. a TestPipeline in tests).
      args: max_side, jpeg_quality, num_shards, shard_size_mb, log_every, and progress
        ("bar", "log" (default) or "none": see watch.py; the workers' lines only with "log").

    Returns:
      The level's stats.json content.
    """
    files = LevelRecords(level_dir)
    FileSystems.mkdirs(level_dir) if not FileSystems.exists(level_dir) else None
    remove_leftovers(level_dir)
    plan_dir = fileio.join(level_dir, "_plan")
    per_image = estimate_image_bytes(plan.annotations, image_dirs, args["max_side"],
                                     args["jpeg_quality"])
    shards = shard_counts(plan.annotations, splits, per_image, args["num_shards"],
                          args["shard_size_mb"])
    pattern = write_plan(plan.annotations, plan_dir, {s: n for s, n in shards.items() if n},
                         args.get("shuffle_seed", 0))
    FileSystems.mkdirs(fileio.join(level_dir, TEMP_DIR))
    logging.info("%s: %d images, ~%.0f KB each, shards %s", level_dir, len(plan.annotations),
                 per_image / 1024, shards)
    if labels_json is not None:
        with FileSystems.create(files.labels) as f:
            f.write(json.dumps(labels_json, indent=1).encode() + b"\n")
    t0 = time.monotonic()
    mode = args.get("progress", "log")
    planned = watch.planned_per_shard(Counter(a.split for a in plan.annotations),
                                      {s: n for s, n in shards.items() if n})
    watcher = watch.ShardWatcher(level_dir, fileio.join(level_dir, TEMP_DIR), planned)
    with progress.Progress(total=len(plan.annotations), unit="images",
                           description=level_dir.rstrip("/").rsplit("/", 1)[-1], mode=mode,
                           log=logging.info, log_every_seconds=30) as bar, \
            watch.watch_shards(watcher, bar, interval=0.5 if "://" not in level_dir else 10):
        with make_pipeline() as p:
            build_pipeline(p, pattern, level_dir, image_dirs, shards, args["max_side"],
                           args["jpeg_quality"], plan.stats, plan.skipped,
                           len(plan.annotations), args["log_every"] if mode == "log" else 0)
    elapsed = time.monotonic() - t0
    _delete([plan_dir, fileio.join(level_dir, TEMP_DIR)])
    remove_stale_shards(level_dir, splits, shards)
    with FileSystems.open(files.stats) as f:
        stats = json.loads(f.read())
    skipped_ids = set()
    with FileSystems.open(files.skipped) as f:
        for row in list(csv.reader(io.StringIO(f.read().decode())))[1:]:
            skipped_ids.add(row[0])
    if "val" in splits:
        _write_csv(plan.val_boxes, BOX_COLUMNS, files.boxes_csv("val"), skipped_ids)
        _write_csv(plan.val_labels, LABEL_COLUMNS, files.image_labels_csv("val"), skipped_ids)
    written = sum(s["images"] for s in stats["splits"].values())
    logging.info("%s: wrote %d images in %.1f s (%.1f images/s), skipped %d", level_dir, written,
                 elapsed, written / max(elapsed, 1e-9), len(skipped_ids))
    return stats


# -- runner --------------------------------------------------------------------------------


def _not_the_in_memory_warning(record: logging.LogRecord) -> bool:
    # FnApiRunner warns that N workers need --direct_running_mode=multi_processing; that
    # mode would replace our worker command with Beam's, and ours runs N processes anyway.
    return not str(record.msg).startswith("If direct_num_workers is not equal to 1")


def make_pipeline_factory(beam_args: list[str], beam_log_level: str = logs.DEFAULT_BEAM_LEVEL
                          ) -> Callable[[], beam.Pipeline]:
    """() -> a new beam.Pipeline with the flags this job leaves to Beam.

    With --runner or --direct_running_mode among them, Beam's runner as asked. Otherwise
    the runner that Beam's DirectRunner runs a batch job on (FnApiRunner), with one worker
    process per core (--direct_num_workers overrides), each started as
    `python beam_jobs/worker.py` so that its logging is set up before Beam's first line.
    Naming the runner also keeps the job on it: given network access, the DirectRunner of
    Beam 2.77 downloads and prefers its Prism runner, whose default (LOOPBACK) workers run
    inside this one process.
    """
    if any(a.startswith(("--runner", "--direct_running_mode")) for a in beam_args):
        options = PipelineOptions(beam_args)
        return lambda: beam.Pipeline(options=options)
    # Ours first: argparse keeps the last value, so a --direct_num_workers given wins.
    options = PipelineOptions([f"--direct_num_workers={os.cpu_count() or 1}", *beam_args])
    command = (f"{shlex.quote(sys.executable)} {shlex.quote(os.path.abspath(worker.PATH))} "
               f"--{logs.FLAG}={beam_log_level}")
    logging.getLogger(fn_runner.__name__).addFilter(_not_the_in_memory_warning)

    def make() -> beam.Pipeline:
        # The workers read the pipeline options from the provision info, as the
        # DirectRunner hands them over.
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        runner = fn_runner.FnApiRunner(
            default_environment=SubprocessSDKEnvironment.from_command_string(command),
            provision_info=fn_runner.ExtendedProvisionInfo(
                beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))
        return beam.Pipeline(runner=runner, options=options)

    return make


def test_plan(test_dir: str) -> tuple[list[ImageAnnotation], list[tuple[str, str]]]:
    """Every .jpg in the test folder; names that are not plain ImageIDs are skipped."""
    found = FileSystems.match([fileio.join(test_dir, "*.jpg")])[0].metadata_list
    annotations, skipped = [], []
    for m in sorted(found, key=lambda m: m.path):
        image_id = os.path.basename(m.path)[:-4]
        if IMAGE_ID_PATTERN.fullmatch(image_id):
            annotations.append(ImageAnnotation(image_id=image_id, split="test"))
        else:
            skipped.append((image_id, "bad_image_id"))
    return annotations, skipped


# -- checking the flags --------------------------------------------------------------------


class FlagError(ValueError):
    """A refused start that is not about one flag's value (a missing flag, a stray word)."""


HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")
BEAM_FIX = ("fix or drop it (a flag this job does not define goes to Apache Beam as a "
            "pipeline option)")
_TYPE_PROBLEMS = {"int": "not a whole number", "float": "not a number",
                  "bool": "not true or false"}


# flag -> (valid?, what is wrong otherwise, how to fix it)
_RANGES = {
    "val_fraction": (lambda v: math.isfinite(v) and 0 <= v <= 1, "must be between 0 and 1",
                     "e.g. 0.1 puts a tenth of the images on the val side"),
    "max_side": (lambda v: v >= 1, "must be at least 1",
                 "it is the longer image side in pixels, e.g. 1024"),
    "jpeg_quality": (lambda v: 1 <= v <= 100, "must be between 1 and 100", "e.g. 95"),
    "num_shards": (lambda v: v >= 0, "must be 0 or more",
                   "0 sizes the shards by --shard_size_mb"),
    "shard_size_mb": (lambda v: math.isfinite(v) and v > 0, "must be more than 0", "e.g. 150"),
    "repeat_threshold": (lambda v: math.isfinite(v) and 0 <= v <= 1, "must be between 0 and 1",
                         "0 turns repeat factors off; LVIS uses 0.001"),
    "max_dominant_fraction": (lambda v: v is None or (math.isfinite(v) and 0 <= v <= 1),
                              "must be between 0 and 1", "e.g. 0.95"),
    "dominant_top_k": (lambda v: v >= 1, "must be at least 1",
                       "e.g. 1, the level's largest class"),
    "log_every": (lambda v: v >= 0, "must be 0 or more", "0 turns the progress lines off"),
    "shuffle_seed": (lambda v: v >= 0, "must be 0 or more", "e.g. 0"),
}


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing of `argv`, its errors as UsageError. Returns the leftover (Beam) args.
    Every flag not in `argv` takes its default, also when run() is called again in the same
    process (absl would keep the previous call's value)."""
    FLAGS.unparse_flags()
    try:
        return FLAGS(argv, known_only=True)[1:]
    except flags.Error as e:
        found = re.match(r"flag --([\w-]+)=(.*?): (.*)", str(e), re.S)
        if found and found.group(1) in FLAGS:
            name, value, why = found.groups()
            problem = _TYPE_PROBLEMS.get(FLAGS[name].flag_type(), why)
            raise UsageError(f"--{name}", value, f"{problem}; see --helpshort") from None
        missing = re.match(r"Missing value for flag (--[\w-]+)", str(e))
        if missing:
            raise FlagError(f"{missing.group(1)}: no value; pass {missing.group(1)}=VALUE "
                            "(see --helpshort)") from None
        raise FlagError(f"{e}; see --helpshort") from None


def _check_ranges() -> None:
    for name, (valid, problem, fix) in _RANGES.items():
        if not valid(FLAGS[name].value):
            raise UsageError(f"--{name}", FLAGS[name].value, f"{problem}; {fix}")


def _level_choice() -> int | None:
    """The --level number, or None for all."""
    text = FLAGS.level.strip()
    if text == "all":
        return None
    try:
        number = int(text)
    except ValueError:
        raise UsageError("--level", FLAGS.level, "not a level number; pass 1, 2, ... or "
                                                 "all") from None
    if number < 1:
        raise UsageError("--level", FLAGS.level, "levels are numbered from 1; pass 1, 2, ... "
                                                 "or all")
    return number


def _value_of(flag: str, args: list[str]) -> str:
    """The value given to `flag` in `args` (--flag=value or --flag value), else ""."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag:
            return args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else ""
    return ""


def check_beam_args(beam_args: list[str]) -> None:
    """UsageError for a leftover flag that Beam does not know, or whose value it refuses.

    Beam itself would drop an unknown flag (a typo of ours, say) with a warning, and exit
    from inside argparse on a bad value, both only once the pipeline is built, after the
    plan has been written.
    """
    if runner := _value_of("--runner", beam_args):
        try:
            # Importing a runner's module defines its pipeline options.
            beam.runners.create_runner(runner)
        except (ValueError, ImportError) as e:
            raise UsageError("--runner", runner, f"{str(e).split('. ')[0]}; {BEAM_FIX}") from None
    parsers = []

    def refuse(message: str):
        found = re.match(r"argument (--[\w-]+)[^:]*: (.*)", message, re.S)
        if found:
            raise UsageError(found.group(1), _value_of(found.group(1), beam_args),
                             f"{found.group(2)}; {BEAM_FIX}")
        raise FlagError(f"{message}; {BEAM_FIX}")

    def capture(parser):  # Beam's own parser of every option class it knows
        parser.error = refuse
        parsers.append(parser)

    PipelineOptions(beam_args).get_all_options(add_extra_args_fn=capture)
    unknown = parsers[0].parse_known_args(beam_args)[1]
    for arg in unknown:
        if not arg.startswith("-"):
            raise FlagError(f"{arg!r}: an argument without a flag; flags take the form "
                            "--name=value (see --helpshort)")
        name, _, value = arg.partition("=")
        known = [f"--{f.name}" for f in FLAGS.get_flags_for_module(__name__)] + \
            list(parsers[0]._option_string_actions)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UsageError(name, value or _value_of(name, beam_args),
                         "neither a flag of this job nor a pipeline option of the Beam runner "
                         f"in use; {hint}see --helpshort")


# -- the run -------------------------------------------------------------------------------


@dataclasses.dataclass
class Job:
    """A checked run: every flag and input is valid, and nothing has been written yet.

    Attributes:
      split: "train" (the levels' records) or "test".
      args: run_level's settings (max_side, jpeg_quality, ...).
      make_pipeline: () -> beam.Pipeline.
      levels: the levels to make (split "train").
      spec_out: levels computed from the boxes, written to OUTPUT_DIR/levels.json first.
      spec_note: where the levels come from, for the log.
      boxes, labels, reports: the training tables as read (split "train").
    """

    layout: DataLayout
    output_dir: str
    split: str
    args: dict
    make_pipeline: Callable[[], beam.Pipeline]
    levels: tuple[Level, ...] = ()
    spec_out: LevelSpec | None = None
    spec_note: str = ""
    classes: ClassTable | None = None
    hierarchy: Hierarchy | None = None
    boxes: pd.DataFrame | None = None
    labels: pd.DataFrame | None = None
    reports: tuple[ReadReport, ...] = ()
    config: PlanConfig | None = None


def _choose(spec: LevelSpec, level: int | None, source: str) -> tuple[Level, ...]:
    if level is None:
        return spec.levels
    if level > len(spec.levels):
        have = f"levels 1 to {len(spec.levels)}" if len(spec.levels) > 1 else "only level 1"
        raise UsageError("--level", FLAGS.level, f"{source} {have}; pass one of them or all")
    return (spec.level(level),)


def prepare(argv: list[str]) -> Job:
    """Parses and checks every flag, reads and checks the inputs; writes nothing.

    Raises:
      UsageError: a flag's value cannot work (the message names the flag and value).
      InputFileError: an input file is bad (the message names the file and line).
      FlagError: anything else about the command line.
    """
    beam_args = _parse_flags(argv)
    logs.set_beam_level(FLAGS.beam_log_level)
    for name, what in (("data_dir", "the data folder (label/, train/, test/)"),
                       ("output_dir", "the folder the records go to")):
        if not FLAGS[name].value:
            raise FlagError(f"--{name}: missing; pass {what}, e.g. --{name}=DIR")
    _check_ranges()
    level = _level_choice() if FLAGS.split == "train" else None
    check_beam_args(beam_args)
    if FLAGS.dominant_classes and FLAGS.max_dominant_fraction is None:
        raise UsageError("--dominant_classes", ",".join(FLAGS.dominant_classes),
                         "has no effect without --max_dominant_fraction; pass both or neither")
    layout, out = DataLayout(FLAGS.data_dir), FLAGS.output_dir
    args = {k: FLAGS[k].value for k in ("max_side", "jpeg_quality", "num_shards",
                                        "shard_size_mb", "log_every", "shuffle_seed")}
    args["progress"] = progress.resolve(FLAGS.progress, sys.stderr)
    make_pipeline = make_pipeline_factory(beam_args, FLAGS.beam_log_level)
    if FLAGS.split == "test":
        check_data_dir(FLAGS.data_dir, folders=[layout.image_dir("test")])
        fileio.check_output_dir("--output_dir", out, ("test",))
        return Job(layout, out, "test", args, make_pipeline)

    check_data_dir(FLAGS.data_dir, files=[layout.classes, layout.hierarchy, layout.train_boxes,
                                          layout.train_labels],
                   folders=[layout.image_dir("train")])
    fileio.check_output_dir("--output_dir", out, (f"level{level}",) if level else ())
    if FLAGS.levels_spec:
        fileio.check_input_file("--levels_spec", FLAGS.levels_spec)
    classes = load_classes(layout.classes)
    hierarchy = load_hierarchy(layout.hierarchy)
    check_mids("--dominant_classes", ",".join(FLAGS.dominant_classes), classes, layout.classes)
    data_spec = fileio.join(FLAGS.data_dir, SPEC_FILE)
    spec_path = FLAGS.levels_spec or (data_spec if fileio.exists(data_spec) else None)
    spec = spec_out = None
    if spec_path:
        spec = LevelSpec.load(spec_path)
        spec.check_classes(classes, spec_path, layout.classes)
        levels = _choose(spec, level, f"the spec {spec_path} has")
        note = f"levels: {len(spec.levels)} from {spec_path}" + (
            "" if FLAGS.levels_spec else " (python -m oid.levels wrote it there; "
                                         "--levels_spec names another)")

    logging.info("reading %s", layout.train_boxes)
    try:
        boxes, box_report = read_boxes(layout.train_boxes, classes, lenient=not FLAGS.strict)
        labels, label_report = read_image_labels(layout.train_labels, classes,
                                                 lenient=not FLAGS.strict)
    except InputFileError as e:
        # The readers' fix names oid's --lenient; this job is lenient unless --strict.
        raise InputFileError(e.path, e.line, e.problem.replace("pass --lenient",
                                                               "drop --strict")) from None
    if spec is None:
        spec = spec_out = levels_from_boxes(boxes, classes)
        sizes = ",".join(map(str, DEFAULT_LEVEL_SIZES))
        levels = _choose(spec, level, f"computing them from the boxes (sizes {sizes}) gives")
        _check_spec_out(spec, out)
        note = (f"levels: none given and no {data_spec}, so computed from the training boxes "
                f"as python -m oid.levels does by default (sizes {sizes}): "
                f"{len(spec.levels)} level{'s' * (len(spec.levels) > 1)} of "
                f"{', '.join(str(len(lv.classes)) for lv in spec.levels)} classes, written to "
                f"{fileio.join(out, SPEC_FILE)}; pass --levels_spec=FILE to pin them")
    fileio.check_output_dir("--output_dir", out, tuple(lv.name for lv in levels))
    config = PlanConfig(val_fraction=FLAGS.val_fraction, split_salt=FLAGS.split_salt,
                        repeat_threshold=FLAGS.repeat_threshold,
                        max_dominant_fraction=FLAGS.max_dominant_fraction,
                        dominant_classes=tuple(FLAGS.dominant_classes),
                        dominant_top_k=FLAGS.dominant_top_k,
                        boxes_to_ancestors=FLAGS.boxes_to_ancestors)
    return Job(layout, out, "train", args, make_pipeline, levels, spec_out, note, classes,
               hierarchy, boxes, labels, (box_report, label_report), config)


def _check_spec_out(spec: LevelSpec, output_dir: str) -> None:
    """Refuses to replace an OUTPUT_DIR/levels.json that holds other levels: the level
    folders beside it were made with those."""
    path = fileio.join(output_dir, SPEC_FILE)
    if "://" in path or not os.path.exists(path):
        return
    if os.path.isdir(path):
        raise UsageError("--output_dir", output_dir, f"{path} is a folder where the computed "
                                                     "levels go; remove it or choose another "
                                                     "folder")
    if LevelSpec.load(path) != spec:
        raise InputFileError(path, None, "holds other levels than the ones computed from "
                                         "--data_dir now (the data changed?); pass "
                                         f"--levels_spec={path} to keep making records with "
                                         "it, or delete it and the level folders made with it")


def execute(job: Job) -> dict:
    """Writes the records of a prepared job. Returns stats.json's content per level."""
    image_dirs = {"train": job.layout.image_dir("train"), "test": job.layout.image_dir("test")}
    if job.split == "test":
        annotations, skipped = test_plan(image_dirs["test"])
        plan = Plan(annotations, skipped, None, None, {"test_images": len(annotations)})
        stats = run_level(RecordsLayout(job.output_dir).test.dir, plan, image_dirs, ("test",),
                          None, job.make_pipeline, job.args)
        return {"test": stats}

    if job.spec_out is not None:
        if not FileSystems.exists(job.output_dir):
            FileSystems.mkdirs(job.output_dir)
        job.spec_out.save(fileio.join(job.output_dir, SPEC_FILE))
    logging.info("%s", job.spec_note)
    for report in job.reports:
        if report.num_skipped:
            logging.warning("%s", report.summary())
            for line, reason, detail in report.skipped_lines[:20]:
                logging.warning("  %s:%d: %s: %s", report.path, line, reason, detail)
    results = {}
    for level in job.levels:
        plan = plan_level(job.boxes, job.labels, level, job.hierarchy, job.config, job.reports)
        if "boxes_to_ancestors" in plan.stats:
            c = plan.stats["boxes_to_ancestors"]
            logging.info("%s: --boxes_to_ancestors: %d boxes copied to a parent class of the "
                         "level (%s), %d not (a box of the level already there); %d images are "
                         "in the level only through copies", level.name, sum(c["added"].values()),
                         ", ".join(f"{job.classes.name(m)} {n}"
                                   for m, n in c["added_per_class"].items()) or "none",
                         c["not_copied_place_taken"],
                         sum(c["images_only_through_copies"].values()))
        labels_json = [{"index": i, "mid": m, "name": job.classes.name(m)}
                       for i, m in enumerate(level.classes)]
        results[level.name] = run_level(RecordsLayout(job.output_dir).level(level.index).dir,
                                        plan, image_dirs, SPLITS, labels_json, job.make_pipeline,
                                        job.args)
    return results


def run(argv: list[str]) -> dict:
    """Checks the flags (unknown ones go to Beam) and makes the records. Returns stats per
    level. Raises UsageError, InputFileError or FlagError on a refused start (see prepare)."""
    return execute(prepare(argv))


def _help() -> str:
    return ("\n\n".join(__doc__.split("\n\n")[:2]) + "\n\n"
            f"{FLAGS.module_help(__name__)}\n\n"
            "Any other --flag is an Apache Beam pipeline option (--runner, "
            "--direct_num_workers, ...).")


def main(argv=None) -> int:
    argv = list(sys.argv if argv is None else argv)
    logs.setup(logs.level_from_argv(argv))
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(_help())
        return 0
    try:
        job = prepare(argv)
    except (UsageError, InputFileError, FlagError) as e:
        return errors.report(e)
    results = execute(job)
    for name, stats in results.items():
        splits = ", ".join(f"{s} {v['images']} images / {v['boxes']} boxes"
                           for s, v in sorted(stats["splits"].items()))
        print(f"{name}: {splits}; skipped {sum(stats['skipped'].values())} "
              f"{dict(stats['skipped']) or ''}")
    return 0
