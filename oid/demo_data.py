"""A synthetic mini Open Images, in the official files' names and formats.

    python -m oid.demo_data --out DIR [--seed 0] [--images 600] [--test_images 60] \
        [--jpeg_quality 90]

writes

    DIR/label/challenge-2019-classes-description-500.csv     MID,DisplayName (no header)
    DIR/label/challenge-2019-label500-hierarchy.json         nested LabelName/Subcategory/Part
    DIR/label/challenge-2019-train-detection-bbox.csv        official box columns
    DIR/label/challenge-2019-train-detection-human-imagelabels.csv
    DIR/train/{ImageID}.jpg                                  256-320 px, varied aspect
    DIR/test/{ImageID}.jpg                                   no labels

Thirteen classes of drawn shapes in a three-deep hierarchy:

    Polygon ─┬─ Triangle            Round shape ─┬─ Circle      Smiley (Part: Eye)
             ├─ Quadrilateral ─┬─ Square          └─ Ring        Eye
             │                 └─ Diamond       Symbol ─┬─ Star
             └─ Star (two parents)                      └─ Cross

Some boxes carry a non-leaf label, as annotators do (a hexagon is just a
Polygon, an ellipse a Round shape). Objects have random colours, sizes and
overlap on textured backgrounds with distractor strokes; an object covered by
a later one is flagged occluded, one cut by the border truncated. Clusters of
small objects of one class get one group-of box. Image-level labels verify
every boxed class present and a few unrelated classes absent. Class
frequencies are long-tailed so the level split means something. The output is
a deterministic function of the seed.

Every flag is checked before anything is written (oid.errors: exit status 2
and one `error: --flag=VALUE: ...` line). Each file is written under a
temporary name and renamed when complete, and the annotation CSVs come last,
so an interrupted run never leaves a complete-looking dataset. A folder that
holds images of another dataset (another seed or more images) is refused:
mixed with this one's they would be images without labels, or test images
of another seed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from oid import ROOT_MID, errors, fileio, layout
from oid.errors import UsageError
from oid.hierarchy import Hierarchy

# (MID, name)
POLYGON, TRIANGLE, QUAD, SQUARE, DIAMOND, STAR = (
    "/m/0demo01", "/m/0demo02", "/m/0demo03", "/m/0demo04", "/m/0demo05", "/m/0demo06")
ROUND, CIRCLE, RING, SYMBOL, CROSS, SMILEY, EYE = (
    "/m/0demo07", "/m/0demo08", "/m/0demo09", "/m/0demo10", "/m/0demo11", "/m/0demo12",
    "/m/0demo13")
CLASSES = (
    (POLYGON, "Polygon"), (TRIANGLE, "Triangle"), (QUAD, "Quadrilateral"), (SQUARE, "Square"),
    (DIAMOND, "Diamond"), (STAR, "Star"), (ROUND, "Round shape"), (CIRCLE, "Circle"),
    (RING, "Ring"), (SYMBOL, "Symbol"), (CROSS, "Cross"), (SMILEY, "Smiley"), (EYE, "Eye"),
)
HIERARCHY_JSON = {
    "LabelName": ROOT_MID,
    "Subcategory": [
        {"LabelName": POLYGON, "Subcategory": [
            {"LabelName": TRIANGLE},
            {"LabelName": QUAD, "Subcategory": [{"LabelName": SQUARE}, {"LabelName": DIAMOND}]},
            {"LabelName": STAR},
        ]},
        {"LabelName": ROUND, "Subcategory": [{"LabelName": CIRCLE}, {"LabelName": RING}]},
        {"LabelName": SYMBOL, "Subcategory": [{"LabelName": STAR}, {"LabelName": CROSS}]},
        {"LabelName": SMILEY, "Part": [{"LabelName": EYE}]},
        {"LabelName": EYE},
    ],
}

# Objects drawn as the main, single-object classes, with a long-tailed frequency.
OBJECT_WEIGHTS = {
    CIRCLE: 0.20, SQUARE: 0.15, TRIANGLE: 0.13, STAR: 0.10, RING: 0.08, CROSS: 0.08,
    ROUND: 0.07, SMILEY: 0.06, QUAD: 0.05, POLYGON: 0.05, DIAMOND: 0.03,
}
GROUP_CLASSES = (CIRCLE, STAR, TRIANGLE)
GROUP_PROBABILITY = 0.2
MAX_OVERLAP_IOU = 0.5

BOX_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
              "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside")
LABEL_HEADER = "ImageID,Source,LabelName,Confidence"


@dataclasses.dataclass
class Box:
    """One annotated box in pixels: (xmin, ymin, xmax, ymax), unclipped."""

    mid: str
    x0: float
    y0: float
    x1: float
    y1: float
    group_of: bool = False
    occluded: bool = False
    # Boxes drawn later can occlude this one; parts travel with their whole.
    draw_order: int = 0


def hierarchy() -> Hierarchy:
    return Hierarchy.from_json(HIERARCHY_JSON, source="demo hierarchy")


def image_id(seed: int, split: str, index: int) -> str:
    """A 16-hex-digit id like Open Images', fixed by (seed, split, index)."""
    return hashlib.sha1(f"demo-{seed}-{split}-{index}".encode()).hexdigest()[:16]


