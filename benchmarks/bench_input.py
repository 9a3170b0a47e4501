"""Images per second of the tf.data input pipeline, next to decode-only and keras-retinanet's generator.

Generates (once, cached) about 1,000 synthetic 1024x768 JPEGs (quality 90) with
long-tailed box counts (mean about 7, about 5% with 50 to 100 boxes) over 500
classes, as TFRecord shards (`tfrecords.example.build_example`) and, for the
generator, as JPEG files with their annotations. Then measures, each in a fresh
process (so that peak RSS is per configuration), at batch 8:
  (a) decode only: TFRecordDataset -> parse -> tf.io.decode_jpeg -> batch, the ceiling;
  (b) ours, labeling in tf.data: `build_dataset(label_fn=add_image_targets...)`;
  (c) ours, labeling in the train step: `build_dataset()`, so the anchor labeling runs
      on the accelerator (its CPU cost per batch is printed as a note, not counted);
  (d) keras-retinanet's generator, re-implemented from its design (fizyr/keras-retinanet,
      `preprocessing/generator.py`, `utils/anchors.py`, `utils/image.py`): one process
      reading each JPEG file with PIL, BGR, caffe mean subtraction, resize, batch padded
      to its largest image, numpy IoU of every anchor with every box and dense float32
      targets, [A, 4 + 1] regression and [A, 500 + 1] one-hot classification per image.
Training settings throughout: shuffle, horizontal flip, no scale jitter; min side 768,
max side 1024 (keras-retinanet's defaults are 800 / 1333; the same sizes here keep the
comparison like for like). "CPU ms/img" is the process's CPU time (all threads) per image,
which shows how much of the machine each configuration needs. "targets/img" is every array
handed to the model per image except the image; "total/img" includes it. MB = 2**20 bytes.

  python benchmarks/bench_input.py [--images 1000] [--batches 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WIDTH, HEIGHT = 1024, 768
NUM_CLASSES = 500
MAX_BOXES = 100  # the pipeline's max_boxes
NUM_SHARDS = 4
MIN_SIDE, MAX_SIDE = 768, 1024
# Long-tailed class frequencies, like a level of Open Images.
_CLASS_P = 1.0 / np.arange(1, NUM_CLASSES + 1) ** 1.1
_CLASS_P /= _CLASS_P.sum()

CONFIGS = {
    "decode": "(a) decode only (ceiling)",
    "ours_labels": "(b) ours, labeling in tf.data",
    "ours": "(c) ours, labeling in the train step",
    "keras_retinanet": "(d) keras-retinanet generator (re-implemented)",
}


# ---------------------------------------------------------------------------- data


def _num_boxes(index: int, rng: np.random.Generator) -> int:
    """Mean about 7: one image in 20 is crowded (50 to 100 boxes, mean 62), the others
    geometric with mean 4.1 (below 50)."""
    if index % 20 == 10:
        return int(min(MAX_BOXES, 49 + rng.geometric(1 / 13)))
    return int(min(49, rng.geometric(1 / 4.1)))


def _make_image(index: int) -> tuple[dict, bytes]:
    """One 1024x768 JPEG with filled shapes where its boxes are; returns (annotation, JPEG)."""
    from PIL import ImageDraw

    from oid.demo_data import _background

    rng = np.random.default_rng(index)
    img = _background(rng, WIDTH, HEIGHT)
    draw = ImageDraw.Draw(img)
    n = _num_boxes(index, rng)
    largest = 0.15 if n >= 50 else 0.6  # crowded scenes have small objects
    boxes, labels, group_of = [], [], []
    for _ in range(n):
        group = rng.random() < 0.03
        bh, bw = rng.uniform(0.2, 0.5, 2) if group else np.exp(
            rng.uniform(np.log(0.03), np.log(largest), 2))
        y0, x0 = rng.uniform(0, 1 - bh), rng.uniform(0, 1 - bw)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0 * WIDTH, y0 * HEIGHT, (x0 + bw) * WIDTH, (y0 + bh) * HEIGHT],
              fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        boxes.append([round(float(v), 5) for v in (y0, x0, y0 + bh, x0 + bw)])
        labels.append(int(rng.choice(NUM_CLASSES, p=_CLASS_P)))
        group_of.append(int(group))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return {"image_id": f"{index:016x}", "boxes": boxes, "labels": labels,
            "group_of": group_of}, buf.getvalue()


def generate(data_dir: str, images: int) -> None:
    """Writes records/train-*.tfrecord, jpeg/{ImageID}.jpg, annotations.json, then meta.json."""
    from tfrecords.example import ImageAnnotation, build_example
    from tfrecords.proto import write_tfrecord

    os.makedirs(os.path.join(data_dir, "records"), exist_ok=True)
    os.makedirs(os.path.join(data_dir, "jpeg"), exist_ok=True)
    shards = [open(os.path.join(data_dir, "records", f"train-{k:05d}-of-{NUM_SHARDS:05d}.tfrecord"),
                   "wb") for k in range(NUM_SHARDS)]
    annotations, jpeg_bytes = [], 0
    with multiprocessing.Pool() as pool:
        for i, (ann, jpeg) in enumerate(pool.imap(_make_image, range(images), chunksize=8)):
            n = len(ann["labels"])
            example = build_example(ImageAnnotation(
                image_id=ann["image_id"], split="train", boxes=ann["boxes"], labels=ann["labels"],
                mids=[f"/m/0bench{c}" for c in ann["labels"]], group_of=ann["group_of"],
                occluded=[0] * n, truncated=[0] * n, depiction=[0] * n),
                jpeg, HEIGHT, WIDTH, HEIGHT, WIDTH)
            write_tfrecord(shards[i % NUM_SHARDS], example.SerializeToString())
            with open(os.path.join(data_dir, "jpeg", ann["image_id"] + ".jpg"), "wb") as f:
                f.write(jpeg)
            annotations.append(ann)
            jpeg_bytes += len(jpeg)
    for f in shards:
        f.close()
    with open(os.path.join(data_dir, "annotations.json"), "w") as f:
        json.dump(annotations, f)
    counts = np.array([len(a["labels"]) for a in annotations])
    meta = {"images": images, "mean_boxes": float(counts.mean()),
            "fraction_50_plus": float((counts >= 50).mean()), "max_boxes": int(counts.max()),
            "group_of_boxes": int(sum(sum(a["group_of"]) for a in annotations)),
            "jpeg_kb": jpeg_bytes / images / 1024}
    with open(os.path.join(data_dir, "meta.json"), "w") as f:  # last: marks the cache complete
        json.dump(meta, f)


# ------------------------------------------------------- (d) keras-retinanet's generator
# Re-implemented from the design of fizyr/keras-retinanet's Generator (latest version):
# per image load -> filter_annotations -> preprocess_image -> random transform -> resize;
# per batch compute_inputs (pad to the largest image) and compute_targets (anchors for
# that shape, IoU, dense targets). Boxes are (x1, y1, x2, y2) pixels, as in the original.

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def _kr_read_image_bgr(path: str) -> np.ndarray:
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    return image[:, :, ::-1].copy()


def _kr_resize(image: np.ndarray, min_side: int, max_side: int) -> tuple[np.ndarray, float]:
    """The original's compute_resize_scale + cv2.resize(fx=scale, fy=scale) on the float image.

    cv2 copies when the size does not change; otherwise each channel is resized bilinearly
    by PIL in float mode (OpenCV is not a dependency of this project).
    """
    from PIL import Image

    rows, cols = image.shape[:2]
    scale = min_side / min(rows, cols)
    if max(rows, cols) * scale > max_side:
        scale = max_side / max(rows, cols)
    size = (int(round(cols * scale)), int(round(rows * scale)))
    if size == (cols, rows):
        return image.copy(), scale
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), "F").resize(
        size, Image.BILINEAR)) for c in range(image.shape[2])]
    return np.stack(channels, axis=-1), scale


def _kr_anchors_for_shape(shape: tuple[int, int]) -> np.ndarray:
    """[A, 4] (x1, y1, x2, y2) float64: levels 3-7, sizes 32-512, 3 ratios x 3 scales."""
    ratios = np.array([0.5, 1.0, 2.0])
    scales = np.array([2 ** 0, 2 ** (1 / 3), 2 ** (2 / 3)])
    out = []
    for level in range(3, 8):
        stride, size = 2 ** level, 2 ** (level + 2)
        # Base anchors centred on 0: width / height for each ratio (outer) and scale (inner).
        areas = (size * np.tile(scales, len(ratios))) ** 2
        widths = np.sqrt(areas / np.repeat(ratios, len(scales)))
        heights = widths * np.repeat(ratios, len(scales))
        base = np.stack([-widths / 2, -heights / 2, widths / 2, heights / 2], axis=1)
        gh, gw = ((np.array(shape[:2]) + stride - 1) // stride)
        sx, sy = np.meshgrid((np.arange(gw) + 0.5) * stride, (np.arange(gh) + 0.5) * stride)
        shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
        out.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
    return np.concatenate(out, axis=0)


def _kr_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [K, 4] (x1, y1, x2, y2) float64 -> [N, K] IoU (the original's compute_overlap)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / np.maximum(area_a + area_b - inter, np.finfo(np.float64).eps)


def _kr_bbox_transform(anchors: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Corner offsets relative to the anchor's size, divided by std 0.2."""
    w = anchors[:, 2] - anchors[:, 0]
    h = anchors[:, 3] - anchors[:, 1]
    t = np.stack([(gt[:, 0] - anchors[:, 0]) / w, (gt[:, 1] - anchors[:, 1]) / h,
                  (gt[:, 2] - anchors[:, 2]) / w, (gt[:, 3] - anchors[:, 3]) / h], axis=1)
    return t / 0.2


