"""Wall time and peak memory of `python -m oid.metric` on a challenge-sized submission.

Generates (once, cached) a realistic case: 40,000 images, 100 detections an
image (4M), a 500-class hierarchy (depth up to 5, some classes with two
parents), ~7 boxes an image with 6 % group-of boxes, present and absent
image-level labels, detections near boxes (of the box's class and ancestors)
and at random, in the Kaggle format. Then runs, each in a fresh subprocess:
  * ours: `python -m oid.metric` (parsing, expansion, vectorized matching, AP), and
  * baseline: a straightforward per-image, per-class loop written from the same
    spec (pandas read_csv and str.split for the submission, dicts for the
    expansion, greedy matching in Python over numpy IoU matrices),
checks that both give the same per-class AP (to 1e-9), and prints wall time and
peak RSS side by side with the ratio.

  python benchmarks/bench_metric.py [--images 40000] [--dets 100] [--repeat 3]
      [--baseline_images N] [--json out.json]

With --baseline_images N < images both run on the first N rows of the
submission as well (against all the ground truth) and are compared there; the
baseline's full-size time is then estimated by scaling, and the table says so.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BOX_HEADER = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]


# -- the case ------------------------------------------------------------------------------


def make_hierarchy(rng: np.random.Generator, num_classes: int) -> tuple[list[str], dict, list]:
    """MIDs, the nested JSON and parents per class: about 12 % of the classes have
    children, up to five levels deep, 3 % have a second parent."""
    mids = [f"/m/0b{i:04d}" for i in range(num_classes)]
    num_parents = max(2, num_classes // 8)
    parents: list[list[int]] = [[] for _ in range(num_classes)]
    for i in range(1, num_classes):
        pool = min(i, num_parents)  # only the first classes have children; edges go upwards
        if rng.random() < (0.45 if i < num_parents else 0.6):
            parents[i].append(int(rng.integers(pool)))
    for i in rng.choice(np.arange(num_parents, num_classes), num_classes // 30, replace=False):
        second = int(rng.integers(num_parents))
        if second not in parents[i]:
            parents[i].append(second)
    children = collections.defaultdict(list)
    for i, ps in enumerate(parents):
        for p in ps:
            children[p].append(i)

    def node(i: int) -> dict:
        out = {"LabelName": mids[i]}
        if children[i]:
            out["Subcategory"] = [node(c) for c in children[i]]
        return out

    tree = {"LabelName": "/m/0bl9f", "Subcategory": [node(i) for i in range(num_classes)
                                                     if not parents[i]]}
    return mids, tree, parents


def ancestor_lists(parents: list[list[int]]) -> list[list[int]]:
    out: list[set[int]] = []
    for i in range(len(parents)):
        found = set()
        for p in parents[i]:
            found |= {p} | out[p]  # parents have lower indices: already done
        out.append(found)
    return [sorted(a) for a in out]


def write_csv(table, path: str) -> None:
    """Like pandas' to_csv: an unquoted header and no quoting."""
    import pyarrow.csv as pacsv

    with open(path, "wb") as f:
        f.write((",".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def generate(directory: str, num_images: int, dets_per_image: int, num_classes: int,
             seed: int = 0) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    paths = {k: os.path.join(directory, f) for k, f in (
        ("boxes", "boxes.csv"), ("labels", "labels.csv"), ("hierarchy", "hierarchy.json"),
        ("classes", "classes.csv"), ("predictions", "submission.csv"))}
    mids, tree, parents = make_hierarchy(rng, num_classes)
    ancestors = ancestor_lists(parents)
    with open(paths["hierarchy"], "w") as f:
        json.dump(tree, f)
    with open(paths["classes"], "w") as f:
        f.writelines(f"{m},Class {i}\n" for i, m in enumerate(mids))
    image_ids = np.array([f"{v:016x}" for v in rng.integers(0, 2**63, num_images)])
    weight = 1.0 / np.arange(1, num_classes + 1) ** 0.9
    weight = rng.permutation(weight / weight.sum())

    # Boxes: ~7.4 an image (long tail), 6 % group-of, log-uniform sizes.
    per_image = np.minimum(rng.geometric(1 / 7.4, num_images), 80)
    box_image = np.repeat(np.arange(num_images), per_image)
    n = len(box_image)
    box_class = rng.choice(num_classes, n, p=weight)
    size = np.exp(rng.uniform(np.log(0.03), np.log(0.9), (n, 2)))
    lo = rng.random((n, 2)) * (1 - size)
    coords = np.round(np.concatenate([lo, lo + size], 1), 6)  # x0, y0, x1, y1
    group = rng.random(n) < 0.06
    boxes = pa.table({
        "ImageID": image_ids[box_image], "Source": np.full(n, "xclick"),
        "LabelName": np.array(mids)[box_class], "Confidence": np.ones(n, np.int8),
        "XMin": coords[:, 0], "XMax": coords[:, 2], "YMin": coords[:, 1], "YMax": coords[:, 3],
        "IsOccluded": np.zeros(n, np.int8), "IsTruncated": np.zeros(n, np.int8),
        "IsGroupOf": group.astype(np.int8), "IsDepiction": np.zeros(n, np.int8),
        "IsInside": np.zeros(n, np.int8)})
    write_csv(boxes, paths["boxes"])

    # Labels: most boxed classes verified present, ~1 more present class without
    # boxes and ~4 absent classes an image.
    label_image, label_class, label_conf = [], [], []
    boxed = np.unique(box_image * num_classes + box_class)
    keep = rng.random(len(boxed)) < 0.9
    label_image.append(boxed[keep] // num_classes)
    label_class.append(boxed[keep] % num_classes)
    label_conf.append(np.ones(keep.sum(), np.int8))
    for mean, conf in ((1.0, 1), (4.0, 0)):
        k = rng.poisson(mean, num_images)
        img = np.repeat(np.arange(num_images), k)
        label_image.append(img)
        label_class.append(rng.choice(num_classes, len(img), p=weight))
        label_conf.append(np.full(len(img), conf, np.int8))
    li, lc, lf = (np.concatenate(v) for v in (label_image, label_class, label_conf))
    clash = np.isin(li * num_classes + lc, boxed) & (lf == 0)  # no "absent" on a boxed class
    li, lc, lf = li[~clash], lc[~clash], lf[~clash]
    write_csv(pa.table({"ImageID": image_ids[li], "Source": np.full(len(li), "verification"),
                        "LabelName": np.array(mids)[lc], "Confidence": lf}), paths["labels"])

    # Detections: near each box 0-4 of its class, some copied to an ancestor
    # (as submissions do), the rest of the 100 at random; higher scores near boxes.
    near = rng.poisson(1.6, n)
    src = np.repeat(np.arange(n), near)
    det_class = box_class[src].copy()
    for j in np.flatnonzero(rng.random(len(src)) < 0.3):
        anc = ancestors[det_class[j]]
        if anc:
            det_class[j] = anc[rng.integers(len(anc))]
    w = (coords[src, 2:] - coords[src, :2])
    jitter = rng.normal(0, 0.08, (len(src), 4)) * np.concatenate([w, w], 1)
    det_coords = np.clip(coords[src] + jitter, 0, 1)
    det_image = box_image[src]
    det_score = rng.beta(4, 2, len(src))
    room = np.maximum(dets_per_image - np.bincount(det_image, minlength=num_images), 0)
    rand_image = np.repeat(np.arange(num_images), room)
    m = len(rand_image)
    rsize = np.exp(rng.uniform(np.log(0.03), np.log(0.9), (m, 2)))
    rlo = rng.random((m, 2)) * (1 - rsize)
    det_image = np.concatenate([det_image, rand_image])
    det_class = np.concatenate([det_class, rng.choice(num_classes, m, p=weight)])
    det_coords = np.concatenate([det_coords, np.concatenate([rlo, rlo + rsize], 1)])
    det_score = np.concatenate([det_score, rng.beta(1, 4, m)])
    order = np.lexsort((-det_score, det_image))
    det_image, det_class, det_coords, det_score = (
        det_image[order], det_class[order], det_coords[order], det_score[order])
    cut = np.flatnonzero(np.r_[True, det_image[1:] != det_image[:-1]])
    rank = np.arange(len(det_image)) - np.repeat(cut, np.diff(np.r_[cut, len(det_image)]))
    top = rank < dets_per_image
    det_image, det_class, det_coords, det_score = (
        det_image[top], det_class[top], det_coords[top], det_score[top])

    def text(values: np.ndarray) -> pa.Array:
        return pc.cast(pa.array(np.round(values, 6)), pa.string())

    parts = [pa.array(np.array(mids)[det_class]), text(det_score)] + \
        [text(det_coords[:, k]) for k in range(4)]  # Kaggle order: x0 y0 x1 y1
    one = pc.binary_join_element_wise(*parts, " ")
    one = one.combine_chunks() if isinstance(one, pa.ChunkedArray) else one
    counts = np.bincount(det_image, minlength=num_images)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)
    strings = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), one), " ")
    submission = pa.table({"ImageId": image_ids, "PredictionString": strings})
    write_csv(submission, paths["predictions"])
    return paths


