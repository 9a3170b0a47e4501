"""Fixtures for inference tests: a tiny model configuration, images with red rectangles, an
exact "red rectangle" detector and a random tiny RetinaNet whose scores are spread out."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from boxes.anchors import AnchorConfig, generate_anchors
from engine.inference import Detector
from engine.run_dir import checkpoint_weights, save_config
from model.config import ModelConfig
from tfrecords.input_pipeline import InputConfig

TINY = ModelConfig(num_classes=2, backbone="small", image_size=128, fpn_channels=16,
                   head_convs=1, head_channels=32, anchors=AnchorConfig(sizes=(16, 32, 64, 128, 256)))
LABELS = ({"index": 0, "mid": "/m/red", "name": "red"},
          {"index": 1, "mid": "/m/blue", "name": "blue"})
MIN_SIDE, MAX_SIDE = 96, 128  # a 128 x 96 image fills the 128 canvas's width at scale 1


def red_image(height: int, width: int, box: tuple[int, int, int, int] | None,
              seed: int = 0) -> np.ndarray:
    """[h, w, 3] uint8 grey noise with a red rectangle at `box` (ymin, xmin, ymax, xmax) px."""
    rng = np.random.default_rng(seed)
    img = rng.integers(30, 60, (height, width, 3)).astype(np.uint8)
    if box is not None:
        y0, x0, y1, x1 = box
        img[y0:y1, x0:x1] = (220, 30, 30)
    return img


def save(path, image: np.ndarray, fmt: str = "PNG") -> str:
    Image.fromarray(image).save(path, fmt)
    return str(path)


def write_images(directory, count: int, height: int = 96, width: int = 128) -> list[str]:
    """`count` PNGs im00.png ... with one red rectangle each at a position that varies."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(save(os.path.join(directory, f"im{i:02d}.png"),
                          red_scene(i, height, width)[0]))
    return paths


def red_detector(config: ModelConfig = TINY) -> Detector:
    """A Detector without weights: the class-0 logit of each anchor grows with its IoU with
    the red pixels of the canvas (counted with an integral image; exact for one red
    rectangle), class 1 never fires, and the boxes are the anchors. Exact and cheap: for
    tests of the loop, not of the model."""
    size = config.image_size
    anchors = tf.constant(generate_anchors(size, size, config.anchors))
    corners = tf.cast(tf.clip_by_value(tf.round(anchors), 0, size), tf.int32)
    area = tf.cast(tf.maximum((corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1]),
                              1), tf.float32)

    def forward(image):
        x = tf.cast(image, tf.float32)
        red = tf.cast(x[..., 0] - 0.5 * (x[..., 1] + x[..., 2]) > 100.0, tf.float32)
        total = tf.reduce_sum(red, axis=[1, 2])[:, None]
        ii = tf.pad(tf.cumsum(tf.cumsum(red, axis=1), axis=2), [[0, 0], [1, 0], [1, 0]])

        def at(y, x_):
            return tf.gather(tf.reshape(ii, [tf.shape(ii)[0], -1]), y * (size + 1) + x_, axis=1)

        y0, x0, y1, x1 = tf.unstack(corners, axis=-1)
        inside = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
        iou = inside / tf.maximum(area + total - inside, 1.0)
        logit = 20.0 * (iou - 0.4)
        cls = tf.stack([logit, tf.fill(tf.shape(logit), -20.0)], axis=-1)
        return {"cls_logits": cls, "box_deltas": tf.zeros(tf.concat([tf.shape(logit), [4]], 0))}

    return Detector("red_detector", forward, config, MIN_SIDE, MAX_SIDE, LABELS, level=1)


def spread_random_model(config: ModelConfig = TINY, seed: int = 0, bias: float = -6.0):
    """A randomly initialized RetinaNet whose class logits are spread over several units
    (the class head's last kernel x 20: standard deviation about 2; bias -6: two or three
    dozen anchors per image pass a 0.5 threshold, with clear gaps between their scores).
    Build it in the strategy's scope."""
    import keras

    from model.retinanet import build_retinanet

    keras.utils.set_random_seed(seed)
    model = build_retinanet(config)
    out = model.get_layer("class_head").out
    out.kernel.assign(out.kernel.numpy() * 20.0)
    out.bias.assign(np.full(out.bias.shape, bias, np.float32))
    return model


# -- ground truth and label files ---------------------------------------------------------

# shape ⊃ {red, blue, green}; level 1 = (red, blue), level 2 = (green, shape).
CLASSES_CSV = "/m/red,red\n/m/blue,blue\n/m/green,green\n/m/shape,shape\n"
HIERARCHY = {"LabelName": "/m/0bl9f", "Subcategory": [
    {"LabelName": "/m/shape", "Subcategory": [
        {"LabelName": "/m/red"}, {"LabelName": "/m/blue"}, {"LabelName": "/m/green"}]}]}
LEVEL2_LABELS = ({"index": 0, "mid": "/m/green", "name": "green"},
                 {"index": 1, "mid": "/m/shape", "name": "shape"})
