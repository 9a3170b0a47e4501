"""Export: an inference SavedModel that takes encoded images."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import keras
import tensorflow as tf

from engine.run_dir import EXPORT_METADATA
from model.config import ModelConfig, PostprocessConfig
from model.retinanet import build_inference_model
from tfrecords.input_pipeline import InputConfig, inference_canvas


def export_saved_model(model: keras.Model, config: ModelConfig, labels: list[dict],
                       input_config: InputConfig, path: str,
                       post: PostprocessConfig = PostprocessConfig(),
                       level: int | None = None) -> str:
    """Writes a SavedModel whose `serving_default` signature maps
    encoded: [N] string (JPEG/PNG bytes)
    to boxes [N, M, 4] float32 (ymin, xmin, ymax, xmax) normalized to each original image,
    scores [N, M], classes [N, M] int32 level-local ids, mids [N, M] string (b"" past
    num_detections), num_detections [N] int32. It shares `model`'s weights.

    A second endpoint, `raw_outputs(image [N, S, S, 3] uint8 canvas)` -> {cls_logits [N, A, K],
    box_deltas [N, A, 4]}, serves batched inference (engine/inference.py), which decodes with
    its own post-processing settings; PATH/assets.extra/config.json holds the model, input,
    labels and level entries of a run's config.json, so the directory describes itself.
    """
    inference = build_inference_model(model, config, post)
    mids = tf.constant([entry["mid"] for entry in sorted(labels, key=lambda e: e["index"])])

    def prepare(encoded):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return inference_canvas(image, input_config)

    def serve(encoded):
        canvases, infos = tf.map_fn(
            prepare, encoded, fn_output_signature=(
                tf.TensorSpec([config.image_size, config.image_size, 3], tf.uint8),
                tf.TensorSpec([4, 2], tf.float32)))
        dets = inference([canvases, infos])
        valid = dets["classes"] >= 0
        dets["mids"] = tf.where(valid, tf.gather(mids, tf.maximum(dets["classes"], 0)), b"")
        return dets

    archive = keras.export.ExportArchive()
    archive.track(inference)
    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None], tf.string, name="encoded")])
    archive.add_endpoint("raw_outputs", lambda image: model(image, training=False),
                         input_signature=[tf.TensorSpec(
                             [None, config.image_size, config.image_size, 3], tf.uint8,
                             name="image")])
    metadata = {"model": dataclasses.asdict(config), "input": dataclasses.asdict(input_config),
                "labels": labels, "level": level}
    write_then_rename(path, lambda tmp: _write(archive, metadata, tmp))
    return path


def _write(archive: keras.export.ExportArchive, metadata: dict, path: str) -> None:
    archive.write_out(path, verbose=False)
    tf.io.gfile.makedirs(os.path.dirname(os.path.join(path, EXPORT_METADATA)))
    with tf.io.gfile.GFile(os.path.join(path, EXPORT_METADATA), "w") as f:
        json.dump(metadata, f, indent=1, sort_keys=True, default=str)


PARTIAL = ".partial"


def write_then_rename(path: str, write: Callable[[str], None]) -> None:
    """Runs write(PATH.partial) and renames the folder to PATH once it is complete, replacing
    an earlier PATH; so a run killed while exporting leaves no broken SavedModel under PATH
    (only PATH.partial, which the next export removes)."""
    tmp = path.rstrip("/") + PARTIAL
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    try:
        write(tmp)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    tf.io.gfile.rename(tmp, path)

