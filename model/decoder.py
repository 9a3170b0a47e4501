"""Detections from raw head outputs: decode with the box coder, top-k, per-class NMS, and
mapping back to the original image with image_info (boxes/canvas.py)."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from boxes import coder
from boxes.anchors import AnchorConfig, generate_anchors
from boxes.canvas import canvas_to_normalized
from boxes.ops import batched_nms
from model.config import PostprocessConfig


def detect(cls_logits: tf.Tensor, box_deltas: tf.Tensor, anchors: tf.Tensor,
           config: PostprocessConfig, canvas_size: float,
           variances: tuple[float, ...]) -> dict[str, tf.Tensor]:
    """Per-class NMS detections on the canvas.

    Args:
      cls_logits: [B, A, K]; box_deltas: [B, A, 4]; anchors: [A, 4] canvas pixels.
      variances: the box coder's, from the AnchorConfig the anchors came from.

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
    boxes = coder.decode(deltas, tf.gather(anchors, anchor_index), variances)
    boxes = tf.clip_by_value(boxes, 0.0, canvas_size)
    return batched_nms(boxes, top_scores, classes, config.max_detections, config.nms_iou,
                       config.score_threshold, extent=canvas_size)


@keras.saving.register_keras_serializable(package="oid_retinanet")
class DetectionDecoder(keras.layers.Layer):
    """(cls_logits [B, A, K], box_deltas [B, A, 4], image_info [B, 4, 2]) -> detections with
    boxes normalized to the original image: {"boxes" [B, M, 4] (ymin, xmin, ymax, xmax),
    "scores" [B, M], "classes" [B, M] int32, "num_detections" [B] int32}.

    Anchors are generated once, for the canvas size, in the order the heads use; the box
    coder's variances are the anchor configuration's.
    """

    def __init__(self, image_size: int, anchors: dict | None = None,
                 postprocess: dict | None = None, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.image_size = image_size
        self.anchor_config = AnchorConfig.from_json(anchors or {})
        self.post = PostprocessConfig(**(postprocess or {}))
        self.anchors = tf.constant(generate_anchors(image_size, image_size, self.anchor_config))

    def call(self, cls_logits, box_deltas, image_info):
        dets = detect(cls_logits, box_deltas, self.anchors, self.post, float(self.image_size),
                      self.anchor_config.variances)
        dets["boxes"] = canvas_to_normalized(dets["boxes"], tf.cast(image_info, tf.float32))
        return dets

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size,
                "anchors": dataclasses.asdict(self.anchor_config),
                "postprocess": dataclasses.asdict(self.post)}
