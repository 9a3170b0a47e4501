"""Open Images -> sharded TFRecords for one level (or all), on any Beam runner.

    python beam_jobs/make_records.py --data_dir DATA --output_dir RECORDS --level 1
    python beam_jobs/make_records.py ... --level all --runner=DataflowRunner --project=... \\
        --temp_location=gs://... --setup_file=./setup.py

writes, for level N,

    RECORDS/levelN/train-00000-of-000NN.tfrecord ...   shuffled, resized, ~150 MB shards
    RECORDS/levelN/val-00000-of-000NN.tfrecord ...
    RECORDS/levelN/labels.json                          [{index, mid, name}] of the level
    RECORDS/levelN/stats.json                           images, boxes, boxes per class per
                                                        split, skipped inputs by reason
    RECORDS/levelN/val-bbox.csv, val-image-labels.csv   val ground truth, official format
    RECORDS/levelN/skipped.csv                          ImageID,reason of every input left out

(`--split test`: RECORDS/test/test-*.tfrecord of the unlabelled test images.)

The driver reads and validates the CSVs and plans the level (beam_jobs/plan.py);
the plan goes to JSON-lines files that the pipeline reads, so the same job runs
on the DirectRunner (all local cores by default), Dataflow, Flink or Spark, and
every path may be gs://. Any flag this job does not define is a Beam pipeline
option.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Run under the package name, so that flags are defined once and DoFns
    # pickle by reference (beam_jobs.make_records.WriteShard), not as __main__.
    import os as _os

    sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    from beam_jobs import make_records

    sys.exit(make_records.main())

import csv
import io
import json
import logging
import math
import os
import time
import uuid
from collections import Counter

import apache_beam as beam
import numpy as np
from absl import flags
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import images as image_ops
from beam_jobs.plan import Plan, PlanConfig, plan_level
from oid import fileio
from oid.annotations import (
    BOX_COLUMNS,
    IMAGE_ID_PATTERN,
    LABEL_COLUMNS,
    read_boxes,
    read_image_labels,
)
from oid.classes import load_classes
from oid.hierarchy import load_hierarchy
from oid.layout import DataLayout
from oid.levels import LevelSpec
from tfrecords import proto
from tfrecords.example import ImageAnnotation, build_example
from tfrecords.layout import LevelRecords, RecordsLayout, shard_name

SPLITS = ("train", "val")
SKIPPED_TAG = "skipped"
TEMP_DIR = "beam-temp-shards"  # shards being written; renamed into level_dir when complete
STATS_TAG = "stats"
DEFAULT_IMAGE_BYTES = 150_000  # per-image guess when no sample could be read

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Official layout: label/ CSVs and JSON, train/ and test/.")
flags.DEFINE_string("output_dir", None, "Where level{N}/ (or test/) directories are written.")
flags.DEFINE_string("levels_spec", None, "Level spec from oid.levels (default DATA_DIR/levels.json).")
flags.DEFINE_string("level", "1", "Level number, or 'all'.")
flags.DEFINE_enum("split", "train", ["train", "test"],
                  "train: labelled images, split into train/val records; test: unlabelled images.")
flags.DEFINE_float("val_fraction", 0.1, "Share of each level's images on the val side.")
flags.DEFINE_string("split_salt", "", "Changes the (ImageID-hash) split for every level alike.")
flags.DEFINE_integer("max_side", 1024, "Longer image side at most this (aspect kept, no upscaling).")
flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of re-encoded images.")
flags.DEFINE_integer("num_shards", 0, "Shards per split; 0 sizes them by --shard_size_mb.")
flags.DEFINE_float("shard_size_mb", 150.0, "Target shard size when --num_shards is 0.")
flags.DEFINE_float("repeat_threshold", 0.001, "LVIS repeat-factor threshold t stored per image.")
flags.DEFINE_float("max_dominant_fraction", None,
                   "Leave out training images where more than this share of the level's boxes "
                   "belong to the dominant classes (e.g. 0.95).")
flags.DEFINE_list("dominant_classes", [], "MIDs of the dominant classes (default: top-K).")
flags.DEFINE_integer("dominant_top_k", 1, "Dominant classes = the level's K largest by boxes.")
flags.DEFINE_bool("strict", False, "Fail on the first bad annotation row instead of skipping it.")
flags.DEFINE_integer("log_every", 500, "Progress line every N images per worker.")
flags.DEFINE_integer("shuffle_seed", 0, "Seed of the record order within and across shards.")


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
        _quiet_beam()
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
        summary = {"split": ann.split, "boxes": len(ann.mids), "classes": dict(Counter(ann.mids)),
                   "notes": list(prepared.notes), "bytes": len(prepared.jpeg)}
        return example.SerializeToString(), summary


class _Skip(Exception):  # noqa: N818 (control flow inside WriteShard, never escapes it)
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class MergeStats(beam.CombineFn):
    """Per-image summaries -> counts per split (images, boxes, per class, conversions, bytes)."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, s):
        split = acc.setdefault(s["split"], {"images": 0, "boxes": 0, "bytes": 0,
                                            "boxes_per_class": {}, "converted": {}})
        split["images"] += 1
        split["boxes"] += s["boxes"]
        split["bytes"] += s["bytes"]
        for m, n in s["classes"].items():
            split["boxes_per_class"][m] = split["boxes_per_class"].get(m, 0) + n
        for note in s["notes"]:
            split["converted"][note] = split["converted"].get(note, 0) + 1
        return acc

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            for split, s in acc.items():
                t = out.setdefault(split, {"images": 0, "boxes": 0, "bytes": 0,
                                           "boxes_per_class": {}, "converted": {}})
                for k in ("images", "boxes", "bytes"):
                    t[k] += s[k]
                for k in ("boxes_per_class", "converted"):
                    for m, n in s[k].items():
                        t[k][m] = t[k].get(m, 0) + n
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
      args: max_side, jpeg_quality, num_shards, shard_size_mb, log_every.

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
    with make_pipeline() as p:
        build_pipeline(p, pattern, level_dir, image_dirs, shards, args["max_side"],
                       args["jpeg_quality"], plan.stats, plan.skipped, len(plan.annotations),
                       args["log_every"])
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


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options from the leftover flags; DirectRunner on every core by default."""
    if not any(a.startswith("--runner") for a in beam_args):
        beam_args = beam_args + ["--runner=DirectRunner",
                                 "--direct_running_mode=multi_processing",
                                 f"--direct_num_workers={os.cpu_count() or 1}"]
    return PipelineOptions(beam_args)


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


def run(argv: list[str]) -> dict:
    """Parses flags (unknown ones go to Beam) and makes the records. Returns stats per level."""
    beam_args = FLAGS(argv, known_only=True)[1:]
    for name in ("data_dir", "output_dir"):
        if not FLAGS[name].value:
            raise flags.IllegalFlagValueError(f"--{name} is required")
    layout = DataLayout(FLAGS.data_dir)
    options = pipeline_options(beam_args)

    def make_pipeline():
        return beam.Pipeline(options=options)

    args = {k: FLAGS[k].value for k in ("max_side", "jpeg_quality", "num_shards",
                                        "shard_size_mb", "log_every", "shuffle_seed")}
    image_dirs = {"train": layout.image_dir("train"), "test": layout.image_dir("test")}

    if FLAGS.split == "test":
        annotations, skipped = test_plan(image_dirs["test"])
        plan = Plan(annotations, skipped, None, None, {"test_images": len(annotations)})
        stats = run_level(RecordsLayout(FLAGS.output_dir).test.dir, plan, image_dirs, ("test",),
                          None, make_pipeline, args)
        return {"test": stats}

    classes = load_classes(layout.classes)
    hierarchy = load_hierarchy(layout.hierarchy)
    spec = LevelSpec.load(FLAGS.levels_spec or fileio.join(FLAGS.data_dir, "levels.json"))
    lenient = not FLAGS.strict
    logging.info("reading %s", layout.train_boxes)
    boxes, box_report = read_boxes(layout.train_boxes, classes, lenient=lenient)
    labels, label_report = read_image_labels(layout.train_labels, classes, lenient=lenient)
    for report in (box_report, label_report):
        if report.num_skipped:
            logging.warning("%s", report.summary())
            for line, reason, detail in report.skipped_lines[:20]:
                logging.warning("  %s:%d: %s: %s", report.path, line, reason, detail)
    config = PlanConfig(val_fraction=FLAGS.val_fraction, split_salt=FLAGS.split_salt,
                        repeat_threshold=FLAGS.repeat_threshold,
                        max_dominant_fraction=FLAGS.max_dominant_fraction,
                        dominant_classes=tuple(FLAGS.dominant_classes),
                        dominant_top_k=FLAGS.dominant_top_k)
    levels = spec.levels if FLAGS.level == "all" else (spec.level(int(FLAGS.level)),)
    results = {}
    for level in levels:
        plan = plan_level(boxes, labels, level, hierarchy, config, (box_report, label_report))
        labels_json = [{"index": i, "mid": m, "name": classes.name(m)}
                       for i, m in enumerate(level.classes)]
        results[level.name] = run_level(RecordsLayout(FLAGS.output_dir).level(level.index).dir, plan,
                                        image_dirs, SPLITS, labels_json, make_pipeline, args)
    return results


def _quiet_beam() -> None:
    """Beam's runner and SDK harness log every step at INFO; keep their warnings only.

    DirectRunner workers print our progress lines to the shared stderr
    themselves, so the runner's protobuf-text copies of them are not needed.
    """
    logging.getLogger("apache_beam").setLevel(logging.WARNING)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        force=True)  # absl may have configured the root logger already
    _quiet_beam()
    results = run(list(argv or sys.argv))
    for name, stats in results.items():
        splits = ", ".join(f"{s} {v['images']} images / {v['boxes']} boxes"
                           for s, v in sorted(stats["splits"].items()))
        print(f"{name}: {splits}; skipped {sum(stats['skipped'].values())} "
              f"{dict(stats['skipped']) or ''}")
    return 0

