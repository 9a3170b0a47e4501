"""One level's evaluation: batched inference on every replica streamed into the Open Images
Challenge evaluator. Used by eval.py and, every N epochs, by training (make_epoch_callback).

The evaluator holds the FULL class table and hierarchy, since the level's ground truth is
expanded along the hierarchy to classes outside the level (a Square box is also a Polygon
box). The level's mAP is the mean AP over the level's classes that have ground truth;
detections are never expanded (the metric's rule).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from engine.inference import ImageResult, Inference, detector_from_model
from model.config import PostprocessConfig
from oid.annotations import read_boxes, read_image_labels
from oid.classes import ClassTable, load_classes
from oid.hierarchy import Hierarchy, load_hierarchy
from oid.layout import DataLayout
from oid.metric import MetricResult, OIDChallengeEvaluator
from tfrecords.inference_input import RecordSource, Source
from tfrecords.input_pipeline import list_files
from tfrecords.layout import LevelRecords

log = logging.getLogger(__name__)

_FLUSH_DETECTIONS = 50_000  # detections buffered before they go to the evaluator


@dataclasses.dataclass(frozen=True)
class LevelResult:
    """Attributes:
      level_map: mean AP over `mids` with ground truth (None if none has any).
      mids: the level's classes, in label order.
      metric: the evaluator's result over the full class table.
      images, seconds, unreadable: from the inference run.
    """

    level_map: float | None
    mids: tuple[str, ...]
    metric: MetricResult
    images: int
    seconds: float
    unreadable: tuple[str, ...] = ()

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def per_class(self) -> list[tuple[str, float | None, int]]:
        """(MID, AP or None, num_gt) of the level's classes, best AP first, classes without
        ground truth last."""
        rows = [(m, self.metric.per_class[m].ap, self.metric.per_class[m].num_gt)
                for m in self.mids]
        return sorted(rows, key=lambda r: (r[1] is None, -(r[1] or 0.0), r[0]))

    def to_json(self, classes: ClassTable | None = None, **extra) -> dict:
        """{"mAP", "images", "images_per_second", "seconds", "unreadable",
        "per_class": {MID: {"name", "ap", "num_gt"}}} plus `extra`, the level's classes only."""
        return {
            **extra,
            "mAP": self.level_map,
            "classes_with_gt": sum(ap is not None for _, ap, _ in self.per_class()),
            "images": self.images,
            "images_with_gt": self.metric.num_images,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 3),
            "unreadable": list(self.unreadable),
            "per_class": {m: {"name": classes.name(m) if classes is not None else "",
                              "ap": ap, "num_gt": n} for m, ap, n in self.per_class()},
        }


class LevelEvaluation:
    """Ground truth of one level's split, read once; evaluate() scores any detector on it.

    Args:
      classes: the full class table (every class the hierarchy expands to).
      hierarchy: the class hierarchy.
      boxes_csv, labels_csv: the level's ground truth as the records job writes it
        (RECORDS/levelN/val-bbox.csv, val-image-labels.csv), official columns, unexpanded.
      level_mids: the level's classes in label order (labels.json).
    """

    def __init__(self, classes: ClassTable, hierarchy: Hierarchy, boxes_csv: str,
                 labels_csv: str, level_mids: Sequence[str]):
        self.classes = classes
        self.level_mids = tuple(level_mids)
        unknown = [m for m in self.level_mids if m not in classes]
        if unknown:
            raise ValueError(f"the level's class {unknown[0]} is not in the class table")
        self.evaluator = OIDChallengeEvaluator(classes, hierarchy)
        # float64: the metric's IoUs from the CSV's decimals, as `python -m oid.metric`.
        self._boxes, _ = read_boxes(boxes_csv, classes, coord_dtype=np.float64,
                                    check_duplicates=False)
        self._labels, _ = read_image_labels(labels_csv, classes, check_duplicates=False)

    def evaluate(self, inference: Inference, source: Source, global_batch_size: int,
                 detector_index: int = 0, total: int | None = None,
                 on_image: Callable[[ImageResult, np.ndarray], None] | None = None,
                 log_every_seconds: float = 10.0) -> LevelResult:
        """Runs `inference` over `source` and scores detector `detector_index`'s detections.

        on_image(row, mids) is called for every image (e.g. to write a submission, or to
        advance a progress bar), mids being the detections' MIDs. log_every_seconds: the
        inference loop's progress lines (math.inf: only its last line).
        """
        self.evaluator.reset()  # a previous evaluate()'s detections go; the ground truth is re-added
        self.evaluator.add_ground_truth_frames(self._boxes, self._labels)
        detector = inference.detectors[detector_index]
        lut = np.array([self.classes.index(m) for m in detector.mids], np.int32)
        buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        buffered = 0
        for row in inference.run(source, global_batch_size, total=total, what="eval",
                                 log_every_seconds=log_every_seconds):
            dets = row.detections[detector_index]
            if on_image is not None:
                on_image(row, detector.mids[dets.classes])
            if len(dets):
                buffer.append((np.full(len(dets), row.image_id, dtype=object), dets.boxes,
                               dets.scores, lut[dets.classes]))
                buffered += len(dets)
            if buffered >= _FLUSH_DETECTIONS:
                self._flush(buffer)
                buffer, buffered = [], 0
        self._flush(buffer)
        metric = self.evaluator.evaluate()
        aps = [metric.per_class[m].ap for m in self.level_mids]
        aps = [a for a in aps if a is not None]
        stats = inference.stats
        return LevelResult(float(np.mean(aps)) if aps else None, self.level_mids, metric,
                           stats.images, stats.seconds, tuple(stats.unreadable))

    def _flush(self, buffer) -> None:
        if buffer:
            ids, boxes, scores, labels = (np.concatenate(c) for c in zip(*buffer, strict=True))
            self.evaluator.add_detections(ids, boxes, scores, labels)