def _color(rng: np.random.Generator, avoid: np.ndarray | None = None) -> tuple[int, int, int]:
    """A random saturated colour, kept away from `avoid` (the local background)."""
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        if avoid is None or np.abs(c.astype(int) - avoid).sum() > 180:
            break
    return tuple(int(v) for v in c)


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Gradient + low-frequency colour noise + random strokes (distractors, not objects)."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
    grad = c0[None, :] * (1 - t[:, None]) + c1[None, :] * t[:, None]
    base = (np.broadcast_to(grad[None], (h, w, 3)) if len(t) == w
            else np.broadcast_to(grad[:, None], (h, w, 3)))
    cells = int(rng.integers(4, 12))
    noise = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    noise = np.asarray(Image.fromarray(noise).resize((w, h), Image.BICUBIC), np.float32)
    fine = rng.normal(0, 12, (h, w, 3))
    mix = 0.55 * base + 0.45 * noise + fine
    img = Image.fromarray(np.clip(mix, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 10))):
        pts = [tuple(float(v) for v in rng.uniform(-20, max(w, h) + 20, 2))
               for _ in range(int(rng.integers(2, 5)))]
        draw.line(pts, fill=_color(rng), width=int(rng.integers(1, 4)))
    return img


def _regular_polygon(cx, cy, r, n, angle):
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n),
             cy + r * math.sin(angle + 2 * math.pi * k / n)) for k in range(n)]


