"""Images per second of the records job, next to a single-process loop and the decode ceiling.

Generates (once, cached) about 2,000 synthetic 1024x768 JPEGs with boxes in the
official layout, then measures on this machine:
  * ours: `python beam_jobs/make_records.py` (DirectRunner, every core), the
    pipeline's own time and the whole command's wall time;
  * loop: one process doing the same per-image work (read, decode, orient,
    convert, resize, encode, build the example, write one TFRecord file);
  * ceiling: only reading and decoding the same JPEGs, in parallel on every core.

  python benchmarks/bench_records.py [--images 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from oid import ROOT_MID, layout  # noqa: E402
from oid.levels import Level, LevelSpec  # noqa: E402

MIDS = [f"/m/0bench{k}" for k in range(10)]


def _make_image(args):
    """One 1024x768 JPEG: textured background and a few filled shapes; returns its box rows."""
    from PIL import ImageDraw

    from oid.demo_data import _background

    index, out_dir = args
    rng = np.random.default_rng(index)
    w, h = 1024, 768
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    iid = f"{index:016x}"
    rows = []
    n = int(rng.choice([1, 2, 3, 5, 8, 12, 60], p=[.2, .2, .2, .15, .1, .1, .05]))
    for _ in range(n):
        x0, y0 = rng.uniform(0, 0.9, 2)
        x1, y1 = min(1.0, x0 + rng.uniform(0.02, 0.4)), min(1.0, y0 + rng.uniform(0.02, 0.4))
        draw.ellipse([x0 * w, y0 * h, x1 * w, y1 * h], fill=tuple(int(v) for v in
                                                                  rng.integers(0, 256, 3)))
        rows.append(f"{iid},xclick,{MIDS[int(rng.integers(10))]},1,{x0:.5f},{x1:.5f},"
                    f"{y0:.5f},{y1:.5f},0,0,{int(rng.random() < 0.05)},0,0")
    img.save(os.path.join(out_dir, f"{iid}.jpg"), quality=90)
    return rows


def generate(data_dir: str, images: int) -> None:
    lay = layout.DataLayout(data_dir)
    os.makedirs(lay.label_dir, exist_ok=True)
    os.makedirs(lay.image_dir("train"), exist_ok=True)
    with multiprocessing.Pool() as pool:
        rows = pool.map(_make_image, [(i, lay.image_dir("train")) for i in range(images)],
                        chunksize=16)
    with open(lay.train_boxes, "w") as f:
        f.write("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
                "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside\n")
        f.writelines(r + "\n" for rs in rows for r in rs)
    with open(lay.train_labels, "w") as f:
        f.write("ImageID,Source,LabelName,Confidence\n")
    with open(lay.classes, "w") as f:
        f.writelines(f"{m},Bench class {k}\n" for k, m in enumerate(MIDS))
    with open(lay.hierarchy, "w") as f:
        json.dump({"LabelName": ROOT_MID, "Subcategory": [{"LabelName": m} for m in MIDS]}, f)
    LevelSpec((Level(1, "count", tuple(MIDS)),)).save(os.path.join(data_dir, "levels.json"))


def _decode(path: str) -> int:
    from PIL import Image

    with open(path, "rb") as f, Image.open(f) as img:
        img.load()
        return img.width


def ceiling(files: list[str]) -> float:
    with multiprocessing.Pool() as pool:
        pool.map(_decode, files[:32])  # warm up the workers
        t0 = time.perf_counter()
        pool.map(_decode, files, chunksize=8)
        return len(files) / (time.perf_counter() - t0)


def loop(data_dir: str, out_dir: str, max_side: int, quality: int) -> float:
    """The same per-image work as the job, one image after another in this process."""
    import tensorflow as tf

    from beam_jobs.images import prepare_image
    from beam_jobs.plan import PlanConfig, plan_level
    from oid.annotations import read_boxes, read_image_labels
    from oid.hierarchy import load_hierarchy
    from tfrecords.example import build_example

    lay = layout.DataLayout(data_dir)
    boxes, _ = read_boxes(lay.train_boxes)
    labels, _ = read_image_labels(lay.train_labels)
    spec = LevelSpec.load(os.path.join(data_dir, "levels.json"))
    plan = plan_level(boxes, labels, spec.level(1), load_hierarchy(lay.hierarchy), PlanConfig())
    t0 = time.perf_counter()
    with tf.io.TFRecordWriter(os.path.join(out_dir, "loop.tfrecord")) as writer:
        for ann in plan.annotations:
            with open(lay.image_path("train", ann.image_id), "rb") as f:
                p = prepare_image(f.read(), max_side, quality)
            writer.write(build_example(ann, p.jpeg, p.height, p.width, p.original_height,
                                       p.original_width).SerializeToString())
    return len(plan.annotations) / (time.perf_counter() - t0)


def beam_job(data_dir: str, out_dir: str, max_side: int, quality: int) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "beam_jobs", "make_records.py"),
           f"--data_dir={data_dir}", f"--output_dir={out_dir}", "--level=1",
           f"--max_side={max_side}", f"--jpeg_quality={quality}", "--num_shards=4"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"make_records failed:\n{out.stderr[-3000:]}")
    found = re.search(r"wrote (\d+) images in ([\d.]+) s", out.stderr)
    images, seconds = int(found.group(1)), float(found.group(2))
    return {"images": images, "pipeline_s": seconds, "wall_s": wall,
            "pipeline_images_per_s": images / seconds, "wall_images_per_s": images / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--max_side", type=int, default=1024)
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--cache_dir", default="/tmp/oid_bench")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    data_dir = os.path.join(args.cache_dir, f"records-{args.images}")
    if not os.path.exists(os.path.join(data_dir, "levels.json")):
        print(f"generating {args.images} images in {data_dir} ...", file=sys.stderr)
        shutil.rmtree(data_dir, ignore_errors=True)
        generate(data_dir, args.images)
    files = sorted(os.path.join(data_dir, "train", f) for f in os.listdir(
        os.path.join(data_dir, "train")))
    mb = sum(os.path.getsize(f) for f in files) / 2**20

    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "ceiling_images_per_s": ceiling(files),
            "loop_images_per_s": loop(data_dir, tmp, args.max_side, args.jpeg_quality),
            "ours": beam_job(data_dir, os.path.join(tmp, "records"), args.max_side,
                             args.jpeg_quality),
        }
    ours = results["ours"]["pipeline_images_per_s"]
    results["ours_vs_loop"] = ours / results["loop_images_per_s"]
    results["ours_vs_ceiling"] = ours / results["ceiling_images_per_s"]
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    print(f"{len(files)} JPEGs of 1024x768, {mb / len(files) * 1024:.0f} KB each, max_side "
          f"{args.max_side} ({results['machine']})")
    print(f"{'':<44} {'images/s':>9}")
    print(f"{'decode-only ceiling (all cores)':<44} {results['ceiling_images_per_s']:>9.1f}")
    print(f"{'single-process loop':<44} {results['loop_images_per_s']:>9.1f}")
    print(f"{'make_records.py, pipeline':<44} {ours:>9.1f}")
    print(f"{'make_records.py, whole command (with start-up)':<44} "
          f"{results['ours']['wall_images_per_s']:>9.1f}")
    print(f"ours / loop: x{results['ours_vs_loop']:.2f}; "
          f"ours / ceiling: {100 * results['ours_vs_ceiling']:.0f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