BOX_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
              "IsGroupOf,IsDepiction,IsInside\n")


def write_label_files(data_dir) -> tuple[str, str]:
    """DATA_DIR/label/ with the class table and hierarchy above (the official file names);
    returns their paths."""
    from oid.layout import DataLayout

    layout = DataLayout(str(data_dir))
    os.makedirs(layout.label_dir, exist_ok=True)
    with open(layout.classes, "w") as f:
        f.write(CLASSES_CSV)
    with open(layout.hierarchy, "w") as f:
        json.dump(HIERARCHY, f)
    return layout.classes, layout.hierarchy


def write_ground_truth(directory, boxes: dict[str, list[tuple[str, tuple]]],
                       labels: dict[str, list[tuple[str, int]]] | None = None) -> tuple[str, str]:
    """val-bbox.csv and val-image-labels.csv in DIRECTORY.

    boxes: ImageID -> [(MID, (ymin, xmin, ymax, xmax) normalized)]; every boxed class is also
    written as a verified-present image label, plus `labels`: ImageID -> [(MID, 0 or 1)].
    """
    box_path = os.path.join(directory, "val-bbox.csv")
    label_path = os.path.join(directory, "val-image-labels.csv")
    with open(box_path, "w") as f:
        f.write(BOX_HEADER)
        for image_id, items in boxes.items():
            for mid, (y0, x0, y1, x1) in items:
                f.write(f"{image_id},xclick,{mid},1,{x0:.6f},{x1:.6f},{y0:.6f},{y1:.6f},"
                        "0,0,0,0,0\n")
    with open(label_path, "w") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
        for image_id, items in boxes.items():
            for mid in sorted({m for m, _ in items}):
                f.write(f"{image_id},verification,{mid},1\n")
        for image_id, items in (labels or {}).items():
            for mid, confidence in items:
                f.write(f"{image_id},verification,{mid},{confidence}\n")
    return box_path, label_path


def write_level(level_dir, labels, images: dict[str, tuple[np.ndarray, list[tuple[int, tuple]]]],
                split: str = "val") -> None:
    """RECORDS/levelN/ as the records job writes it: {split}-00000-of-00001.tfrecord (PNG
    bytes, which the pipelines decode too), labels.json, the split's image count in
    stats.json, plus for val the ground-truth CSVs. images: ImageID -> (pixels, [(level-local class, (ymin, xmin, ymax, xmax)
    normalized)])."""
    import io

    from tfrecords import proto
    from tfrecords.example import ImageAnnotation, build_example

    os.makedirs(level_dir, exist_ok=True)
    mids = [e["mid"] for e in sorted(labels, key=lambda e: e["index"])]
    with open(os.path.join(level_dir, f"{split}-00000-of-00001.tfrecord"), "wb") as f:
        for image_id, (pixels, objects) in images.items():
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "PNG")
            n = len(objects)
            ann = ImageAnnotation(image_id, split, [list(b) for _, b in objects],
                                  [c for c, _ in objects], [mids[c] for c, _ in objects],
                                  [0] * n, [0] * n, [0] * n, [0] * n)
            h, w = pixels.shape[:2]
            proto.write_tfrecord(f, build_example(ann, buf.getvalue(), h, w, h, w)
                                 .SerializeToString())
    with open(os.path.join(level_dir, "labels.json"), "w") as f:
        json.dump(list(labels), f)
    stats_path = os.path.join(level_dir, "stats.json")
    stats = json.load(open(stats_path)) if os.path.exists(stats_path) else {"splits": {}}
    stats["splits"][split] = {"images": len(images)}
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    if split == "val":
        write_ground_truth(level_dir, {i: [(mids[c], b) for c, b in objects]
                                       for i, (_, objects) in images.items()})


def red_scene(index: int, height: int = 96, width: int = 128,
              size: tuple[int, int] = (40, 48)) -> tuple[np.ndarray, list]:
    """Image `index` of a small level: a red rectangle of class 0 and `size` (height, width)
    pixels at a varying place."""
    y0, x0 = 8 + (index * 7) % 40, 6 + (index * 13) % 60
    box = (y0, x0, y0 + size[0], x0 + size[1])
    return red_image(height, width, box, seed=index), [
        (0, (box[0] / height, box[1] / width, box[2] / height, box[3] / width))]


def write_model_dir(model_dir, model, labels, level: int, config: ModelConfig = TINY) -> str:
    """A train.py run directory for `model`: config.json (model, input, labels, level) and
    checkpoints/ckpt-1 holding every weight, as engine.run_dir.load_model reads it."""
    save_config(os.path.join(model_dir, "config.json"), model=config,
                input=InputConfig("", image_min_side=MIN_SIDE, image_max_side=MAX_SIDE),
                level=level, labels=list(labels))
    checkpoint = tf.train.Checkpoint(weights=checkpoint_weights(model))
    tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, "checkpoints"),
                               max_to_keep=1).save(checkpoint_number=1)
    return str(model_dir)
