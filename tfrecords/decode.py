"""Decoding our records into tensors (the tf.data side). Runs eagerly and inside tf.data."""

from __future__ import annotations

import tensorflow as tf

from tfrecords import features as F

FEATURE_SPEC = {
    F.ENCODED: tf.io.FixedLenFeature([], tf.string),
    F.FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=b"jpeg"),
    F.HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    F.WIDTH: tf.io.FixedLenFeature([], tf.int64),
    F.ORIGINAL_HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    F.ORIGINAL_WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    F.SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
    F.REPEAT_FACTOR: tf.io.FixedLenFeature([], tf.float32, default_value=1.0),
    **{k: tf.io.VarLenFeature(tf.float32) for k in F.BOX_KEYS},
    **{k: tf.io.VarLenFeature(tf.int64) for k in F.OBJECT_INT_KEYS},
    F.CLASS_TEXT: tf.io.VarLenFeature(tf.string),
    F.IMAGE_CLASS_LABEL: tf.io.VarLenFeature(tf.int64),
    F.IMAGE_CLASS_TEXT: tf.io.VarLenFeature(tf.string),
    F.IMAGE_CLASS_CONFIDENCE: tf.io.VarLenFeature(tf.float32),
}


def _dense(t: tf.sparse.SparseTensor) -> tf.Tensor:
    return tf.sparse.to_dense(t)


def decode_example(serialized: tf.Tensor, decode_image: bool = True) -> dict[str, tf.Tensor]:
    """Parses one serialized record.

    Returns a dict of tensors:
      image: [H, W, 3] uint8 (only with decode_image) and encoded: [] string;
      height, width, original_height, original_width: [] int32, pixels;
      source_id: [] string; repeat_factor: [] float32;
      boxes: [N, 4] float32, (ymin, xmin, ymax, xmax) normalized;
      classes: [N] int32 level-local index; mids: [N] string;
      group_of: [N] bool; occluded, truncated, depiction: [N] int32;
      image_classes: [M] int32 (-1 outside the level); image_mids: [M] string;
      image_confidences: [M] float32 (1 present, 0 absent).
    """
    p = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    out = {
        "encoded": p[F.ENCODED],
        "height": tf.cast(p[F.HEIGHT], tf.int32),
        "width": tf.cast(p[F.WIDTH], tf.int32),
        "original_height": tf.cast(p[F.ORIGINAL_HEIGHT], tf.int32),
        "original_width": tf.cast(p[F.ORIGINAL_WIDTH], tf.int32),
        "source_id": p[F.SOURCE_ID],
        "repeat_factor": p[F.REPEAT_FACTOR],
        "boxes": tf.stack([_dense(p[k]) for k in F.BOX_KEYS], axis=-1),
        "classes": tf.cast(_dense(p[F.CLASS_LABEL]), tf.int32),
        "mids": _dense(p[F.CLASS_TEXT]),
        "group_of": tf.cast(_dense(p[F.GROUP_OF]), tf.bool),
        "occluded": tf.cast(_dense(p[F.OCCLUDED]), tf.int32),
        "truncated": tf.cast(_dense(p[F.TRUNCATED]), tf.int32),
        "depiction": tf.cast(_dense(p[F.DEPICTION]), tf.int32),
        "image_classes": tf.cast(_dense(p[F.IMAGE_CLASS_LABEL]), tf.int32),
        "image_mids": _dense(p[F.IMAGE_CLASS_TEXT]),
        "image_confidences": _dense(p[F.IMAGE_CLASS_CONFIDENCE]),
    }
    if decode_image:
        image = tf.io.decode_jpeg(p[F.ENCODED], channels=3)
        out["image"] = tf.ensure_shape(image, [None, None, 3])
    return out
