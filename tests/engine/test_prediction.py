"""predict.py's per-image combination: ensembles fused, levels merged, ancestors, top K."""

import numpy as np
import pytest

from engine.inference import Detections, Detector, ImageResult
from engine.prediction import Combiner
from oid.hierarchy import Hierarchy
from tests.inference_fixtures import LABELS, LEVEL2_LABELS, MAX_SIDE, MIN_SIDE, TINY

# green has two parents, shape and colour; red and blue are shapes.
HIERARCHY = Hierarchy.from_json({"LabelName": "/m/0bl9f", "Subcategory": [
    {"LabelName": "/m/shape", "Subcategory": [
        {"LabelName": "/m/red"}, {"LabelName": "/m/blue"}, {"LabelName": "/m/green"}]},
    {"LabelName": "/m/colour", "Subcategory": [{"LabelName": "/m/green"}]}]})
R, B, G = (0.1, 0.1, 0.5, 0.5), (0.6, 0.6, 0.9, 0.9), (0.2, 0.6, 0.4, 0.8)


def _detector(labels, level):
    return Detector(f"level{level}", None, TINY, MIN_SIDE, MAX_SIDE, tuple(labels), level)


def _dets(*items):
    """(box, score, level-local class) triples."""
    return Detections(np.array([b for b, _, _ in items], np.float32).reshape(-1, 4),
                      np.array([s for _, s, _ in items], np.float32),
                      np.array([c for _, _, c in items], np.int32))


@pytest.fixture
def combiner():
    detectors = [_detector(LABELS, 1), _detector(LABELS, 1), _detector(LEVEL2_LABELS, 2)]
    return Combiner(detectors, {2: [2], 1: [0, 1]}, HIERARCHY, top_k=6, score_threshold=0.1)


def test_levels_merged_ensemble_fused_ancestors_copied_once(combiner):
    # Level 1 has two models: red R at 0.9 and 0.7 fuse into R at (0.9 + 0.7) / 2 = 0.8;
    # blue B only in the first: 0.4 x min(1 member, 2 models) / 2 = 0.2. Level 2 says green
    # G 0.6 and shape R 0.5. Copied up: red R -> shape R 0.8, which absorbs level 2's
    # identical shape R 0.5; green G -> colour G and shape G (each parent once); blue B ->
    # shape B. Highest first, each box then its copies in MID order; top 6 drops shape B.
    row = ImageResult("img", True, (_dets((R, 0.9, 0), (B, 0.4, 1)), _dets((R, 0.7, 0)),
                                    _dets((G, 0.6, 0), (R, 0.5, 1))))
    out = combiner(row)
    assert out.image_id == "img"
    assert out.mids.tolist() == ["/m/red", "/m/shape", "/m/green", "/m/colour", "/m/shape",
                                 "/m/blue"]
    np.testing.assert_allclose(out.scores, [0.8, 0.8, 0.6, 0.6, 0.6, 0.2], rtol=1e-6)
    np.testing.assert_allclose(out.boxes, [R, R, G, G, G, B], atol=1e-6)


def test_score_threshold_and_unreadable_image():
    detectors = [_detector(LABELS, 1), _detector(LABELS, 1), _detector(LEVEL2_LABELS, 2)]
    combiner = Combiner(detectors, {2: [2], 1: [0, 1]}, HIERARCHY, top_k=6, score_threshold=0.3)
    row = ImageResult("img", True, (_dets((B, 0.4, 1)), _dets(), _dets()))
    assert len(combiner(row)) == 0  # blue fused to 0.2 < 0.3, and so its shape copy
    broken = ImageResult("broken", False, (_dets(), _dets(), _dets()))
    out = combiner(broken)
    assert out.image_id == "broken" and len(out) == 0


def test_every_detector_in_one_level():
    detectors = [_detector(LABELS, 1), _detector(LEVEL2_LABELS, 2)]
    with pytest.raises(ValueError, match="exactly one level"):
        Combiner(detectors, {1: [0], 2: [0]}, None)
