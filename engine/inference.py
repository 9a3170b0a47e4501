"""Batched inference on every replica: the one loop behind eval.py, predict.py and the
evaluation callback of training.

    source (records or an image folder) -> tfrecords.inference_input (canvases, sharded per
    input pipeline) -> strategy.run(every detector on the replica's batch, optionally on
    its mirror too) -> strategy.gather -> per-image rows on the host

A `Detector` is a model plus what it needs to be run: its canvas size, its level's labels and
level. It comes from a training run's directory (config.json + checkpoint), from a SavedModel
written by engine/export.py, or from a live Keras model (training).

Rows come out once per image, padded rows dropped, with boxes normalized to the original
image (ymin, xmin, ymax, xmax), scores and level-local class ids per detector. Results do
not depend on the batch size or the number of replicas beyond float rounding: every
operation is per image (GroupNorm, frozen BatchNorm, per-image NMS), but convolution
kernels split their work by batch size, so scores can differ in the last bits of float32
(about 1e-7), which only matters for exact ties.

Several hosts (MultiWorkerMirroredStrategy): each input pipeline reads its share of the
files (records) or of the image paths (tfrecords/inference_input.py), and
strategy.gather collects every replica's rows, so that every worker sees every row (the
chief writes). Shares need not be equal: once a worker's input has ended, TensorFlow hands
its replicas empty batches while the others finish, and the replica function pads them
to full batches of rows that are not real. Same code path as one host (a test runs two
workers on localhost).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from boxes.ops import batched_nms, flip_left_right
from engine.run_dir import (
    CONFIG,
    EXPORT_METADATA,
    check_labels,
    is_saved_model,
    load_model,
    model_config_from_json,
    read_json,
)
from model.config import ModelConfig, PostprocessConfig
from model.decoder import DetectionDecoder
from tfrecords.inference_input import (
    Source,
    build_inference_dataset,
    decode_image_ids,
    pad_batch,
    per_replica_batch_size,
)
from tfrecords.input_pipeline import InputConfig
from tfrecords.layout import sorted_labels

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Detector:
    """A model ready for inference.

    Attributes:
      name: for messages (the directory it came from).
      forward: uint8 canvas [B, S, S, 3] -> {"cls_logits" [B, A, K], "box_deltas" [B, A, 4]}.
      model_config: its ModelConfig (S = model_config.image_size).
      image_min_side, image_max_side: the canvas the model was trained on.
      labels: [{index, mid, name}] of its level, by index.
      level: the level it was trained for (None if unknown).
    """

    name: str
    forward: Callable[[tf.Tensor], dict]
    model_config: ModelConfig
    image_min_side: int
    image_max_side: int
    labels: tuple[dict, ...]
    level: int | None = None

    @property
    def mids(self) -> np.ndarray:
        """[K] object array: level-local class id -> MID."""
        return np.array([e["mid"] for e in self.labels], dtype=object)

    @property
    def canvas(self) -> InputConfig:
        return InputConfig("", is_training=False, image_min_side=self.image_min_side,
                           image_max_side=self.image_max_side)

    def check_labels(self, labels: Sequence[dict], labels_source: str,
                     level: int | None = None) -> None:
        """Refuses to run on another level's classes (engine.run_dir.check_labels)."""
        check_labels(self.name, self.labels, self.level, labels, labels_source, level)


def detector_from_model(model: keras.Model, model_config: ModelConfig, image_min_side: int,
                        image_max_side: int, labels: Sequence[dict], level: int | None = None,
                        name: str = "model") -> Detector:
    """A Detector on a live training model (build it in the strategy's scope)."""
    return Detector(name, lambda image: model(image, training=False), model_config,
                    image_min_side, image_max_side, sorted_labels(labels), level)


