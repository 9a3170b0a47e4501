"""predict.py's engine: inference chunk by chunk through the detection cache, and the
per-image combination.

    the images (a folder, or records) -> chunks of N images (a record file each, for records)
    -> per chunk and model: its detections read from the cache (oid/detection_cache.py) when
       a complete chunk of this model (same weights, config and settings) holds them, else
       inference (engine/inference.py, every missing model on every batch on every replica)
       and the chunk written to the cache (on the chief)
    -> per image: oid.combine.Combination (the code of `python -m oid.combine`): each
       level's models fused (weighted boxes fusion), the levels concatenated, boxes copied
       to ancestors, everything above the score threshold kept (or the top_k best)

A chunk starts a new batch, so a chunk's batches are the same in a run that resumes and in
one that does not, and so are its detections, to the bit: a resumed run writes the bytes
an uninterrupted one writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import tensorflow as tf

from engine.inference import Detector, ImageResult, Inference
from engine.run_dir import CONFIG, EXPORT_METADATA, is_saved_model, latest_checkpoint
from model.config import PostprocessConfig
from oid import fileio
from oid.combine import Combination, CombineConfig, SourceSpec
from oid.detection_cache import (
    Chunk,
    ModelCache,
    cache_key,
    remove_partials,
    stale_caches,
    write_run,
)
from oid.hierarchy import Hierarchy
from oid.submission import ImageDetections
from tfrecords.inference_input import ImageFolderSource, RecordSource, Source, image_id_of
from tfrecords.input_pipeline import list_files

log = logging.getLogger(__name__)


def level_group(level: int) -> str:
    """The group name of a level's models (oid.combine groups caches the same way)."""
    return f"level{level}"


class Combiner:
    """Turns each image's per-detector detections into its submission row.

    Args:
      detectors: in the order of ImageResult.detections.
      levels: level -> indices into `detectors` of its models (several: an ensemble, fused
        in this order).
      hierarchy: copy boxes to ancestors along it; None to leave the classes as predicted.
      top_k: detections kept per image, after merging and expansion (0: all).
      score_threshold: detections below are dropped.
      wbf_iou: an ensemble's boxes of one class fuse when their IoU is above this.
      weights: per detector, its weight in the fusion of its level (default 1).
      fusion: how an ensemble is fused (oid.combine.FUSIONS).
    """

    def __init__(self, detectors: Sequence[Detector], levels: Mapping[int, Sequence[int]],
                 hierarchy: Hierarchy | None, top_k: int = 0, score_threshold: float = 0.0,
                 wbf_iou: float = 0.55, weights: Sequence[float] | None = None,
                 fusion: str = "wbf"):
        self.levels = {level: tuple(levels[level]) for level in sorted(levels)}
        if sorted(i for models in self.levels.values() for i in models) != \
                list(range(len(detectors))):
            raise ValueError("every detector must belong to exactly one level")
        self.mids = [d.mids for d in detectors]
        weights = list(weights) if weights is not None else [1.0] * len(detectors)
        # The sources in merge order: level by level, each level's models in its order.
        self.order = [k for models in self.levels.values() for k in models]
        level_of = {k: level for level, models in self.levels.items() for k in models}
        sources = [SourceSpec(detectors[k].name, level_group(level_of[k]), weights[k])
                   for k in self.order]
        config = CombineConfig(fusion=fusion, wbf_iou=wbf_iou, expand=hierarchy is not None,
                               top_k=top_k, score_threshold=score_threshold)
        self.combination = Combination(sources, config, hierarchy)

    def combine(self, image_id: str, per_detector: Sequence[ImageDetections | None],
                readable: bool = True) -> ImageDetections:
        """The row of an image from each detector's detections (MIDs), in detector order."""
        if not readable:
            return ImageDetections.empty(image_id)
        return self.combination(image_id, [per_detector[k] for k in self.order])

    def __call__(self, row: ImageResult) -> ImageDetections:
        per_detector = [ImageDetections(row.image_id, d.boxes, d.scores, self.mids[k][d.classes])
                        for k, d in enumerate(row.detections)]
        return self.combine(row.image_id, per_detector, row.readable)


# -- what a model's cache is keyed on ------------------------------------------------------