def _star(cx, cy, r, angle):
    pts = []
    for k in range(10):
        rr = r if k % 2 == 0 else r * 0.45
        a = angle + math.pi * k / 5
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _bbox(pts) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def _draw_object(draw: ImageDraw.ImageDraw, rng, mid: str, cx: float, cy: float, r: float,
                 fill, outline) -> list[Box]:
    """Draws one object centred at (cx, cy) of radius about r; returns its boxes (parts too)."""
    width = int(rng.integers(0, 3))
    kw = {"fill": fill, "outline": outline if width else None, "width": width}
    if mid == CIRCLE:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], **kw)
        return [Box(mid, cx - r, cy - r, cx + r, cy + r)]
    if mid == RING:
        thick = max(2, int(r * rng.uniform(0.2, 0.4)))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=thick)
        return [Box(mid, cx - r, cy - r, cx + r, cy + r)]
    if mid == ROUND:  # an ellipse: only "Round shape" applies
        a, b = r, r / rng.uniform(1.7, 2.6)
        if rng.random() < 0.5:
            a, b = b, a
        draw.ellipse([cx - a, cy - b, cx + a, cy + b], **kw)
        return [Box(mid, cx - a, cy - b, cx + a, cy + b)]
    if mid == SMILEY:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=(20, 20, 20), width=2)
        boxes = [Box(mid, cx - r, cy - r, cx + r, cy + r)]
        er = r * 0.15
        dark = tuple(int(v * 0.25) for v in fill)
        for side in (-1, 1):
            ex, ey = cx + side * 0.38 * r, cy - 0.25 * r
            draw.ellipse([ex - er, ey - er, ex + er, ey + er], fill=dark)
            boxes.append(Box(EYE, ex - er, ey - er, ex + er, ey + er))
        draw.arc([cx - 0.55 * r, cy - 0.35 * r, cx + 0.55 * r, cy + 0.55 * r], 20, 160,
                 fill=dark, width=max(2, int(r * 0.08)))
        return boxes
    if mid == CROSS:
        t = r * rng.uniform(0.25, 0.4)
        angle = rng.uniform(-0.25, 0.25)
        arm = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t),
               (-r, t), (-r, -t), (-t, -t)]
        pts = [(cx + x * math.cos(angle) - y * math.sin(angle),
                cy + x * math.sin(angle) + y * math.cos(angle)) for x, y in arm]
    elif mid == SQUARE:
        pts = _regular_polygon(cx, cy, r * 1.3, 4, math.pi / 4 + rng.uniform(-0.15, 0.15))
    elif mid == DIAMOND:
        pts = _regular_polygon(cx, cy, r * 1.2, 4, rng.uniform(-0.15, 0.15))
        stretch = rng.uniform(1.0, 1.5)
        pts = [(cx + (x - cx) / stretch, cy + (y - cy) * stretch / 1.2) for x, y in pts]
    elif mid == TRIANGLE:
        pts = _regular_polygon(cx, cy, r * 1.15, 3, -math.pi / 2 + rng.uniform(-0.5, 0.5))
    elif mid == STAR:
        pts = _star(cx, cy, r * 1.15, -math.pi / 2 + rng.uniform(-0.3, 0.3))
    elif mid == QUAD:  # a trapezoid or parallelogram: neither square nor diamond
        w, h = r * rng.uniform(1.2, 1.6), r * rng.uniform(0.6, 0.9)
        skew = r * rng.uniform(0.35, 0.7) * rng.choice([-1, 1])
        if rng.random() < 0.5:
            pts = [(cx - w + skew, cy - h), (cx + w + skew, cy - h), (cx + w - skew, cy + h),
                   (cx - w - skew, cy + h)]
        else:
            top = w * rng.uniform(0.3, 0.6)
            pts = [(cx - top, cy - h), (cx + top, cy - h), (cx + w, cy + h), (cx - w, cy + h)]
    elif mid == POLYGON:  # a pentagon, hexagon or octagon: only "Polygon" applies
        pts = _regular_polygon(cx, cy, r, int(rng.choice([5, 6, 8])), rng.uniform(0, math.pi))
    else:
        raise ValueError(f"no drawing for {mid}")
    draw.polygon(pts, **kw)
    return [Box(mid, *_bbox(pts))]


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    ih = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = iw * ih
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union > 0 else 0.0


def render_image(seed: int, split: str, index: int) -> tuple[str, Image.Image, list[Box]]:
    """Draws one image. Returns (ImageID, RGB image, boxes in pixels, unclipped, draw order)."""
    rng = np.random.default_rng([seed, {"train": 0, "test": 1}[split], index])
    long_side = int(rng.integers(256, 321))
    short_side = int(long_side * rng.uniform(0.6, 1.0))
    w, h = (long_side, short_side) if rng.random() < 0.6 else (short_side, long_side)
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    arr = np.asarray(img)
    boxes: list[Box] = []
    placed: list[Box] = []
    mids, weights = zip(*OBJECT_WEIGHTS.items(), strict=True)
    weights = np.array(weights) / sum(weights)
    n_objects = int(rng.integers(1, 6))
    order = 0

    if rng.random() < GROUP_PROBABILITY:  # a cluster of small objects -> one group-of box
        mid = GROUP_CLASSES[int(rng.integers(len(GROUP_CLASSES)))]
        gw, gh = rng.uniform(0.3, 0.55) * w, rng.uniform(0.25, 0.45) * h
        gx, gy = rng.uniform(0, w - gw), rng.uniform(0, h - gh)
        fill = _color(rng, arr[int(gy + gh / 2), int(gx + gw / 2)])
        members = []
        for _ in range(int(rng.integers(5, 11))):
            r = rng.uniform(0.03, 0.05) * min(w, h)
            cx, cy = rng.uniform(gx + r, gx + gw - r), rng.uniform(gy + r, gy + gh - r)
            members += _draw_object(draw, rng, mid, cx, cy, r, fill, (0, 0, 0))
        x0, y0, x1, y1 = (min(b.x0 for b in members), min(b.y0 for b in members),
                          max(b.x1 for b in members), max(b.y1 for b in members))
        group = Box(mid, x0, y0, x1, y1, group_of=True, draw_order=order)
        boxes.append(group)
        placed.append(group)
        order += 1

    for _ in range(n_objects):
        mid = mids[int(rng.choice(len(mids), p=weights))]
        for _attempt in range(10):
            r = rng.uniform(0.07, 0.22) * min(w, h)
            # Centres may fall near the border so that some objects are truncated.
            cx, cy = rng.uniform(-0.2 * r, w + 0.2 * r), rng.uniform(-0.2 * r, h + 0.2 * r)
            probe = Box(mid, cx - r, cy - r, cx + r, cy + r)
            if all(_iou(probe, p) < MAX_OVERLAP_IOU for p in placed):
                break
        else:
            continue
        local = arr[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))]
        new = _draw_object(draw, rng, mid, cx, cy, r, _color(rng, local), _color(rng))
        for b in new:
            b.draw_order = order
        boxes += new
        placed.append(new[0])
        order += 1

    # A box is occluded when something drawn later covers more than 10% of it.
    for b in boxes:
        area = (b.x1 - b.x0) * (b.y1 - b.y0)
        for other in boxes:
            if other.draw_order <= b.draw_order:
                continue
            iw = max(0.0, min(b.x1, other.x1) - max(b.x0, other.x0))
            ih = max(0.0, min(b.y1, other.y1) - max(b.y0, other.y0))
            if iw * ih > 0.1 * area:
                b.occluded = True
                break
    return image_id(seed, split, index), img, boxes


