"""Images per second of eval.py's batched inference at batch 1 versus batch 8, on this CPU.

What is timed is model.evaluation.LevelEvaluation.evaluate, the whole of eval.py but its
start-up: the level's val records read and decoded in tf.data, canvases built, the model
and its decoder (top-k, per-class NMS, boxes mapped back to the original image) run with
strategy.run, the rows gathered to the host and streamed into the challenge evaluator,
and the metric computed. Each configuration runs in a fresh process: one untimed pass
(it traces the step function), then --passes timed passes over the same records;
images/s is the median pass's, CPU ms/img the process's CPU time (all threads) per image
over the timed passes.

Model: the demo configuration (demo.flags: the small backbone, a 256 canvas, FPN 64, two
64-channel head convolutions, anchors 16-256) for level 1's classes. By default it is
freshly initialized, with the class head's last kernel x 5 and bias -5 so that it
outputs about 270 detections an image, as a trained model does at eval.py's 0.05 threshold
(a model at its 0.01 prior detects nothing, which would leave NMS idle); --model_dir
takes a train.py run instead.
Data: the demo's level-1 val records (make demo).

Configurations: batch 1 and batch 8 (pre-NMS top 1000, the default of eval.py, predict.py
and the exported model), batch 8 with 5000 pre-NMS candidates, batch 8 with flip TTA, and
batch 8 on two replicas (MirroredStrategy over two logical CPU devices of the same two
cores). --with_submission also runs benchmarks/bench_submission.py (the submission
writer's rows per second and peak memory) and adds its figures.

  python benchmarks/bench_inference.py [--records_dir demo_out/records] [--data_dir
      demo_out/data] [--model_dir DIR] [--passes 3] [--configs b1,b8,...]
      [--with_submission] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIGS = {  # name -> (label, batch size, pre-NMS top k, flip TTA, replicas)
    "b1": ("batch 1", 1, 1000, False, 1),
    "b8": ("batch 8", 8, 1000, False, 1),
    "b8_pre5000": ("batch 8, pre-NMS top 5000", 8, 5000, False, 1),
    "b8_flip": ("batch 8, flip TTA", 8, 1000, True, 1),
    "b8_2rep": ("batch 8, 2 replicas (2 logical CPUs)", 8, 1000, False, 2),
}
DEMO = dict(backbone="small", image_size=256, fpn_channels=64, head_convs=2, head_channels=64)
MIN_SIDE = MAX_SIDE = 256
# The fresh model's class head: last kernel x 5 and bias -5 give about 270 detections an
# image above the 0.05 threshold (the cap is 300), as from a model worth submitting.
SCALE, BIAS = 5.0, -5.0


def child(name: str, args) -> dict:
    _, batch, pre_nms, flip, replicas = CONFIGS[name]
    import tensorflow as tf

    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    import keras
    import numpy as np

    from boxes.anchors import AnchorConfig
    from engine.evaluation import LevelEvaluation, label_files
    from engine.inference import Inference, detector_from_model, load_detector
    from model.config import ModelConfig, PostprocessConfig
    from model.retinanet import build_retinanet
    from oid.classes import load_classes
    from oid.hierarchy import load_hierarchy
    from tfrecords.inference_input import RecordSource

    level_dir = os.path.join(args.records_dir, "level1")
    with open(os.path.join(level_dir, "labels.json")) as f:
        labels = json.load(f)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)]) \
        if replicas > 1 else tf.distribute.OneDeviceStrategy("/cpu:0")
    if args.model_dir:
        detector = load_detector(args.model_dir, strategy)
    else:
        config = ModelConfig(num_classes=len(labels), anchors=AnchorConfig(
            sizes=(16, 32, 64, 128, 256)), **DEMO)
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = build_retinanet(config)
        out = model.get_layer("class_head").out
        out.kernel.assign(out.kernel.numpy() * SCALE)
        out.bias.assign(np.full(out.bias.shape, BIAS, np.float32))
        detector = detector_from_model(model, config, MIN_SIDE, MAX_SIDE, labels, 1)
    classes_path, hierarchy_path = label_files(args.data_dir)
    evaluation = LevelEvaluation(load_classes(classes_path), load_hierarchy(hierarchy_path),
                                 os.path.join(level_dir, "val-bbox.csv"),
                                 os.path.join(level_dir, "val-image-labels.csv"),
                                 [e["mid"] for e in labels])
    inference = Inference(strategy, [detector], PostprocessConfig(pre_nms_top_k=pre_nms), flip)
    source = RecordSource(os.path.join(level_dir, "val-*.tfrecord"))
    detections = []

    def count(row, mids):
        detections.append(len(mids))

    evaluation.evaluate(inference, source, batch, on_image=count)  # traces the step
    seconds, cpu = [], 0.0
    for _ in range(args.passes):
        detections.clear()
        c0, t0 = time.process_time(), time.perf_counter()
        result = evaluation.evaluate(inference, source, batch, on_image=count)
        seconds.append(time.perf_counter() - t0)
        cpu += time.process_time() - c0
    images = result.images
    return {"config": name, "images": images, "batch_size": batch, "pre_nms_top_k": pre_nms,
            "flip_tta": flip, "replicas": replicas,
            "images_per_s": images / statistics.median(seconds),
            "pass_seconds": seconds, "cpu_ms_per_image": 1000 * cpu / (images * args.passes),
            "detections_per_image": float(np.mean(detections)), "mAP": result.level_map,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(name: str, args) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--_child", name, "--records_dir",
            args.records_dir, "--data_dir", args.data_dir, "--passes", str(args.passes)]
    if args.model_dir:
        argv += ["--model_dir", args.model_dir]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--records_dir", default=os.path.join(ROOT, "demo_out", "records"))
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "demo_out", "data"))
    parser.add_argument("--model_dir", help="a train.py run of level 1 (default: a fresh "
                        "demo-sized model)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over the records")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--with_submission", action="store_true",
                        help="also run benchmarks/bench_submission.py --skip_baseline")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(child(args._child, args)))
        return
    level_dir = os.path.join(args.records_dir, "level1")
    if not os.path.exists(os.path.join(level_dir, "labels.json")):
        sys.exit(f"{level_dir} not found: run `make demo` (or pass --records_dir and --data_dir)")

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{platform.python_version()}",
               "model": args.model_dir or "demo configuration, fresh weights", "configs": {}}
    for name in names:
        print(f"running {CONFIGS[name][0]} ...", file=sys.stderr)
        results["configs"][name] = run(name, args)
    first = next(iter(results["configs"].values()))
    print(f"eval of {level_dir} val: {first['images']} images; model: {results['model']} "
          f"({results['machine']}, load {os.getloadavg()[0]:.1f})")
    print(f"{'configuration':<40} {'images/s':>9} {'CPU ms/img':>11} {'dets/img':>9} "
          f"{'mAP':>7} {'peak RSS MB':>12}")
    for name, r in results["configs"].items():
        print(f"{CONFIGS[name][0]:<40} {r['images_per_s']:>9.1f} {r['cpu_ms_per_image']:>11.0f} "
              f"{r['detections_per_image']:>9.0f} {r['mAP'] or 0:>7.4f} "
              f"{r['peak_rss_mb']:>12.0f}")
    if "b1" in results["configs"] and "b8" in results["configs"]:
        results["batch8_vs_batch1"] = (results["configs"]["b8"]["images_per_s"]
                                       / results["configs"]["b1"]["images_per_s"])
        print(f"batch 8 / batch 1: x{results['batch8_vs_batch1']:.2f}")
    if args.with_submission:
        path = os.path.join(ROOT, "benchmarks", "bench_submission.py")
        if not os.path.exists(path):
            sys.exit(f"{path} not found")
        out_json = os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_submission.json")
        subprocess.run([sys.executable, path, "--skip_baseline", "--json", out_json],
                       check=True, cwd=ROOT)
        with open(out_json) as f:
            results["submission"] = json.load(f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
