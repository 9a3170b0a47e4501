"""The tf.data input pipeline: shards -> batches of images, padded boxes and image_info.

    files (sharded per input pipeline) -> parallel interleave of checked reads (a corrupt
    record is skipped and counted) -> [cache] -> [repeat]
    -> [repeat-factor sampling] -> shuffle -> parse + decode + [flip, scale jitter]
    -> resize + pad -> batch -> [anchor labeling] -> prefetch

Every stage is a tensor function; preprocess_example runs eagerly as well as
inside tf.data. Randomness is stateless and keyed on (seed, element index),
so a seeded pipeline gives the same batches whatever the parallelism.

Per image, the model receives (shapes before batching):
  image:      [H, W, 3] uint8, the resized image at the top-left of a zero canvas;
              H = W = output_size (image_max_side rounded up to a multiple of 128).
  boxes:      [max_boxes, 4] float32 (ymin, xmin, ymax, xmax) pixels of `image`; padding rows 0.
  classes:    [max_boxes] int32 level-local class ids; padding rows -1.
  group_of:   [max_boxes] bool.
  num_boxes:  [] int32 real rows (boxes beyond max_boxes are dropped, the first kept, and
              counted in DROPPED_BOXES: see DroppedBoxes).
  image_info: [4, 2] float32 (boxes/canvas.py): a box in `image` pixels maps back to
              the decoded image as (box + offset) / scale, and to normalized coordinates by
              dividing by the decoded size.
  source_id:  [] string ImageID.
and, when build_dataset is given a label_fn (target assignment in tf.data, e.g.
boxes.assign.add_image_targets), whatever it adds: cls_targets [A] int32 and box_targets
[A, 4] float32. Nothing per class per anchor.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

import tensorflow as tf

from boxes import canvas
from boxes.ops import flip_left_right
from tfrecords import features as F
from tfrecords.decode import decode_example
from tfrecords.reader import records_dataset

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)


class DroppedBoxes:
    """Ground-truth boxes past max_boxes, per image, shared by every pipeline of the process
    (tf.data runs the map in several threads).

    A dropped box is not background: no anchor learns it, and its anchors are taught
    background for its class. train.py sets max_boxes to the records' largest box count per
    image (stats.json), so boxes are dropped only when a smaller --max_boxes is given; the
    first time an image loses boxes is logged, and summary() ends the training log.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.images: dict[str, tuple[int, int]] = {}  # ImageID -> (boxes, boxes lost) last seen
        self.times = 0  # image reads that lost boxes (an image counts once per pass)
        self.boxes = 0  # boxes lost over all those reads

    def record(self, image_id: str, boxes: int, max_boxes: int) -> None:
        lost = boxes - max_boxes
        with self._lock:
            new = image_id not in self.images
            self.images[image_id] = (boxes, lost)
            self.times += 1
            self.boxes += lost
            count = len(self.images)
        if new:
            log.warning("image %s has %d boxes, more than max_boxes=%d: the last %d are not "
                        "trained (%d images so far); pass --max_boxes=%d or more to keep them",
                        image_id, boxes, max_boxes, lost, count, boxes)

    def reset(self) -> None:
        with self._lock:
            self.images.clear()
            self.times = self.boxes = 0

    def summary(self, shown: int = 10) -> str:
        """One line: the images that lost boxes, most first, or that none did."""
        with self._lock:
            images = dict(self.images)
            times, boxes = self.times, self.boxes
        if not images:
            return "boxes past max_boxes: none, every ground-truth box was trained"
        worst = sorted(images.items(), key=lambda kv: (-kv[1][1], kv[0]))
        listed = ", ".join(f"{i} ({lost} of {n})" for i, (n, lost) in worst[:shown])
        more = f", ... {len(worst) - shown} more" if len(worst) > shown else ""
        return (f"boxes past max_boxes: {len(images)} images lost boxes, {boxes} boxes in "
                f"{times} reads: {listed}{more}; pass --max_boxes={max(n for n, _ in images.values())} "
                "to keep them all")


