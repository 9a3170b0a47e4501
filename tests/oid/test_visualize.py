"""oid.visualize: boxes land on the right pixels, one colour a class, deterministic output."""

from __future__ import annotations

import numpy as np
from PIL import Image

from oid.submission import ImageDetections
from oid.visualize import draw_detections

GREY = (128, 128, 128)
DOG, TOY = "/m/0dog", "/m/0toy"


def grey_image(width: int = 200, height: int = 100) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.uint8)


def test_box_edges_drawn_in_pixels_of_the_original_image(tmp_path):
    # 200 x 100 image; the Dog box (ymin 0.4, xmin 0.25, ymax 0.9, xmax 0.75) spans
    # x 50..149, y 40..89. The Toy box scores below the threshold: not drawn.
    dets = ImageDetections("img", [[0.4, 0.25, 0.9, 0.75], [0.1, 0.8, 0.3, 0.95]], [0.9, 0.1],
                           [DOG, TOY])
    out = tmp_path / "out" / "img.png"
    assert draw_detections(grey_image(), dets, {DOG: "Dog"}, str(out)) == 1
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == (100, 200, 3)
    assert tuple(picture[65, 50]) != GREY and tuple(picture[65, 149]) != GREY  # left, right
    assert tuple(picture[89, 100]) != GREY  # bottom edge
    assert tuple(picture[65, 100]) == GREY  # inside the box
    assert tuple(picture[65, 45]) == GREY and tuple(picture[65, 155]) == GREY  # outside
    assert tuple(picture[20, 175]) == GREY  # the Toy box below the threshold
    # The label sits above the box, in the box's colour.
    assert (picture[20:40, 50:100] != GREY).any()


def test_distinct_colour_per_class_and_deterministic(tmp_path):
    dets = ImageDetections("img", [[0.1, 0.1, 0.5, 0.4], [0.5, 0.6, 0.9, 0.9]], [0.8, 0.7],
                           [DOG, TOY])
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    draw_detections(grey_image(), dets, {DOG: "Dog", TOY: "Toy"}, str(a))
    draw_detections(grey_image(), dets, {DOG: "Dog", TOY: "Toy"}, str(b))
    assert a.read_bytes() == b.read_bytes()
    picture = np.asarray(Image.open(a).convert("RGB"))
    # Left edges: Dog at x 20, y 30; Toy at x 120, y 70.
    assert tuple(picture[30, 20]) != tuple(picture[70, 120])


def test_path_input_max_boxes_and_empty(tmp_path):
    source = tmp_path / "img.jpg"
    Image.fromarray(grey_image(64, 48)).save(source, quality=95)
    boxes = [[0.1 * k, 0.1, 0.1 * k + 0.2, 0.9] for k in range(5)]
    dets = ImageDetections("img", boxes, [0.9, 0.8, 0.7, 0.6, 0.5], [DOG] * 5)
    out = tmp_path / "img.png"
    assert draw_detections(str(source), dets, {}, str(out), max_boxes=2) == 2
    assert Image.open(out).size == (64, 48)
    assert draw_detections(str(source), ImageDetections.empty("img"), {}, str(out)) == 0
    assert Image.open(out).size == (64, 48)
