import io

import numpy as np
import pytest
from PIL import Image

from beam_jobs import images as ops


def encode(img, fmt="JPEG", **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


RGB = Image.new("RGB", (2048, 1536), (200, 10, 10))


def decode(prepared):
    img = Image.open(io.BytesIO(prepared.jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    assert img.size == (prepared.width, prepared.height)
    return img


@pytest.mark.parametrize("size,max_side,expected", [
    ((2048, 1536), 1024, (1024, 768)),
    ((1536, 2048), 1024, (768, 1024)),
    ((300, 200), 1024, (300, 200)),      # never upscaled
    ((1000, 3), 500, (500, 2)),
    ((3000, 1), 100, (100, 1)),          # at least one pixel
    ((640, 480), 0, (640, 480)),         # 0: no limit
])
def test_target_size(size, max_side, expected):
    assert ops.target_size(*size, max_side) == expected


def test_resize_keeps_aspect_and_records_original_size():
    p = ops.prepare_image(encode(RGB), max_side=1024)
    assert (p.width, p.height, p.original_width, p.original_height) == (1024, 768, 2048, 1536)
    assert p.notes == ()
    assert np.asarray(decode(p)).mean(axis=(0, 1)) == pytest.approx([200, 10, 10], abs=3)


def test_small_jpeg_keeps_its_bytes():
    data = encode(Image.new("RGB", (300, 200)))
    assert ops.prepare_image(data).jpeg is data


def test_cmyk_jpeg():
    p = ops.prepare_image(encode(RGB.convert("CMYK")))
    assert p.notes == (ops.CMYK,)
    decode(p)


def test_greyscale():
    p = ops.prepare_image(encode(RGB.convert("L")))
    assert p.notes == (ops.GREYSCALE,)
    assert decode(p).mode == "RGB"


def test_png_named_jpg():
    p = ops.prepare_image(encode(RGB, "PNG"))
    assert p.notes == (ops.NOT_JPEG,)
    decode(p)


def test_palette_with_transparency_goes_on_white():
    img = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 10, 10))
    p = ops.prepare_image(encode(img, "PNG"))
    assert p.notes == (ops.ALPHA, ops.NOT_JPEG)
    arr = np.asarray(decode(p)).astype(int)
    assert arr[5, 2].tolist() == pytest.approx([0, 0, 255], abs=20)
    assert arr[5, 17].tolist() == pytest.approx([255, 255, 255], abs=20)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotation_is_applied(orientation):
    # The displayed image is 400x300 with a red block in its top-left corner.
    # Store the pixels as a camera would (rotated) with the orientation tag
    # that rotates them back.
    shown = Image.new("RGB", (400, 300), (255, 255, 255))
    shown.paste((255, 0, 0), (0, 0, 100, 75))
    stored = shown.transpose({3: Image.ROTATE_180, 6: Image.ROTATE_90,
                              8: Image.ROTATE_270}[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = ops.prepare_image(encode(stored, exif=exif.tobytes()))
    assert p.notes == (ops.EXIF_ROTATED,)
    assert (p.width, p.height, p.original_width, p.original_height) == (400, 300, 400, 300)
    arr = np.asarray(decode(p)).astype(int)
    assert arr[10, 10].tolist() == pytest.approx([255, 0, 0], abs=40)
    assert arr[290, 390].tolist() == pytest.approx([255, 255, 255], abs=40)


def test_exif_rotation_with_downscale():
    stored = Image.new("RGB", (1536, 2048), (0, 255, 0))  # shown as 2048x1536
    exif = Image.Exif()
    exif[0x0112] = 6
    p = ops.prepare_image(encode(stored, exif=exif.tobytes()), max_side=1024)
    assert (p.width, p.height) == (1024, 768)
    assert (p.original_width, p.original_height) == (2048, 1536)


def test_empty_file():
    with pytest.raises(ops.BadImageError) as e:
        ops.prepare_image(b"")
    assert e.value.reason == ops.EMPTY


def test_corrupt_file():
    with pytest.raises(ops.BadImageError) as e:
        ops.prepare_image(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    assert e.value.reason == ops.CORRUPT


def test_truncated_jpeg():
    data = encode(RGB)
    with pytest.raises(ops.BadImageError) as e:
        ops.prepare_image(data[: len(data) // 2])
    assert e.value.reason == ops.TRUNCATED


def test_too_large(monkeypatch):
    monkeypatch.setattr(ops, "MAX_PIXELS", 1000)
    with pytest.raises(ops.BadImageError) as e:
        ops.prepare_image(encode(Image.new("RGB", (100, 100))))
    assert e.value.reason == ops.TOO_LARGE


def test_estimate_shards():
    assert ops.estimate_shards(0, 150) == 1
    assert ops.estimate_shards(150 * 2**20, 150) == 1
    assert ops.estimate_shards(150 * 2**20 + 1, 150) == 2
