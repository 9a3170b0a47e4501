"""GIoU/DIoU box losses and the quality focal loss, which decode boxes against the anchors
(model/losses.py); golden values worked by hand."""

import math

import numpy as np
import pytest
import tensorflow as tf

from boxes import coder
from boxes.anchors import AnchorConfig
from model.config import LossConfig
from model.losses import quality_focal_loss_sum, retinanet_loss

V = AnchorConfig().variances
LN2 = math.log(2.0)
# Two anchors; anchor 0 = (0, 0, 2, 2) is positive (class 1) for the box (1, 1, 3, 3);
# anchor 1 is background. Zero deltas decode to the anchor itself, so the prediction at
# anchor 0 is (0, 0, 2, 2): IoU 1/7, GIoU -0.079365, DIoU 0.031746 (tests/boxes/test_aligned_iou).
ANCHORS = np.array([[0, 0, 2, 2], [10, 10, 14, 14]], np.float32)
CLS_T = np.array([[1, -1]], np.int32)
BOX_T = np.stack([coder.encode(np.array([1, 1, 3, 3], np.float32), ANCHORS[0], V).numpy(),
                  np.zeros(4, np.float32)])[None]
LOGITS = np.zeros((1, 2, 2), np.float32)   # every probability 0.5, every BCE ln 2
DELTAS = np.zeros((1, 2, 4), np.float32)


def run(config, normalizer=1.0, deltas=DELTAS):
    out = retinanet_loss(CLS_T, BOX_T, LOGITS, deltas, config, normalizer, ANCHORS, V)
    return {k: float(v) for k, v in out.items()}


@pytest.mark.parametrize("kind,similarity", [("giou", 1 / 7 - 2 / 9), ("diou", 1 / 7 - 2 / 18)])
def test_iou_box_losses(kind, similarity):
    # One positive: box loss = 1 - similarity (1.079365 for GIoU, 0.968254 for DIoU), times
    # box_weight 2, over the normalizer 2.
    out = run(LossConfig(box_loss=kind, box_weight=2.0), normalizer=2.0)
    assert out["box_loss"] == pytest.approx((1 - similarity) * 2.0 / 2.0, rel=1e-5)


def test_perfect_prediction_has_zero_iou_loss():
    out = run(LossConfig(box_loss="giou"), deltas=BOX_T)
    assert out["box_loss"] == pytest.approx(0.0, abs=1e-5)


def test_quality_focal_golden():
    # Positive anchor 0, class 1: target y = IoU 1/7; entry loss |1/7 - 0.5|^2 ln2 =
    # 0.127551 ln2; its class 0: y 0, 0.5^2 ln2 = 0.25 ln2. Background anchor 1: 2 x 0.25 ln2.
    # Sum (0.127551 + 0.25 + 0.5) ln2 = 0.877551 ln2 = 0.608273.
    out = run(LossConfig(cls_loss="quality_focal"))
    assert out["cls_loss"] == pytest.approx((0.127551 + 0.75) * LN2, rel=1e-5)


def test_quality_focal_ignores_ignored_anchors_and_is_zero_at_its_target():
    # Ignored anchors add nothing; a logit whose sigmoid equals the target costs nothing.
    q = tf.constant([[0.25, 0.0]])
    logit = math.log(0.25 / 0.75)
    logits = tf.constant([[[logit], [3.0]]])
    assert float(quality_focal_loss_sum(tf.constant([[0, -2]]), logits, q, 2.0)) == \
        pytest.approx(0.0, abs=1e-7)


def test_quality_target_carries_no_gradient_to_the_boxes():
    deltas = tf.Variable(DELTAS)
    with tf.GradientTape() as tape:
        out = retinanet_loss(CLS_T, BOX_T, LOGITS, deltas, LossConfig(cls_loss="quality_focal"),
                             1.0, ANCHORS, V)
    assert tape.gradient(out["cls_loss"], deltas) is None


def test_decoded_losses_need_anchors():
    with pytest.raises(ValueError, match="anchors"):
        retinanet_loss(CLS_T, BOX_T, LOGITS, DELTAS, LossConfig(box_loss="giou"), 1.0)


def test_bad_names():
    with pytest.raises(ValueError, match="cls_loss"):
        LossConfig(cls_loss="varifocal")
    with pytest.raises(ValueError, match="box_loss"):
        LossConfig(box_loss="l2")


def test_batch_without_positives_and_positives_in_the_second_image():
    # No positive anywhere: no box loss; the quality focal loss sees 2 anchors x 2 classes of
    # background, 4 x 0.25 ln2 = ln2.
    none = np.full((1, 2), -1, np.int32)
    out = retinanet_loss(none, BOX_T, LOGITS, DELTAS,
                         LossConfig(box_loss="giou", cls_loss="quality_focal"), 1.0, ANCHORS, V)
    assert float(out["box_loss"]) == 0.0
    assert float(out["cls_loss"]) == pytest.approx(LN2, rel=1e-6)
    # Image 0 without positives, image 1 the golden one: the quality target lands on image 1's
    # anchor 0, so the sums are the golden ones plus image 0's ln2, in either order.
    for order in ((none, CLS_T), (CLS_T, none)):
        cls_t = np.concatenate(order)
        box_t = np.concatenate([BOX_T if (c == CLS_T).all() else np.zeros_like(BOX_T)
                                for c in order])
        out = retinanet_loss(cls_t, box_t, np.zeros((2, 2, 2), np.float32),
                             np.zeros((2, 2, 4), np.float32),
                             LossConfig(box_loss="giou", cls_loss="quality_focal"), 1.0,
                             ANCHORS, V)
        assert float(out["cls_loss"]) == pytest.approx((0.127551 + 0.75 + 1.0) * LN2, rel=1e-5)
        assert float(out["box_loss"]) == pytest.approx(1 - (1 / 7 - 2 / 9), rel=1e-5)


def test_eager_and_xla_agree_with_gradients():
    # The positives are gathered with a data-dependent count (tf.where): XLA pads it.
    config = LossConfig(box_loss="giou", cls_loss="quality_focal")
    deltas = tf.Variable(np.full((1, 2, 4), 0.1, np.float32))
    logits = tf.Variable(np.full((1, 2, 2), 0.3, np.float32))

    def loss_and_grads():
        with tf.GradientTape() as tape:
            loss = retinanet_loss(CLS_T, BOX_T, logits, deltas, config, 1.0, ANCHORS, V)["loss"]
        return [loss, *tape.gradient(loss, [logits, deltas])]

    eager = loss_and_grads()
    compiled = tf.function(loss_and_grads, jit_compile=True)()
    assert float(tf.reduce_sum(tf.abs(eager[2]))) > 0  # the box loss reaches the deltas
    for a, b in zip(eager, compiled, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