def box_rows(image_id_: str, boxes: Sequence[Box], w: int, h: int) -> list[str]:
    """Official box CSV rows (normalized XMin,XMax,YMin,YMax, clipped to the image)."""
    rows = []
    for b in boxes:
        x0, x1 = max(0.0, b.x0) / w, min(float(w), b.x1) / w
        y0, y1 = max(0.0, b.y0) / h, min(float(h), b.y1) / h
        if x1 - x0 < 2 / w or y1 - y0 < 2 / h:  # almost entirely outside: no box
            continue
        truncated = b.x0 < 0 or b.y0 < 0 or b.x1 > w or b.y1 > h
        rows.append(f"{image_id_},xclick,{b.mid},1,{x0:.6f},{x1:.6f},{y0:.6f},{y1:.6f},"
                    f"{int(b.occluded)},{int(truncated)},{int(b.group_of)},0,0")
    return rows


def label_rows(image_id_: str, present: set[str], rng: np.random.Generator,
               tree: Hierarchy) -> list[str]:
    """Verified present labels for boxed classes, and 1-3 verified absent unrelated classes."""
    rows = [f"{image_id_},verification,{m},1" for m in sorted(present)]
    # Absent only if neither the class nor anything below it is in the image.
    candidates = sorted(m for m, _ in CLASSES
                        if m not in present and not (tree.descendants(m) & present))
    for m in rng.choice(candidates, size=min(len(candidates), int(rng.integers(1, 4))),
                        replace=False):
        rows.append(f"{image_id_},verification,{m},0")
    return rows