def load_detector(path: str, strategy: tf.distribute.Strategy | None = None,
                  checkpoint: str | None = None) -> Detector:
    """A Detector from a training run's directory (config.json + its latest checkpoint, or
    `checkpoint`) or from a SavedModel directory written by engine/export.py.

    Variables are created in `strategy`'s scope, so they are mirrored on every replica.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if is_saved_model(path):
        meta_path = os.path.join(path, EXPORT_METADATA)
        if not tf.io.gfile.exists(meta_path):
            raise FileNotFoundError(
                f"{meta_path} not found: {path} was exported before SavedModels described "
                "themselves; pass the training run's directory instead, or export it again")
        meta = read_json(meta_path)
        with strategy.scope():
            loaded = tf.saved_model.load(path)
        if not hasattr(loaded, "raw_outputs"):
            raise ValueError(f"{path} has no raw_outputs endpoint; export it again with "
                             "engine/export.py")
        # Keep a reference to the loaded object: its functions need its variables alive.
        forward = _SavedModelForward(loaded)
    else:
        config_path = os.path.join(path, CONFIG)
        if not tf.io.gfile.exists(config_path):
            raise FileNotFoundError(f"{path} is neither a training run's directory (no "
                                    "config.json) nor a SavedModel (no saved_model.pb)")
        meta = read_json(config_path)
        with strategy.scope():
            try:
                model, _ = load_model(path, checkpoint)
            except AssertionError as e:  # tf.train.Checkpoint's way of saying "mismatch"
                raise ValueError(f"the checkpoint {checkpoint or 'in ' + path} does not fit the "
                                 f"model its config.json describes (was the code changed "
                                 f"since training?): {str(e)[:300]}") from None
        forward = _KerasForward(model)
    model_config = model_config_from_json(meta["model"])
    return Detector(path, forward, model_config, int(meta["input"]["image_min_side"]),
                    int(meta["input"]["image_max_side"]), sorted_labels(meta["labels"]),
                    meta.get("level"))


class _KerasForward:
    def __init__(self, model: keras.Model):
        self.model = model

    def __call__(self, image):
        return self.model(image, training=False)


class _SavedModelForward:
    def __init__(self, loaded):
        self.loaded = loaded

    def __call__(self, image):
        return self.loaded.raw_outputs(image)


# -- horizontal-flip test-time augmentation ---------------------------------------------------


def flip_canvas(canvas: tf.Tensor, image_info: tf.Tensor) -> tf.Tensor:
    """Mirrors the image inside each canvas, keeping it at the top left.

    canvas: [B, S, S, 3]; image_info: [B, 4, 2] (its [1] row is the scaled (height, width)).
    The result is the canvas of the mirrored image (up to the rounding of the resize).
    """
    size = tf.shape(canvas)[2]
    width = tf.cast(tf.minimum(image_info[:, 1, 1], tf.cast(size, tf.float32)), tf.int32)
    source = width[:, None] - 1 - tf.range(size)[None, :]  # [B, S] column read for each x
    mirrored = tf.gather(canvas, tf.maximum(source, 0), axis=2, batch_dims=1)
    return tf.where((source >= 0)[:, None, :, None], mirrored, tf.zeros_like(canvas))


def merge_detections(a: dict, b: dict, post: PostprocessConfig) -> dict:
    """Per-class NMS over the union of two detection sets of the same images.

    a, b: {"boxes" [B, M, 4] normalized, "scores" [B, M], "classes" [B, M] (-1 padding),
    "num_detections" [B]} -> the same with M = post.max_detections.
    """
    boxes = tf.concat([a["boxes"], b["boxes"]], axis=1)
    classes = tf.concat([a["classes"], b["classes"]], axis=1)
    # Padding rows (class -1) get a score below any threshold, so NMS never keeps them.
    scores = tf.where(classes >= 0, tf.concat([a["scores"], b["scores"]], axis=1), -1.0)
    return batched_nms(boxes, scores, classes, post.max_detections, post.nms_iou,
                       max(post.score_threshold, 0.0), extent=1.0)


# -- the loop ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Detections:
    """One image, one detector: boxes [N, 4] float32 (ymin, xmin, ymax, xmax) normalized to
    the original image, scores [N] float32 (descending), classes [N] int32 level-local."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))

    def __len__(self) -> int:
        return len(self.scores)


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """One image: its id, whether it could be read, and one Detections per detector (empty
    for an unreadable image)."""

    image_id: str
    readable: bool
    detections: tuple[Detections, ...]


