"""Ablation of training options on the demo data: every variant (a set of train.py flags)
trained on each demo level with each seed, evaluated, and summarized as mean ± std over the
seeds.

    python tools/ablate.py --demo_out demo_out --out ablate_out \\
        --variant base= --variant atss=--assigner=atss \\
        --variant best=--assigner=atss,--box_loss=giou --seeds 0,1,2

For each variant, seed and level it runs, as subprocesses, the commands a user would:
  train.py --flagfile=FLAGFILE --level=L --seed=S VARIANT_FLAGS [--epochs/--steps_per_epoch]
  eval.py  --flagfile=FLAGFILE --level=L ...   (the level's val records: level mAP, per class AP)
and, when every level of the demo is trained, for each variant and seed:
  predict.py on the demo's validation images with every level's model, scored with
  python -m oid.metric (the merged submission's mAP, as `make demo` reports it).
It prints a table per variant (each level's mAP, the merged mAP, training images/s from the
trainer's log, train minutes per run) and one of per-class AP, and writes both with
--json/--markdown. The data is the demo's: --demo_out DIR reuses DIR/data, DIR/levels.json
and DIR/records from `make demo`; without it the data is made once under OUT/demo (as
tools/demo.py makes it). A run whose result is already under OUT/runs (same flags) is not
trained again, nor a merged submission scored again when no level has been trained since, so
an interrupted ablation resumes. --report trains nothing: it prints the tables of the runs
finished so far (a long ablation can be read while it runs), each figure over fewer seeds than
asked marked with how many.

A variant is NAME=FLAGS: FLAGS are train.py flags separated by commas or spaces before each
`--` (a comma inside a value stays: --anchor_sizes=8,16,32,64,128,256), or empty for the
flagfile as it is. eval.py reads the model from each run's config.json and the input sizes
from --flagfile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from oid.machine import cpu_model  # noqa: E402

RATE = re.compile(r"step (\d+)/\d+ .*?([\d.]+) images/s")


# ------------------------------------------------------------------------------ parsing


def parse_variant(text: str) -> tuple[str, list[str]]:
    """"NAME=--a=1,--b=2" -> ("NAME", ["--a=1", "--b=2"]); a comma inside a flag's value is
    kept ("--anchor_sizes=8,16" stays one flag).

    Raises:
      ValueError: no NAME=, a bad name, or a flag that does not start with --.
    """
    name, sep, flags = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ValueError(f"--variant {text!r}: expected NAME=FLAGS (NAME letters, digits, "
                         "_ . + -), e.g. atss=--assigner=atss")
    parts = [p for p in re.split(r"(?:,|\s+)(?=--)", flags.strip()) if p]
    for p in parts:
        if not p.startswith("--") or len(p) < 3:
            raise ValueError(f"--variant {text!r}: {p!r} is not a train.py flag (--name=value)")
    return name, parts


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what}={text}: expected comma-separated integers") from None
    if not values:
        raise ValueError(f"--{what}={text}: empty")
    return values


# ------------------------------------------------------------------------------ statistics


def mean_std(values: list[float]) -> dict:
    """{"mean", "std" (sample, ddof 1; None for one value), "n", "values"}; None values (a
    class without ground truth) are left out."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1
            else None, "n": len(vals), "values": vals}


def fmt(stat: dict | None, digits: int = 3, seeds: int = 0) -> str:
    """mean ± std; with `seeds` (how many the table is over), a figure over fewer says so:
    "0.460 (1 seed)"."""
    if not stat or stat["mean"] is None:
        return "n/a"
    text = f"{stat['mean']:.{digits}f}" if stat["std"] is None else \
        f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    if stat["n"] < seeds:
        text += f" ({stat['n']} seed{'s' if stat['n'] > 1 else ''})"
    return text


def training_rate(log_text: str) -> float | None:
    """Median of the trainer's logged images/s, leaving out the first logged interval (it
    includes tracing) when there are others."""
    rates = [float(m.group(2)) for m in RATE.finditer(log_text)]
    if len(rates) > 1:
        rates = rates[1:]
    return statistics.median(rates) if rates else None


