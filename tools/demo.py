"""`make demo`: the whole flow on the synthetic mini Open Images, with a summary.

    data -> levels -> records -> train each level -> eval each level
    -> predict the validation images (scored with python -m oid.metric) and the test images
    -> a few visualized PNGs -> summary table + OUT/summary.json

Every stage is the command a user would run (printed before it runs), in a subprocess, so the
demo exercises exactly the entry points. Everything goes under --out. Training resumes from
its checkpoints when the demo is run again; the other stages are redone.

Progress: the records stage writes to the demo's own stderr, so it shows a bar at a terminal
and log lines elsewhere (its --progress=auto). The stages whose output goes to OUT/logs/ show
their bar at a terminal too (they run with --progress=bar and the demo splits their output:
the bar to the terminal, every other line to the log file); elsewhere, as in CI, their log
files hold the usual lines.

  python tools/demo.py [--out demo_out] [--seed 0] [--images 600] [--flagfile demo.flags]
      [--boxes_to_ancestors | --no-boxes_to_ancestors] [--repeat_threshold 0.3]
      [--records_args '...'] [--train_args '...']
"""

from __future__ import annotations

import argparse
import codecs
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from oid.machine import cpu_model  # noqa: E402

VAL_FRACTION = 0.15  # the records' --val_fraction: the same ImageIDs are val for every level
MAX_SIDE = 320
# make_records.py --boxes_to_ancestors unless --no-boxes_to_ancestors (or the reverse): the
# records job's own default, so that the demo shows what a user gets.
BOXES_TO_ANCESTORS = True
# make_records.py --repeat_threshold for the levels: LVIS's 0.001, the job's default, is for
# hundreds of classes over 1.7M images, and on the demo's 600 images it repeats nothing. At
# 0.3 the rarer classes' images repeat (about a third of level 1's training images, factor up
# to 1.4), which demo.flags' --repeat_factor_sampling reads (docs/training-recipes.md).
REPEAT_THRESHOLD = 0.3


class StageOutput:
    """Splits the output of a command run with --progress=bar (oid/progress.py): its bar's
    frames go to `terminal`, every other line to `log`, and the bar's last frame to both.

    A frame is what follows a carriage return; the bar erases itself before a log record with
    "\r" + spaces + "\r", so the text after such a blank segment is a log line. Frames are
    cut to columns - 1 characters (the stage, writing to a pipe, cannot know the terminal's
    width), since a line that wraps cannot be redrawn.
    """

    def __init__(self, log, terminal, columns: int | None = None):
        self.log, self.terminal, self.columns = log, terminal, columns
        self.segment = ""  # the text since the last "\r" or "\n"
        self.frame = False  # whether that text is a frame

    def feed(self, text: str) -> None:
        for piece in re.split(r"([\r\n])", text):
            if piece == "\r":
                erase = bool(self.segment) and not self.segment.strip()
                self.frame, self.segment = not erase, ""
            elif piece == "\n":
                if self.frame:  # the bar's last frame, left on screen
                    self.terminal.write("\n")
                    self.terminal.flush()
                    self.log.write(self.segment.rstrip() + "\n")
                else:
                    self.log.write(self.segment + "\n")
                self.segment, self.frame = "", False
            elif piece:
                self.segment += piece
                if self.frame:
                    shown = self.segment[:self.columns - 1] if self.columns else self.segment
                    self.terminal.write("\r" + shown)
                    self.terminal.flush()