def check_arguments(out: str, seed: int, images: int, test_images: int | None,
                    quality: int) -> int:
    """Raises UsageError (naming the flag) for arguments write_dataset cannot use.

    Returns the number of test images (None: a tenth of `images`, at least 1).
    """
    for flag, value, low, high, why, example in (
            ("--seed", seed, 0, None, "numpy seeds are non-negative", 0),
            ("--images", images, 1, None, "the dataset needs training images", 600),
            ("--test_images", test_images, 0, None, "a number of images", 60),
            ("--jpeg_quality", quality, 1, 100, "75-95 is usual", 90)):
        if value is None:
            continue
        bound = f"at least {low}" if high is None else f"in [{low}, {high}]"
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(flag, value, f"must be a whole number {bound}; pass e.g. "
                                          f"{flag}={example}")
        if value < low or (high is not None and value > high):
            raise UsageError(flag, value, f"must be {bound} ({why}); pass e.g. {flag}={example}")
    test_images = max(1, images // 10) if test_images is None else test_images
    fileio.check_output_dir("--out", out, subdirs=("label", "train", "test"))
    for split, count in (("train", images), ("test", test_images)):
        folder = os.path.join(out, split)
        if not os.path.isdir(folder):
            continue
        ours = {f"{image_id(seed, split, i)}.jpg" for i in range(count)}
        others = [n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg"))
                  and n not in ours]
        if others:
            raise UsageError("--out", out, (
                f"{folder} holds {len(others)} image(s) that this run (--seed={seed}, "
                f"--images={images}, --test_images={test_images}) does not write, e.g. "
                f"{sorted(others)[0]}; they would mix with this dataset: choose a new folder "
                "or remove the old one"))
    return test_images


def write_dataset(out: str, seed: int = 0, images: int = 600, test_images: int | None = None,
                  quality: int = 90, progress: bool = True) -> dict:
    """Writes the whole dataset under `out`; returns counts.

    Args:
      out: the data folder (created if missing).
      seed: >= 0; the output is a function of it.
      images: >= 1 training images; test_images: >= 0 (None: images // 10, at least 1).
      quality: JPEG quality, 1-100.
      progress: print a progress line to stderr every 200 images.
    Raises:
      UsageError (a ValueError) naming the flag of a bad argument, before anything
      is written.
    """
    test_images = check_arguments(out, seed, images, test_images, quality)
    tree = hierarchy()
    label_dir = os.path.join(out, "label")
    for d in (label_dir, os.path.join(out, "train"), os.path.join(out, "test")):
        os.makedirs(d, exist_ok=True)
    with fileio.atomic_output(os.path.join(label_dir, layout.CLASSES_FILE)) as f:
        csv.writer(f, lineterminator="\n").writerows(CLASSES)
    with fileio.atomic_output(os.path.join(label_dir, layout.HIERARCHY_FILE)) as f:
        json.dump(HIERARCHY_JSON, f, indent=4)

    box_lines, label_lines = [BOX_HEADER], [LABEL_HEADER]
    t0 = time.monotonic()
    total = images + test_images
    for split, count in (("train", images), ("test", test_images)):
        for i in range(count):
            iid, img, boxes = render_image(seed, split, i)
            with fileio.atomic_output(os.path.join(out, split, f"{iid}.jpg"), "wb") as f:
                img.save(f, format="JPEG", quality=quality)
            if split == "train":
                rows = box_rows(iid, boxes, img.width, img.height)
                box_lines += rows
                present = {r.split(",")[2] for r in rows}
                label_rng = np.random.default_rng([seed, 2, i])
                label_lines += label_rows(iid, present, label_rng, tree)
            done = i + 1 + (images if split == "test" else 0)
            if progress and (done % 200 == 0 or done == total):
                rate = done / max(time.monotonic() - t0, 1e-9)
                print(f"  {done}/{total} images, {rate:.0f}/s", file=sys.stderr)
    # Written last: annotations beside the images mean the images are all there.
    with fileio.atomic_output(os.path.join(label_dir, layout.TRAIN_BOXES_FILE)) as f:
        f.write("\n".join(box_lines) + "\n")
    with fileio.atomic_output(os.path.join(label_dir, layout.TRAIN_LABELS_FILE)) as f:
        f.write("\n".join(label_lines) + "\n")
    return {"train_images": images, "test_images": test_images,
            "boxes": len(box_lines) - 1, "image_labels": len(label_lines) - 1}


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns its exit status (0, or 2 for a refused start)."""
    parser = errors.ArgumentParser(
        prog="python -m oid.demo_data", description="Write the synthetic mini Open Images.")
    parser.add_argument("--out", required=True,
                        help="output data folder (created if missing; not one that holds "
                             "another dataset's images)")
    parser.add_argument("--seed", type=int, default=0, help="random seed, >= 0")
    parser.add_argument("--images", type=int, default=600, help="training images, >= 1")
    parser.add_argument("--test_images", type=int, default=None,
                        help="unlabelled test images, >= 0 (default: a tenth of --images, at "
                             "least 1)")
    parser.add_argument("--jpeg_quality", type=int, default=90, help="JPEG quality, 1-100")
    args = parser.parse_args(argv)
    try:
        check_arguments(args.out, args.seed, args.images, args.test_images, args.jpeg_quality)
    except UsageError as e:
        return errors.report(e)
    print(f"writing the demo dataset to {args.out} (seed {args.seed})", file=sys.stderr)
    try:
        counts = write_dataset(args.out, args.seed, args.images, args.test_images,
                               args.jpeg_quality)
    except OSError as e:  # a full disk, say: no half-written file is left under its name
        print(f"error: {e.filename or args.out}: cannot be written ({e.strerror or e}); free "
              "space or choose another --out, then run again", file=sys.stderr)
        return 1
    print(f"{counts['train_images']} train images, {counts['test_images']} test images, "
          f"{counts['boxes']} boxes, {counts['image_labels']} image-level labels in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
