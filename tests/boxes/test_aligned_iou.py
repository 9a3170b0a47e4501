"""IoU, GIoU and DIoU of paired boxes (boxes/ops.py), golden values worked by hand."""

import numpy as np
import pytest
import tensorflow as tf

from boxes.ops import aligned_iou, distance_iou, generalized_iou

# a = (0, 0, 2, 2), b = (1, 1, 3, 3): intersection 1, union 4 + 4 - 1 = 7, IoU 1/7 = 0.142857;
# enclosing box (0, 0, 3, 3), area 9: GIoU = 1/7 - (9 - 7) / 9 = -0.079365; centres (1, 1)
# and (2, 2), squared distance 2, enclosing diagonal^2 = 9 + 9 = 18: DIoU = 1/7 - 2/18 = 0.031746.
OVERLAP = ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9, 1 / 7 - 2 / 18)
# a = (0, 0, 1, 1), b = (0, 2, 1, 3), disjoint: IoU 0; enclosing (0, 0, 1, 3), area 3, union
# 2: GIoU -1/3; centres 2 apart, diagonal^2 = 1 + 9 = 10: DIoU -0.4.
DISJOINT = ([0, 0, 1, 1], [0, 2, 1, 3], 0.0, -1 / 3, -0.4)
SAME = ([1, 2, 5, 4], [1, 2, 5, 4], 1.0, 1.0, 1.0)


@pytest.mark.parametrize("case", [OVERLAP, DISJOINT, SAME], ids=["overlap", "disjoint", "same"])
def test_golden(case):
    a, b, iou, giou, diou = case
    a, b = tf.constant([a], tf.float32), tf.constant([b], tf.float32)
    assert float(aligned_iou(a, b)[0]) == pytest.approx(iou, abs=1e-6)
    assert float(generalized_iou(a, b)[0]) == pytest.approx(giou, abs=1e-6)
    assert float(distance_iou(a, b)[0]) == pytest.approx(diou, abs=1e-6)


def test_symmetric_and_batched_shapes():
    a = tf.constant([[OVERLAP[0], DISJOINT[0]]], tf.float32)   # [1, 2, 4]
    b = tf.constant([[OVERLAP[1], DISJOINT[1]]], tf.float32)
    for fn in (aligned_iou, generalized_iou, distance_iou):
        assert fn(a, b).shape == (1, 2)
        np.testing.assert_allclose(fn(a, b).numpy(), fn(b, a).numpy(), atol=1e-7)


def test_gradient_is_finite_for_disjoint_boxes():
    # GIoU and DIoU still pull disjoint boxes together (IoU alone has no gradient there).
    a = tf.Variable([DISJOINT[0]], dtype=tf.float32)
    b = tf.constant([DISJOINT[1]], tf.float32)
    for fn in (generalized_iou, distance_iou):
        with tf.GradientTape() as tape:
            loss = 1.0 - fn(a, b)
        grad = tape.gradient(loss, a).numpy()
        assert np.isfinite(grad).all() and grad[0, 3] < 0  # growing xmax towards b helps
