"""Wall time and peak memory of `python -m oid.combine` on synthetic detection caches, next to a
pandas concatenate-and-groupby baseline, and the caches' size on disk.

The script writes, for 100,000 images x 3 levels x 300 detections (90M cached detections:
scores in [0.05, 1), long-tailed classes, random boxes), one model cache per level exactly as
predict.py writes them (oid.detection_cache, chunks of 1,000 images), a 500-class hierarchy
(57 parents over 200 of the 443 leaves, the rest top-level, as in the challenge's) and its
class list. Then, each in a fresh subprocess:
  * ours: `python -m oid.combine --cache CACHE ...`: the levels' caches read in lockstep, one
    chunk each at a time, each image combined (levels merged, boxes copied to ancestors,
    everything above 0.05 kept) and streamed to the submission;
  * baseline: the pandas way: every level's cache read into one DataFrame
    (pd.read_parquet + pd.concat), groupby ImageId, each group split by level and combined by
    the same oid.combine.Combination, rows written by the same SubmissionWriter.
Both write plain CSV to --out_dir; their texts are compared.

  python benchmarks/bench_combine.py [--images 100000] [--levels 3] [--dets 300]
      [--skip_baseline] [--keep] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from oid.combine import Combination, CombineConfig, SourceSpec  # noqa: E402
from oid.detection_cache import Chunk, ModelCache, cache_key, model_caches  # noqa: E402
from oid.hierarchy import load_hierarchy  # noqa: E402
from oid.submission import ImageDetections, SubmissionWriter  # noqa: E402

CHUNK_IMAGES = 1000
NUM_PARENTS, NUM_LEAVES, CHILD_LEAVES = 57, 443, 200


def write_labels(out_dir: str, seed: int = 0) -> tuple[str, str, list[list[str]]]:
    """classes.csv and hierarchy.json under out_dir; returns their paths and each level's
    MIDs (level 1: the 200 leaves under parents, level 2: the top-level leaves, level 3:
    the parents; more levels cycle through them)."""
    rng = np.random.default_rng(seed)
    mids = [f"/m/0{v:06x}" for v in rng.choice(0xFFFFFF, NUM_PARENTS + NUM_LEAVES,
                                                 replace=False)]
    parents, leaves = mids[:NUM_PARENTS], mids[NUM_PARENTS:]
    children: dict[str, list[str]] = {p: [] for p in parents}
    # Parents 20..56 sit under one of parents 0..19 (depth 2); leaves under any parent.
    for k, p in enumerate(parents[20:]):
        children[parents[k % 20]].append(p)
    for k, leaf in enumerate(leaves[:CHILD_LEAVES]):
        children[parents[k % NUM_PARENTS]].append(leaf)

    def node(mid):
        return {"LabelName": mid, **({"Subcategory": [node(c) for c in children[mid]]}
                                     if children.get(mid) else {})}

    tree = {"LabelName": "/m/0bl9f",
            "Subcategory": [node(p) for p in parents[:20]] +
                           [node(leaf) for leaf in leaves[CHILD_LEAVES:]]}
    classes, hierarchy = os.path.join(out_dir, "classes.csv"), os.path.join(out_dir,
                                                                            "hierarchy.json")
    with open(classes, "w") as f:
        f.writelines(f"{m},class {k}\n" for k, m in enumerate(mids))
    with open(hierarchy, "w") as f:
        json.dump(tree, f)
    return classes, hierarchy, [leaves[:CHILD_LEAVES], leaves[CHILD_LEAVES:], parents]


def write_caches(cache_dir: str, level_mids: list[list[str]], images: int, levels: int,
                 dets: int, seed: int = 0) -> float:
    """One model cache per level under cache_dir; returns the seconds it took."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    for level in range(1, levels + 1):
        mids = np.array(level_mids[(level - 1) % len(level_mids)], object)
        weight = 1.0 / np.arange(1, len(mids) + 1) ** 1.1
        weight /= weight.sum()
        meta = {"key": cache_key({"digest": f"synthetic level {level}", "level": level}),
                "run_dir": f"runs/level{level}", "level": level, "checkpoint": "ckpt-1",
                "mids": mids.tolist(), "settings": {"score_threshold": 0.05}}
        cache = ModelCache.create(cache_dir, meta)
        for index, first in enumerate(range(0, images, CHUNK_IMAGES)):
            count = min(CHUNK_IMAGES, images - first)
            n = count * dets
            size = rng.uniform(0.02, 0.6, (n, 2))
            low = rng.uniform(0.0, 1.0, (n, 2)) * (1 - size)
            boxes = np.concatenate([low, low + size], 1).astype(np.float32)
            scores = -np.sort(-rng.uniform(0.05, 1.0, (count, dets)), axis=1).astype(np.float32)
            labels = mids[rng.choice(len(mids), n, p=weight)]
            cache.write(index, Chunk(tuple(
                ImageDetections(f"{first + k:016x}", boxes[k * dets:(k + 1) * dets], scores[k],
                                labels[k * dets:(k + 1) * dets]) for k in range(count))))
        print(f"  level {level}: {cache.path}", file=sys.stderr, flush=True)
    return time.perf_counter() - start