DROPPED_BOXES = DroppedBoxes()


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Attributes:
      file_pattern: glob (or comma-separated globs) of TFRecord shards; local or gs://.
      is_training: shuffle, repeat, augment.
      global_batch_size: summed over replicas.
      image_min_side, image_max_side: resize so the short side is min_side unless the long
        side would exceed max_side (aspect kept).
      max_boxes: ground-truth rows per image after padding.
      flip: random horizontal flip (training only).
      scale_jitter: (low, high) multiplier of the resize scale (training only); (1, 1) is off.
        Images scaled beyond the canvas are randomly cropped.
      shuffle_buffer: examples.
      repeat_factor_sampling: repeat each image per epoch by its stored LVIS factor r:
        floor(r) times plus once more with probability r - floor(r).
      cache: cache the raw records in memory after the first pass (small data).
      strict_records: stop at the first corrupt record instead of skipping it
        (tfrecords/reader.py).
      max_corrupt_fraction: a file with more corrupt records than this fraction stops the run.
      seed: makes order and augmentation deterministic; None for the fastest
        non-deterministic pipeline.
    """

    file_pattern: str
    is_training: bool = True
    global_batch_size: int = 8
    image_min_side: int = 768
    image_max_side: int = 1024
    max_boxes: int = 100
    flip: bool = True
    scale_jitter: tuple[float, float] = (1.0, 1.0)
    shuffle_buffer: int = 512
    repeat_factor_sampling: bool = False
    cache: bool = False
    strict_records: bool = False
    max_corrupt_fraction: float = 0.5
    seed: int | None = None

    @property
    def output_size(self) -> int:
        """Side of the square canvas (boxes.canvas.canvas_size of image_max_side)."""
        return canvas.canvas_size(self.image_max_side)


def _stateless_seed(seed, index, salt):
    return tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + salt, tf.cast(index, tf.int64)])


def preprocess_example(serialized: tf.Tensor, config: InputConfig, index=0) -> dict:
    """One serialized record -> the per-image dict described in the module docstring.

    `index` keys the stateless augmentation randomness (with config.seed).
    """
    d = decode_example(serialized)
    image = d["image"]
    boxes = d["boxes"]  # normalized
    classes = d["classes"]
    group_of = d["group_of"]
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    train = config.is_training
    seed = 0 if config.seed is None else config.seed

    if train and config.flip:
        flip = tf.random.stateless_uniform([], _stateless_seed(seed, index, 1)) < 0.5
        image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
        flipped = flip_left_right(boxes)
        boxes = tf.cond(flip, lambda: flipped, lambda: boxes)

    scale = canvas.resize_scale(size, config.image_min_side, config.image_max_side)
    if train and tuple(config.scale_jitter) != (1.0, 1.0):
        low, high = config.scale_jitter
        scale *= tf.random.stateless_uniform([], _stateless_seed(seed, index, 2), low, high)
    scaled = canvas.scaled_size(size, scale)
    image = _resize_uint8(image, scaled)
    out = float(config.output_size)

    # Crop to the canvas when jitter made the image larger; the offset is random in training.
    excess = tf.maximum(scaled - out, 0.0)
    if train:
        u = tf.random.stateless_uniform([2], _stateless_seed(seed, index, 3))
        offset = tf.floor(u * (excess + 1.0))
    else:
        offset = tf.zeros([2])
    visible = tf.minimum(scaled, out)
    oi = tf.cast(offset, tf.int32)
    vi = tf.cast(visible, tf.int32)
    image = image[oi[0]:oi[0] + vi[0], oi[1]:oi[1] + vi[1], :]
    image = tf.image.pad_to_bounding_box(image, 0, 0, config.output_size, config.output_size)

    # Boxes to canvas pixels; drop those the crop removed.
    pixel = boxes * tf.tile(scaled, [2]) - tf.tile(offset, [2])
    pixel = tf.clip_by_value(pixel, 0.0, tf.tile(visible, [2]))
    keep = ((pixel[:, 2] - pixel[:, 0]) > 0.5) & ((pixel[:, 3] - pixel[:, 1]) > 0.5)
    pixel = tf.boolean_mask(pixel, keep)
    classes = tf.boolean_mask(classes, keep)
    group_of = tf.boolean_mask(group_of, keep)

    total = tf.shape(pixel)[0]
    n = _count_dropped(total, config.max_boxes, d["source_id"])
    pad = config.max_boxes - n
    image_info = canvas.image_info(size, scaled, scale, offset)
    return {
        "image": tf.ensure_shape(image, [config.output_size, config.output_size, 3]),
        "boxes": tf.ensure_shape(tf.pad(pixel[:n], [[0, pad], [0, 0]]), [config.max_boxes, 4]),
        "classes": tf.ensure_shape(tf.pad(classes[:n], [[0, pad]], constant_values=-1),
                                   [config.max_boxes]),
        "group_of": tf.ensure_shape(tf.pad(group_of[:n], [[0, pad]]), [config.max_boxes]),
        "num_boxes": n,
        "image_info": image_info,
        "source_id": d["source_id"],
    }


def _count_dropped(total: tf.Tensor, max_boxes: int, source_id: tf.Tensor,
                   counts: DroppedBoxes | None = None) -> tf.Tensor:
    """min(total, max_boxes), recording in `counts` (DROPPED_BOXES) an image with more.

    Python runs only for such an image (a tf.cond around a tf.py_function), so the common
    path stays in the graph; eagerly and inside tf.data alike.
    """
    counts = DROPPED_BOXES if counts is None else counts

    def note(image_id, boxes):
        counts.record(image_id.numpy().decode("utf-8", "replace"), int(boxes), max_boxes)
        return 0

    noted = tf.cond(total > max_boxes,
                    lambda: tf.py_function(note, [source_id, total], tf.int32),
                    lambda: tf.constant(0, tf.int32))
    with tf.control_dependencies([noted]):
        return tf.identity(tf.minimum(total, max_boxes))


def _resize_uint8(image: tf.Tensor, scaled: tf.Tensor) -> tf.Tensor:
    """[h, w, 3] uint8 -> [scaled h, scaled w, 3] uint8, bilinear, rounded.

    Records are usually written at the training size already (make_records.py --max_side),
    so the common case is no resize at all: then the image stays uint8 and only the crop and
    the padding touch it, a third of the work of resizing to float and back."""
    target = tf.cast(scaled, tf.int32)

    def resize():
        resized = tf.image.resize(image, target, method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    return tf.cond(tf.reduce_all(tf.equal(target, tf.shape(image)[:2])),
                   lambda: tf.identity(image), resize)


def inference_canvas(image: tf.Tensor, config: InputConfig) -> tuple[tf.Tensor, tf.Tensor]:
    """A decoded [h, w, 3] uint8 image -> (canvas [S, S, 3] uint8, image_info [4, 2]) exactly
    as preprocess_example builds them in evaluation (no flip, jitter or crop)."""
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = canvas.resize_scale(size, config.image_min_side, config.image_max_side)
    scaled = canvas.scaled_size(size, scale)
    out = float(config.output_size)
    visible = tf.cast(tf.minimum(scaled, out), tf.int32)
    resized = _resize_uint8(image, scaled)[:visible[0], :visible[1], :]
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, config.output_size, config.output_size)
    info = canvas.image_info(size, scaled, scale)
    return tf.ensure_shape(padded, [config.output_size, config.output_size, 3]), info


def _repeat_count(serialized, seed, index):
    """Copies of an image this epoch: floor(r) plus one with probability frac(r)."""
    r = tf.io.parse_single_example(
        serialized, {F.REPEAT_FACTOR: tf.io.FixedLenFeature([], tf.float32, 1.0)})[F.REPEAT_FACTOR]
    whole = tf.floor(r)
    extra = tf.random.stateless_uniform([], _stateless_seed(seed, index, 4)) < r - whole
    return tf.cast(whole, tf.int64) + tf.cast(extra, tf.int64)


def list_files(file_pattern: str) -> list[str]:
    files = []
    for pattern in file_pattern.split(","):
        found = sorted(tf.io.gfile.glob(pattern.strip()))
        if not found:
            raise FileNotFoundError(f"no TFRecord files match {pattern!r}")
        files += found
    return files


def build_dataset(config: InputConfig,
                  input_context: tf.distribute.InputContext | None = None,
                  label_fn: Callable[[dict], dict] | None = None) -> tf.data.Dataset:
    """The batched dataset for one input pipeline (one per worker under a strategy).

    With an InputContext the files are split between input pipelines (or, with
    fewer files than pipelines, the records are) and the batch is the
    per-replica batch size. label_fn, if given, maps each image's dict (before batching)
    to the dict with its anchor targets added: target assignment in tf.data instead of
    the train step.
    """
    files = list_files(config.file_pattern)
    batch = config.global_batch_size
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None:
        batch = input_context.get_per_replica_batch_size(config.global_batch_size)
    shard_files = input_context is not None and input_context.num_input_pipelines > 1 \
        and len(files) >= input_context.num_input_pipelines
    if shard_files:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    seed = config.seed
    deterministic = True if seed is not None else None  # None: tf.data's default
    if config.is_training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # A corrupt record is skipped, counted and logged (tfrecords/reader.py), not fatal.
    ds = ds.interleave(
        lambda f: records_dataset(f, config.strict_records, config.max_corrupt_fraction),
        cycle_length=min(len(files), 16), num_parallel_calls=AUTOTUNE,
        deterministic=deterministic)
    if input_context is not None and input_context.num_input_pipelines > 1 and not shard_files:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if config.cache:
        ds = ds.cache()
    if config.is_training:
        ds = ds.repeat()
    base_seed = 0 if seed is None else seed
    if config.is_training and config.repeat_factor_sampling:
        ds = ds.enumerate().flat_map(lambda i, s: tf.data.Dataset.from_tensors(s).repeat(
            _repeat_count(s, base_seed, i)))
    if config.is_training:
        ds = ds.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    # Not converted by AutoGraph (which tf.data applies to every map function otherwise): the
    # augmentation and the labelers branch on tensors with tf.cond only, and converting them
    # took about 3 s of every training's start-up.
    @tf.autograph.experimental.do_not_convert
    def prepare(i, s):
        example = preprocess_example(s, config, i)
        return example if label_fn is None else label_fn(example)

    ds = ds.enumerate().map(prepare, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch, drop_remainder=config.is_training)
    options = tf.data.Options()
    options.deterministic = seed is not None
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(AUTOTUNE)

