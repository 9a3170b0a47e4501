import numpy as np
import pytest

from boxes.anchors import AnchorConfig, generate_anchors, level_anchor_shapes


def test_golden_single_level():
    # One level (P3, stride 8), one size 32, ratio 1, scale 1 on a 16x16 image:
    # a 2x2 grid with centres (4, 4), (4, 12), (12, 4), (12, 12) (row-major),
    # each anchor 32x32, i.e. centre +- 16.
    config = AnchorConfig(min_level=3, max_level=3, sizes=(32,), ratios=(1.0,), scales=(1.0,))
    expected = [[-12, -12, 20, 20], [-12, -4, 20, 28], [-4, -12, 28, 20], [-4, -4, 28, 28]]
    np.testing.assert_allclose(generate_anchors(16, 16, config), expected)


def test_golden_ratios_and_scales_order():
    # Ratio is height / width; for size 32 at ratio 0.5 the area 32^2 gives
    # w = 32 * sqrt(2) = 45.25, h = 22.63; scales multiply the side; ratios
    # outer, scales inner.
    config = AnchorConfig(min_level=3, max_level=3, sizes=(32,), ratios=(0.5, 2.0),
                          scales=(1.0, 2.0))
    shapes = level_anchor_shapes(config, 32)
    s2 = np.sqrt(2)
    np.testing.assert_allclose(shapes, [[32 / s2, 32 * s2], [64 / s2, 64 * s2],
                                        [32 * s2, 32 / s2], [64 * s2, 64 / s2]])
    anchors = generate_anchors(8, 8, config)  # one location, centre (4, 4)
    np.testing.assert_allclose(anchors[0], [4 - 16 / s2, 4 - 16 * s2, 4 + 16 / s2, 4 + 16 * s2],
                               rtol=1e-6)


def test_default_counts_and_level_order():
    config = AnchorConfig()
    anchors = generate_anchors(1024, 1024, config)
    # P3..P7 grids 128, 64, 32, 16, 8 squared, 9 anchors each.
    per_level = [128 ** 2, 64 ** 2, 32 ** 2, 16 ** 2, 8 ** 2]
    assert anchors.shape == (9 * sum(per_level), 4) == (config.num_anchors(1024, 1024), 4)
    sides = np.sqrt((anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1]))
    start = 0
    for size, n in zip(config.sizes, per_level, strict=True):
        level = sides[start:start + 9 * n]
        assert level.min() == pytest.approx(size, rel=1e-5)
        assert level.max() == pytest.approx(size * 2 ** (2 / 3), rel=1e-5)
        start += 9 * n
    # The last anchor is P7's bottom-right cell, centre (1024 - 64, 1024 - 64).
    centre = (anchors[-1, :2] + anchors[-1, 2:]) / 2
    np.testing.assert_allclose(centre, [960, 960])


def test_non_multiple_size_uses_ceil_grids():
    config = AnchorConfig()
    assert config.grid_size(3, 100, 130) == (13, 17)
    assert generate_anchors(100, 130, config).shape[0] == config.num_anchors(100, 130)


def test_sizes_must_match_levels():
    with pytest.raises(ValueError, match="sizes"):
        AnchorConfig(min_level=3, max_level=5, sizes=(32, 64))


@pytest.mark.parametrize("field,value", [("ratios", ()), ("scales", (1.0, -0.5)),
                                         ("sizes", (16, 32, 0, 128, 256))])
def test_empty_or_non_positive_shapes_are_refused(field, value):
    with pytest.raises(ValueError, match=f"anchor {field} must be positive numbers"):
        AnchorConfig(**{field: value})