def _kr_anchor_targets(anchors, images, annotations, num_classes, negative=0.4, positive=0.5):
    """Dense targets: regression [B, A, 4 + 1] and labels [B, A, num_classes + 1] float32;
    the last column is the anchor state (-1 ignore, 0 background, 1 foreground)."""
    regression = np.zeros((len(images), anchors.shape[0], 4 + 1), np.float32)
    labels = np.zeros((len(images), anchors.shape[0], num_classes + 1), np.float32)
    centers = np.stack([(anchors[:, 0] + anchors[:, 2]) / 2,
                        (anchors[:, 1] + anchors[:, 3]) / 2], axis=1)
    for i, (image, ann) in enumerate(zip(images, annotations, strict=True)):
        if ann["bboxes"].shape[0]:
            overlaps = _kr_overlap(anchors, ann["bboxes"])
            best = np.argmax(overlaps, axis=1)
            best_iou = overlaps[np.arange(overlaps.shape[0]), best]
            pos = best_iou >= positive
            ignore = (best_iou > negative) & ~pos
            labels[i, ignore, -1] = -1
            labels[i, pos, -1] = 1
            regression[i, ignore, -1] = -1
            regression[i, pos, -1] = 1
            labels[i, pos, ann["labels"][best[pos]]] = 1
            regression[i, :, :-1] = _kr_bbox_transform(anchors, ann["bboxes"][best])
        # Anchors centred in the padding are ignored.
        outside = (centers[:, 0] >= image.shape[1]) | (centers[:, 1] >= image.shape[0])
        labels[i, outside, -1] = -1
        regression[i, outside, -1] = -1
    return regression, labels


