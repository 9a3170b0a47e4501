"""The train/val split: a pure function of the ImageID.

An image's side is decided by a stable hash of its id (the first 8 bytes of
SHA-1 read as an unsigned integer), never by Python's `hash` (salted per
process) or by a random draw. So every Beam worker, every level and every rerun
puts an image on the same side, and growing the validation fraction only moves
images from train to val, never back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

_SCALE = float(2**64)


def split_value(image_id: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by (salt, image_id)."""
    digest = hashlib.sha1(f"{salt}{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def is_val(image_id: str, val_fraction: float, salt: str = "") -> bool:
    """True if the image belongs to the validation split."""
    _check_fraction(val_fraction)
    return split_value(image_id, salt) < val_fraction


def split_of(image_id: str, val_fraction: float, salt: str = "") -> str:
    """'val' or 'train'."""
    return "val" if is_val(image_id, val_fraction, salt) else "train"


def val_mask(image_ids: Iterable[str], val_fraction: float, salt: str = "") -> np.ndarray:
    """Vectorized is_val: a bool array parallel to `image_ids`."""
    _check_fraction(val_fraction)
    values = np.fromiter((split_value(i, salt) for i in image_ids), dtype=np.float64)
    return values < val_fraction


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
