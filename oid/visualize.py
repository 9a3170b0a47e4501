"""Detections drawn on their image, for people to look at (Pillow only, no TensorFlow).

    draw_detections("test/0a1b2c3d4e5f6789.jpg", dets, dict(zip(table.mids, table.names)),
                    "0a1b2c3d4e5f6789.png")
"""

from __future__ import annotations

import colorsys
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from oid import fileio
from oid.submission import ImageDetections, keep_top_k

_GOLDEN = 0.618033988749895  # hue step: consecutive classes get far-apart hues


def draw_detections(image_path_or_array: str | os.PathLike | np.ndarray, dets: ImageDetections,
                    class_names: dict[str, str], out_png: str, score_threshold: float = 0.3,
                    max_boxes: int = 50) -> int:
    """Draws boxes with "name score" labels and writes a PNG of the original image's size.

    Args:
      image_path_or_array: a JPEG/PNG path (local or remote; EXIF orientation applied, as the
        records job does, so normalized boxes land where the model saw them) or
        a uint8 array [H, W], [H, W, 3] or [H, W, 4].
      dets: the image's detections, boxes (ymin, xmin, ymax, xmax) normalized to it.
      class_names: MID -> display name; a MID without a name is shown as is.
      out_png: the PNG to write.
      score_threshold: boxes scoring below it are not drawn.
      max_boxes: at most this many boxes, the highest scoring.
    Returns:
      The number of boxes drawn. Colours are distinct per class (hues spaced by
      the golden ratio over the drawn classes in MID order), so the output is a
      deterministic function of the inputs.
    """
    picture = _load(image_path_or_array)
    width, height = picture.size
    shown = keep_top_k(dets, max_boxes, score_threshold)
    classes = sorted(set(shown.mids.tolist()))
    colours = {mid: _colour(k) for k, mid in enumerate(classes)}
    line = max(2, round(min(width, height) / 200))
    font = ImageFont.load_default(size=max(10, min(width, height) // 40))
    draw = ImageDraw.Draw(picture)
    # Lowest score first, so that the best boxes and labels end up on top.
    for k in range(len(shown) - 1, -1, -1):
        ymin, xmin, ymax, xmax = shown.boxes[k].tolist()
        x0, x1 = _pixels(xmin, xmax, width)
        y0, y1 = _pixels(ymin, ymax, height)
        colour = colours[shown.mids[k]]
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        text = f"{class_names.get(shown.mids[k], shown.mids[k])} {shown.scores[k]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left + 4, bottom - top + 4
        ty = y0 - text_h if y0 - text_h >= 0 else y0  # above the box, or inside at its top
        tx = min(x0, max(0, width - text_w))
        draw.rectangle([tx, ty, tx + text_w - 1, ty + text_h - 1], fill=colour)
        ink = (0, 0, 0) if sum(c * w for c, w in zip(colour, (0.299, 0.587, 0.114),
                                                      strict=True)) > 140 else (255, 255, 255)
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=ink, font=font)
    out_png = str(out_png)
    if "://" not in out_png and os.path.dirname(out_png):
        os.makedirs(os.path.dirname(out_png), exist_ok=True)
    with fileio.open_file(out_png, "wb") as f:
        picture.save(f, format="PNG")
    return len(shown)


def _load(image: str | os.PathLike | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image must be a uint8 array [H, W(, C)], got {image.dtype} "
                             f"{image.shape}")
        return Image.fromarray(image).convert("RGB")
    with fileio.open_file(str(image), "rb") as f:
        picture = Image.open(f)
        picture.load()
    return ImageOps.exif_transpose(picture).convert("RGB")


def _pixels(low: float, high: float, size: int) -> tuple[int, int]:
    """First and last pixel covered by the normalized interval [low, high), inside the image."""
    first = min(max(int(round(low * size)), 0), size - 1)
    last = min(max(int(round(high * size)) - 1, first), size - 1)
    return first, last


def _colour(k: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((k * _GOLDEN) % 1.0, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)
