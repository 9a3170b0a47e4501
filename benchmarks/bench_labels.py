"""Load time and peak memory of the box CSV reader at full Open Images scale.

Generates (once, cached) a challenge-sized box CSV: 12.2M rows, 1.74M ImageIDs,
500 MIDs, official columns. Then loads it in fresh subprocesses with
  * ours: oid.annotations.read_boxes (typed columns + full validation), and
  * baseline: a plain `pandas.read_csv(path)`,
and prints wall time and peak RSS of each, side by side, with the ratio.

  python benchmarks/bench_labels.py [--rows 12200000] [--images 1740000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CHILD = r"""
import resource, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
if {which!r} == "ours":
    from oid.annotations import read_boxes
    frame, report = read_boxes({path!r})
    rows = report.rows
else:
    import pandas as pd
    frame = pd.read_csv({path!r})
    rows = len(frame)
elapsed = time.perf_counter() - t0
print(rows, elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      int(frame.memory_usage(deep=True).sum()))
"""


def generate(path: str, rows: int, images: int, classes: int = 500, seed: int = 0) -> None:
    """Writes a box CSV with the official header and realistic value shapes."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    # Long-tailed boxes per image and per class, like Open Images.
    image_ids = np.array([f"{v:016x}" for v in rng.integers(0, 2**63, images)])
    per_image = rng.zipf(1.6, images).clip(1, 500).astype(np.float64)
    image_of_row = np.sort(rng.choice(images, rows, p=per_image / per_image.sum()))
    mids = np.array([f"/m/0{v:x}" for v in rng.integers(0x10000, 0xFFFFFF, classes)])
    weight = 1.0 / np.arange(1, classes + 1) ** 1.1
    label = rng.choice(classes, rows, p=weight / weight.sum())
    x = np.sort(rng.random((rows, 2)), axis=1).round(6)
    y = np.sort(rng.random((rows, 2)), axis=1).round(6)
    flags = (rng.random((rows, 5)) < [0.6, 0.3, 0.05, 0.05, 0.03]).astype(np.int8)
    table = pa.table({
        "ImageID": pa.DictionaryArray.from_arrays(image_of_row.astype(np.int32), pa.array(image_ids.tolist())),
        "Source": pa.DictionaryArray.from_arrays(
            (rng.random(rows) < 0.2).astype(np.int32), ["xclick", "activemil"]),
        "LabelName": pa.DictionaryArray.from_arrays(label.astype(np.int32), pa.array(mids.tolist())),
        "Confidence": np.ones(rows, np.int8),
        "XMin": x[:, 0], "XMax": x[:, 1], "YMin": y[:, 0], "YMax": y[:, 1],
        **{name: flags[:, i] for i, name in enumerate(
            ["IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"])},
    })
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, f, pacsv.WriteOptions(quoting_style="none", include_header=False))
    os.replace(tmp, path)


def measure(which: str, path: str) -> dict:
    code = _CHILD.format(root=ROOT, which=which, path=path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{which} loader failed:\n{out.stderr}")
    rows, seconds, peak, frame_bytes = out.stdout.split()
    return {"rows": int(rows), "seconds": float(seconds), "peak_rss_mb": int(peak) / 2**20,
            "frame_mb": int(frame_bytes) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=12_200_000)
    parser.add_argument("--images", type=int, default=1_740_000)
    parser.add_argument("--cache_dir", default="/tmp/oid_bench")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each loader, alternating; the median time is reported")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    os.makedirs(args.cache_dir, exist_ok=True)
    path = os.path.join(args.cache_dir, f"boxes-{args.rows}-{args.images}.csv")
    if not os.path.exists(path):
        print(f"generating {path} ...", file=sys.stderr)
        t0 = time.perf_counter()
        generate(path, args.rows, args.images)
        print(f"  {time.perf_counter() - t0:.1f} s, {os.path.getsize(path) / 2**20:.0f} MB",
              file=sys.stderr)
    runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
    for _ in range(args.repeat):  # alternate so that machine noise hits both alike
        for which in runs:
            runs[which].append(measure(which, path))
    results = {which: {**min(r, key=lambda m: m["seconds"]),
                       "seconds": float(np.median([m["seconds"] for m in r])),
                       "all_seconds": [m["seconds"] for m in r]}
               for which, r in runs.items()}
    ours, base = results["ours"], results["baseline"]
    results["time_ratio"] = ours["seconds"] / base["seconds"]
    results["peak_memory_ratio"] = ours["peak_rss_mb"] / base["peak_rss_mb"]
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    results["file_mb"] = os.path.getsize(path) / 2**20

    print(f"box CSV: {args.rows:,} rows, {args.images:,} images, {results['file_mb']:.0f} MB "
          f"({results['machine']})")
    print(f"{'loader':<30} {'seconds':>8} {'peak RSS MB':>12} {'frame MB':>9}"
          f"   (median of {args.repeat} alternating runs)")
    for name, label in (("baseline", "pandas.read_csv (plain)"),
                        ("ours", "oid.annotations.read_boxes")):
        r = results[name]
        print(f"{label:<30} {r['seconds']:>8.2f} {r['peak_rss_mb']:>12.0f} {r['frame_mb']:>9.0f}")
    print(f"ours / baseline: time x{results['time_ratio']:.2f}, "
          f"peak memory x{results['peak_memory_ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
