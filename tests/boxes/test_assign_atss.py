"""The ATSS assigner (boxes/assign.py): golden values worked by hand, and agreement with an
independent numpy implementation on real anchors."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from boxes import assign
from boxes import coder as box_coder
from boxes.anchors import AnchorConfig, generate_anchors
from boxes.assign import BACKGROUND, IGNORE, LabelerConfig, atss_thresholds

V = AnchorConfig().variances
label_anchors = functools.partial(assign.label_anchors, variances=V)

# Level 0: four 10x10 anchors in a row, centres x = 5, 15, 25, 35 (y = 5).
# Level 1: two 20x20 anchors, centres (5, 10) and (5, 30).
ANCHORS = np.array([[0, 0, 10, 10], [0, 10, 10, 20], [0, 20, 10, 30], [0, 30, 10, 40],
                    [-5, 0, 15, 20], [-5, 20, 15, 40]], np.float32)
COUNTS = (4, 2)


def atss(top_k, **kwargs):
    return LabelerConfig(assigner="atss", atss_top_k=top_k, **kwargs)


def label(boxes, classes, config, anchors=ANCHORS, counts=COUNTS, group_of=None):
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    g = np.array(group_of or [False] * len(boxes))
    cls, box = label_anchors(anchors, boxes, np.array(classes, np.int32), len(boxes), g,
                             config, level_counts=counts)
    return cls.numpy().tolist(), box.numpy()


def test_threshold_is_mean_plus_sample_std():
    # IoUs 0.714286, 0.142857, 0.255814, 0.058824: mean 1.171781 / 4 = 0.292945; deviations
    # 0.421341, -0.150088, -0.037131, -0.234121, squares sum 0.256246, / (4 - 1) = 0.085415,
    # sqrt 0.292258: threshold 0.585203.
    ious = tf.constant([[0.714286, 0.142857, 0.255814, 0.058824]])
    np.testing.assert_allclose(atss_thresholds(ious).numpy(), [0.585203], atol=1e-5)


def test_single_candidate_threshold_is_its_iou():
    np.testing.assert_allclose(atss_thresholds(tf.constant([[0.3]])).numpy(), [0.3])


def test_golden_one_box_two_levels():
    # Box y 0..10, x 9..23 (centre (5, 16), area 140), top_k 2.
    # Level 0 distances to x 5, 15, 25, 35: 11, 1, 9, 19 -> candidates anchors 1 and 2;
    #   IoU(anchor 1, x 10..20) = 100 / (100 + 140 - 100) = 0.714286,
    #   IoU(anchor 2, x 20..30) = 30 / (100 + 140 - 30) = 0.142857.
    # Level 1 has 2 anchors, both candidates:
    #   IoU(anchor 4) = 10 * 11 / (400 + 140 - 110) = 0.255814,
    #   IoU(anchor 5) = 10 * 3 / (400 + 140 - 30) = 0.058824.
    # Threshold 0.585203 (test above): only anchor 1 (centre (5, 15) inside the box).
    cls, box = label([[0, 9, 10, 23]], [4], atss(2))
    assert cls == [BACKGROUND, 4, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND]
    expected = box_coder.encode(np.array([0, 9, 10, 23], np.float32), ANCHORS[1], V).numpy()
    np.testing.assert_allclose(box[1], expected, atol=1e-5)
    assert not box[[0, 2, 3, 4, 5]].any()


def test_adaptive_threshold_finds_positives_that_iou_matching_ignores():
    # Box y 0..10, x 13..27 (centre (5, 20), area 140), top_k 3.
    # Level 0 distances 15, 5, 5, 15 -> anchors 1, 2 and (tie at 15, first index) 0:
    #   IoU anchor 1 = anchor 2 = 70 / (100 + 140 - 70) = 0.411765; anchor 0: 0.
    # Level 1: IoU anchor 4 = anchor 5 = 70 / (400 + 140 - 70) = 0.148936.
    # Mean (2 * 0.411765 + 2 * 0.148936) / 5 = 0.224280; squared deviations
    # 2 * 0.187485^2 + 0.224280^2 + 2 * 0.075344^2 = 0.131958, / 4 = 0.032990, sqrt 0.181631:
    # threshold 0.405911 <= 0.411765, centres x 15 and 25 inside 13..27: both positive.
    cls, _ = label([[0, 13, 10, 27]], [6], atss(3))
    assert cls == [BACKGROUND, 6, 6, BACKGROUND, BACKGROUND, BACKGROUND]
    # IoU matching: 0.411765 is in the ignore band [0.4, 0.5); the box claims anchor 1 (first
    # of its best), anchor 2 stays ignored.
    cls, _ = label([[0, 13, 10, 27]], [6], LabelerConfig())
    assert cls == [BACKGROUND, 6, IGNORE, BACKGROUND, BACKGROUND, BACKGROUND]


def test_centre_outside_the_box_is_not_positive():
    # Box y 0..10, x 0..4.5 against level 0 only, top_k 4: IoU anchor 0 = 45 / 100 = 0.45,
    # the others 0. Mean 0.1125, deviations 0.3375 and 3 x -0.1125: (0.113906 + 0.037969)
    # / 3 = 0.050625, sqrt 0.225: threshold 0.3375 < 0.45, but anchor 0's centre x = 5 lies
    # outside x 0..4.5.
    config = atss(4, match_low_quality=False)
    cls, box = label([[0, 0, 10, 4.5]], [1], config, ANCHORS[:4], (4,))
    assert cls == [BACKGROUND] * 4
    assert not box.any()
    # With low-quality matching the box, left without positives, claims its best anchor.
    cls, _ = label([[0, 0, 10, 4.5]], [1], atss(4), ANCHORS[:4], (4,))
    assert cls == [1, BACKGROUND, BACKGROUND, BACKGROUND]


def test_ignore_band_leaves_near_misses_out_of_the_background():
    # The golden box above (y 0..10, x 9..23, top_k 2): anchor 1 is positive (IoU 0.714286);
    # the other anchors' IoUs: anchor 0 10 / (100 + 140 - 10) = 0.043478, anchor 2 0.142857,
    # anchor 3 0, anchor 4 0.255814, anchor 5 0.058824. A band from 0.25 ignores anchor 4,
    # one from 0.1 anchors 2 and 4; the positive stays positive, box targets stay 0.
    cls, box = label([[0, 9, 10, 23]], [4], atss(2, atss_ignore_iou=0.25))
    assert cls == [BACKGROUND, 4, BACKGROUND, BACKGROUND, IGNORE, BACKGROUND]
    assert not box[[0, 2, 3, 4, 5]].any()
    cls, _ = label([[0, 9, 10, 23]], [4], atss(2, atss_ignore_iou=0.1))
    assert cls == [BACKGROUND, 4, IGNORE, BACKGROUND, IGNORE, BACKGROUND]
    # An anchor whose centre lies outside the box (x 0..4.5, IoU 0.45, test above) is no
    # positive; from 0.4 it is ignored, at 0.5 background again.
    config = atss(4, match_low_quality=False, atss_ignore_iou=0.4)
    cls, _ = label([[0, 0, 10, 4.5]], [1], config, ANCHORS[:4], (4,))
    assert cls == [IGNORE, BACKGROUND, BACKGROUND, BACKGROUND]
    config = atss(4, match_low_quality=False, atss_ignore_iou=0.5)
    cls, _ = label([[0, 0, 10, 4.5]], [1], config, ANCHORS[:4], (4,))
    assert cls == [BACKGROUND] * 4
    # No boxes: nothing to ignore. Inside tf.data, the same as eagerly.
    cls, _ = label(np.zeros((0, 4)), [], atss(2, atss_ignore_iou=0.1))
    assert cls == [BACKGROUND] * 6
    fn = functools.partial(label_anchors, config=atss(2, atss_ignore_iou=0.1),
                           level_counts=COUNTS)
    ds = tf.data.Dataset.from_tensors(np.array([[0, 9, 10, 23]], np.float32)).map(
        lambda b: fn(ANCHORS, b, tf.constant([4]), 1, None))
    assert next(iter(ds))[0].numpy().tolist() == [BACKGROUND, 4, IGNORE, BACKGROUND, IGNORE,
                                                  BACKGROUND]


def test_anchor_positive_for_two_boxes_goes_to_the_higher_iou():
    # Level 0 only, top_k 1 (one candidate: threshold = its IoU). Box A = anchor 1 exactly
    # (IoU 1); box B x 10..22 (centre 16, nearest anchor 1): IoU 100 / 120 = 0.833. Both
    # select anchor 1 and its centre (5, 15) is inside both: it goes to A (class 2).
    boxes = [[0, 10, 10, 22], [0, 10, 10, 20]]
    config = atss(1, match_low_quality=False)
    cls, _ = label(boxes, [1, 2], config, ANCHORS[:4], (4,))
    assert cls == [BACKGROUND, 2, BACKGROUND, BACKGROUND]
    # Low-quality matching does not let B, left without positives, take anchor 1 back.
    cls, _ = label(boxes, [1, 2], atss(1), ANCHORS[:4], (4,))
    assert cls == [BACKGROUND, 2, BACKGROUND, BACKGROUND]


def test_group_of_rule_applies():
    # A group-of box x 0..30 over level 0, top_k 4: IoUs 1/3, 1/3, 1/3, 0: mean 0.25, sample
    # std sqrt((3 * 0.083333^2 + 0.25^2) / 3) = sqrt(0.027778) = 0.166667: threshold 0.416667
    # > 1/3: no positive; it claims anchor 0 (first best); anchors 1 and 2 lie inside it (IoA
    # 1): ignored; anchor 3: background.
    cls, _ = label([[0, 0, 10, 30]], [2], atss(4), ANCHORS[:4], (4,), group_of=[True])
    assert cls == [2, IGNORE, IGNORE, BACKGROUND]


def test_no_boxes_and_padding():
    cls, box = label(np.zeros((0, 4)), [], atss(2))
    assert cls == [BACKGROUND] * 6 and not box.any()
    boxes = np.array([[0, 9, 10, 23], [0, 30, 10, 40]], np.float32)  # second row: padding
    cls, _ = label_anchors(ANCHORS, boxes, np.array([4, 5]), 1, None, atss(2),
                           level_counts=COUNTS)
    assert cls.numpy().tolist() == [BACKGROUND, 4, BACKGROUND, BACKGROUND, BACKGROUND,
                                    BACKGROUND]


def test_needs_level_counts():
    with pytest.raises(ValueError, match="level_counts"):
        label_anchors(ANCHORS, np.zeros((1, 4), np.float32), [0], 1, None, atss(2))


def test_bad_config():
    with pytest.raises(ValueError, match="assigner"):
        LabelerConfig(assigner="topk")
    with pytest.raises(ValueError, match="atss_top_k"):
        LabelerConfig(assigner="atss", atss_top_k=0)
    with pytest.raises(ValueError, match="atss_ignore_iou"):
        LabelerConfig(assigner="atss", atss_ignore_iou=1.5)


def _numpy_atss(anchors, boxes, counts, top_k):
    """An independent, loop-based ATSS (positives before the low-quality rule): [A] box index
    or -1."""
    a_cy, a_cx = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    best = np.full(len(anchors), -1)
    best_iou = np.full(len(anchors), -1.0)
    for j, b in enumerate(boxes):
        ih = np.clip(np.minimum(anchors[:, 2], b[2]) - np.maximum(anchors[:, 0], b[0]), 0, None)
        iw = np.clip(np.minimum(anchors[:, 3], b[3]) - np.maximum(anchors[:, 1], b[1]), 0, None)
        inter = ih * iw
        area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        iou = inter / (area_a + (b[2] - b[0]) * (b[3] - b[1]) - inter)
        d = np.hypot(a_cy - (b[0] + b[2]) / 2, a_cx - (b[1] + b[3]) / 2)
        cand, start = [], 0
        for c in counts:
            cand.extend(start + np.argsort(d[start:start + c], kind="stable")[:top_k])
            start += c
        cand = np.array(cand)
        threshold = iou[cand].mean() + iou[cand].std(ddof=1)
        for a in cand:
            inside = b[0] < a_cy[a] < b[2] and b[1] < a_cx[a] < b[3]
            if inside and iou[a] >= threshold and iou[a] > best_iou[a]:
                best[a], best_iou[a] = j, iou[a]
    return best


def test_agrees_with_a_numpy_implementation_on_real_anchors():
    config = AnchorConfig(sizes=(16, 32, 64, 128, 256))
    anchors = generate_anchors(128, 128, config)
    counts = config.level_counts(128, 128)
    assert sum(counts) == len(anchors) == config.num_anchors(128, 128)
    rng = np.random.default_rng(3)
    for _ in range(3):
        n = 6
        hw = np.exp(rng.uniform(np.log(6), np.log(100), (n, 2)))
        y0x0 = rng.uniform(0, 1, (n, 2)) * (128 - hw)
        boxes = np.concatenate([y0x0, y0x0 + hw], axis=1).astype(np.float32)
        classes = np.arange(n, dtype=np.int32)
        cls, _ = label_anchors(anchors, boxes, classes, n, None,
                               atss(9, match_low_quality=False), level_counts=counts)
        expected = _numpy_atss(anchors.astype(np.float64), boxes.astype(np.float64), counts, 9)
        got = cls.numpy()
        np.testing.assert_array_equal(np.where(got >= 0, got, -1), expected)
        assert (got >= 0).sum() > n  # several positives per box on average


def test_eager_graph_tf_data_and_batch_agree():
    boxes = np.array([[0, 13, 10, 27], [0, 0, 10, 4.5], [0, 0, 0, 0]], np.float32)
    classes = np.array([1, 3, -1], np.int32)
    group = np.array([False, True, False])
    fn = functools.partial(label_anchors, config=atss(3), level_counts=COUNTS)
    eager = fn(ANCHORS, boxes, classes, 2, group)
    graph = tf.function(fn)(ANCHORS, boxes, classes, tf.constant(2), group)
    ds = tf.data.Dataset.from_tensors((boxes, classes, 2, group)).map(
        lambda b, c, n, g: fn(ANCHORS, b, c, n, g))
    in_data = next(iter(ds))
    batch_cls, batch_box = assign.label_batch(
        ANCHORS, boxes[None], classes[None], np.array([2]), group[None], atss(3),
        variances=V, level_counts=COUNTS)
    for cls, box in (graph, in_data, (batch_cls[0], batch_box[0])):
        assert eager[0].numpy().tolist() == cls.numpy().tolist()
        np.testing.assert_allclose(eager[1].numpy(), box.numpy())
    # The first box as in test_adaptive_threshold...; the second (group-of) as in
    # test_centre_outside...: no positive, it claims anchor 0.
    assert eager[0].numpy().tolist() == [3, 1, 1, BACKGROUND, BACKGROUND, BACKGROUND]
