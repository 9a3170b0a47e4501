"""Detections from raw head outputs: decode with the box coder, top-k, per-class NMS, and
mapping back to the original image with image_info."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from model import box_coder
from model.anchors import AnchorConfig, generate_anchors
from model.config import PostprocessConfig


def detect(cls_logits: tf.Tensor, box_deltas: tf.Tensor, anchors: tf.Tensor,
           config: PostprocessConfig, canvas_size: float) -> dict[str, tf.Tensor]:
    """Per-class NMS detections on the canvas.

    Args:
      cls_logits: [B, A, K]; box_deltas: [B, A, 4]; anchors: [A, 4] canvas pixels.

    Returns:
      boxes [B, M, 4] (ymin, xmin, ymax, xmax) canvas pixels, scores [B, M], classes [B, M]
      int32, num_detections [B] int32; M = config.max_detections, rows past
      num_detections are zero (classes -1).
    """
    scores = tf.sigmoid(tf.cast(cls_logits, tf.float32))
    batch = tf.shape(scores)[0]
    num_classes = tf.shape(scores)[2]
    flat = tf.reshape(scores, [batch, -1])
    k = tf.minimum(config.pre_nms_top_k, tf.shape(flat)[1])
    top_scores, top_index = tf.math.top_k(flat, k=k, sorted=True)
    anchor_index = top_index // num_classes
    classes = top_index % num_classes
    deltas = tf.gather(tf.cast(box_deltas, tf.float32), anchor_index, batch_dims=1)
    boxes = box_coder.decode(deltas, tf.gather(anchors, anchor_index))
    boxes = tf.clip_by_value(boxes, 0.0, canvas_size)
    # Per-class NMS in one batched call: boxes of different classes are moved
    # apart so that they never overlap (the "batched NMS" offset trick).
    offset = tf.cast(classes, tf.float32)[..., None] * (canvas_size + 1.0)
    selected, valid = tf.image.non_max_suppression_padded(
        boxes + offset, top_scores, max_output_size=config.max_detections,
        iou_threshold=config.nms_iou, score_threshold=config.score_threshold,
        pad_to_max_output_size=True)
    mask = tf.range(config.max_detections)[None, :] < valid[:, None]
    take = lambda t: tf.gather(t, selected, batch_dims=1)  # noqa: E731
    out_boxes = tf.where(mask[..., None], take(boxes), 0.0)
    out_scores = tf.where(mask, take(top_scores), 0.0)
    out_classes = tf.where(mask, take(classes), -1)
    return {"boxes": out_boxes, "scores": out_scores, "classes": tf.cast(out_classes, tf.int32),
            "num_detections": tf.cast(valid, tf.int32)}


def to_original(boxes: tf.Tensor, image_info: tf.Tensor) -> tf.Tensor:
    """[B, M, 4] canvas pixels -> normalized to the decoded image, clipped to [0, 1].

    image_info: [B, 4, 2] as produced by the input pipeline.
    """
    size, scale, offset = image_info[:, 0], image_info[:, 2], image_info[:, 3]
    tile = lambda t: tf.tile(t, [1, 2])[:, None, :]  # noqa: E731  (y, x) -> (y, x, y, x)
    return tf.clip_by_value((boxes + tile(offset)) / tile(scale) / tile(size), 0.0, 1.0)


@keras.saving.register_keras_serializable(package="oid_retinanet")
class DetectionDecoder(keras.layers.Layer):
    """(cls_logits, box_deltas, image_info) -> detections with boxes normalized to the original
    image: {"boxes" [B, M, 4] (ymin, xmin, ymax, xmax), "scores", "classes", "num_detections"}.

    Anchors are generated once, for the canvas size, in the order the heads use.
    """

    def __init__(self, image_size: int, anchors: dict | None = None,
                 postprocess: dict | None = None, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.image_size = image_size
        self.anchor_config = AnchorConfig(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in (anchors or {}).items()})
        self.post = PostprocessConfig(**(postprocess or {}))
        self.anchors = tf.constant(generate_anchors(image_size, image_size, self.anchor_config))

    def call(self, cls_logits, box_deltas, image_info):
        dets = detect(cls_logits, box_deltas, self.anchors, self.post, float(self.image_size))
        dets["boxes"] = to_original(dets["boxes"], tf.cast(image_info, tf.float32))
        return dets

    def get_config(self):
        import dataclasses

        return {**super().get_config(), "image_size": self.image_size,
                "anchors": dataclasses.asdict(self.anchor_config),
                "postprocess": dataclasses.asdict(self.post)}


def numpy_anchors(image_size: int, config: AnchorConfig) -> np.ndarray:
    return generate_anchors(image_size, image_size, config)
