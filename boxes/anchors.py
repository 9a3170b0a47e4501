"""Anchor boxes for the FPN levels, generated once per (padded) image size, and the box
coder's variances: the configuration that both target encoding and decoding read.

Order (shared by the labeler, the heads' outputs and the decoder): level by
level from min_level up; within a level, row-major over the feature grid
(y, then x); within a location, ratios outer and scales inner. Boxes are
(ymin, xmin, ymax, xmax) in pixels of the padded input image.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """Attributes:
      min_level, max_level: FPN levels (P3-P7: strides 8-128). The model (model/config.py) takes min_level 2
        (P2, stride 4, from the backbone's C2, for small objects) or 3, and max_level 5-7.
      sizes: anchor side at scale 1 for each level, pixels.
      ratios: height / width.
      scales: multipliers of the size.
      variances: (vy, vx, vh, vw) of the box coder (boxes/coder.py). They live here so that
        the targets of training and the decoder of inference read one value.
    """

    min_level: int = 3
    max_level: int = 7
    sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)

    def __post_init__(self):
        if not 1 <= self.min_level <= self.max_level:
            raise ValueError(f"levels {self.min_level}-{self.max_level}: need "
                             "1 <= min_level <= max_level")
        if len(self.sizes) != self.max_level - self.min_level + 1:
            raise ValueError(f"{len(self.sizes)} sizes for levels {self.min_level}-{self.max_level}"
                             f": give one size per level "
                             f"({self.max_level - self.min_level + 1})")
        for name in ("sizes", "ratios", "scales", "variances"):
            values = getattr(self, name)
            if not values or min(values) <= 0:
                raise ValueError(f"anchor {name} must be positive numbers, got {values}")
        if len(self.variances) != 4:
            raise ValueError(f"variances must be 4 numbers (vy, vx, vh, vw), got {self.variances}")

    @classmethod
    def from_json(cls, saved: dict) -> AnchorConfig:
        """The dict of a config.json (lists for tuples); a file written before the variances
        moved here has none and gets the defaults, which every such run used."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})

    @property
    def levels(self) -> range:
        return range(self.min_level, self.max_level + 1)

    @property
    def anchors_per_location(self) -> int:
        return len(self.ratios) * len(self.scales)

    def stride(self, level: int) -> int:
        return 2 ** level

    def grid_size(self, level: int, height: int, width: int) -> tuple[int, int]:
        """Feature map size of `level` for an input of height x width (ceil division, as conv
        strides of 2 with 'same' padding give)."""
        s = self.stride(level)
        return math.ceil(height / s), math.ceil(width / s)

    def num_anchors(self, height: int, width: int) -> int:
        return sum(self.level_counts(height, width))

    def level_counts(self, height: int, width: int) -> tuple[int, ...]:
        """Anchors of each level, min_level first, in generate_anchors' order: level l's
        anchors are rows sum(counts[:l]) to sum(counts[:l + 1]) (what ATSS selects per level)."""
        return tuple(math.prod(self.grid_size(lv, height, width)) * self.anchors_per_location
                     for lv in self.levels)


def level_anchor_shapes(config: AnchorConfig, size: float) -> np.ndarray:
    """[K, 2] (height, width) of the K = ratios x scales anchors of one location, pixels."""
    shapes = []
    for ratio in config.ratios:
        for scale in config.scales:
            area = (size * scale) ** 2
            w = math.sqrt(area / ratio)
            shapes.append((w * ratio, w))
    return np.array(shapes, np.float64)


def generate_anchors(height: int, width: int, config: AnchorConfig = AnchorConfig()) -> np.ndarray:
    """All anchors of an input of height x width pixels.

    Returns:
      [A, 4] float32 (ymin, xmin, ymax, xmax) pixels, A = config.num_anchors(height, width),
      centred on (y + 0.5, x + 0.5) * stride of each grid cell.
    """
    out = []
    for level, size in zip(config.levels, config.sizes, strict=True):
        stride = config.stride(level)
        gh, gw = config.grid_size(level, height, width)
        cy = (np.arange(gh) + 0.5) * stride
        cx = (np.arange(gw) + 0.5) * stride
        cy, cx = np.meshgrid(cy, cx, indexing="ij")
        centers = np.stack([cy.ravel(), cx.ravel()], axis=-1)[:, None, :]   # [L, 1, 2]
        half = level_anchor_shapes(config, size)[None, :, :] / 2             # [1, K, 2]
        boxes = np.concatenate([centers - half, centers + half], axis=-1)   # [L, K, 4]
        out.append(boxes.reshape(-1, 4))
    return np.concatenate(out, axis=0).astype(np.float32)
