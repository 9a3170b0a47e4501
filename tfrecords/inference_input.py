"""The inference input pipeline (eval.py, predict.py): records or an image folder -> padded
batches of canvases, one canvas per distinct model input size.

    sources (sharded per input pipeline) -> (image_id, bytes) -> guarded decode + EXIF
    orientation -> one canvas per input size -> batch of replicas x per-replica batch,
    padded with `real=False` rows -> per-replica batches -> prefetch

Per image (shapes before batching):
  image_id:          [MAX_ID_BYTES] uint8, the ImageID's UTF-8 bytes zero-padded (records:
                     image/source_id; folders: the file stem). Every tensor the replicas see is
                     numeric, since strings cannot be placed on accelerators.
  real:              [] bool, False on the rows that pad the last batch.
  readable:          [] bool, False when the image could not be read or decoded; its canvases
                     are blank and its detections must be dropped, but it still has a row.
  canvas/{i}:        [S_i, S_i, 3] uint8 for the i-th entry of `canvases`, exactly as
                     tfrecords.input_pipeline.inference_canvas builds it (which is also what
                     evaluation on records gives with InputConfig(is_training=False)).
  image_info/{i}:    [4, 2] float32, see tfrecords/input_pipeline.py.

Every image appears exactly once per pass over all input pipelines: the files (or, with
fewer files than pipelines, the records or image paths) are split by the InputContext, and
each pipeline pads its last group of batches so that all its replicas get a full batch on
every step.

A bad image never stops the run: reading and decoding run in a tf.py_function that catches
the error, logs it with the path (or record's ImageID) and returns a blank image with
readable=False. tf.data's ignore_errors would drop the image's id, and a submission must
list every test image.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from tfrecords import features as F
from tfrecords.input_pipeline import AUTOTUNE, InputConfig, inference_canvas, list_files

log = logging.getLogger(__name__)

MAX_ID_BYTES = 128  # OID ImageIDs have 16; a longer file stem is refused up front
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_ID_AND_IMAGE = {F.ENCODED: tf.io.FixedLenFeature([], tf.string),  # all inference reads
                 F.SOURCE_ID: tf.io.FixedLenFeature([], tf.string)}


@dataclasses.dataclass(frozen=True)
class RecordSource:
    """TFRecords written by beam_jobs/make_records.py (any split); ids are image/source_id."""

    file_pattern: str

    def describe(self) -> str:
        return self.file_pattern


@dataclasses.dataclass(frozen=True)
class ImageFolderSource:
    """Image files; the ImageID of each is its file stem.

    Attributes:
      paths: the files (local or gs://), in the order rows should come out.
    """

    paths: tuple[str, ...]

    @classmethod
    def from_dir(cls, image_dir: str, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 ) -> ImageFolderSource:
        """Every file of `image_dir` (not recursive) whose extension is one of `extensions`
        (any case), sorted by name. Two files with one stem (a.jpg, a.png) are refused."""
        if not tf.io.gfile.isdir(image_dir):
            raise FileNotFoundError(f"--images {image_dir}: not a directory")
        names = sorted(n for n in tf.io.gfile.listdir(image_dir)
                       if os.path.splitext(n)[1].lower() in extensions)
        if not names:
            raise FileNotFoundError(f"no {'/'.join(extensions)} files in {image_dir}")
        return cls(tuple(os.path.join(image_dir, n) for n in names))

    def __post_init__(self):
        seen: dict[str, str] = {}
        for path in self.paths:
            image_id = image_id_of(path)
            if image_id in seen:
                raise ValueError(f"{seen[image_id]} and {path} both have the ImageID {image_id!r} "
                                 "(the file stem); keep one of them")
            if not image_id or len(image_id.encode()) > MAX_ID_BYTES:
                raise ValueError(f"{path}: the file stem must be 1 to {MAX_ID_BYTES} bytes long "
                                 "to serve as ImageID")
            seen[image_id] = path

    @property
    def image_ids(self) -> list[str]:
        return [image_id_of(p) for p in self.paths]

    def describe(self) -> str:
        return f"{len(self.paths)} image files"


Source = RecordSource | ImageFolderSource


def image_id_of(path: str) -> str:
    """The ImageID of an image file: its name without directory and extension."""
    return os.path.splitext(os.path.basename(path))[0]


# -- decoding ------------------------------------------------------------------------------

# EXIF orientation -> the transform that shows the image upright (as PIL.ImageOps.exif_transpose).
_ORIENT = {
    2: lambda x: x[:, ::-1],                              # mirror
    3: lambda x: x[::-1, ::-1],                           # rotate 180
    4: lambda x: x[::-1],                                 # flip vertically
    5: lambda x: tf.transpose(x, [1, 0, 2]),              # transpose
    6: lambda x: tf.transpose(x, [1, 0, 2])[:, ::-1],     # rotate 90 clockwise
    7: lambda x: tf.transpose(x, [1, 0, 2])[::-1, ::-1],  # transverse
    8: lambda x: tf.transpose(x, [1, 0, 2])[::-1],        # rotate 90 counter-clockwise
}


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8) of an encoded image; 1 if it has none or it cannot be
    read (the decode decides whether the file is usable)."""
    try:
        value = Image.open(io.BytesIO(data)).getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any header PIL cannot parse means "no orientation"
        return 1
    return int(value) if value in _ORIENT else 1


def decode_image_or_blank(data: bytes, name: str) -> tuple[tf.Tensor, bool]:
    """Encoded bytes -> ([h, w, 3] uint8 upright RGB, True), or ([1, 1, 3] zeros, False) with
    the reason logged when they do not decode (empty, corrupt, truncated, not an image).

    Decoding is TensorFlow's (JPEG, PNG, GIF's first frame, BMP, WebP; greyscale and alpha are
    converted to RGB); EXIF orientation is applied as the records job does, so boxes refer to
    the image as displayed.
    """
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    except tf.errors.OpError as e:  # corrupt, truncated, not an image, too large, ...
        reason = e.message.splitlines()[0] if e.message else type(e).__name__
        log.warning("unreadable image %s (%s); it gets a row without detections", name, reason)
        return tf.zeros([1, 1, 3], tf.uint8), False
    orientation = exif_orientation(data)
    if orientation != 1:
        image = _ORIENT[orientation](image)
    return image, True


def _load(location: tf.Tensor, data: tf.Tensor, image_id: tf.Tensor):
    """py_function body: reads the file at `location` when `data` is empty, else decodes
    `data`; never raises for a bad image."""
    name = location.numpy().decode() or f"record of ImageID {image_id.numpy().decode()}"
    raw = data.numpy()
    if location.numpy():
        try:
            raw = tf.io.read_file(location).numpy()
        except tf.errors.OpError as e:  # gone, unreadable, a directory, ...
            log.warning("unreadable image %s (%s); it gets a row without detections", name,
                        e.message.splitlines()[0])
            return tf.zeros([1, 1, 3], tf.uint8), False
    if not raw:
        log.warning("unreadable image %s (empty file); it gets a row without detections", name)
        return tf.zeros([1, 1, 3], tf.uint8), False
    return decode_image_or_blank(raw, name)


def prepare_image(image_id: tf.Tensor, location: tf.Tensor, data: tf.Tensor,
                  canvases: Sequence[InputConfig]) -> dict[str, tf.Tensor]:
    """One image -> the per-image dict of the module docstring (runs inside tf.data).

    Either `location` is a file path and `data` empty, or `location` is empty and `data` the
    encoded image (from a record).
    """
    image, readable = tf.py_function(_load, [location, data, image_id], [tf.uint8, tf.bool])
    image = tf.ensure_shape(image, [None, None, 3])
    out = {"image_id": tf.io.decode_raw(image_id, tf.uint8, fixed_length=MAX_ID_BYTES),
           "real": tf.constant(True), "readable": tf.ensure_shape(readable, [])}
    for i, config in enumerate(canvases):
        out[f"canvas/{i}"], out[f"image_info/{i}"] = inference_canvas(image, config)
    return out


def decode_image_ids(ids: np.ndarray) -> list[str]:
    """[N, MAX_ID_BYTES] uint8 (zero-padded UTF-8) -> N ImageIDs."""
    return [bytes(row).rstrip(b"\0").decode() for row in np.asarray(ids, np.uint8)]


# -- the dataset ---------------------------------------------------------------------------


def _shard(items: list, input_context: tf.distribute.InputContext | None) -> list:
    if input_context is None or input_context.num_input_pipelines == 1:
        return items
    return items[input_context.input_pipeline_id::input_context.num_input_pipelines]


def _source_dataset(source: Source, input_context) -> tf.data.Dataset:
    """(image_id, location, data) string triples of this input pipeline's share."""
    if isinstance(source, ImageFolderSource):
        paths = _shard(list(source.paths), input_context)
        ids = [image_id_of(p) for p in paths]
        return tf.data.Dataset.from_tensor_slices(
            (tf.constant(ids, tf.string, [len(ids)]), tf.constant(paths, tf.string, [len(paths)]),
             tf.constant([b""] * len(paths), tf.string, [len(paths)])))
    files = list_files(source.file_pattern)
    pipelines = 1 if input_context is None else input_context.num_input_pipelines
    shard_files = len(files) >= pipelines
    if shard_files:
        files = _shard(files, input_context)
    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 8)),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    if not shard_files:
        ds = ds.shard(pipelines, input_context.input_pipeline_id)

    def parse(serialized):
        p = tf.io.parse_single_example(serialized, _ID_AND_IMAGE)
        return p[F.SOURCE_ID], tf.constant(b""), p[F.ENCODED]

    return ds.map(parse, num_parallel_calls=AUTOTUNE)


