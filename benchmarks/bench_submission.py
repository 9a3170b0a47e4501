"""Rows and detections per second, file size and peak memory of writing a Kaggle submission.

Synthetic detections for 100,000 images x 300 detections (30M, a test-set
submission with a generous top-k; scores in [0.05, 1), 500 MIDs, long-tailed),
made a chunk of images at a time so that the generator never holds more than
one chunk, are written in fresh subprocesses by
  * ours: oid.submission.SubmissionWriter (buffers ~33k detections, formats
    them with numpy and Arrow string kernels, streams them to the file), and
  * baseline: the old tool's way: one Python string per image built detection
    by detection, all of them kept for a pandas DataFrame, then to_csv;
  * generator only: making the detections and nothing else, for reference.
Each child times the generator's share of its run; rows and detections per
second are of the writing alone (wall time less the generator's). The two
files are compared (their text, decompressed for --gzip).

  python benchmarks/bench_submission.py [--images 100000] [--dets 300] [--gzip]
      [--skip_baseline] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from oid.submission import ImageDetections, SubmissionWriter  # noqa: E402

CHUNK_IMAGES = 1000
NUM_CLASSES = 500
WHO = {"generator": "generator only (reference)", "ours": "ours: SubmissionWriter",
       "baseline": "baseline: DataFrame + to_csv"}


def detections(images: int, dets: int, seed: int = 0) -> Iterator[ImageDetections]:
    """One ImageDetections an image, scores descending, generated CHUNK_IMAGES at a time."""
    rng = np.random.default_rng(seed)
    mids = np.array([f"/m/0{v:x}" for v in rng.integers(0x10000, 0xFFFFFF, NUM_CLASSES)],
                    object)
    weight = 1.0 / np.arange(1, NUM_CLASSES + 1) ** 1.1
    weight /= weight.sum()
    for first in range(0, images, CHUNK_IMAGES):
        count = min(CHUNK_IMAGES, images - first)
        n = count * dets
        size = rng.uniform(0.02, 0.6, (n, 2))
        low = rng.uniform(-0.05, 1.0, (n, 2)) * (1 - size)  # a few cross the border
        boxes = np.concatenate([low, low + size], 1).astype(np.float32)
        scores = -np.sort(-rng.uniform(0.05, 1.0, (count, dets)), axis=1).astype(np.float32)
        labels = mids[rng.choice(NUM_CLASSES, n, p=weight)]
        for k in range(count):
            rows = slice(k * dets, (k + 1) * dets)
            yield ImageDetections(f"{first + k:016x}", boxes[rows], scores[k], labels[rows])


class Timed:
    """Wraps an iterator and adds up the time spent inside it."""

    def __init__(self, iterator: Iterator):
        self.iterator, self.seconds = iterator, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self.iterator)
        finally:
            self.seconds += time.perf_counter() - start


def write_baseline(source, path: str) -> None:
    """The old tool: a string per image, all in a DataFrame, then to_csv."""
    import pandas as pd

    ids, strings = [], []
    for d in source:
        y0, x0, y1, x1 = np.clip(d.boxes, 0.0, 1.0).T.tolist()
        strings.append(" ".join(
            f"{m} {s:.6g} {a:.6f} {b:.6f} {c:.6f} {e:.6f}"
            for m, s, a, b, c, e in zip(d.mids.tolist(), d.scores.tolist(), x0, y0, x1, y1,
                                        strict=True)))
        ids.append(d.image_id)
    frame = pd.DataFrame({"ImageId": ids, "PredictionString": strings})
    frame.to_csv(path, index=False, compression="gzip" if path.endswith(".gz") else None)


def child(which: str, images: int, dets: int, path: str) -> dict:
    source = Timed(detections(images, dets))
    start = time.perf_counter()
    cpu = time.process_time()
    if which == "generator":
        for _ in source:
            pass
    elif which == "ours":
        with SubmissionWriter(path) as writer:
            for d in source:
                writer.write(d)
    else:
        write_baseline(source, path)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
            "generator_seconds": source.seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "file_mb": os.path.getsize(path) / 2**20 if which != "generator" else 0.0}


def run(which: str, images: int, dets: int, path: str) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--_child", which, "--images",
            str(images), "--dets", str(dets), "--_path", path]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"{which} failed:\n{out.stderr[-3000:]}")
    m = json.loads(out.stdout.strip().splitlines()[-1])
    if which != "generator":
        writing = max(m["seconds"] - m["generator_seconds"], 1e-9)
        m["writing_seconds"] = writing
        m["rows_per_second"] = images / writing
        m["detections_per_second"] = images * dets / writing
    return m


def text_digest(path: str) -> str:
    h = hashlib.sha256()
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dets", type=int, default=300, help="detections an image")
    parser.add_argument("--gzip", action="store_true", help="write .csv.gz files")
    parser.add_argument("--skip_baseline", action="store_true")
    parser.add_argument("--out_dir", default="/tmp/oid_bench/submission")
    parser.add_argument("--keep", action="store_true", help="keep the written files")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(child(args._child, args.images, args.dets, args._path)))
        return

    os.makedirs(args.out_dir, exist_ok=True)
    suffix = ".csv.gz" if args.gzip else ".csv"
    paths = {w: os.path.join(args.out_dir, f"{w}-{args.images}-{args.dets}{suffix}")
             for w in ("ours", "baseline")}
    whos = ["generator", "ours"] + ([] if args.skip_baseline else ["baseline"])
    results = {w: run(w, args.images, args.dets, paths.get(w, "")) for w in whos}
    if "baseline" in results:
        results["identical_text"] = text_digest(paths["ours"]) == text_digest(paths["baseline"])
        base, ours = results["baseline"], results["ours"]
        results["speedup"] = base["writing_seconds"] / ours["writing_seconds"]
        results["peak_memory_ratio"] = base["peak_rss_mb"] / ours["peak_rss_mb"]
    if not args.keep:
        for p in paths.values():
            if os.path.exists(p):
                os.remove(p)

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    load = os.getloadavg()[0]
    total = args.images * args.dets
    print(f"submission: {args.images:,} images x {args.dets} detections = {total:,} detections"
          f"{', gzipped' if args.gzip else ''} ({machine}, load {load:.1f})")
    print(f"{'':<30} {'wall s':>7} {'CPU s':>7} {'write s':>8} {'rows/s':>9} {'dets/s':>11} "
          f"{'file MB':>8} {'peak RSS MB':>12}")
    for w in whos:
        r = results[w]
        if w == "generator":
            print(f"{WHO[w]:<30} {r['seconds']:>7.1f} {r['cpu_seconds']:>7.1f} {'':>8} {'':>9} "
                  f"{'':>11} {'':>8} {r['peak_rss_mb']:>12.0f}")
            continue
        print(f"{WHO[w]:<30} {r['seconds']:>7.1f} {r['cpu_seconds']:>7.1f} "
              f"{r['writing_seconds']:>8.1f} {r['rows_per_second']:>9,.0f} "
              f"{r['detections_per_second']:>11,.0f} {r['file_mb']:>8.0f} "
              f"{r['peak_rss_mb']:>12.0f}")
    if "baseline" in results:
        print(f"ours writes {results['speedup']:.1f}x faster with "
              f"{results['peak_memory_ratio']:.1f}x less peak memory; "
              f"same text: {'yes' if results['identical_text'] else 'NO'}")
    if args.json:
        summary = {"images": args.images, "detections_per_image": args.dets,
                   "detections": total, "gzip": args.gzip, "machine": machine,
                   "load_average": load, **results}
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