def runs_per_cpu(results: dict) -> dict[str, int]:
    """{CPU model: how many of the level runs in `results[variant][seed]["levels"]` trained on
    it}; runs saved before result.json recorded it count under "not recorded"."""
    counts: dict[str, int] = {}
    for seeds in results.values():
        for entry in seeds.values():
            for run_result in entry["levels"].values():
                cpu = run_result.get("cpu", "not recorded")
                counts[cpu] = counts.get(cpu, 0) + 1
    return dict(sorted(counts.items()))


def trained_on(results: dict) -> str:
    """"trained on CPU X" or, when the runs of one table trained on several CPUs (a resumed
    ablation, another host of a cloud), each with its count of runs: their figures mix
    machines that round differently."""
    counts = runs_per_cpu(results)
    if not counts:
        return f"CPU {cpu_model()}"
    if len(counts) == 1:
        return f"trained on CPU {next(iter(counts))}"
    return "trained on several CPUs (mixed rounding): " + "; ".join(
        f"{cpu} ({n} run{'s' if n != 1 else ''})" for cpu, n in counts.items())


def summarize(results: dict, variants: list[str], levels: list[int]) -> dict:
    """Per variant: mean ± std over seeds of each level's mAP, the merged mAP, images/s and
    train minutes, and of each class's AP. `results[variant][seed]` holds
    {"levels": {L: {"mAP", "per_class": {mid: {"name", "ap"}}, "images_per_s",
    "train_min"}}, "merged_mAP"}."""
    out = {}
    for v in variants:
        runs = list(results[v].values())
        row = {"levels": {}, "per_class": {}}
        for level in levels:
            per = [r["levels"][str(level)] for r in runs if str(level) in r["levels"]]
            row["levels"][str(level)] = mean_std([p["mAP"] for p in per])
            for p in per:
                for mid, c in p["per_class"].items():
                    row["per_class"].setdefault(mid, {"name": c["name"], "level": level,
                                                      "aps": []})["aps"].append(c["ap"])
        row["per_class"] = {mid: {"name": c["name"], "level": c["level"],
                                  **mean_std(c["aps"])} for mid, c in row["per_class"].items()}
        row["merged"] = mean_std([r.get("merged_mAP") for r in runs])
        per_level = [r["levels"][str(lv)] for r in runs for lv in levels
                     if str(lv) in r["levels"]]
        row["images_per_s"] = mean_std([p["images_per_s"] for p in per_level])
        row["train_min"] = mean_std([p["train_min"] for p in per_level])
        out[v] = row
    return out


def tables(summary: dict, variants: dict[str, list[str]], levels: list[int],
           markdown: bool = False, seeds: int = 0) -> str:
    """The variant table and the per-class AP table, as text or Markdown. `seeds`: how many
    seeds the ablation asked for; a figure over fewer says over how many."""
    head = ["variant", "flags"] + [f"level {lv} mAP" for lv in levels] + \
        ["merged mAP", "train img/s", "train min/run"]
    rows = []
    for v, flags in variants.items():
        s = summary[v]
        rows.append([v, " ".join(flags) or "(flagfile)"]
                    + [fmt(s["levels"][str(lv)], seeds=seeds) for lv in levels]
                    + [fmt(s["merged"], seeds=seeds), fmt(s["images_per_s"], 1),
                       fmt(s["train_min"], 1)])
    mids = sorted({m for v in variants for m in summary[v]["per_class"]},
                  key=lambda m: (summary[next(iter(variants))]["per_class"].get(
                      m, {"level": 99})["level"], _name(summary, m)))
    class_head = ["class", "level"] + list(variants)
    class_rows = []
    for m in mids:
        any_v = next(summary[v]["per_class"][m] for v in variants if m in summary[v]["per_class"])
        class_rows.append([any_v["name"] or m, str(any_v["level"])]
                          + [fmt(summary[v]["per_class"].get(m)) for v in variants])
    return _table(head, rows, markdown) + "\n\nper-class AP (mean ± std over seeds)\n\n" + \
        _table(class_head, class_rows, markdown)


def _name(summary, mid):
    for row in summary.values():
        if mid in row["per_class"]:
            return row["per_class"][mid]["name"] or mid
    return mid


