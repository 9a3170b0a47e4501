"""`make demo`: the whole flow on the synthetic mini Open Images, with a summary.

    data -> levels -> records -> train each level -> eval each level
    -> predict the validation images (scored with python -m oid.metric) and the test images
    -> a few visualized PNGs -> summary table + OUT/summary.json

Every stage is the command a user would run (printed before it runs), in a subprocess, so the
demo exercises exactly the entry points. Everything goes under --out. Training resumes from
its checkpoints when the demo is run again; the other stages are redone.

  python tools/demo.py [--out demo_out] [--seed 0] [--images 600] [--flagfile demo.flags]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VAL_FRACTION = 0.15  # the records' --val_fraction: the same ImageIDs are val for every level
MAX_SIDE = 320


def run(cmd: list[str], log_path: str | None = None) -> float:
    """Runs one stage; returns its wall seconds. Output goes to the terminal, or to log_path
    (then its tail is shown if the stage fails)."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.perf_counter()
    if log_path is None:
        code = subprocess.call(cmd, cwd=ROOT)
    else:
        with open(log_path, "w") as log:
            code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if code:
        tail = ""
        if log_path:
            with open(log_path) as f:
                tail = "".join(f.readlines()[-30:])
        sys.exit(f"{tail}\nthe stage above failed with exit status {code}"
                 + (f"; full log: {log_path}" if log_path else ""))
    return time.perf_counter() - start