def baseline(cache_dir: str, hierarchy_path: str, output: str) -> None:
    """Every level's cache in one DataFrame, groupby ImageId, the same per-image code."""
    import pandas as pd

    caches = sorted(model_caches(cache_dir), key=lambda c: c.level)
    frames = []
    for order, cache in enumerate(caches):
        for index in cache.chunks():
            frame = pd.read_parquet(cache.chunk_path(index),
                                    columns=["image_id", "mid", "score", "ymin", "xmin", "ymax",
                                             "xmax"])
            frame["source"] = np.int8(order)
            frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    del frames
    sources = [SourceSpec(c.path, f"level{c.level}") for c in caches]
    combination = Combination(sources, CombineConfig(), load_hierarchy(hierarchy_path))
    with SubmissionWriter(output) as writer:
        for image_id, group in table.groupby("image_id", sort=False):
            boxes = group[["ymin", "xmin", "ymax", "xmax"]].to_numpy()
            scores = group["score"].to_numpy()
            mids = group["mid"].to_numpy(object)
            source = group["source"].to_numpy()
            slots = []
            for k in range(len(caches)):
                rows = source == k
                slots.append(ImageDetections(image_id, boxes[rows], scores[rows], mids[rows]))
            writer.write(combination(image_id, slots))


def child(which: str, cache_dir: str, classes: str, hierarchy: str, output: str) -> dict:
    start = time.perf_counter()
    cpu = time.process_time()
    if which == "ours":
        from oid.combine import main as combine_main

        status = combine_main([f"--cache={cache_dir}", f"--classes={classes}",
                               f"--hierarchy={hierarchy}", f"--output={output}",
                               "--log_every_seconds=60"])
        if status:
            raise SystemExit(status)
    else:
        baseline(cache_dir, hierarchy, output)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "file_mb": os.path.getsize(output) / 2**20}


def run(which: str, args, paths: dict) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--_child", which,
            "--out_dir", args.out_dir, "--_output", paths[which]]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--levels", type=int, default=3, help="one cached model per level")
    parser.add_argument("--dets", type=int, default=300, help="cached detections an image "
                                                               "and level")
    parser.add_argument("--skip_baseline", action="store_true")
    parser.add_argument("--out_dir", default="/tmp/oid_bench/combine")
    parser.add_argument("--keep", action="store_true", help="keep the caches and outputs")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache_dir = os.path.join(args.out_dir, "cache")
    classes, hierarchy = (os.path.join(args.out_dir, n) for n in ("classes.csv",
                                                                  "hierarchy.json"))
    if args._child:
        print(json.dumps(child(args._child, cache_dir, classes, hierarchy, args._output)))
        return

    shutil.rmtree(args.out_dir, ignore_errors=True)
    os.makedirs(args.out_dir)
    print(f"writing the caches: {args.images:,} images x {args.levels} levels x {args.dets} "
          "detections", file=sys.stderr, flush=True)
    _, _, level_mids = write_labels(args.out_dir)
    make_s = write_caches(cache_dir, level_mids, args.images, args.levels, args.dets)
    cache_mb = folder_mb(cache_dir)
    paths = {w: os.path.join(args.out_dir, f"{w}.csv") for w in ("ours", "baseline")}
    whos = ["ours"] + ([] if args.skip_baseline else ["baseline"])
    results = {}
    for w in whos:
        print(f"running {w}", file=sys.stderr, flush=True)
        results[w] = run(w, args, paths)
        print(f"  {w}: {json.dumps(results[w])}", file=sys.stderr, flush=True)
    if "baseline" in results:
        results["identical_text"] = digest(paths["ours"]) == digest(paths["baseline"])
        results["speedup"] = results["baseline"]["seconds"] / results["ours"]["seconds"]
        results["peak_memory_ratio"] = (results["baseline"]["peak_rss_mb"]
                                        / results["ours"]["peak_rss_mb"])
    if not args.keep:
        shutil.rmtree(args.out_dir, ignore_errors=True)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    load = os.getloadavg()[0]
    per_100k = 100_000 / args.images
    print(f"combine: {args.images:,} images x {args.levels} levels x {args.dets} cached "
          f"detections = {args.images * args.levels * args.dets:,} ({machine}, load {load:.1f})")
    print(f"cache on disk: {cache_mb:,.0f} MB ({cache_mb * per_100k / 1024:.2f} GB per 100k "
          f"images), written in {make_s:.0f} s")
    print(f"{'':<42} {'wall s':>7} {'CPU s':>7} {'images/s':>9} {'peak RSS MB':>12} "
          f"{'output MB':>10}")
    names = {"ours": "ours: python -m oid.combine",
             "baseline": "baseline: pandas concat + groupby"}
    for w in whos:
        r = results[w]
        print(f"{names[w]:<42} {r['seconds']:>7.1f} {r['cpu_seconds']:>7.1f} "
              f"{args.images / r['seconds']:>9,.0f} {r['peak_rss_mb']:>12,.0f} "
              f"{r['file_mb']:>10,.0f}")
    print(f"submission (no cap, above 0.05): {results['ours']['file_mb'] * per_100k / 1024:.2f} "
          "GB per 100k images")
    if "baseline" in results:
        print(f"ours is {results['speedup']:.2f}x the baseline's speed with "
              f"{results['peak_memory_ratio']:.1f}x less peak memory; same text: "
              f"{'yes' if results['identical_text'] else 'NO'}")
    if args.json:
        summary = {"images": args.images, "levels": args.levels, "detections_per_level": args.dets,
                   "machine": machine, "load_average": load, "cache_mb": cache_mb,
                   "cache_gb_per_100k_images": cache_mb * per_100k / 1024,
                   "cache_write_seconds": make_s, **results}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