def _table(head: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
                     for r in [head, *rows])


# ------------------------------------------------------------------------------ running


def run(cmd: list[str], log_path: str) -> tuple[float, str]:
    """Runs one command with its output in log_path; returns (wall seconds, the log). Exits
    with the log's tail when the command fails."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    with open(log_path) as f:
        text = f.read()
    if code:
        tail = "".join(text.splitlines(keepends=True)[-30:])
        sys.exit(f"{tail}\nthe command above failed with exit status {code}; full log: "
                 f"{log_path}")
    return time.perf_counter() - start, text


def _run_dir(args, variant: str, seed: int, level: int | None = None) -> str:
    path = os.path.join(args.out, "runs", variant, f"seed{seed}")
    return path if level is None else os.path.join(path, f"level{level}")


def _train_command(args, data: dict, flags: list[str], model_dir: str, seed: int,
                   level: int) -> list[str]:
    overrides = ([f"--epochs={args.epochs}"] if args.epochs else []) + \
        ([f"--steps_per_epoch={args.steps}"] if args.steps else [])
    return [sys.executable, "train.py", f"--flagfile={args.flagfile}", f"--level={level}",
            f"--records_dir={data['records']}", f"--model_dir={model_dir}", f"--seed={seed}",
            "--export=false", *overrides, *flags]


def saved_result(args, data: dict, variant: str, flags: list[str], seed: int,
                 level: int) -> dict | None:
    """The result.json of a run finished before with the same train.py command, else None."""
    run_dir = _run_dir(args, variant, seed, level)
    result_path = os.path.join(run_dir, "result.json")
    if not os.path.exists(result_path):
        return None
    with open(result_path) as f:
        saved = json.load(f)
    train = _train_command(args, data, flags, os.path.join(run_dir, "model"), seed, level)
    return saved if saved.get("command") == train[1:] else None


def train_and_eval(args, data: dict, variant: str, flags: list[str], seed: int,
                   level: int) -> dict:
    """One run's result: {"mAP", "per_class", "images_per_s", "train_min", "eval_s"}."""
    py = sys.executable
    run_dir = _run_dir(args, variant, seed, level)
    model_dir, result_path = os.path.join(run_dir, "model"), os.path.join(run_dir, "result.json")
    train = _train_command(args, data, flags, model_dir, seed, level)
    saved = saved_result(args, data, variant, flags, seed, level)
    if saved is not None:
        print(f"{variant} seed {seed} level {level}: done before, {result_path}", flush=True)
        return saved
    shutil.rmtree(run_dir, ignore_errors=True)  # a run of other flags would be resumed
    os.makedirs(run_dir)
    train_s, log = run(train, os.path.join(run_dir, "train.log"))
    eval_dir = os.path.join(run_dir, "eval")
    eval_s, _ = run([py, "eval.py", f"--flagfile={args.flagfile}", f"--level={level}",
                     f"--records_dir={data['records']}", f"--model_dir={model_dir}",
                     f"--data_dir={data['data']}", f"--output_dir={eval_dir}"],
                    os.path.join(run_dir, "eval.log"))
    with open(os.path.join(eval_dir, "metrics.json")) as f:
        metrics = json.load(f)
    result = {"command": train[1:], "mAP": metrics["mAP"],
              "per_class": {m: {"name": c["name"], "ap": c["ap"]}
                            for m, c in metrics["per_class"].items()},
              "images_per_s": training_rate(log), "train_min": train_s / 60, "eval_s": eval_s,
              "model_dir": model_dir, "cpu": cpu_model()}
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{variant} seed {seed} level {level}: mAP {result['mAP']:.4f}, train "
          f"{train_s / 60:.1f} min", flush=True)
    return result


def saved_merged_map(args, variant: str, seed: int, levels: list[int]) -> float | None:
    """The merged mAP scored before for this variant and seed, if it is newer than every
    level's result (a level trained again since makes it stale), else None."""
    out_dir = _run_dir(args, variant, seed)
    metrics = os.path.join(out_dir, "val_metrics.json")
    results = [os.path.join(_run_dir(args, variant, seed, lv), "result.json") for lv in levels]
    if not os.path.exists(metrics) or not all(os.path.exists(r) for r in results) or \
            os.path.getmtime(metrics) < max(os.path.getmtime(r) for r in results):
        return None
    with open(metrics) as f:
        return json.load(f)["mAP"]