def pad_batch(batch: dict[str, tf.Tensor], size: int) -> dict[str, tf.Tensor]:
    """Pads every tensor of a (possibly partial) batch to `size` rows of zeros (False)."""
    n = tf.shape(batch["real"])[0]

    def pad(t):
        paddings = [[0, size - n]] + [[0, 0]] * (len(t.shape) - 1)
        return tf.ensure_shape(tf.pad(t, paddings), [size] + t.shape[1:].as_list())

    return {k: pad(v) for k, v in batch.items()}


def per_replica_batch_size(global_batch_size: int, replicas: int) -> int:
    """Images per replica and step: the global batch split over the replicas, rounded up."""
    return max(1, math.ceil(global_batch_size / replicas))


def build_inference_dataset(source: Source, canvases: Sequence[InputConfig],
                            global_batch_size: int,
                            input_context: tf.distribute.InputContext | None = None,
                            ) -> tf.data.Dataset:
    """The batched dataset of one input pipeline (call it from
    strategy.distribute_datasets_from_function).

    Args:
      source: a RecordSource or ImageFolderSource.
      canvases: one InputConfig per distinct model input size (only image_min_side and
        image_max_side are used).
      global_batch_size: images per step over all replicas. Each replica gets
        ceil(global_batch_size / replicas) images per step.
      input_context: splits the source between input pipelines (hosts).

    Returns:
      Per-replica batches of the dict in the module docstring. The number of batches is a
      multiple of this pipeline's replicas and every batch is full: rows past the data have
      real=False.
    """
    replicas, pipelines = 1, 1
    if input_context is not None:
        replicas = input_context.num_replicas_in_sync
        pipelines = input_context.num_input_pipelines
    per_replica = per_replica_batch_size(global_batch_size, replicas)
    local_replicas = max(1, replicas // pipelines)
    group = per_replica * local_replicas
    ds = _source_dataset(source, input_context)
    # Not converted by AutoGraph (which tf.data applies to every map function otherwise): the
    # code branches on tensors with tf.cond only, and conversion is start-up time.
    plain = tf.autograph.experimental.do_not_convert
    ds = ds.map(plain(lambda i, loc, data: prepare_image(i, loc, data, canvases)),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    # One group of batches feeds every local replica once; padding the last group keeps
    # every step's shapes static (one trace) and gives every replica a batch.
    ds = ds.batch(group).map(plain(lambda b: pad_batch(b, group)))
    if local_replicas > 1:
        ds = ds.rebatch(per_replica)
    return ds.prefetch(AUTOTUNE)


def read_images(source: RecordSource, image_ids: set[str]) -> dict[str, np.ndarray]:
    """The decoded images ([h, w, 3] uint8, upright) of `image_ids` from the records, read
    until all are found (for drawing a few images; unreadable ones are left out)."""
    found: dict[str, np.ndarray] = {}
    for serialized in tf.data.TFRecordDataset(list_files(source.file_pattern)):
        p = tf.io.parse_single_example(serialized, _ID_AND_IMAGE)
        image_id = p[F.SOURCE_ID].numpy().decode()
        if image_id in image_ids and image_id not in found:
            image, readable = decode_image_or_blank(p[F.ENCODED].numpy(), image_id)
            if readable:
                found[image_id] = image.numpy()
            if len(found) == len(image_ids):
                break
    return found