def run(cmd: list[str], log_path: str | None = None, bar: bool = False) -> float:
    """Runs one stage; returns its wall seconds. Output goes to the terminal, or to log_path
    (then its tail is shown if the stage fails). With `bar`, a stage that logs to log_path
    still shows its progress bar when the demo's stderr is a terminal (StageOutput)."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.perf_counter()
    if log_path is None:
        code = subprocess.call(cmd, cwd=ROOT)
    elif bar and sys.stderr.isatty():
        # The stage's stderr is a pipe here, where --progress=auto would choose log lines.
        with open(log_path, "w") as log:
            proc = subprocess.Popen([*cmd, "--progress=bar"], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
            split = StageOutput(log, sys.stderr, shutil.get_terminal_size().columns)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                split.feed(decoder.decode(chunk))
            split.feed(decoder.decode(b"", final=True))
            code = proc.wait()
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


def records_commands(py: str, data: str, levels_spec: str, records: str,
                     boxes_to_ancestors: bool = BOXES_TO_ANCESTORS,
                     extra: str = "", repeat_threshold: float = REPEAT_THRESHOLD
                     ) -> list[list[str]]:
    """The records job's commands: every level, then the test images.

    boxes_to_ancestors: make_records.py --boxes_to_ancestors (given either way, so that the
      command shows it). extra: more make_records.py flags for the levels, shell-quoted.
      repeat_threshold: the levels' --repeat_threshold.
    """
    return [
        [py, "beam_jobs/make_records.py", "--data_dir", data, "--levels_spec", levels_spec,
         "--output_dir", records, "--level", "all", "--max_side", str(MAX_SIDE),
         "--val_fraction", str(VAL_FRACTION), "--repeat_threshold", str(repeat_threshold),
         "--log_every", "0",
         f"--boxes_to_ancestors={str(boxes_to_ancestors).lower()}", *shlex.split(extra)],
        [py, "beam_jobs/make_records.py", "--data_dir", data, "--output_dir", records,
         "--split", "test", "--max_side", str(MAX_SIDE), "--log_every", "0"],
    ]


def make_data(out: str, seed: int, images: int, test_split: bool = True,
              boxes_to_ancestors: bool = BOXES_TO_ANCESTORS,
              records_args: str = "", repeat_threshold: float = REPEAT_THRESHOLD
              ) -> dict[str, float]:
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
    levels_cmd, test_cmd = records_commands(py, data, os.path.join(out, "levels.json"), records,
                                            boxes_to_ancestors, records_args,
                                            repeat_threshold)
    stages["records"] = run(levels_cmd)
    if test_split:
        stages["records"] += run(test_cmd)
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
    parser.add_argument("--boxes_to_ancestors", action=argparse.BooleanOptionalAction,
                        default=BOXES_TO_ANCESTORS,
                        help="make the records with make_records.py --boxes_to_ancestors (a "
                             "level's parent classes also learn their descendants' boxes)")
    parser.add_argument("--repeat_threshold", type=float, default=REPEAT_THRESHOLD,
                        help="make_records.py --repeat_threshold of the levels' records (LVIS "
                             "repeat factors, which demo.flags' --repeat_factor_sampling reads; "
                             "0: none)")
    parser.add_argument("--records_args", default="",
                        help="extra make_records.py flags for the levels' records, e.g. "
                             "'--jpeg_quality=90'")
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

    stages.update(make_data(out, args.seed, args.images,
                            boxes_to_ancestors=args.boxes_to_ancestors,
                            records_args=args.records_args,
                            repeat_threshold=args.repeat_threshold))
    with open(os.path.join(out, "levels.json")) as f:
        level_ids = [level["index"] for level in json.load(f)["levels"]]

    summary: dict = {"levels": {}, "boxes_to_ancestors": args.boxes_to_ancestors,
                     "repeat_threshold": args.repeat_threshold,
                     "records_args": args.records_args, "train_args": args.train_args}
    for level in level_ids:
        model_dir = os.path.join(models, f"level{level}")
        # A fresh run: train.py would resume an earlier demo's checkpoints (or refuse them
        # when the flagfile has changed the model).
        shutil.rmtree(model_dir, ignore_errors=True)
        train_s = run([py, "train.py", f"--flagfile={args.flagfile}", f"--level={level}",
                       f"--records_dir={records}", f"--model_dir={model_dir}",
                       *shlex.split(args.train_args)],
                      os.path.join(logs, f"train_level{level}.log"), bar=True)
        eval_dir = os.path.join(out, "eval", f"level{level}")
        eval_s = run([py, "eval.py", f"--flagfile={args.flagfile}", f"--level={level}",
                      f"--records_dir={records}", f"--model_dir={model_dir}",
                      f"--data_dir={data}", f"--output_dir={eval_dir}"],
                     os.path.join(logs, f"eval_level{level}.log"), bar=True)
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
                                os.path.join(logs, "predict_val.log"), bar=True)
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
                                 os.path.join(logs, "predict_test.log"), bar=True)

    total = time.perf_counter() - total_start
    summary.update({"submission_mAP": submission_map, "validation_images": val_images,
                    "stages_s": {k: round(v, 1) for k, v in stages.items()},
                    "total_s": round(total, 1), "cpu": cpu_model(), "cores": os.cpu_count()})
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)

    print("\nlevel   mAP     train s   eval s")
    for level, row in summary["levels"].items():
        print(f"{level:>5}   {row['mAP']:.4f}  {row['train_s']:>7.0f}  {row['eval_s']:>7.0f}")
    print(f"merged submission on the {val_images} validation images (python -m oid.metric): "
          f"mAP {submission_map:.4f}")
    print("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()))
    # Another CPU rounds differently and runs at another speed: the figures name theirs.
    print(f"CPU {summary['cpu']}, {summary['cores']} cores")
    print(f"total {total:.0f} s; submission {os.path.join(out, 'submission.csv.gz')}, "
          f"pictures in {os.path.join(out, 'visualized')}, figures in "
          f"{os.path.join(out, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