def merged_map(args, data: dict, variant: str, seed: int, model_dirs: dict[int, str]) -> float:
    """mAP of the merged submission of every level's model on the demo's validation images
    (tools/demo.py's validation set), scored with python -m oid.metric; the score of an
    earlier call when no level has been trained since."""
    py = sys.executable
    out_dir = _run_dir(args, variant, seed)
    saved = saved_merged_map(args, variant, seed, sorted(model_dirs))
    if saved is not None:
        print(f"{variant} seed {seed} merged: done before, "
              f"{os.path.join(out_dir, 'val_metrics.json')}", flush=True)
        return saved
    submission = os.path.join(out_dir, "val_submission.csv.gz")
    run([py, "predict.py", *[f"--model=level{lv}={d}" for lv, d in sorted(model_dirs.items())],
         f"--images={os.path.join(data['val'], 'images')}", f"--data_dir={data['data']}",
         f"--output={submission}"], os.path.join(out_dir, "predict_val.log"))
    label_dir = os.path.join(data["data"], "label")
    metrics = os.path.join(out_dir, "val_metrics.json")
    run([py, "-m", "oid.metric", "--boxes", os.path.join(data["val"], "bbox.csv"),
         "--labels", os.path.join(data["val"], "labels.csv"),
         "--classes", os.path.join(label_dir, "challenge-2019-classes-description-500.csv"),
         "--hierarchy", os.path.join(label_dir, "challenge-2019-label500-hierarchy.json"),
         "--predictions", submission, "--output", metrics],
        os.path.join(out_dir, "score_val.log"))
    with open(metrics) as f:
        return json.load(f)["mAP"]


