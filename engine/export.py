"""Export: an inference SavedModel that takes encoded images; also a command that exports a
chosen checkpoint of a training run:

    python -m engine.export --model_dir MODEL_DIR [--checkpoint latest|best|ckpt-N] [--output DIR]

DIR defaults to MODEL_DIR/export (latest), MODEL_DIR/export_best (best) or
MODEL_DIR/export_ckpt-N, and is written whole or not at all (write_then_rename).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from engine.run_dir import (
    BEST,
    CONFIG,
    EXPORT_METADATA,
    is_run_dir,
    load_model,
    read_json,
    resolve_checkpoint,
)
from model.config import ModelConfig, PostprocessConfig
from model.retinanet import build_inference_model
from oid import errors
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


def export_run(model_dir: str, checkpoint: str | None = None, output: str | None = None) -> str:
    """Exports MODEL_DIR's `checkpoint` (None or "latest", "best", "ckpt-N"; see
    engine.run_dir.resolve_checkpoint) as export_saved_model does at the end of training;
    returns the SavedModel's path (default: default_output(MODEL_DIR, checkpoint)).

    Raises:
      FileNotFoundError: no such run or checkpoint (the message lists the checkpoints).
    """
    if not is_run_dir(model_dir):
        raise FileNotFoundError(f"{model_dir}: not a train.py run directory (no {CONFIG})")
    path = resolve_checkpoint(model_dir, checkpoint)
    saved = read_json(os.path.join(model_dir, CONFIG))
    model, config = load_model(model_dir, path)
    fields = {f.name for f in dataclasses.fields(InputConfig)}
    canvas = {k: tuple(v) if isinstance(v, list) else v
              for k, v in saved.get("input", {}).items() if k in fields}
    input_config = InputConfig(**{**canvas, "file_pattern": "", "is_training": False})
    return export_saved_model(model, config, saved["labels"], input_config,
                              output or default_output(model_dir, checkpoint),
                              level=saved.get("level"))


def default_output(model_dir: str, checkpoint: str | None) -> str:
    """MODEL_DIR/export for the latest checkpoint, export_best, or export_ckpt-N."""
    if checkpoint in (None, "", "latest"):
        return os.path.join(model_dir, "export")
    if checkpoint == BEST:
        return os.path.join(model_dir, "export_best")
    return os.path.join(model_dir, "export_" + os.path.basename(checkpoint))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m engine.export`; returns the exit status (2 for a refused start)."""
    parser = errors.ArgumentParser(
        prog="python -m engine.export",
        description="Export a checkpoint of a train.py run as the inference SavedModel "
                    "train.py writes (serving_default on encoded images, raw_outputs).")
    parser.add_argument("--model_dir", required=True, help="the run's directory")
    parser.add_argument("--checkpoint", default="latest",
                        help="latest (default), best (the best validation mAP, kept with "
                             "train.py --eval_every_epochs) or ckpt-N (MODEL_DIR/checkpoints/)")
    parser.add_argument("--output", default=None,
                        help="the SavedModel folder (default: MODEL_DIR/export, export_best or "
                             "export_ckpt-N); replaced whole once written")
    args = parser.parse_args(argv)
    try:
        path = export_run(args.model_dir, args.checkpoint, args.output)
    except FileNotFoundError as e:
        print(f"error: --model_dir={args.model_dir} --checkpoint={args.checkpoint}: {e}",
              file=sys.stderr)
        return errors.USAGE_EXIT
    logging.info("exported %s of %s to %s", args.checkpoint, args.model_dir, path)
    return 0


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



if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