@dataclasses.dataclass
class InferenceStats:
    """Counters of the last run: images (rows yielded), unreadable ImageIDs, wall seconds."""

    images: int = 0
    unreadable: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class Inference:
    """Runs detectors over sources on every replica of a strategy.

    Args:
      strategy: any tf.distribute strategy (the detectors' variables must be its own).
      detectors: run on every image, each on its own canvas size.
      post: score threshold, NMS IoU and detections per image, for every detector.
      flip_tta: also run each detector on the mirrored canvas, map its boxes back
        (x -> 1 - x) and merge both sets by per-class NMS (post.nms_iou).
    """

    def __init__(self, strategy: tf.distribute.Strategy, detectors: Sequence[Detector],
                 post: PostprocessConfig = PostprocessConfig(), flip_tta: bool = False):
        if not detectors:
            raise ValueError("no detectors")
        self.strategy = strategy
        self.detectors = tuple(detectors)
        self.post = post
        self.flip_tta = flip_tta
        self.canvases: list[InputConfig] = []
        self._canvas_of: list[int] = []
        for d in self.detectors:
            if d.canvas.output_size != d.model_config.image_size:
                raise ValueError(f"{d.name}: image_max_side {d.image_max_side} gives a "
                                 f"{d.canvas.output_size} canvas, the model takes "
                                 f"{d.model_config.image_size}")
            key = (d.image_min_side, d.image_max_side)
            known = [(c.image_min_side, c.image_max_side) for c in self.canvases]
            if key not in known:
                self.canvases.append(d.canvas)
                known.append(key)
            self._canvas_of.append(known.index(key))
        self._decoders = [DetectionDecoder(d.model_config.image_size,
                                           dataclasses.asdict(d.model_config.anchors),
                                           dataclasses.asdict(post), name=f"decoder_{i}")
                          for i, d in enumerate(self.detectors)]
        self._steps: dict[int, Callable] = {}
        self.stats = InferenceStats()

    def _detect(self, k: int, canvas: tf.Tensor, info: tf.Tensor) -> dict:
        raw = self.detectors[k].forward(canvas)
        return self._decoders[k](raw["cls_logits"], raw["box_deltas"], info)

    def replica_fn(self, batch: dict, size: int) -> dict:
        """One replica's batch -> its detections (every tensor numeric, batch-major).

        The batch is padded to `size` rows: under MultiWorkerMirroredStrategy a worker whose
        input has ended while another's has not gets an empty batch for the remaining steps,
        and the model then runs on padding rows (real = 0) like the last batch's.
        """
        batch = pad_batch(batch, size)
        out = {"image_id": tf.cast(batch["image_id"], tf.int32),
               "real": tf.cast(batch["real"], tf.int32),
               "readable": tf.cast(batch["readable"], tf.int32)}
        for k in range(len(self.detectors)):
            c = self._canvas_of[k]
            canvas, info = batch[f"canvas/{c}"], batch[f"image_info/{c}"]
            dets = self._detect(k, canvas, info)
            if self.flip_tta:
                mirrored = self._detect(k, flip_canvas(canvas, info), info)
                mirrored["boxes"] = flip_left_right(mirrored["boxes"])
                dets = merge_detections(dets, mirrored, self.post)
            for name in ("boxes", "scores", "classes", "num_detections"):
                out[f"{k}/{name}"] = dets[name]
        return out

    def _make_step(self, size: int):
        strategy = self.strategy

        # No AutoGraph, as in the train step: nothing in it branches on a tensor in Python.
        @tf.function(autograph=False)
        def step(batch):
            per_replica = strategy.run(self.replica_fn, args=(batch, size))
            return tf.nest.map_structure(lambda v: strategy.gather(v, axis=0), per_replica)

        return step

    def dataset(self, source: Source, global_batch_size: int):
        """The distributed dataset of `source` (one input pipeline per worker)."""
        return self.strategy.distribute_datasets_from_function(
            lambda ctx: build_inference_dataset(source, self.canvases, global_batch_size, ctx))

    def run(self, source: Source, global_batch_size: int, total: int | None = None,
            log_every_seconds: float = 10.0, what: str = "inference") -> Iterator[ImageResult]:
        """Yields one ImageResult per image of `source`, in the order they come in.

        Args:
          global_batch_size: images per step over all replicas.
          total: images expected (for the progress log's ETA), if known.
          log_every_seconds: progress log interval (images, images per second, ETA).
        `self.stats` is reset and updated as rows are yielded.
        """
        size = per_replica_batch_size(global_batch_size, self.strategy.num_replicas_in_sync)
        if size not in self._steps:  # one traced step per per-replica batch size
            self._steps[size] = self._make_step(size)
        step = self._steps[size]
        self.stats = stats = InferenceStats()
        start = last_log = time.monotonic()
        for batch in self.dataset(source, global_batch_size):
            out = {k: v.numpy() for k, v in step(batch).items()}
            ids = decode_image_ids(out["image_id"])
            for i in np.flatnonzero(out["real"]):
                readable = bool(out["readable"][i])
                dets = []
                for k in range(len(self.detectors)):
                    n = int(out[f"{k}/num_detections"][i]) if readable else 0
                    dets.append(Detections(out[f"{k}/boxes"][i, :n].astype(np.float32),
                                           out[f"{k}/scores"][i, :n].astype(np.float32),
                                           out[f"{k}/classes"][i, :n].astype(np.int32)))
                if not readable:
                    stats.unreadable.append(ids[i])
                stats.images += 1
                yield ImageResult(ids[i], readable, tuple(dets))
            now = time.monotonic()
            stats.seconds = now - start
            if now - last_log >= log_every_seconds:
                last_log = now
                log.info("%s", progress_line(what, stats, total))
        stats.seconds = time.monotonic() - start
        log.info("%s", progress_line(what, stats, total, done=True))
        if stats.unreadable:
            log.warning("%d unreadable images got rows without detections: %s%s",
                        len(stats.unreadable), ", ".join(stats.unreadable[:10]),
                        " ..." if len(stats.unreadable) > 10 else "")


def progress_line(what: str, stats: InferenceStats, total: int | None = None,
                  done: bool = False) -> str:
    """"eval: 1,200/5,000 images (24%), 41.3 images/s, ETA 92 s" (or "... done in 29 s")."""
    rate = stats.images_per_second
    text = f"{what}: {stats.images:,}"
    if total:
        text += f"/{total:,} images ({100 * stats.images / total:.0f}%)"
    else:
        text += " images"
    text += f", {rate:.1f} images/s"
    if done:
        text += f", done in {stats.seconds:.0f} s"
    elif total and rate > 0:
        text += f", ETA {max(total - stats.images, 0) / rate:.0f} s"
    if stats.unreadable:
        text += f", {len(stats.unreadable)} unreadable"
    return text