# -- the baseline: a straightforward loop from the spec ------------------------------------


def baseline(paths: dict[str, str], max_rows: int | None = None) -> dict:
    """OID_METRIC.md §2-§8 as a plain per-image, per-class loop (like the reference's structure).

    Ties follow oid.metric's rule so that results can be compared exactly:
    matching visits equal scores in (ymin, xmin, ymax, xmax) order; AP ranks
    false positives before true positives of the same score.
    """
    import pandas as pd

    from oid.hierarchy import load_hierarchy
    from oid.metric import average_precision

    hierarchy = load_hierarchy(paths["hierarchy"])
    mids = [line.split(",")[0] for line in open(paths["classes"])]
    boxes = pd.read_csv(paths["boxes"])
    labels = pd.read_csv(paths["labels"])
    gt_boxes = collections.defaultdict(list)  # (image, class) -> [(box, group)] in file order
    verified = collections.defaultdict(set)
    for image, mid, x0, x1, y0, y1, group in zip(
            boxes.ImageID, boxes.LabelName, boxes.XMin, boxes.XMax, boxes.YMin, boxes.YMax,
            boxes.IsGroupOf, strict=True):
        for c in (mid, *hierarchy.ancestors(mid)):
            gt_boxes[image, c].append(((y0, x0, y1, x1), group == 1))
            verified[image].add(c)
    for image, mid, conf in zip(labels.ImageID, labels.LabelName, labels.Confidence, strict=True):
        relatives = hierarchy.ancestors(mid) if conf == 1 else hierarchy.descendants(mid)
        verified[image] |= {mid, *relatives}

    submission = pd.read_csv(paths["predictions"], keep_default_na=False, nrows=max_rows)
    entries = collections.defaultdict(list)
    dets_by_image = {}
    for image, text in zip(submission.ImageId, submission.PredictionString, strict=True):
        tokens = text.split()
        dets_by_image[image] = [(tokens[k], float(tokens[k + 1]),
                                 (float(tokens[k + 3]), float(tokens[k + 2]),
                                  float(tokens[k + 5]), float(tokens[k + 4])))
                                for k in range(0, len(tokens), 6)]
    for image in verified:  # the ground-truth images
        by_class = collections.defaultdict(list)
        for mid, score, box in dets_by_image.get(image, ()):
            if box[0] < box[2] and box[1] < box[3] and score > -10:
                by_class[mid].append((score, box))
        for c in verified[image]:
            dets = sorted(by_class.get(c, ()), key=lambda d: (-d[0], d[1]))[:10_000]
            if not dets:
                continue
            gts = gt_boxes.get((image, c), [])
            if not gts:
                entries[c] += [(s, False) for s, _ in dets]
                continue
            det_boxes = np.array([b for _, b in dets])
            single = np.array([b for b, g in gts if not g]).reshape(-1, 4)
            groups = np.array([b for b, g in gts if g]).reshape(-1, 4)
            tp = [False] * len(dets)
            if len(single):
                iou = pairwise(det_boxes, single, ioa=False)
                best = iou.argmax(axis=1)
                taken = [False] * len(single)
                for k in range(len(dets)):
                    j = best[k]
                    if iou[k, j] >= 0.5 and not taken[j]:
                        tp[k] = taken[j] = True
            absorbed = [False] * len(dets)
            top = [0.0] * len(groups)
            if len(groups):
                ioa = pairwise(det_boxes, groups, ioa=True)
                best = ioa.argmax(axis=1)
                for k in range(len(dets)):
                    j = best[k]
                    if not tp[k] and ioa[k, j] >= 0.5:
                        absorbed[k] = True
                        top[j] = max(top[j], dets[k][0])
            entries[c] += [(dets[k][0], tp[k]) for k in range(len(dets)) if not absorbed[k]]
            entries[c] += [(s, True) for s in top if s > 0]
    num_gt = collections.Counter()
    for (_, c), gts in gt_boxes.items():
        num_gt[c] += len(gts)
    per_class = {}
    for c in mids:
        if num_gt[c]:
            scores = [s for s, _ in entries[c]]
            per_class[c] = average_precision(scores, [t for _, t in entries[c]], num_gt[c])
        else:
            per_class[c] = None
    valid = [v for v in per_class.values() if v is not None]
    return {"mAP": float(np.mean(valid)) if valid else None,
            "per_class": {c: {"ap": v, "num_gt": num_gt[c]} for c, v in per_class.items()}}