def keras_retinanet_batches(data_dir: str, batch_size: int, seed: int = 0):
    """Yields (inputs [B, H, W, 3] float32, [regression, labels]) forever, like Generator.next."""
    with open(os.path.join(data_dir, "annotations.json")) as f:
        cache = json.load(f)
    rng = np.random.default_rng(seed)
    order = list(range(len(cache)))  # group_method 'ratio': all images here are 4:3
    groups = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    while True:
        rng.shuffle(groups)  # shuffle_groups at the start of every epoch
        for group in groups:
            images, annotations = [], []
            for index in group:
                entry = cache[index]
                image = _kr_read_image_bgr(os.path.join(data_dir, "jpeg", entry["image_id"] + ".jpg"))
                h, w = image.shape[:2]
                boxes = np.array(entry["boxes"], np.float64).reshape(-1, 4)[:, [1, 0, 3, 2]] \
                    * [w, h, w, h]
                ann = {"bboxes": boxes, "labels": np.array(entry["labels"], np.int64)}
                # filter_annotations: drop degenerate boxes and boxes outside the image.
                bad = ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
                       | (boxes[:, 0] < 0) | (boxes[:, 1] < 0)
                       | (boxes[:, 2] > w) | (boxes[:, 3] > h))
                ann = {k: v[~bad] for k, v in ann.items()}
                # preprocess_image (caffe): float32, ImageNet mean subtracted, BGR.
                image = image.astype(np.float32)
                image -= _CAFFE_MEAN_BGR
                # The random transform: a horizontal flip with probability 0.5 (the original
                # applies its random affine transform with cv2.warpAffine, which costs more).
                if rng.random() < 0.5:
                    image = np.ascontiguousarray(image[:, ::-1])
                    ann["bboxes"] = np.stack([w - ann["bboxes"][:, 2], ann["bboxes"][:, 1],
                                              w - ann["bboxes"][:, 0], ann["bboxes"][:, 3]], 1)
                image, scale = _kr_resize(image, MIN_SIDE, MAX_SIDE)
                ann["bboxes"] *= scale
                images.append(image)
                annotations.append(ann)
            max_shape = tuple(max(image.shape[x] for image in images) for x in range(3))
            inputs = np.zeros((batch_size, *max_shape), np.float32)
            for i, image in enumerate(images):
                inputs[i, :image.shape[0], :image.shape[1], :image.shape[2]] = image
            anchors = _kr_anchors_for_shape(max_shape)  # per batch, as the original does
            targets = _kr_anchor_targets(anchors, images, annotations, NUM_CLASSES)
            yield inputs, list(targets)


