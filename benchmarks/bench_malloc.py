"""Training images per second with engine/malloc.py's glibc settings, next to glibc's own.

Runs the real command, `train.py --flagfile=demo.flags` on the demo's records (after `make
demo`), for --steps steps, alternately with the settings (the default) and with
OID_MALLOC_TUNING=0 (glibc's defaults), --repeat times each. Per run: the training rate of
the steps after the first log interval (the first traces the step), the process's user and
system CPU seconds and its peak resident memory (wait4's rusage). The table shows the
medians and the ratio ours / glibc's.

    python benchmarks/bench_malloc.py [--records_dir demo_out/records] [--level 1]
        [--flagfile demo.flags] [--steps 150] [--log_every 50] [--repeat 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine.malloc import OFF_VARIABLE  # noqa: E402
from oid.machine import cpu_model  # noqa: E402

CONFIGS = {"ours": "engine/malloc.py's settings", "glibc": "glibc's defaults"}
_RATE = re.compile(r"step (\d+)/\d+ .*?([\d.]+) images/s")


def run_once(args, config: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env[OFF_VARIABLE] = "1" if config == "ours" else "0"
    with tempfile.TemporaryDirectory(prefix="bench_malloc-") as model_dir:
        cmd = [sys.executable, "train.py", f"--flagfile={args.flagfile}",
               f"--level={args.level}", f"--records_dir={args.records_dir}",
               f"--model_dir={model_dir}", "--epochs=1", f"--steps_per_epoch={args.steps}",
               f"--log_every_steps={args.log_every}", "--noexport",
               f"--checkpoint_every_steps={10 * args.steps}", "--progress=log"]
        start = time.perf_counter()
        with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as proc:
            output = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench_malloc: {' '.join(cmd)} failed ({proc.returncode}):\n{output[-2000:]}")
    rates = [float(r) for step, r in _RATE.findall(output) if int(step) > args.log_every]
    if not rates:
        sys.exit("bench_malloc: no training rate after the first log interval; raise --steps")
    return {"images_per_s": statistics.mean(rates), "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "wall_s": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--records_dir", default="demo_out/records",
                        help="records with the level (make demo writes demo_out/records)")
    parser.add_argument("--level", type=int, default=1, help="level to train")
    parser.add_argument("--flagfile", default="demo.flags", help="train.py flagfile")
    parser.add_argument("--steps", type=int, default=150, help="training steps per run")
    parser.add_argument("--log_every", type=int, default=50,
                        help="steps per log interval; the first is left out (tracing)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each configuration, alternating; medians are reported")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    args.records_dir = os.path.abspath(args.records_dir)
    if not os.path.isdir(os.path.join(args.records_dir, f"level{args.level}")):
        parser.error(f"--records_dir={args.records_dir}: no level{args.level}/ in it; run "
                     "`make demo` first or pass the records of a level")
    if args.steps <= args.log_every:
        parser.error(f"--steps={args.steps}: needs more than --log_every={args.log_every}")

    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for i in range(args.repeat):
        for config in CONFIGS:
            runs[config].append(run_once(args, config))
            r = runs[config][-1]
            print(f"run {i + 1}/{args.repeat} {config}: {r['images_per_s']:.1f} images/s, "
                  f"user {r['user_s']:.0f} s, sys {r['sys_s']:.0f} s", flush=True)
    median = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
              for c, rs in runs.items()}
    ratio = median["ours"]["images_per_s"] / median["glibc"]["images_per_s"]
    print(f"\ntrain.py --flagfile={args.flagfile} --level={args.level}, {args.steps} steps, "
          f"median of {args.repeat} runs; {cpu_model()}, {os.cpu_count()} cores")
    print(f"{'configuration':<30} {'images/s':>9} {'user s':>7} {'sys s':>6} {'peak RSS MB':>12}")
    for config, label in CONFIGS.items():
        m = median[config]
        print(f"{label:<30} {m['images_per_s']:>9.1f} {m['user_s']:>7.0f} {m['sys_s']:>6.0f} "
              f"{m['peak_rss_mb']:>12.0f}")
    print(f"ours / glibc's: {ratio:.2f}x images/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_model(), "cores": os.cpu_count(), "args": vars(args),
                       "runs": runs, "median": median, "ratio_images_per_s": ratio}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
