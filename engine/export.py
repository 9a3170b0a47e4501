"""Export: an inference SavedModel that takes encoded images, and loading a trained run."""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import tensorflow as tf

from model.config import ModelConfig, PostprocessConfig
from model.retinanet import build_inference_model, build_retinanet
from tfrecords.input_pipeline import InputConfig, inference_canvas

METADATA = "assets.extra/config.json"  # inside the SavedModel directory


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
    box_deltas [N, A, 4]}, serves batched inference (model/inference.py), which decodes with
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
    archive.write_out(path, verbose=False)
    tf.io.gfile.makedirs(os.path.dirname(os.path.join(path, METADATA)))
    with tf.io.gfile.GFile(os.path.join(path, METADATA), "w") as f:
        json.dump({"model": dataclasses.asdict(config), "input": dataclasses.asdict(input_config),
                   "labels": labels, "level": level}, f, indent=1, sort_keys=True, default=str)
    return path


def model_config_from_json(saved: dict) -> ModelConfig:
    """The "model" entry of a config.json -> ModelConfig (the backbone weights file is not
    needed: the checkpoint holds every weight)."""
    from model.anchors import AnchorConfig

    saved = dict(saved)
    saved["anchors"] = AnchorConfig(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in saved["anchors"].items()})
    saved["backbone_weights"] = None
    return ModelConfig(**saved)


def load_model(model_dir: str, checkpoint: str | None = None) -> tuple[keras.Model, ModelConfig]:
    """(training model, its config) of a run: rebuilt from its config.json, weights from
    `checkpoint` (a path prefix such as MODEL_DIR/checkpoints/ckpt-400) or else its last
    checkpoint. Called in a strategy's scope, the weights are the strategy's variables."""
    with tf.io.gfile.GFile(os.path.join(model_dir, "config.json")) as f:
        config = model_config_from_json(json.load(f)["model"])
    model = build_retinanet(config)
    latest = checkpoint or tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir}/checkpoints")
    from model.training import checkpoint_weights

    status = tf.train.Checkpoint(weights=checkpoint_weights(model)).restore(latest)
    status.expect_partial().assert_existing_objects_matched()  # the optimizer may be left out
    return model, config