# ------------------------------------------------------------------- measurement


def _nbytes(t) -> int:
    if isinstance(t, np.ndarray):
        return t.nbytes
    if t.dtype.name == "string":
        return sum(len(s) for s in t.numpy().ravel())
    return t.shape.num_elements() * t.dtype.size


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _time_batches(batches_iter, warmup: int, batches: int):
    """-> (wall seconds, CPU seconds, last batch) of `batches` batches after `warmup`."""
    for _ in range(warmup):
        batch = next(batches_iter)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        batch = next(batches_iter)
    return time.perf_counter() - t0, _cpu_seconds() - c0, batch


def _decode_only(files: list[str], batch_size: int):
    import tensorflow as tf

    from tfrecords import features as F

    spec = {F.ENCODED: tf.io.FixedLenFeature([], tf.string)}

    def decode(serialized):
        return tf.io.decode_jpeg(tf.io.parse_single_example(serialized, spec)[F.ENCODED],
                                 channels=3)

    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False).repeat()
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def run_child(which: str, data_dir: str, batch_size: int, warmup: int, batches: int) -> dict:
    """One configuration in this (fresh) process; returns its figures."""
    result: dict = {}
    if which == "keras_retinanet":
        import tensorflow as tf  # the generator runs in the training process

        seconds, cpu, (inputs, targets) = _time_batches(
            keras_retinanet_batches(data_dir, batch_size), warmup, batches)
        parts = {"image": inputs, "regression": targets[0], "labels": targets[1]}
        result["anchors"] = int(targets[1].shape[1])
        result["canvas"] = list(inputs.shape[1:3])
        # Keras copies the arrays into tensors to feed the model: not timed above, but
        # counted in peak RSS (np.zeros leaves most pages of the targets unmapped until then).
        result["peak_rss_mb_before_handoff"] = \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        handed = [tf.convert_to_tensor(x) for x in parts.values()]
        result["handoff_s_per_batch"] = time.perf_counter() - t0
        del handed
    else:
        import tensorflow as tf

        from boxes.anchors import AnchorConfig, generate_anchors
        from boxes.assign import LabelerConfig, add_image_targets, add_targets
        from tfrecords.input_pipeline import InputConfig, build_dataset

        files = sorted(glob.glob(os.path.join(data_dir, "records", "*.tfrecord")))
        config = InputConfig(",".join(files), is_training=True, global_batch_size=batch_size,
                             image_min_side=MIN_SIDE, image_max_side=MAX_SIDE,
                             max_boxes=MAX_BOXES, flip=True, scale_jitter=(1.0, 1.0))
        anchor_config = AnchorConfig()
        anchors = tf.constant(generate_anchors(config.output_size, config.output_size,
                                               anchor_config))
        label_fn = None
        if which == "ours_labels":
            def label_fn(example):
                return add_image_targets(example, anchors, LabelerConfig(),
                                         anchor_config.variances)
        ds = _decode_only(files, batch_size) if which == "decode" \
            else build_dataset(config, label_fn=label_fn)
        seconds, cpu, batch = _time_batches(iter(ds), warmup, batches)
        parts = {"image": batch} if which == "decode" else dict(batch)
        result["canvas"] = [int(d) for d in parts["image"].shape[1:3]]
        if which == "ours_labels":
            result["anchors"] = int(batch["cls_targets"].shape[1])
        if which == "ours":
            # What (c) leaves to the train step, timed here on the CPU for reference.
            label = tf.function(lambda b: add_targets(b, anchors, LabelerConfig(),
                                                      anchor_config.variances))
            label(batch)
            t0 = time.perf_counter()
            for _ in range(3):
                out = label(batch)
            _ = out["cls_targets"].numpy()
            result["train_step_labeling_ms_per_batch"] = (time.perf_counter() - t0) / 3 * 1e3
    nbytes = {k: _nbytes(v) for k, v in parts.items()}
    result.update({
        "images": batches * batch_size, "seconds": seconds,
        "images_per_s": batches * batch_size / seconds,
        "cpu_ms_per_image": cpu / (batches * batch_size) * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bytes_per_image": {k: v / batch_size for k, v in nbytes.items()},
        "targets_bytes_per_image": sum(v for k, v in nbytes.items() if k != "image") / batch_size,
        "total_bytes_per_image": sum(nbytes.values()) / batch_size,
    })
    return result


