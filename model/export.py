"""Export: an inference SavedModel that takes encoded images, and loading a trained run."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from model.config import ModelConfig, PostprocessConfig
from model.retinanet import build_inference_model, build_retinanet
from tfrecords.input_pipeline import InputConfig, inference_canvas


def export_saved_model(model: keras.Model, config: ModelConfig, labels: list[dict],
                       input_config: InputConfig, path: str,
                       post: PostprocessConfig = PostprocessConfig()) -> str:
    """Writes a SavedModel whose `serving_default` signature maps
    encoded: [N] string (JPEG/PNG bytes)
    to boxes [N, M, 4] float32 (ymin, xmin, ymax, xmax) normalized to each original image,
    scores [N, M], classes [N, M] int32 level-local ids, mids [N, M] string (b"" past
    num_detections), num_detections [N] int32. It shares `model`'s weights.
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
    archive.write_out(path, verbose=False)
    return path


def load_model(model_dir: str) -> tuple[keras.Model, ModelConfig]:
    """(training model, its config) of a run: rebuilt from its config.json, weights from its
    last checkpoint."""
    from model.anchors import AnchorConfig

    with tf.io.gfile.GFile(os.path.join(model_dir, "config.json")) as f:
        saved = json.load(f)["model"]
    saved["anchors"] = AnchorConfig(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in saved["anchors"].items()})
    saved["backbone_weights"] = None
    config = ModelConfig(**saved)
    model = build_retinanet(config)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir}/checkpoints")
    from model.training import checkpoint_weights

    status = tf.train.Checkpoint(weights=checkpoint_weights(model)).restore(latest)
    status.expect_partial().assert_existing_objects_matched()  # the optimizer may be left out
    return model, config