def write_validation_set(data_dir: str, out_dir: str) -> tuple[int, str, str]:
    """The validation split of the whole demo dataset (every class), for scoring the merged
    submission: OUT/val/{bbox,labels}.csv and OUT/val/images/ (links to the JPEGs).
    Returns (images, boxes csv, labels csv)."""
    from oid.split import is_val

    label_dir = os.path.join(data_dir, "label")
    images_dir = os.path.join(out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    val_ids = set()
    for name in sorted(os.listdir(os.path.join(data_dir, "train"))):
        image_id = os.path.splitext(name)[0]
        if is_val(image_id, VAL_FRACTION):
            val_ids.add(image_id)
            link = os.path.join(images_dir, name)
            if not os.path.lexists(link):
                os.symlink(os.path.abspath(os.path.join(data_dir, "train", name)), link)
    outputs = []
    for source, target in (("challenge-2019-train-detection-bbox.csv", "bbox.csv"),
                           ("challenge-2019-train-detection-human-imagelabels.csv", "labels.csv")):
        path = os.path.join(out_dir, target)
        with open(os.path.join(label_dir, source), newline="") as fin, \
                open(path, "w", newline="") as fout:
            reader, writer = csv.reader(fin), csv.writer(fout)
            header = next(reader)
            writer.writerow(header)
            column = header.index("ImageID")
            writer.writerows(row for row in reader if row[column] in val_ids)
        outputs.append(path)
    return len(val_ids), outputs[0], outputs[1]


def make_data(out: str, seed: int, images: int, test_split: bool = True) -> dict[str, float]:
    """The demo's data stages into OUT: the mini dataset (OUT/data), its levels
    (OUT/levels.json) and the records of every level (OUT/records; the test split's too
    unless test_split is False). Returns each stage's wall seconds. tools/ablate.py makes its
    data with this as well."""
    py = sys.executable
    data, records = os.path.join(out, "data"), os.path.join(out, "records")
    stages = {}
    stages["data"] = run([py, "-m", "oid.demo_data", "--out", data, "--seed", str(seed),
                          "--images", str(images)])
    stages["levels"] = run([py, "-m", "oid.levels", "--data_dir", data, "--level_sizes", "6",
                            "--out", os.path.join(out, "levels.json"),
                            "--plot", os.path.join(out, "levels.png")])
    stages["records"] = run([py, "beam_jobs/make_records.py", "--data_dir", data,
                             "--levels_spec", os.path.join(out, "levels.json"),
                             "--output_dir", records, "--level", "all",
                             "--max_side", str(MAX_SIDE), "--val_fraction", str(VAL_FRACTION),
                             "--log_every", "0"])
    if test_split:
        stages["records"] += run([py, "beam_jobs/make_records.py", "--data_dir", data,
                                  "--output_dir", records, "--split", "test",
                                  "--max_side", str(MAX_SIDE), "--log_every", "0"])
    return stages


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="everything the demo writes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--images", type=int, default=600, help="training images to draw")
    parser.add_argument("--flagfile", default="demo.flags", help="train.py/eval.py flagfile")
    parser.add_argument("--visualize", type=int, default=4, help="test images to draw")
    parser.add_argument("--train_args", default="",
                        help="extra train.py flags, e.g. '--epochs=2' for a quick look")
    args = parser.parse_args(argv)

    py = sys.executable
    out = os.path.abspath(args.out)
    data, records, models = (os.path.join(out, d) for d in ("data", "records", "models"))
    logs = os.path.join(out, "logs")
    os.makedirs(logs, exist_ok=True)
    label_dir = os.path.join(data, "label")
    classes = os.path.join(label_dir, "challenge-2019-classes-description-500.csv")
    hierarchy = os.path.join(label_dir, "challenge-2019-label500-hierarchy.json")
    total_start = time.perf_counter()
    stages: dict[str, float] = {}

    stages.update(make_data(out, args.seed, args.images))
    with open(os.path.join(out, "levels.json")) as f:
        level_ids = [level["index"] for level in json.load(f)["levels"]]

    summary: dict = {"levels": {}}
    for level in level_ids:
        model_dir = os.path.join(models, f"level{level}")
        # A fresh run: train.py would resume an earlier demo's checkpoints (or refuse them
        # when the flagfile has changed the model).
        shutil.rmtree(model_dir, ignore_errors=True)
        train_s = run([py, "train.py", f"--flagfile={args.flagfile}", f"--level={level}",
                       f"--records_dir={records}", f"--model_dir={model_dir}",
                       *shlex.split(args.train_args)],
                      os.path.join(logs, f"train_level{level}.log"))
        eval_dir = os.path.join(out, "eval", f"level{level}")
        eval_s = run([py, "eval.py", f"--flagfile={args.flagfile}", f"--level={level}",
                      f"--records_dir={records}", f"--model_dir={model_dir}",
                      f"--data_dir={data}", f"--output_dir={eval_dir}"],
                     os.path.join(logs, f"eval_level{level}.log"))
        with open(os.path.join(eval_dir, "metrics.json")) as f:
            level_map = json.load(f)["mAP"]
        summary["levels"][str(level)] = {"mAP": level_map, "train_s": round(train_s, 1),
                                         "eval_s": round(eval_s, 1)}
        print(f"level {level}: mAP {level_map:.4f} (train {train_s:.0f} s, eval {eval_s:.0f} s)",
              flush=True)

    model_flags = [f"--model=level{level}={os.path.join(models, f'level{level}')}"
                   for level in level_ids]
    val_images, val_boxes, val_labels = write_validation_set(data, os.path.join(out, "val"))
    val_submission = os.path.join(out, "val_submission.csv.gz")
    stages["predict_val"] = run([py, "predict.py", *model_flags,
                                 f"--images={os.path.join(out, 'val', 'images')}",
                                 f"--data_dir={data}", f"--output={val_submission}"],
                                os.path.join(logs, "predict_val.log"))
    val_metrics = os.path.join(out, "val_metrics.json")
    stages["score_val"] = run([py, "-m", "oid.metric", "--boxes", val_boxes, "--labels",
                               val_labels, "--classes", classes, "--hierarchy", hierarchy,
                               "--predictions", val_submission, "--output", val_metrics],
                              os.path.join(logs, "score_val.log"))
    with open(val_metrics) as f:
        submission_map = json.load(f)["mAP"]
    stages["predict_test"] = run([py, "predict.py", *model_flags,
                                  f"--images={os.path.join(data, 'test')}", f"--data_dir={data}",
                                  f"--output={os.path.join(out, 'submission.csv.gz')}",
                                  f"--visualize={args.visualize}",
                                  f"--visualize_dir={os.path.join(out, 'visualized')}"],
                                 os.path.join(logs, "predict_test.log"))

    total = time.perf_counter() - total_start
    summary.update({"submission_mAP": submission_map, "validation_images": val_images,
                    "stages_s": {k: round(v, 1) for k, v in stages.items()},
                    "total_s": round(total, 1)})
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)

    print("\nlevel   mAP     train s   eval s")
    for level, row in summary["levels"].items():
        print(f"{level:>5}   {row['mAP']:.4f}  {row['train_s']:>7.0f}  {row['eval_s']:>7.0f}")
    print(f"merged submission on the {val_images} validation images (python -m oid.metric): "
          f"mAP {submission_map:.4f}")
    print("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()))
    print(f"total {total:.0f} s; submission {os.path.join(out, 'submission.csv.gz')}, "
          f"pictures in {os.path.join(out, 'visualized')}, figures in "
          f"{os.path.join(out, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