def measure(which: str, data_dir: str, batch_size: int, warmup: int, batches: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", which, "--data_dir", data_dir,
           "--batch_size", str(batch_size), "--warmup", str(warmup), "--batches", str(batches)]
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if out.returncode:
        sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _size(n: float) -> str:
    for unit, scale in (("MB", 2 ** 20), ("KB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5, help="batches before timing (a)-(c)")
    parser.add_argument("--batches", type=int, default=60, help="timed batches of (a)-(c)")
    parser.add_argument("--kr_warmup", type=int, default=1, help="batches before timing (d)")
    parser.add_argument("--kr_batches", type=int, default=15, help="timed batches of (d)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each configuration, alternating; the median is reported")
    parser.add_argument("--cache_dir", default="/tmp/oid_bench")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_child(args.child, args.data_dir, args.batch_size, args.warmup,
                                   args.batches)))
        return

    data_dir = os.path.join(args.cache_dir, f"input-{args.images}")
    if not os.path.exists(os.path.join(data_dir, "meta.json")):
        print(f"generating {args.images} images in {data_dir} ...", file=sys.stderr)
        t0 = time.perf_counter()
        generate(data_dir, args.images)
        print(f"  {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)

    runs: dict[str, list[dict]] = {which: [] for which in CONFIGS}
    for _ in range(args.repeat):  # alternate so that machine noise hits all alike
        for which in CONFIGS:
            kr = which == "keras_retinanet"
            runs[which].append(measure(which, data_dir, args.batch_size,
                                       args.kr_warmup if kr else args.warmup,
                                       args.kr_batches if kr else args.batches))
    results: dict = {}
    for which, r in runs.items():
        rates = [m["images_per_s"] for m in r]
        results[which] = {**r[0], "images_per_s": statistics.median(rates),
                          "all_images_per_s": rates,
                          "cpu_ms_per_image": statistics.median(m["cpu_ms_per_image"] for m in r),
                          "peak_rss_mb": max(m["peak_rss_mb"] for m in r)}
    a, b, c, d = (results[k]["images_per_s"] for k in CONFIGS)
    results["b_vs_d"] = b / d
    results["c_vs_a"] = c / a
    results["data"] = meta
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"

    kr = results["keras_retinanet"]
    canvas = "x".join(map(str, results["ours"]["canvas"]))
    print(f"{meta['images']} records of {WIDTH}x{HEIGHT} JPEGs ({meta['jpeg_kb']:.0f} KB), mean "
          f"{meta['mean_boxes']:.1f} boxes/image ({100 * meta['fraction_50_plus']:.0f}% with 50+), "
          f"{NUM_CLASSES} classes, batch {args.batch_size}, canvas {canvas} ({results['machine']})")
    print(f"{'configuration':<47} {'images/s':>8} {'CPU ms/img':>10} {'peak RSS MB':>11} "
          f"{'targets/img':>11} {'total/img':>10}")
    for which, label in CONFIGS.items():
        r = results[which]
        print(f"{label:<47} {r['images_per_s']:>8.1f} {r['cpu_ms_per_image']:>10.1f} "
              f"{r['peak_rss_mb']:>11.0f} {_size(r['targets_bytes_per_image']):>11} "
              f"{_size(r['total_bytes_per_image']):>10}")
    print(f"(b)/(d) x{results['b_vs_d']:.1f}; (c)/(a) {100 * results['c_vs_a']:.0f}%")
    runs_note = f"median of {args.repeat} alternating runs; " if args.repeat > 1 else ""
    print(f"({runs_note}(a)-(c): {args.batches} batches after {args.warmup}; (d): "
          f"{args.kr_batches} after {args.kr_warmup}, one process, timed without Keras's copy "
          f"of its arrays into tensors ({kr['handoff_s_per_batch']:.1f} s per batch, counted in "
          f"peak RSS only; {kr['peak_rss_mb_before_handoff']:.0f} MB before it).")
    print(f" Training settings: shuffle, flip, no scale jitter, sides {MIN_SIDE}/{MAX_SIDE}. (d) "
          f"pads to the batch's largest image, {'x'.join(map(str, kr['canvas']))}: "
          f"{kr['anchors']:,} anchors, against {results['ours_labels']['anchors']:,} on our "
          f"{canvas} canvas.")
    print(f" Labeling that (c) leaves to the train step: "
          f"{results['ours']['train_step_labeling_ms_per_batch']:.0f} ms per batch on this CPU.)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