def label_files(data_dir: str | None, classes: str | None = None,
                hierarchy: str | None = None) -> tuple[str, str]:
    """(class table, hierarchy) paths: the explicit ones, else DATA_DIR/label/'s (oid.layout).

    Raises:
      ValueError when neither is given.
    """
    if data_dir:
        layout = DataLayout(data_dir)
        classes, hierarchy = classes or layout.classes, hierarchy or layout.hierarchy
    if not classes or not hierarchy:
        raise ValueError("the class table and hierarchy are needed: pass --data_dir DATA_DIR "
                         "(its label/ folder) or --classes and --hierarchy")
    return classes, hierarchy


def write_results(result: LevelResult, output_dir: str, classes: ClassTable, **extra) -> None:
    """OUTPUT_DIR/metrics.json (see LevelResult.to_json) and OUTPUT_DIR/per_class.csv
    (mid,name,ap,num_gt, best AP first)."""
    tf.io.gfile.makedirs(output_dir)
    with tf.io.gfile.GFile(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(result.to_json(classes, **extra), f, indent=1)
        f.write("\n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["mid", "name", "ap", "num_gt"])
    for mid, ap, n in result.per_class():
        writer.writerow([mid, classes.name(mid), "" if ap is None else f"{ap:.6f}", n])
    with tf.io.gfile.GFile(os.path.join(output_dir, "per_class.csv"), "w") as f:
        f.write(buf.getvalue())


def format_result(result: LevelResult, classes: ClassTable, top: int = 20) -> str:
    """A short table for the log: mAP, then per class AP, num_gt, MID and name."""
    score = "-" if result.level_map is None else f"{result.level_map:.4f}"
    lines = [f"mAP {score} over {sum(ap is not None for _, ap, _ in result.per_class())} "
             f"classes with ground truth; {result.images} images, "
             f"{result.images_per_second:.1f} images/s",
             f"{'AP':>8} {'num_gt':>7}  {'MID':<12} name"]
    rows = result.per_class()
    for mid, ap, n in rows[:top]:
        lines.append(f"{'-' if ap is None else f'{ap:.4f}':>8} {n:>7}  {mid:<12} "
                     f"{classes.name(mid)}")
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more in per_class.csv")
    return "\n".join(lines)


def make_epoch_callback(evaluation: LevelEvaluation, inference: Inference, source: Source,
                        global_batch_size: int, every_epochs: int, step: tf.Variable,
                        output_dir: str | None = None, is_chief: bool = True,
                        ) -> Callable[[int, dict], LevelResult | None]:
    """An on_epoch_end hook for engine.trainer.Trainer.fit: every `every_epochs` epochs it
    evaluates the live model (the detector of `inference` shares the trainer's weights),
    logs the mAP, writes it to TensorBoard as eval/mAP at the training `step` (the trainer's
    writer is the default one during fit) and, on the chief,
    OUTPUT_DIR/epoch-{N}/metrics.json and per_class.csv. It returns the LevelResult (None in
    an epoch without evaluation)."""

    def on_epoch_end(epoch: int, losses: dict) -> LevelResult | None:
        del losses
        if every_epochs <= 0 or epoch % every_epochs:
            return None
        result = evaluation.evaluate(inference, source, global_batch_size)
        log.info("epoch %d eval: %s", epoch, format_result(result, evaluation.classes, top=5))
        at = int(step.numpy())
        if result.level_map is not None:
            tf.summary.scalar("eval/mAP", result.level_map, step=at)
        tf.summary.scalar("eval/images_per_second", result.images_per_second, step=at)
        if output_dir and is_chief:
            write_results(result, os.path.join(output_dir, f"epoch-{epoch}"), evaluation.classes,
                          epoch=epoch)
        return result

    return on_epoch_end


def training_callback(trainer, level_dir: str, data_dir: str, labels: Sequence[dict], level: int,
                      image_min_side: int, image_max_side: int, every_epochs: int,
                      global_batch_size: int,
                      post: PostprocessConfig = PostprocessConfig(),
                      ) -> Callable[[int, dict], LevelResult | None]:
    """make_epoch_callback for an engine.trainer.Trainer: its live model on LEVEL_DIR's val
    records and ground truth, the class table and hierarchy of DATA_DIR (oid.layout), results
    under MODEL_DIR/eval/epoch-{N}/. Reads the ground truth now, so a missing file fails
    before training starts. `post` defaults to eval.py's settings."""
    records = LevelRecords(level_dir)
    classes_path, hierarchy_path = label_files(data_dir)
    classes = load_classes(classes_path)
    evaluation = LevelEvaluation(classes, load_hierarchy(hierarchy_path),
                                 records.boxes_csv("val"), records.image_labels_csv("val"),
                                 [e["mid"] for e in sorted(labels, key=lambda e: e["index"])])
    source = RecordSource(records.shards("val"))
    list_files(source.file_pattern)  # fails now rather than after the first epoch
    detector = detector_from_model(trainer.model, trainer.model_config, image_min_side,
                                   image_max_side, labels, level, name="the model in training")
    inference = Inference(trainer.strategy, [detector], post)
    return make_epoch_callback(evaluation, inference, source, global_batch_size, every_epochs,
                               trainer.step, os.path.join(trainer.model_dir, "eval"),
                               trainer.is_chief)
