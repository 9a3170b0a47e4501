import math

import numpy as np
import pytest
import tensorflow as tf

from model.config import LossConfig
from model.losses import box_loss_sum, focal_loss_sum, num_positives, retinanet_loss

LN2 = math.log(2.0)
# With logits 0 every probability is 0.5 and the cross-entropy ln 2:
# background entry: alpha_t 0.75 * (1 - 0.5)^2 * ln2 = 0.1875 ln2;
# foreground entry: alpha_t 0.25 * 0.5^2 * ln2 = 0.0625 ln2.
BG, FG = 0.1875 * LN2, 0.0625 * LN2
ZEROS = np.zeros((1, 2, 3), np.float32)  # one image, two anchors, three classes


def losses(cls_targets, box_targets=None, deltas=None, normalizer=None):
    cls_targets = np.array([cls_targets], np.int32)
    box_targets = np.zeros((1, 2, 4), np.float32) if box_targets is None else \
        np.array([box_targets], np.float32)
    deltas = np.zeros((1, 2, 4), np.float32) if deltas is None else np.array([deltas], np.float32)
    n = num_positives(cls_targets) if normalizer is None else normalizer
    out = retinanet_loss(cls_targets, box_targets, ZEROS, deltas, LossConfig(), n)
    return {k: float(v) for k, v in out.items()}


def test_no_positives():
    # Six background entries, normalizer max(1, 0) = 1.
    out = losses([-1, -1])
    assert out["cls_loss"] == pytest.approx(6 * BG, rel=1e-6)
    assert out["box_loss"] == 0.0


def test_all_ignored():
    out = losses([-2, -2], box_targets=[[1, 1, 1, 1]] * 2, deltas=[[5, 5, 5, 5]] * 2)
    assert out == {"loss": 0.0, "cls_loss": 0.0, "box_loss": 0.0}


def test_one_positive():
    # Anchor 0 is class 1: one foreground entry and five background ones:
    # 0.0625 ln2 + 5 * 0.1875 ln2 = ln 2. Box: smooth L1 (beta 1/9) of target
    # (0.05, -0.2, 0, 1) against zero deltas:
    #   0.05 < 1/9: 0.5 * 0.05^2 * 9 = 0.01125;  0.2: 0.2 - 1/18;  0: 0;  1: 1 - 1/18.
    out = losses([1, -1], box_targets=[[0.05, -0.2, 0, 1], [9, 9, 9, 9]])
    assert out["cls_loss"] == pytest.approx(FG + 5 * BG, rel=1e-6) == pytest.approx(LN2)
    assert out["box_loss"] == pytest.approx(0.01125 + (0.2 - 1 / 18) + (1 - 1 / 18), rel=1e-5)


def test_global_normalizer():
    # The same image in a global batch with 2 positives (another replica has one).
    one = losses([1, -1], box_targets=[[0, 0, 0, 1], [0, 0, 0, 0]])
    two = losses([1, -1], box_targets=[[0, 0, 0, 1], [0, 0, 0, 0]], normalizer=2.0)
    for k in one:
        assert two[k] == pytest.approx(one[k] / 2)


def test_huber_and_bad_kind():
    targets = tf.constant([[[0.0, 0.0, 0.0, 1.0]]])
    cls = tf.constant([[0]])
    # Huber delta 1/9 of a difference 1: (1/9) * (1 - 1/18).
    got = box_loss_sum(cls, targets, tf.zeros_like(targets), "huber", 1 / 9)
    assert float(got) == pytest.approx((1 / 9) * (1 - 1 / 18), rel=1e-6)
    with pytest.raises(ValueError, match="box_loss"):
        box_loss_sum(cls, targets, targets, "l2", 1.0)


def test_focal_down_weights_easy_negatives():
    easy = float(focal_loss_sum(tf.constant([[-1]]), tf.constant([[[-6.0]]]), 0.25, 2.0))
    hard = float(focal_loss_sum(tf.constant([[-1]]), tf.constant([[[2.0]]]), 0.25, 2.0))
    assert easy < 1e-6 < hard
