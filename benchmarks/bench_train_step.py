"""Training images per second of our RetinaNet train step with each anchor assigner (IoU
matching, ATSS) side by side, next to keras-hub's RetinaNet.

Both sides train a ResNet50 RetinaNet from random weights on the same synthetic
batch (random-noise images; 2 to 12 boxes per image, mean 7, in canvas pixels,
(ymin, xmin, ymax, xmax), padded to 100 rows), with the same square image size,
batch size and class count (150 and 500 by default), each configuration in a
fresh process so that models do not share memory or threads, and peak RSS is per
configuration:
  ours:      `Trainer._make_train_step()` (model/training.py) on an iterator that
             repeats the batch: anchor labeling (`add_targets`), forward, focal and
             smooth-L1 losses, backward and the Adam update, in one tf.function.
             TrainConfig(optimizer="adam", clipnorm=None); ModelConfig(head_norm="none")
             because keras-hub's heads have no normalization by default.
  keras-hub: `keras_hub.models.RetinaNetObjectDetector` on a randomly initialized
             `ResNetBackbone` with the ResNet50 configuration, wrapped in a
             `RetinaNetBackbone` (P3-P7, P6 from C5 as ours: use_p5=True), its
             default anchor generator (9 anchors per location), label encoder and
             losses (`compile()`: Adam, Huber and BinaryFocalCrossentropy, both
             reduction "sum"), trained with `model.fit` on a tf.data Dataset
             repeating the batch (boxes "yxyx" pixels, labels -1 padded). Its
             preprocessor is left out (images go in as float32 in [0, 255]); ours
             casts and normalizes inside the model.
The backbone's BatchNorm layers are frozen (inference mode, not trained) on both
sides by default, as our training runs them; --backbone_bn train trains them on
both (keras-hub's default). Neither side uses XLA: Keras's jit_compile="auto" is off
on a CPU-only machine, and our step is a plain tf.function.

Assigners: our side runs once per --assigners entry (default iou,atss: boxes/assign.py,
labeling in the train step as train.py does by default), each in its own process, and the
table gives each one's images/s and its ratio to the first. An entry may name its box loss
too, atss+giou (default smooth_l1): GIoU decodes boxes, and this shows what that costs.
--model demo measures demo.flags' model instead (small backbone, 64-channel FPN and 2x64
BatchNorm heads, anchors 16-256, --image_size 256 --batch_size 4 suit it; keras-hub is then
left out), where labeling is a larger share of the step. A second table times the labeling alone (label_batch on the same
boxes, --label_steps calls after one that traces) for each assigner.

Timing: --warmup steps (the first traces the function), then --steps steps, each
timed from its call to its result (ours: around the train-step call; keras-hub: from
on_train_batch_begin to on_train_batch_end); images/s = batch x steps / their sum.
Timing the steps, not the fit() call, leaves out what fit() adds around them: on
return it destroys its tf.data iterator and waits for the prefetch threads, 0 to 30 s
here, which a long epoch would amortize. The default 512x512, batch 2, suits a CPU;
--image_size 1024 is our 1024x768 training canvas.

It also prints the forward FLOPs per image of our ResNet50/101/152 RetinaNets as
trained (r50/r101/r152.flags: GroupNorm heads, 500 classes) on their canvases: the
pipeline pads to image_max_side rounded up to a multiple of 128, squared, so
1024x768 images train on a 1024x1024 canvas and r152's 800x600 on 896x896.
Method: TensorFlow's graph profiler (tf.compat.v1.profiler with
ProfileOptionBuilder.float_operation()) on the concrete function of the model's
forward pass at batch 1; a convolution counts 2 FLOPs per multiply-add, and
elementwise ops with registered statistics count too. A training step costs about
3x the forward pass.

keras-hub is not a dependency of this project. The keras-hub half runs in a
subprocess of this venv's Python with --keras_hub_path DIR put first on its
PYTHONPATH; without the flag it tries a plain `import keras_hub`. If that fails
the script says how to get it, still runs our half, and exits with status 2.
keras-hub 0.32.0 needs, beyond this venv, only `regex` and `tokenizers` to import:
  pip download keras-hub==0.32.0 regex tokenizers --no-deps --only-binary=:all: \\
      -d /tmp/khwheels
  for w in /tmp/khwheels/*.whl; do python -m zipfile -e "$w" /tmp/keras_hub_site; done
  python benchmarks/bench_train_step.py --keras_hub_path /tmp/keras_hub_site

  python benchmarks/bench_train_step.py [--keras_hub_path DIR] [--classes 150,500]
      [--image_size 512] [--batch_size 2] [--warmup 2] [--steps 5] [--repeat 1]
      [--assigners iou,atss] [--model resnet50|demo] [--label_steps 20]
      [--backbone_bn frozen|train] [--no-flops] [--json out.json]
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
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from oid.machine import cpu_model  # noqa: E402

MAX_BOXES = 100  # the pipeline's max_boxes
SIDES = {"ours": "ours", "keras_hub": "keras-hub"}
# (backbone, image_max_side) of r50.flags, r101.flags and r152.flags; FLOPs on their canvases.
FLOPS_VARIANTS = (("resnet50", 1024), ("resnet101", 1024), ("resnet152", 800))
FLOPS_CLASSES = 500
KERAS_HUB_RECIPE = """\
keras-hub is not a dependency of this project. To benchmark against it without
touching this venv, unpack keras-hub and the two packages it needs beyond the venv:
  {python} -m pip download keras-hub==0.32.0 regex tokenizers --no-deps \\
      --only-binary=:all: -d /tmp/khwheels
  for w in /tmp/khwheels/*.whl; do {python} -m zipfile -e "$w" /tmp/keras_hub_site; done
then run this script again with --keras_hub_path /tmp/keras_hub_site."""


# ------------------------------------------------------------------------------ data


def synthetic_batch(image_size: int, batch_size: int, num_classes: int, seed: int = 0) -> dict:
    """The batch both sides train on, in our pipeline's format (tfrecords/input_pipeline.py):
    image [B, S, S, 3] uint8; boxes [B, 100, 4] float32 (ymin, xmin, ymax, xmax) canvas
    pixels, padding rows 0; classes [B, 100] int32, padding -1; group_of [B, 100] bool (all
    False: keras-hub has no group-of); num_boxes [B] int32, 2 to 12 (mean 7)."""
    rng = np.random.default_rng(seed)
    s = float(image_size)
    image = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    boxes = np.zeros((batch_size, MAX_BOXES, 4), np.float32)
    classes = np.full((batch_size, MAX_BOXES), -1, np.int32)
    num_boxes = rng.integers(2, 13, batch_size).astype(np.int32)
    for i, n in enumerate(num_boxes):
        hw = np.exp(rng.uniform(np.log(0.04 * s), np.log(0.6 * s), (n, 2)))
        y0x0 = rng.uniform(0.0, 1.0, (n, 2)) * (s - hw)
        boxes[i, :n] = np.concatenate([y0x0, y0x0 + hw], axis=1)
        classes[i, :n] = rng.integers(0, num_classes, n)
    return {"image": image, "boxes": boxes, "classes": classes,
            "group_of": np.zeros((batch_size, MAX_BOXES), bool), "num_boxes": num_boxes}


def keras_hub_targets(batch: dict) -> dict:
    """The same boxes as keras-hub's `y`: {"boxes" [B, 100, 4] "yxyx" pixels, "labels"
    [B, 100]}, padding rows -1 in both, as its label encoder expects."""
    real = np.arange(MAX_BOXES)[None, :] < batch["num_boxes"][:, None]
    return {"boxes": np.where(real[..., None], batch["boxes"], -1.0).astype(np.float32),
            "labels": np.where(real, batch["classes"], -1).astype(np.float32)}


# ------------------------------------------------------------------------- children


def forward_flops(model, image_size: int, dtype: str) -> int:
    """FLOPs of one forward pass of `model` on one [S, S, 3] image (TF graph profiler)."""
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(
        tf.TensorSpec([1, image_size, image_size, 3], dtype)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def our_model_config(model: str, num_classes: int, image_size: int, backbone_bn: str):
    """ModelConfig of --model: resnet50 (as keras-hub's, no head norm) or demo (demo.flags)."""
    from boxes.anchors import AnchorConfig
    from model.config import ModelConfig

    if model == "demo":
        return ModelConfig(num_classes=num_classes, backbone="small", image_size=image_size,
                           fpn_channels=64, head_convs=2, head_channels=64, head_norm="batch",
                           backbone_norm="batch", bn_momentum=0.9,
                           anchors=AnchorConfig(sizes=(16, 32, 64, 128, 256)))
    return ModelConfig(num_classes=num_classes, backbone="resnet50", image_size=image_size,
                       head_norm="none", freeze_backbone_bn=backbone_bn == "frozen")


def run_labels(num_classes: int, image_size: int, batch_size: int, steps: int, model: str,
               assigner: str) -> dict:
    """Seconds per label_batch call (the train step's labeling) on the benchmark's boxes."""
    import tensorflow as tf

    from boxes.anchors import generate_anchors
    from boxes.assign import LabelerConfig, add_targets

    assigner = split_entry(assigner)[0]
    anchors_config = our_model_config(model, num_classes, image_size, "frozen").anchors
    anchors = tf.constant(generate_anchors(image_size, image_size, anchors_config))
    counts = anchors_config.level_counts(image_size, image_size)
    batch = {k: tf.constant(v) for k, v in
             synthetic_batch(image_size, batch_size, num_classes).items()}
    label = tf.function(lambda b: add_targets(b, anchors, LabelerConfig(assigner=assigner),
                                              anchors_config.variances, counts))
    label(batch)["cls_targets"].numpy()  # traces
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        out = label(batch)
        out["cls_targets"].numpy()
        times.append(time.perf_counter() - t)
    positives = int((out["cls_targets"].numpy() >= 0).sum())
    return {"step_s": times, "anchors": int(anchors.shape[0]),
            "positives_per_image": positives / batch_size}


def split_entry(entry: str) -> tuple[str, str]:
    """An --assigners entry ASSIGNER[+BOX_LOSS] -> (assigner, box loss; smooth_l1 if none)."""
    assigner, _, box_loss = entry.partition("+")
    return assigner, box_loss or "smooth_l1"


def run_ours(num_classes: int, image_size: int, batch_size: int, warmup: int, steps: int,
             backbone_bn: str, assigner: str = "iou", model: str = "resnet50") -> dict:
    import tensorflow as tf

    from boxes.assign import LabelerConfig
    from engine.trainer import TrainConfig, Trainer
    from model.config import LossConfig

    assigner, box_loss = split_entry(assigner)
    model_config = our_model_config(model, num_classes, image_size, backbone_bn)
    batch = synthetic_batch(image_size, batch_size, num_classes)
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(tf.distribute.get_strategy(), model_config,
                          LossConfig(box_loss=box_loss),
                          TrainConfig(optimizer="adam", clipnorm=None), model_dir,
                          LabelerConfig(assigner=assigner))
        train_step = trainer._make_train_step()
        iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
        t0 = time.perf_counter()
        for _ in range(warmup):
            float(train_step(iterator)["loss"])
        warm = time.perf_counter() - t0
        step_s = []
        t0 = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            loss = float(train_step(iterator)["loss"])  # waits for the step, as Trainer.fit does
            step_s.append(time.perf_counter() - t)
        seconds = time.perf_counter() - t0
        params = trainer.model.count_params()
        trainable = sum(int(np.prod(v.shape)) for v in trainer.model.trainable_variables)
        flops = forward_flops(trainer.model, image_size, "uint8")
    return {"warmup_s": warm, "seconds": seconds, "step_s": step_s, "loss": loss,
            "params": params,
            "trainable_params": trainable, "forward_gflops": flops / 1e9}


def run_keras_hub(num_classes: int, image_size: int, batch_size: int, warmup: int, steps: int,
                  backbone_bn: str) -> dict:
    import keras
    import keras_hub
    import tensorflow as tf

    shape = (image_size, image_size, 3)
    # ResNet50 (keras-hub's "resnet_50_imagenet" configuration), random weights.
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        use_pre_activation=False, image_shape=shape)
    if backbone_bn == "frozen":
        for layer in encoder.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # Keras 3: also runs it in inference mode
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=True, image_shape=shape)
    model = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format="yxyx")
    model.compile()  # its defaults: Adam, Huber + BinaryFocalCrossentropy (sum)
    batch = synthetic_batch(image_size, batch_size, num_classes)
    images = batch["image"].astype(np.float32)
    dataset = tf.data.Dataset.from_tensors((images, keras_hub_targets(batch))).repeat()
    # keras-hub's train_on_batch cannot take a dict `y` (it converts y to one tensor): fit.
    t0 = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False)
    warm = time.perf_counter() - t0
    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step_s, self._t = [], 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.step_s.append(time.perf_counter() - self._t)

    times = StepTimes()
    t0 = time.perf_counter()
    history = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False,
                        callbacks=[times])
    seconds = time.perf_counter() - t0
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return {"warmup_s": warm, "seconds": seconds, "step_s": times.step_s,
            "loss": float(history.history["loss"][-1]),
            "params": model.count_params(), "trainable_params": trainable,
            "forward_gflops": forward_flops(model, image_size, "float32") / 1e9,
            "keras_hub_version": keras_hub.__version__}


def run_flops(backbone: str, image_max_side: int) -> dict:
    """Forward FLOPs of our model as its flagfile trains it (base.flags: GroupNorm heads)."""
    from model.config import ModelConfig
    from model.retinanet import build_retinanet

    canvas = -(-image_max_side // 128) * 128
    model = build_retinanet(ModelConfig(num_classes=FLOPS_CLASSES, backbone=backbone,
                                        image_size=canvas, head_norm="group"))
    return {"backbone": backbone, "image_max_side": image_max_side, "canvas": canvas,
            "gflops": forward_flops(model, canvas, "uint8") / 1e9}


def run_child(args) -> dict:
    if args.child == "flops":
        return run_flops(args.flops_backbone, args.image_size)
    if args.child == "labels":
        result = run_labels(args.num_classes, args.image_size, args.batch_size,
                            args.label_steps, args.model, args.assigner)
        result["images_per_s"] = args.batch_size * len(result["step_s"]) / sum(result["step_s"])
        result["ms_per_image"] = 1000 / result["images_per_s"]
        return result
    if args.child == "ours":
        result = run_ours(args.num_classes, args.image_size, args.batch_size, args.warmup,
                          args.steps, args.backbone_bn, args.assigner, args.model)
    else:
        result = run_keras_hub(args.num_classes, args.image_size, args.batch_size, args.warmup,
                               args.steps, args.backbone_bn)
    result["images_per_s"] = args.batch_size * args.steps / sum(result["step_s"])
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


# --------------------------------------------------------------------------- parent


def _child_env(keras_hub_path: str | None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if keras_hub_path:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.abspath(keras_hub_path), env.get("PYTHONPATH")) if p)
    return env


def find_keras_hub(keras_hub_path: str | None) -> tuple[str | None, str]:
    """(keras-hub's version, "") if a child can import it, else (None, the error)."""
    out = subprocess.run([sys.executable, "-c", "import keras_hub; print(keras_hub.__version__)"],
                         capture_output=True, text=True, env=_child_env(keras_hub_path))
    if out.returncode:
        lines = out.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit status {out.returncode}"
    return out.stdout.strip().splitlines()[-1], ""


def measure(child: str, args, num_classes: int = 0, image_size: int | None = None,
            flops_backbone: str = "", assigner: str = "iou") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", child,
           "--num_classes", str(num_classes), "--image_size", str(image_size or args.image_size),
           "--batch_size", str(args.batch_size), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--backbone_bn", args.backbone_bn,
           "--flops_backbone", flops_backbone, "--assigner", assigner, "--model", args.model,
           "--label_steps", str(args.label_steps)]
    env = _child_env(args.keras_hub_path if child == "keras_hub" else None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"{child} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    rates = [r["images_per_s"] for r in runs]
    return {**runs[-1], "images_per_s": statistics.median(rates), "all_images_per_s": rates,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}{spec}}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="keras-hub: the keras-hub half runs with --keras_hub_path DIR first on its "
               "PYTHONPATH (else a plain `import keras_hub`); if it cannot import keras-hub "
               "the script prints how to get it, runs our half and exits with status 2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--keras_hub_path",
                        help="directory holding an unpacked keras_hub package (and regex, "
                             "tokenizers); default: a plain `import keras_hub`")
    parser.add_argument("--classes", default="150,500", help="class counts, comma-separated")
    parser.add_argument("--image_size", type=int, default=512,
                        help="side of the square canvas (multiple of 128)")
    parser.add_argument("--batch_size", type=int, default=2, help="images per step")
    parser.add_argument("--warmup", type=int, default=2,
                        help="steps before timing (the first one traces)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each configuration, alternating; the median is reported")
    parser.add_argument("--assigners", default="iou,atss",
                        help="anchor assigners of our side, comma-separated, each optionally "
                             "with its box loss (atss+giou; default smooth_l1); ratios are to "
                             "the first")
    parser.add_argument("--model", choices=("resnet50", "demo"), default="resnet50",
                        help="our model: resnet50 (against keras-hub) or demo (demo.flags' "
                             "small model; no keras-hub)")
    parser.add_argument("--label_steps", type=int, default=20,
                        help="timed calls of the labeling alone per assigner (0: skip)")
    parser.add_argument("--backbone_bn", choices=("frozen", "train"), default="frozen",
                        help="backbone BatchNorm on both sides: frozen (inference mode, as our "
                             "training runs it) or train (keras-hub's default)")
    parser.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                        help="also print the forward FLOPs of R50/R101/R152")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--child", choices=("ours", "keras_hub", "flops", "labels"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--assigner", default="iou", help=argparse.SUPPRESS)
    parser.add_argument("--num_classes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--flops_backbone", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_child(args)))
        return
    if args.image_size % 128:
        parser.error(f"--image_size must be a multiple of 128, got {args.image_size}")
    classes = [int(c) for c in args.classes.split(",")]
    assigners = [a for a in args.assigners.split(",") if a]
    from boxes.assign import ASSIGNERS
    from model.config import BOX_LOSSES

    if not assigners or any(split_entry(a)[0] not in ASSIGNERS
                            or split_entry(a)[1] not in BOX_LOSSES for a in assigners):
        parser.error(f"--assigners={args.assigners}: choose from {', '.join(ASSIGNERS)}, each "
                     f"optionally +{'/+'.join(BOX_LOSSES)}")

    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    keras_hub_version, error = None, "--model demo"
    if args.model == "resnet50":
        keras_hub_version, error = find_keras_hub(args.keras_hub_path)
        if keras_hub_version is None:
            print(f"keras-hub cannot be imported ({error}); measuring our side only.\n"
                  + KERAS_HUB_RECIPE.format(python=sys.executable), file=sys.stderr)
    sides = [f"ours:{a}" for a in assigners] + (["keras_hub"] if keras_hub_version else [])
    runs: dict = {(k, s): [] for k in classes for s in sides}
    labels: dict = {}
    for r in range(args.repeat):
        for k in classes:  # alternate the order, so that machine noise hits every side alike
            for side in sides if r % 2 == 0 else sides[::-1]:
                name = f"ours, {side[5:]}" if side.startswith("ours:") else SIDES[side]
                print(f"  {name}, {k} classes ...", file=sys.stderr, flush=True)
                child, _, assigner = side.partition(":")
                runs[(k, side)].append(measure(child, args, num_classes=k,
                                               assigner=assigner or "iou"))
    if args.label_steps:
        for a in dict.fromkeys(split_entry(a)[0] for a in assigners):
            print(f"  labeling alone, {a} ...", file=sys.stderr, flush=True)
            labels[a] = measure("labels", args, num_classes=classes[0], assigner=a)
    flops = []
    if args.flops:
        for backbone, max_side in FLOPS_VARIANTS:
            print(f"  FLOPs of {backbone} ...", file=sys.stderr, flush=True)
            flops.append(measure("flops", args, image_size=max_side, flops_backbone=backbone))
    load_after = os.getloadavg()[0]

    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    cpu = cpu_model()
    s, b = args.image_size, args.batch_size
    results: dict = {
        "machine": machine, "cpu": cpu, "model": args.model, "image_size": s, "batch_size": b,
        "warmup": args.warmup, "steps": args.steps, "repeat": args.repeat,
        "assigners": assigners, "backbone_bn": args.backbone_bn,
        "keras_hub_version": keras_hub_version, "load_1min": [load_before, load_after],
        "classes": {}, "labeling": labels, "flops": {f["backbone"]: f for f in flops}}
    title = "ResNet50 RetinaNet" if args.model == "resnet50" else "demo.flags' small RetinaNet"
    print(f"train step, {title}, {s}x{s}, batch {b}, Adam, CPU {cpu} ({machine})")
    base = assigners[0]
    header = f"{'classes':<8}" + "".join(f" {a + ' img/s':>12}" for a in assigners) + \
        "".join(f" {a + '/' + base:>10}" for a in assigners[1:])
    if keras_hub_version:
        header += f" {'keras-hub img/s':>16} {base + '/keras-hub':>14}"
    header += f" {'peak MB':>8}"
    print(header)
    for k in classes:
        ours = {a: _summary(runs[(k, f"ours:{a}")]) for a in assigners}
        hub = _summary(runs[(k, "keras_hub")]) if keras_hub_version else None
        rate = {a: ours[a]["images_per_s"] for a in assigners}
        entry = {"ours": ours[base], "ours_by_assigner": ours, "keras_hub": hub,
                 "ratio_to_" + base: {a: rate[a] / rate[base] for a in assigners},
                 "ours_over_keras_hub": rate[base] / hub["images_per_s"] if hub else None}
        results["classes"][k] = entry
        line = f"{k:<8}" + "".join(f" {rate[a]:>12.3f}" for a in assigners) + \
            "".join(f" {rate[a] / rate[base]:>10.3f}" for a in assigners[1:])
        if hub:
            line += f" {hub['images_per_s']:>16.3f} {entry['ours_over_keras_hub']:>14.2f}"
        line += f" {max(o['peak_rss_mb'] for o in ours.values()):>8.0f}"
        print(line)
    runs_note = f"median of {args.repeat} alternating runs, " if args.repeat > 1 else ""
    print(f"({runs_note}{args.steps} steps timed after {args.warmup}, each configuration in a "
          f"fresh process; 1-minute load {load_before:.1f} before, {load_after:.1f} after.")
    print(" ours: Trainer train step (labeling in the step + forward + focal and the entry's "
          "box loss, smooth-L1 unless +giou/+diou + backward + Adam), "
          "TrainConfig(optimizer=adam, clipnorm=None)"
          + (", head_norm=none;" if args.model == "resnet50" else ";"))
    if keras_hub_version:
        print(f" keras-hub {keras_hub_version}: RetinaNetObjectDetector.fit, compile() "
              "defaults (Adam, Huber + BinaryFocalCrossentropy), no head norm, use_p5=True;")
    bn = f"backbone BatchNorm {args.backbone_bn}, " if args.model == "resnet50" else ""
    print(f" {bn}no XLA, random weights, the same {s}x{s} noise images with 2-12 boxes each.")
    for k in classes:
        c = results["classes"][k]
        line = f" {k} classes: forward GFLOPs/img ours {c['ours']['forward_gflops']:.1f}"
        if c["keras_hub"]:
            line += f", keras-hub {c['keras_hub']['forward_gflops']:.1f}"
        if args.repeat > 1:
            for a in assigners:
                line += f"; img/s runs {a}: " + ", ".join(
                    f"{v:.3f}" for v in c["ours_by_assigner"][a]["all_images_per_s"])
            if c["keras_hub"]:
                line += "; keras-hub " + ", ".join(
                    f"{v:.3f}" for v in c["keras_hub"]["all_images_per_s"])
        print(line + ("." if k != classes[-1] else ".)"))
    if labels:
        label_base = split_entry(base)[0]
        anchors = labels[label_base]["anchors"]
        print(f"labeling alone (add_targets, {anchors} anchors, batch {b}, {args.label_steps} "
              f"calls after one that traces):")
        print(f"{'assigner':<10} {'ms/image':>9} {'ratio':>6} {'positives/image':>16}")
        for a in labels:
            lab = labels[a]
            print(f"{a:<10} {lab['ms_per_image']:>9.2f} "
                  f"{lab['ms_per_image'] / labels[label_base]['ms_per_image']:>6.2f} "
                  f"{lab['positives_per_image']:>16.1f}")
    if flops:
        by = {f["backbone"]: f for f in flops}
        r152 = by["resnet152"]
        print(f"FLOPs per image (forward, multiply-adds x2), 1024x768 canvas 1024x1024, "
              f"{FLOPS_CLASSES} classes:")
        print(f"resnet50 {by['resnet50']['gflops']:.0f} GFLOPs   resnet101 "
              f"{by['resnet101']['gflops']:.0f} GFLOPs   resnet152 "
              f"({r152['image_max_side']}x{r152['image_max_side'] * 3 // 4}, canvas "
              f"{r152['canvas']}x{r152['canvas']}) {r152['gflops']:.0f} GFLOPs")
        print("(TF graph profiler, float_operation(), on the forward pass at batch 1 with the "
              "flagfiles' GroupNorm heads. A training step costs about 3x the forward pass, so "
              "a device of P TFLOP/s trains at most P * 1000 / (3 x GFLOPs) images/s. A "
              "1024x768 image fills 75% of its canvas: the padding is computed too.)")
    results["wall_s"] = time.perf_counter() - t_start
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    if args.model == "resnet50" and keras_hub_version is None:
        sys.exit(2)


if __name__ == "__main__":
    main()