def _digest(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for path in paths:
        with tf.io.gfile.GFile(path, "rb") as f:
            h.update(path.rsplit("/", 1)[-1].encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def model_identity(path: str) -> dict:
    """{"run_dir", "checkpoint", "digest"} of a model directory, read before loading it.

    A training run: its latest checkpoint and the SHA-256 of its config.json and the
    checkpoint's .index file, which holds every variable's shape and CRC32C, so other
    weights give another digest. A SavedModel: saved_model.pb, its variables' index and
    its config. Raises FileNotFoundError for a run without a checkpoint.
    """
    if is_saved_model(path):
        files = [os.path.join(path, "saved_model.pb"),
                 os.path.join(path, "variables", "variables.index"),
                 os.path.join(path, EXPORT_METADATA)]
        return {"run_dir": path, "checkpoint": "saved_model",
                "digest": _digest([f for f in files if tf.io.gfile.exists(f)])}
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {path}/checkpoints")
    return {"run_dir": path, "checkpoint": checkpoint,
            "digest": _digest([os.path.join(path, CONFIG), checkpoint + ".index"])}


def cache_meta(identity: dict, detector: Detector, post: PostprocessConfig,
               flip_tta: bool) -> dict:
    """The cache.json of a model: its identity, level, MIDs and the settings its
    detections depend on, and the key of them all."""
    settings = {"score_threshold": post.score_threshold, "nms_iou": post.nms_iou,
                "max_detections": post.max_detections, "pre_nms_top_k": post.pre_nms_top_k,
                "flip_tta": flip_tta}
    mids = detector.mids.tolist()
    key = cache_key({"digest": identity["digest"], "level": detector.level, "mids": mids,
                     "settings": settings})
    return {"key": key, "run_dir": identity["run_dir"], "level": detector.level,
            "checkpoint": identity["checkpoint"], "mids": mids, "settings": settings}


# -- chunks ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PlannedChunk:
    """One unit of inference and of the cache.

    Attributes:
      index: its position in the plan (the cache file's number).
      source: its images.
      image_ids: its ImageIds in order; None for records (known once read).
      label: what it was read from, recorded in the cache (records: the file's name).
    """

    index: int
    source: Source
    image_ids: tuple[str, ...] | None
    label: str | None = None


def plan_chunks(source: Source, chunk_images: int) -> list[PlannedChunk]:
    """An image folder in chunks of `chunk_images` files (in the source's order), or one
    chunk per record file (a record file cannot be split without reading it)."""
    if isinstance(source, ImageFolderSource):
        return [PlannedChunk(i, ImageFolderSource(source.paths[a:a + chunk_images]),
                             tuple(image_id_of(p) for p in source.paths[a:a + chunk_images]))
                for i, a in enumerate(range(0, len(source.paths), chunk_images))]
    return [PlannedChunk(i, RecordSource(f), None, os.path.basename(f))
            for i, f in enumerate(list_files(source.file_pattern))]


def open_caches(root: str | None, metas: Sequence[dict], chief: bool,
                ) -> list[ModelCache | None]:
    """Each model's folder under `root` (None: no cache). The chief makes the folders and
    deletes the partial chunks a killed run left, and records the folders as the run's
    (predict.json); every process logs the caches of the same models that are ignored
    because the model (or a setting) changed."""
    if root is None:
        return [None] * len(metas)
    caches = []
    for meta in metas:
        for stale in stale_caches(root, meta["run_dir"], meta["key"]):
            log.info("ignoring the cache %s of %s: it was written for checkpoint %s with "
                     "settings %s; this run's model or settings differ (checkpoint %s, "
                     "settings %s), so its detections are computed again", stale.path,
                     meta["run_dir"], stale.meta.get("checkpoint"), stale.meta.get("settings"),
                     meta["checkpoint"], meta["settings"])
        if chief:
            cache = ModelCache.create(root, meta)
            removed = remove_partials(cache)
            if removed:
                log.info("%s: deleted %d partial chunks of an interrupted run", cache.path,
                         removed)
        else:
            cache = ModelCache(fileio.join(root, ModelCache.folder_name(meta["level"],
                                                                        meta["key"])), meta)
        caches.append(cache)
    if chief:  # python -m oid.combine --cache ROOT takes these folders, not the stale ones
        write_run(root, caches)
    return caches


class ChunkedPrediction:
    """Runs the detectors chunk by chunk, reusing complete cached chunks.

    Args:
      strategy, detectors, post, flip_tta: as for engine.inference.Inference.
      caches: per detector, its cache folder (None: not cached).
      chief: this process writes the cache and gets the chunks' detections.
    """

    def __init__(self, strategy: tf.distribute.Strategy, detectors: Sequence[Detector],
                 post: PostprocessConfig, flip_tta: bool, caches: Sequence[ModelCache | None],
                 chief: bool):
        self.strategy = strategy
        self.detectors = tuple(detectors)
        self.post = post
        self.flip_tta = flip_tta
        self.caches = tuple(caches)
        self.chief = chief
        self._inference: dict[tuple[int, ...], Inference] = {}
        self.unreadable: list[str] = []
        self.images = 0
        self.images_inferred = 0

    def missing(self, plan: Sequence[PlannedChunk]) -> list[tuple[int, ...]]:
        """Per chunk, the detectors whose cached chunk is missing or does not fit. Every
        process computes it from the shared cache before any writes (the caller then
        waits for all workers), so all run the same inference steps."""
        listed = [set(c.chunks()) if c is not None else set() for c in self.caches]
        out = []
        for chunk in plan:
            out.append(tuple(
                k for k, cache in enumerate(self.caches)
                if cache is None or not cache.is_valid(chunk.index, chunk.image_ids,
                                                       chunk.label, listed[k])))
        return out

    def _inference_of(self, models: tuple[int, ...]) -> Inference:
        if models not in self._inference:
            self._inference[models] = Inference(self.strategy,
                                                [self.detectors[k] for k in models],
                                                self.post, self.flip_tta)
        return self._inference[models]

    def run(self, plan: Sequence[PlannedChunk], missing: Sequence[tuple[int, ...]],
            batch_size: int, log_every_seconds: float = 10.0,
            advance: Callable[[int], None] | None = None,
            ) -> Iterator[tuple[PlannedChunk, list[Chunk]]]:
        """Yields, on the chief, each chunk with one Chunk per detector (read from the cache
        or just computed), in plan order; on other workers it runs the same inference and
        yields nothing.

        advance(n): called with every image inferred (n=1) and with a chunk read from the
        cache (n: its images), e.g. a progress bar's update; log_every_seconds: the inference
        loop's progress lines (math.inf: only each chunk's last line).
        """
        total_images = sum(len(c.image_ids) for c in plan if c.image_ids is not None) or None
        to_run = sum(1 for m in missing if m)
        log.info("predict: %d chunks, %d to compute, %d complete in the cache", len(plan),
                 to_run, len(plan) - to_run)
        start = time.monotonic()
        ran = 0
        for chunk, models in zip(plan, missing, strict=True):
            fresh: dict[int, Chunk] = {}
            if models:
                ran += 1
                fresh = self._infer(chunk, models, batch_size, log_every_seconds,
                                    f"predict chunk {chunk.index + 1}/{len(plan)}", advance)
                if self.chief:
                    for k, c in fresh.items():
                        if self.caches[k] is not None:
                            self.caches[k].write(chunk.index, c, chunk.label)
            if not self.chief:
                continue
            chunks = [fresh[k] if k in fresh else self.caches[k].read(chunk.index)
                      for k in range(len(self.detectors))]
            self.images += len(chunks[0].images)
            if not models and advance is not None:
                advance(len(chunks[0].images))
            self.unreadable += sorted(set().union(*(c.unreadable for c in chunks)))
            elapsed = time.monotonic() - start
            line = f"predict: chunk {chunk.index + 1}/{len(plan)}, {self.images:,}"
            if total_images:
                line += f"/{total_images:,} images ({100 * self.images / total_images:.0f}%)"
            else:
                line += " images"
            if models:
                line += f", {self.images_inferred / max(elapsed, 1e-9):.1f} images/s inferred"
                remaining = sum(1 for m in missing[chunk.index + 1:] if m)
                if remaining:
                    line += f", ETA {elapsed / ran * remaining:.0f} s"
            else:
                line += ", read from the cache"
            log.info("%s", line)
            yield chunk, chunks

    def _infer(self, chunk: PlannedChunk, models: tuple[int, ...], batch_size: int,
               log_every_seconds: float, what: str,
               advance: Callable[[int], None] | None = None) -> dict[int, Chunk]:
        inference = self._inference_of(models)
        total = len(chunk.image_ids) if chunk.image_ids is not None else None
        rows = {}
        for row in inference.run(chunk.source, batch_size, total=total, what=what,
                                 log_every_seconds=log_every_seconds):
            rows[row.image_id] = row
            if advance is not None:
                advance(1)
        self.images_inferred += len(rows)
        # The chunk's order: the plan's (image folders), else sorted ImageIds (records come
        # in an order that depends on the number of workers).
        order = list(chunk.image_ids) if chunk.image_ids is not None else sorted(rows)
        if set(order) != set(rows):
            raise RuntimeError(f"chunk {chunk.index}: the inference returned other images than "
                               "the chunk's")
        unreadable = frozenset(i for i in order if not rows[i].readable)
        out = {}
        for j, k in enumerate(models):
            mids = self.detectors[k].mids
            out[k] = Chunk(tuple(
                ImageDetections(i, rows[i].detections[j].boxes, rows[i].detections[j].scores,
                                mids[rows[i].detections[j].classes]) for i in order), unreadable)
        return out


def combine_chunk(combiner: Combiner, chunks: Sequence[Chunk],
                  ) -> Iterator[tuple[ImageDetections, bool]]:
    """(submission row, readable) of each image of one chunk, in the first detector's
    order, combined from every detector's detections (an unreadable image: an empty row)."""
    by_id = [{d.image_id: d for d in c.images} for c in chunks]
    unreadable = set().union(*(c.unreadable for c in chunks))
    for image_id in chunks[0].image_ids:
        slots = [b.get(image_id) for b in by_id]
        readable = image_id not in unreadable
        yield combiner.combine(image_id, slots, readable), readable

