import numpy as np
import tensorflow as tf

from boxes import coder as box_coder
from boxes.anchors import AnchorConfig

V = AnchorConfig().variances  # (0.1, 0.1, 0.2, 0.2)

ANCHORS = np.array([[0, 0, 32, 32], [10, 20, 50, 40], [100, 100, 164, 228]], np.float32)
BOXES = np.array([[2, 4, 30, 36], [0, 0, 60, 60], [90, 120, 170, 200]], np.float32)


def test_golden_encoding():
    # Anchor (0,0,32,32): centre (16,16), 32x32. Box (2,4,30,36): centre (16,20), 28x32.
    # ty = 0/32/0.1 = 0; tx = 4/32/0.1 = 1.25; th = ln(28/32)/0.2; tw = ln(1)/0.2 = 0.
    got = box_coder.encode(BOXES[:1], ANCHORS[:1], V).numpy()
    np.testing.assert_allclose(got, [[0.0, 1.25, np.log(28 / 32) / 0.2, 0.0]], atol=1e-6)


def test_round_trip():
    deltas = box_coder.encode(BOXES, ANCHORS, V)
    np.testing.assert_allclose(box_coder.decode(deltas, ANCHORS, V).numpy(), BOXES, atol=1e-4)


def test_round_trip_random_and_batched():
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 500, (2, 50, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(1, 300, (2, 50, 2))], -1).astype(np.float32)
    lo = rng.uniform(0, 500, (50, 2))
    anchors = np.concatenate([lo, lo + rng.uniform(8, 300, (50, 2))], -1).astype(np.float32)
    got = box_coder.decode(box_coder.encode(boxes, anchors[None], V), anchors[None], V)
    np.testing.assert_allclose(got.numpy(), boxes, rtol=1e-4, atol=1e-3)


def test_in_tf_function_same_as_eager():
    f = tf.function(lambda b, a: box_coder.decode(box_coder.encode(b, a, V), a, V))
    np.testing.assert_allclose(f(BOXES, ANCHORS).numpy(), BOXES, atol=1e-4)


def test_decode_clamps_huge_scale():
    out = box_coder.decode(np.array([[0, 0, 1e4, 1e4]], np.float32), ANCHORS[:1], V).numpy()
    assert np.isfinite(out).all()