def pairwise(det: np.ndarray, gt: np.ndarray, ioa: bool) -> np.ndarray:
    """[D, G] IoU, or intersection / detection area; boxes (ymin, xmin, ymax, xmax)."""
    height = np.maximum(0.0, np.minimum(det[:, None, 2], gt[None, :, 2])
                        - np.maximum(det[:, None, 0], gt[None, :, 0]))
    width = np.maximum(0.0, np.minimum(det[:, None, 3], gt[None, :, 3])
                       - np.maximum(det[:, None, 1], gt[None, :, 1]))
    inter = height * width
    area = ((det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1]))[:, None]
    if ioa:
        return inter / area
    return inter / (area + ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None, :] - inter)


# -- measuring -------------------------------------------------------------------------------


def measure(argv: list[str]) -> dict:
    """Wall seconds, CPU seconds, peak RSS and stdout of a command in a fresh process.

    os.wait4 gives the rusage of exactly that child (its own peak RSS).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            sys.exit(f"{' '.join(argv)} failed:\n{err.read().decode()[-3000:]}")
        return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out.read().decode()}


def run_ours(paths: dict[str, str]) -> dict:
    m = measure([sys.executable, "-m", "oid.metric", "--boxes", paths["boxes"], "--labels",
                 paths["labels"], "--hierarchy", paths["hierarchy"], "--classes",
                 paths["classes"], "--predictions", paths["predictions"]])
    m["result"] = json.loads(m.pop("stdout"))
    return m


def run_baseline(paths: dict[str, str], rows: int | None) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import json, sys; sys.path[:0] = [{ROOT!r}, {here!r}]; import bench_metric; "
            f"print(json.dumps(bench_metric.baseline({paths!r}, {rows!r})))")
    m = measure([sys.executable, "-c", code])
    m["result"] = json.loads(m.pop("stdout"))
    return m


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time, with all wall times attached."""
    ranked = sorted(runs, key=lambda r: r["seconds"])
    return {**ranked[len(ranked) // 2], "all_seconds": [r["seconds"] for r in runs]}


def subset_file(path: str, rows: int) -> str:
    """The header and first `rows` rows of a submission (for a shorter baseline run)."""
    out = f"{path[:-4]}-first-{rows}.csv"
    if not os.path.exists(out):
        with open(path) as f, open(out + ".tmp", "w") as g:
            for k, line in enumerate(f):
                if k > rows:
                    break
                g.write(line)
        os.replace(out + ".tmp", out)
    return out


def compare(a: dict, b: dict) -> float:
    """Largest |AP difference| over mAP and all classes (inf if the classes with GT differ)."""
    worst = abs(a["mAP"] - b["mAP"])
    for mid, r in a["per_class"].items():
        other = b["per_class"][mid]["ap"]
        if (r["ap"] is None) != (other is None):
            return float("inf")
        if r["ap"] is not None:
            worst = max(worst, abs(r["ap"] - other))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=40_000)
    parser.add_argument("--dets", type=int, default=100, help="detections an image")
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours; the median is shown")
    parser.add_argument("--baseline_images", type=int, default=None,
                        help="run the baseline on the first N submission rows only (default all)")
    parser.add_argument("--skip_baseline", action="store_true")
    parser.add_argument("--cache_dir", default="/tmp/oid_bench")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    directory = os.path.join(args.cache_dir, f"metric-{args.images}-{args.dets}-{args.classes}")
    paths = {k: os.path.join(directory, f) for k, f in (
        ("boxes", "boxes.csv"), ("labels", "labels.csv"), ("hierarchy", "hierarchy.json"),
        ("classes", "classes.csv"), ("predictions", "submission.csv"))}
    if not all(os.path.exists(p) for p in paths.values()):
        print(f"generating {directory} ...", file=sys.stderr)
        t0 = time.perf_counter()
        paths = generate(directory, args.images, args.dets, args.classes)
        print(f"  {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    sizes = {k: os.path.getsize(p) / 2**20 for k, p in paths.items()}

    ours = median_run([run_ours(paths) for _ in range(args.repeat)])
    figures: dict = {"ours": ours}
    note = ""
    if not args.skip_baseline:
        subset = args.baseline_images if args.baseline_images and \
            args.baseline_images < args.images else None
        base = run_baseline(paths, subset)
        if subset:
            ours_subset = run_ours({**paths, "predictions": subset_file(paths["predictions"],
                                                                        subset)})
            agree = compare(ours_subset["result"], base["result"])
            scale = args.images / subset
            base["measured_seconds"] = base["seconds"]
            base["seconds"] *= scale
            base["cpu_seconds"] *= scale
            note = (f"the baseline ran on the first {subset:,} images' detections; its times "
                    f"are scaled x{scale:.1f} (its peak memory is not)")
        else:
            agree = compare(ours["result"], base["result"])
        figures["baseline"] = base
        figures["max_ap_difference"] = agree
        figures["speedup"] = base["seconds"] / ours["seconds"]

    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    load = os.getloadavg()[0]
    print(f"OID metric: {args.images:,} images, {args.images * args.dets:,} detections, "
          f"{args.classes} classes; submission {sizes['predictions']:.0f} MB, boxes "
          f"{sizes['boxes']:.0f} MB, labels {sizes['labels']:.0f} MB ({machine}, load {load:.1f})")
    print(f"{'':<42} {'wall s':>7} {'CPU s':>7} {'peak RSS MB':>12}")
    rows = [("ours: python -m oid.metric" + (f" (median of {args.repeat})" if args.repeat > 1
                                              else ""), ours)]
    if "baseline" in figures:
        rows.append(("baseline: per-image, per-class loop" + (" *" if note else ""),
                     figures["baseline"]))
    for label, r in rows:
        print(f"{label:<42} {r['seconds']:>7.2f} {r['cpu_seconds']:>7.2f} {r['peak_rss_mb']:>12.0f}")
    if "baseline" in figures:
        print(f"ours is {figures['speedup']:.1f}x faster (wall), "
              f"{figures['baseline']['cpu_seconds'] / ours['cpu_seconds']:.1f}x less CPU; "
              f"largest AP difference {figures['max_ap_difference']:.2g}")
        if note:
            print(f"* {note}")
    print(f"mAP {ours['result']['mAP']:.6f}")
    if args.json:
        summary = {"images": args.images, "detections": args.images * args.dets,
                   "classes": args.classes, "machine": machine, "load_average": load,
                   "note": note, "mAP": ours["result"]["mAP"]}
        for k, v in figures.items():
            summary[k] = {kk: vv for kk, vv in v.items() if kk != "result"} \
                if isinstance(v, dict) else v
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