def prepare_data(args) -> dict:
    """{"data", "records", "levels" (ids), "val"} of the demo's data: --demo_out's, or made
    once under OUT/demo."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "tools",
                                                                         "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    base = os.path.abspath(args.demo_out or os.path.join(args.out, "demo"))
    paths = {"data": os.path.join(base, "data"), "records": os.path.join(base, "records")}
    levels_json = os.path.join(base, "levels.json")
    have = all(os.path.exists(p) for p in (*paths.values(), levels_json))
    if args.demo_out and not have:
        sys.exit(f"--demo_out={args.demo_out}: no data/, records/ and levels.json there; run "
                 "`make demo` (or python tools/demo.py --out DIR) first, or leave --demo_out "
                 "out to make the data under --out")
    if not have and args.report:
        sys.exit(f"--report: no demo data under {base}, so no run to report; run the "
                 "ablation without --report first")
    if not have:
        print(f"making the demo data under {base} ...", flush=True)
        demo.make_data(base, args.data_seed, args.images, test_split=False)
    with open(levels_json) as f:
        paths["levels"] = [level["index"] for level in json.load(f)["levels"]]
    paths["val"] = os.path.join(args.out, "val")
    demo.write_validation_set(paths["data"], paths["val"])
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="a variant: NAME=train.py flags, comma- or space-separated "
                             "(e.g. atss=--assigner=atss,--box_loss=giou; base= for the "
                             "flagfile alone); repeat for each variant (default: base=)")
    parser.add_argument("--seeds", default="0,1,2", help="train.py --seed values")
    parser.add_argument("--levels", default="all",
                        help="demo levels to train, comma-separated, or all (the merged mAP "
                             "needs all)")
    parser.add_argument("--flagfile", default="demo.flags", help="train.py/eval.py flagfile")
    parser.add_argument("--epochs", type=int, default=0,
                        help="train.py --epochs for every run (0: the flagfile's)")
    parser.add_argument("--steps", type=int, default=0,
                        help="train.py --steps_per_epoch for every run (0: the flagfile's)")
    parser.add_argument("--demo_out", help="a `make demo` output to take the data and records "
                        "from (default: make them once under OUT/demo)")
    parser.add_argument("--images", type=int, default=600,
                        help="training images of the data made without --demo_out")
    parser.add_argument("--data_seed", type=int, default=0,
                        help="seed of the data made without --demo_out")
    parser.add_argument("--out", default="ablate_out", help="runs, logs and results")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: tables of the runs already finished under --out "
                             "(a figure over fewer seeds than --seeds says how many)")
    parser.add_argument("--json", help="write the results (every run and the summary) here")
    parser.add_argument("--markdown", help="write the tables as Markdown here")
    args = parser.parse_args(argv)

    try:
        variants = dict(parse_variant(v) for v in args.variant or ["base="])
        if len(variants) != len(args.variant or ["base="]):
            raise ValueError("two --variant share a name")
        seeds = parse_ints(args.seeds, "seeds")
        for name in ("epochs", "steps"):
            if getattr(args, name) < 0:
                raise ValueError(f"--{name} must be >= 0")
    except ValueError as e:
        parser.error(str(e))
    if not os.path.exists(os.path.join(ROOT, args.flagfile)) and \
            not os.path.exists(args.flagfile):
        parser.error(f"--flagfile={args.flagfile}: not found")
    args.flagfile = os.path.abspath(os.path.join(ROOT, args.flagfile)) \
        if os.path.exists(os.path.join(ROOT, args.flagfile)) else os.path.abspath(args.flagfile)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)

    start = time.perf_counter()
    data = prepare_data(args)
    try:
        levels = data["levels"] if args.levels == "all" else parse_ints(args.levels, "levels")
    except ValueError as e:
        parser.error(str(e))
    unknown = sorted(set(levels) - set(data["levels"]))
    if unknown:
        parser.error(f"--levels={args.levels}: the demo has levels "
                     f"{', '.join(map(str, data['levels']))}, not {unknown}")
    all_levels = sorted(levels) == sorted(data["levels"])

    results: dict = {v: {} for v in variants}
    for seed in seeds:  # seed-major: a partial ablation already compares every variant
        for v, flags in variants.items():
            entry = {"levels": {}}
            for level in levels:
                if args.report:
                    saved = saved_result(args, data, v, flags, seed, level)
                    if saved is not None:
                        entry["levels"][str(level)] = saved
                else:
                    entry["levels"][str(level)] = train_and_eval(args, data, v, flags, seed,
                                                                 level)
            if all_levels and args.report:
                merged = saved_merged_map(args, v, seed, levels)
                if merged is not None and len(entry["levels"]) == len(levels):
                    entry["merged_mAP"] = merged
            elif all_levels:
                entry["merged_mAP"] = merged_map(
                    args, data, v, seed,
                    {lv: entry["levels"][str(lv)]["model_dir"] for lv in levels})
            if entry["levels"]:
                results[v][str(seed)] = entry

    summary = summarize(results, list(variants), levels)
    overrides = ([f"--epochs={args.epochs}"] if args.epochs else []) + \
        ([f"--steps_per_epoch={args.steps}"] if args.steps else [])
    header = (f"ablation on the demo data: {len(variants)} variants x seeds "
              f"{','.join(map(str, seeds))} x levels {','.join(map(str, levels))}, "
              f"{os.path.relpath(args.flagfile, ROOT)} {' '.join(overrides)}".rstrip()
              + (", runs finished before (--report)" if args.report else "")
              + f"\n{trained_on(results)}, {os.cpu_count()} cores here, "
              f"{(time.perf_counter() - start) / 60:.1f} min; mean ± std (sample) over seeds")
    print("\n" + header + "\n")
    print(tables(summary, variants, levels, seeds=len(seeds)))
    if not all_levels:
        print("(merged mAP: n/a, it needs every level; --levels all)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "trained_on": runs_per_cpu(results),
                       "cores": os.cpu_count(), "flagfile": args.flagfile,
                       "epochs": args.epochs or None, "steps_per_epoch": args.steps or None,
                       "seeds": seeds, "levels": levels, "variants": variants,
                       "summary": summary, "runs": results,
                       "minutes": (time.perf_counter() - start) / 60}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(header.replace("\n", "  \n") + "\n\n"
                    + tables(summary, variants, levels, markdown=True, seeds=len(seeds))
                    + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
