"""Per-image work of the records job, as a pure function on bytes (testable without Beam).

prepare_image: decode -> EXIF orientation -> RGB -> resize (aspect kept, never
upscaled) -> JPEG. Files that cannot be used raise BadImageError with a reason;
files that can be repaired (a PNG named .jpg, CMYK, greyscale, palette or
alpha, EXIF rotation) are converted and the conversion is noted.
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# Skip reasons.
MISSING = "missing_image"
EMPTY = "empty_image"
CORRUPT = "corrupt_image"
TRUNCATED = "truncated_image"
TOO_LARGE = "image_too_large"

# Conversion notes.
EXIF_ROTATED = "exif_rotated"
CMYK = "cmyk"
GREYSCALE = "greyscale"
PALETTE = "palette"
ALPHA = "alpha"
NOT_JPEG = "not_jpeg"  # e.g. a PNG named .jpg

_GREY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "F"}
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
# Above this many pixels PIL refuses to decode (a decompression bomb, or a
# file no detector should be fed); Open Images' largest are about 30 MP.
MAX_PIXELS = 178_956_970


class BadImageError(Exception):
    """An image that cannot be used; `reason` is one of the skip reasons above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """A re-encoded image.

    Attributes:
      jpeg: RGB JPEG bytes.
      height, width: of `jpeg`, pixels.
      original_height, original_width: of the source after EXIF rotation, pixels.
      notes: conversions applied (EXIF_ROTATED, CMYK, ...), sorted.
    """

    jpeg: bytes
    height: int
    width: int
    original_height: int
    original_width: int
    notes: tuple[str, ...] = ()


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longer side at most max_side, aspect kept, never upscaled."""
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_image(data: bytes, max_side: int = 1024, quality: int = 95) -> PreparedImage:
    """Decodes, orients, converts to RGB, resizes and re-encodes one image.

    Args:
      data: the file's bytes (any format PIL reads).
      max_side: the longer side of the output at most this many pixels (0: no limit).
      quality: JPEG quality of the output.

    Raises:
      BadImageError: empty, corrupt, truncated or oversized input.
    """
    if not data:
        raise BadImageError(EMPTY, "the file has no bytes")
    notes: set[str] = set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if img.width * img.height > MAX_PIXELS:
                raise BadImageError(TOO_LARGE, f"{img.width}x{img.height} pixels")
            orientation = img.getexif().get(0x0112, 1)
            src_w, src_h = img.size
            if orientation in _ROTATING_ORIENTATIONS:
                src_w, src_h = src_h, src_w
            out_w, out_h = target_size(src_w, src_h, max_side)
            if fmt == "JPEG" and (out_w, out_h) != (src_w, src_h):
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the target
                # is that much smaller: most of the decode cost disappears.
                request = (out_w, out_h) if orientation not in _ROTATING_ORIENTATIONS \
                    else (out_h, out_w)
                img.draft("RGB", request)
            img.load()
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(TOO_LARGE, str(e)) from None
    except UnidentifiedImageError:
        raise BadImageError(CORRUPT, "not an image format PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = TRUNCATED if "truncated" in str(e) else CORRUPT
        raise BadImageError(reason, str(e)) from None

    if fmt != "JPEG":
        notes.add(NOT_JPEG)
    if orientation not in (1, None) and 1 <= int(orientation) <= 8:
        notes.add(EXIF_ROTATED)
        img = ImageOps.exif_transpose(img)
    if img.mode == "CMYK":
        notes.add(CMYK)
        img = img.convert("RGB")
    elif img.mode in _GREY_MODES:
        notes.add(GREYSCALE)
        img = img.convert("L").convert("RGB") if img.mode != "L" else img.convert("RGB")
    elif img.mode in ("P", "PA"):
        notes.add(PALETTE)
        has_alpha = img.mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    if img.mode in ("RGBA", "LA", "La", "RGBa"):
        notes.add(ALPHA)
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        img = background
    elif img.mode != "RGB":
        img = img.convert("RGB")

    if img.size != (out_w, out_h):
        img = img.resize((out_w, out_h), Image.BILINEAR, reducing_gap=3.0)
    if fmt == "JPEG" and not notes and (out_w, out_h) == (src_w, src_h):
        jpeg = data  # already an RGB JPEG of the right size: keep the original bytes
    else:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        jpeg = buf.getvalue()
    return PreparedImage(jpeg, out_h, out_w, src_h, src_w, tuple(sorted(notes)))


def estimate_shards(total_bytes: float, shard_size_mb: float) -> int:
    """Shards of about shard_size_mb for total_bytes (at least one)."""
    return max(1, math.ceil(total_bytes / (shard_size_mb * 2**20)))
