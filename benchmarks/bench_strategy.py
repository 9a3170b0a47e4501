"""Training images per second on one CPU: TF's default strategy next to OneDeviceStrategy.

train.py's `--strategy=auto` (and `mirrored`) falls back to the default strategy when
there is neither a GPU nor more than one logical CPU device; before, it built a
OneDeviceStrategy("/cpu:0"). Both run the same `Trainer._make_train_step()`
(model/training.py): anchor labeling, forward, focal and smooth-L1 losses, backward
and the AdamW update, in one tf.function, on the model of demo.flags (small
backbone, BatchNorm from its third stage and in the heads, 64-channel FPN and 2 x 64
heads, 6 classes, 256x256 canvas, anchors 16-256). The input is one synthetic
batch repeated (bench_train_step.synthetic_batch: random-noise images, 2 to 12 boxes
per image in canvas pixels, (ymin, xmin, ymax, xmax)), so the input pipeline takes
no part.
Each strategy runs in a fresh process; --warmup steps (the first traces), then
--steps steps timed from the call to the result.

    python benchmarks/bench_strategy.py [--batch_size 16] [--warmup 5] [--steps 20]
        [--repeat 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATEGIES = {"default": "default strategy (ours)", "one_device": "OneDeviceStrategy"}


def run_child(args) -> dict:
    sys.path.insert(0, REPO)
    import tensorflow as tf

    from boxes.anchors import AnchorConfig
    from engine.trainer import TrainConfig, Trainer
    from model.config import LossConfig, ModelConfig

    strategy = (tf.distribute.get_strategy() if args.child == "default"
                else tf.distribute.OneDeviceStrategy("/cpu:0"))
    anchors = AnchorConfig(sizes=(16.0, 32.0, 64.0, 128.0, 256.0))
    config = ModelConfig(num_classes=6, backbone="small", image_size=256, fpn_channels=64,
                         head_convs=2, head_channels=64, head_norm="batch",
                         backbone_norm="batch", bn_momentum=0.9, anchors=anchors)
    trainer = Trainer(strategy, config, LossConfig(box_weight=0.25),
                      TrainConfig(optimizer="adamw", learning_rate=1e-3, clipnorm=None,
                                  schedule="cosine", warmup_steps=10),
                      "/tmp/bench_strategy_unused")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_train_step import synthetic_batch

    b = args.batch_size
    batch = synthetic_batch(256, b, num_classes=6)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensors(batch).repeat())
    iterator = iter(dataset)
    step = trainer._make_train_step()
    for _ in range(args.warmup):
        float(step(iterator)["loss"])
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        float(step(iterator)["loss"])
        times.append(time.perf_counter() - t0)
    return {"strategy": args.child, "images_per_s": b * len(times) / sum(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per strategy, alternating; the best of them is reported")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--child", choices=sorted(STRATEGIES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args)))
        return
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name in STRATEGIES:
            print(f"  {STRATEGIES[name]} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--child", name, "--batch_size",
                   str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            rate = json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]
            best[name] = max(best.get(name, 0.0), rate)
    ratio = best["default"] / best["one_device"]
    machine = f"{os.cpu_count()} CPUs, {platform.machine()}"
    print(f"train step, demo.flags model, 256x256, batch {args.batch_size}, CPU ({machine})")
    print(f"{'default img/s':>14} {'OneDevice img/s':>16} {'default/OneDevice':>18}")
    print(f"{best['default']:>14.1f} {best['one_device']:>16.1f} {ratio:>17.2f}x")
    print(f"({args.steps} steps timed after {args.warmup}, each strategy in a fresh process, "
          f"best of {args.repeat})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch_size": args.batch_size, "machine": machine, "images_per_s": best,
                       "ratio_default_over_one_device": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
