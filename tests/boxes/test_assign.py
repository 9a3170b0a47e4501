import functools

import numpy as np
import pytest
import tensorflow as tf

from boxes import assign
from boxes import coder as box_coder
from boxes.anchors import AnchorConfig
from boxes.assign import BACKGROUND, IGNORE, LabelerConfig

V = AnchorConfig().variances
label_anchors = functools.partial(assign.label_anchors, variances=V)
label_batch = functools.partial(assign.label_batch, variances=V)

# Four 10x10 anchors in a row, at x = 0, 10, 20, 30 (pixels).
ANCHORS = np.array([[0, 0, 10, 10], [0, 10, 10, 20], [0, 20, 10, 30], [0, 30, 10, 40]],
                   np.float32)


def label(boxes, classes, num=None, group_of=None, max_boxes=3):
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(boxes) if num is None else num
    pad = max_boxes - len(boxes)
    boxes = np.concatenate([boxes, np.zeros((pad, 4), np.float32)])
    classes = np.array(list(classes) + [-1] * pad, np.int32)
    g = np.array(list(group_of or [False] * (max_boxes - pad)) + [False] * pad)
    cls, box = label_anchors(ANCHORS, boxes, classes, n, g)
    return cls.numpy().tolist(), box.numpy()


def test_no_boxes_all_background():
    cls, box = label([], [])
    assert cls == [BACKGROUND] * 4
    assert not box.any()


def test_one_box_exact_match():
    cls, box = label([[0, 10, 10, 20]], [7])
    assert cls == [BACKGROUND, 7, BACKGROUND, BACKGROUND]
    np.testing.assert_allclose(box[1], 0, atol=1e-6)  # identical box: zero deltas
    assert not box[[0, 2, 3]].any()


def test_padding_rows_are_ignored():
    # A padding row equal to anchor 3 must not match it, whatever num_boxes hides.
    cls, _ = label([[0, 10, 10, 20], [0, 30, 10, 40]], [7, 9], num=1)
    assert cls == [BACKGROUND, 7, BACKGROUND, BACKGROUND]


def test_ignore_band():
    # Box x 13..26 (10 high, area 130) against anchor 1 (x 10..20): inter 7x10 = 70,
    # union 100 + 130 - 70 = 160, IoU 0.4375: in [0.4, 0.5), so ignored; anchor 2
    # (x 20..30): inter 60 / union 170 = 0.35: background.
    boxes = np.array([[0, 13, 10, 26]], np.float32)
    cls, box = label_anchors(ANCHORS, boxes, [1], 1, None, LabelerConfig(match_low_quality=False))
    assert cls.numpy().tolist() == [BACKGROUND, IGNORE, BACKGROUND, BACKGROUND]
    assert not box.numpy().any()
    # With low-quality matching (the default) the box claims anchor 1, its best.
    cls, _ = label([[0, 13, 10, 26]], [1])
    assert cls == [BACKGROUND, 1, BACKGROUND, BACKGROUND]
    # Box x 12..22: IoU 80 / 120 = 0.667 with anchor 1: positive by IoU.
    cls, _ = label([[0, 12, 10, 22]], [1])
    assert cls == [BACKGROUND, 1, BACKGROUND, BACKGROUND]


def test_low_quality_match_for_a_box_smaller_than_every_anchor():
    # A 2x2 box inside anchor 2: IoU 4/100 = 0.04 < 0.4, yet it claims anchor 2.
    cls, box = label([[4, 24, 6, 26]], [3])
    assert cls == [BACKGROUND, BACKGROUND, 3, BACKGROUND]
    expected = box_coder.encode(np.array([[4, 24, 6, 26]], np.float32), ANCHORS[2:3], V).numpy()
    np.testing.assert_allclose(box[2], expected[0], atol=1e-5)


def test_best_match_wins_between_two_boxes():
    # Box A = anchor 1 exactly (IoU 1), box B shifted x 11..21 (IoU with anchor 1 = 0.818).
    cls, _ = label([[0, 11, 10, 21], [0, 10, 10, 20]], [4, 5])
    assert cls[1] == 5


def test_group_of_box():
    # A group-of box over anchors 0-2 (x 0..30): IoU with each anchor 1/3 -> not positive by
    # IoU; it claims anchor 0 (first best); anchors 1 and 2 lie inside it (IoA 1) -> ignored,
    # not background; anchor 3 is outside -> background.
    cls, _ = label([[0, 0, 10, 30]], [2], group_of=[True])
    assert cls == [2, IGNORE, IGNORE, BACKGROUND]
    # The same box without the group-of flag: the anchors inside stay background.
    cls, _ = label([[0, 0, 10, 30]], [2], group_of=[False])
    assert cls == [2, BACKGROUND, BACKGROUND, BACKGROUND]


def test_eager_tf_function_and_tf_data_agree():
    boxes = np.array([[0, 13, 10, 26], [4, 24, 6, 26], [0, 0, 0, 0]], np.float32)
    classes = np.array([1, 3, -1], np.int32)
    group = np.array([False, True, False])
    eager = label_anchors(ANCHORS, boxes, classes, 2, group)
    graph = tf.function(label_anchors)(ANCHORS, boxes, classes, tf.constant(2), group)
    ds = tf.data.Dataset.from_tensors((boxes, classes, 2, group)).map(
        lambda b, c, n, g: label_anchors(ANCHORS, b, c, n, g))
    in_data = next(iter(ds))
    for other in (graph, in_data):
        assert eager[0].numpy().tolist() == other[0].numpy().tolist()
        np.testing.assert_allclose(eager[1].numpy(), other[1].numpy())


def test_batch_matches_single():
    boxes = np.array([[[0, 10, 10, 20], [0, 0, 0, 0]], [[4, 24, 6, 26], [0, 30, 10, 40]]],
                     np.float32)
    classes = np.array([[7, -1], [3, 1]], np.int32)
    num = np.array([1, 2], np.int32)
    cls, box = label_batch(ANCHORS, boxes, classes, num)
    for i in range(2):
        c, b = label_anchors(ANCHORS, boxes[i], classes[i], num[i])
        assert cls[i].numpy().tolist() == c.numpy().tolist()
        np.testing.assert_allclose(box[i].numpy(), b.numpy())
    assert cls.shape == (2, 4) and box.shape == (2, 4, 4)


@pytest.mark.parametrize("n", [0, 1])
def test_empty_tensor_input(n):
    boxes = np.zeros((n, 4), np.float32)
    cls, box = label_anchors(ANCHORS, boxes, np.zeros((n,), np.int32), 0)
    assert cls.numpy().tolist() == [BACKGROUND] * 4
