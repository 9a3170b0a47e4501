"""The detection cache: each model's raw detections, per chunk of images, as Parquet files.

predict.py writes, for every model, the detections its decoder kept (after per-class NMS and
the model's --max_detections, before levels are merged, ensembles fused or boxes copied to
ancestors) to a folder of its own under the cache folder, one file per chunk of images:

    CACHE/                                  (predict.py: --cache_dir, default OUTPUT.cache)
      level1-3f2a9c01d4e6/                  one model: level and the first 12 hex digits of its key
        cache.json                          what the model is: run directory, level, checkpoint,
                                            key, MIDs, the settings its detections depend on
        chunk-000000.parquet                images [0, N) of the plan
        chunk-000001.parquet                images [N, 2N) ...
      level2-8b1e44c07a93/ ...
      predict.json                          the model folders of the last predict.py run
                                            writing here (a model changed since, or run with
                                            other settings, has another folder beside)

A chunk is written to `chunk-NNNNNN.parquet.partial` and renamed when complete, so a file
with the final name is always whole; a run killed in the middle leaves at most a partial file,
which the next run ignores and overwrites (remote paths are written in place: object stores
publish a file only when it is closed).

One Parquet row per detection, in the chunk's image order and, within an image, in the
model's order (descending score):

    image_id  string   the ImageId
    image     int32    the image's position in the chunk (index into the metadata's image_ids)
    mid       string   the class MID
    score     float32
    ymin, xmin, ymax, xmax  float32, normalized to the original image (after EXIF rotation)

The file's key-value metadata `oid_detection_cache` (JSON) names the chunk's images, those
without detections included: {"version", "key", "run_dir", "level", "checkpoint", "chunk",
"image_ids": [...], "unreadable": [...]}. An unreadable image is listed in both and has no
rows; it gets an empty row in a submission. Open a chunk with pandas
(`pd.read_parquet(path)`: the detections) or pyarrow (`pq.read_schema(path).metadata`).

No TensorFlow here: `python -m oid.combine` reads caches without it. Remote paths (gs://)
go through tf.io.gfile, imported only for them (as in oid/fileio.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from oid import fileio
from oid.errors import InputFileError
from oid.submission import ImageDetections

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "cache.json"
RUN_FILE = "predict.json"
METADATA_KEY = b"oid_detection_cache"
_CHUNK_PREFIX, _CHUNK_SUFFIX = "chunk-", ".parquet"
SCHEMA = pa.schema([("image_id", pa.string()), ("image", pa.int32()), ("mid", pa.string()),
                    ("score", pa.float32()), ("ymin", pa.float32()), ("xmin", pa.float32()),
                    ("ymax", pa.float32()), ("xmax", pa.float32())])


def cache_key(identity: dict) -> str:
    """The hex SHA-256 of `identity` (JSON with sorted keys) and the format version: what a
    model's detections depend on (its weights' and config's digest, its level, the
    postprocessing settings). Two models share a cache folder only when it is equal."""
    text = json.dumps({"version": FORMAT_VERSION, **identity}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# -- file system (local, or remote through tf.io.gfile) ------------------------------------


def _remote(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf  # Only for remote paths (gs://); oid/ has no TensorFlow otherwise.

    return tf.io.gfile


def _listdir(path: str) -> list[str]:
    if _remote(path):
        gfile = _gfile()
        return [n.rstrip("/") for n in gfile.listdir(path)] if gfile.isdir(path) else []
    return os.listdir(path) if os.path.isdir(path) else []


def _isdir(path: str) -> bool:
    return _gfile().isdir(path) if _remote(path) else os.path.isdir(path)


def _makedirs(path: str) -> None:
    if _remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def _remove(path: str) -> None:
    if _remote(path):
        _gfile().remove(path)
    elif os.path.exists(path):
        os.remove(path)


# -- one chunk -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chunk:
    """The detections of one model on one chunk of images, in the chunk's image order.

    Attributes:
      images: one ImageDetections an image (boxes [N, 4] float32 (ymin, xmin, ymax, xmax)
        normalized, scores [N] float32, MIDs), unreadable images included (no detections).
      unreadable: the ImageIds that could not be read.
    """

    images: tuple[ImageDetections, ...]
    unreadable: frozenset[str] = frozenset()

    @property
    def image_ids(self) -> list[str]:
        return [d.image_id for d in self.images]

    def to_table(self, meta: dict) -> pa.Table:
        """The Parquet table of the chunk, `meta` (plus the image list) as its metadata."""
        counts = np.array([len(d) for d in self.images], np.int64)
        n = int(counts.sum())
        ids = self.image_ids
        if n:
            boxes = np.concatenate([d.boxes for d in self.images])
            scores = np.concatenate([d.scores for d in self.images])
            mids = np.concatenate([d.mids for d in self.images])
        else:
            boxes, scores, mids = np.zeros((0, 4), np.float32), np.zeros(0, np.float32), []
        image = np.repeat(np.arange(len(ids), dtype=np.int32), counts)
        columns = [pa.array(np.array(ids, object)[image] if n else [], pa.string()),
                   pa.array(image, pa.int32()), pa.array(mids, pa.string()),
                   pa.array(scores, pa.float32())]
        columns += [pa.array(boxes[:, k], pa.float32()) for k in range(4)]
        full = {**meta, "image_ids": ids, "unreadable": sorted(self.unreadable)}
        return pa.Table.from_arrays(columns, schema=SCHEMA.with_metadata(
            {METADATA_KEY: json.dumps(full).encode()}))

    @staticmethod
    def from_table(table: pa.Table, path: str) -> tuple[Chunk, dict]:
        """(the chunk, its metadata) of a table read from `path` (named in errors)."""
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise InputFileError(path, None, f"no {METADATA_KEY.decode()} metadata: not a "
                                             "chunk of predict.py's detection cache")
        meta = json.loads(raw)
        ids = meta["image_ids"]
        image = table.column("image").to_numpy()
        if len(image) and ((np.diff(image) < 0).any() or image[-1] >= len(ids) or image[0] < 0):
            raise InputFileError(path, None, "the rows are not grouped by image in the order "
                                             "of the image_ids metadata; delete the file")
        if len(image):  # MIDs looked up once per distinct class, not once per row
            codes = table.column("mid").combine_chunks().dictionary_encode()
            mid_array = np.array(codes.dictionary.to_pylist(), object)[
                codes.indices.to_numpy(zero_copy_only=False)]
        else:
            mid_array = np.zeros(0, object)
        scores = table.column("score").to_numpy()
        boxes = np.stack([table.column(c).to_numpy() for c in ("ymin", "xmin", "ymax", "xmax")],
                         axis=1) if len(image) else np.zeros((0, 4), np.float32)
        bounds = np.searchsorted(image, np.arange(len(ids) + 1))
        images = tuple(ImageDetections(i, boxes[a:b], scores[a:b], mid_array[a:b])
                       for i, a, b in zip(ids, bounds[:-1].tolist(), bounds[1:].tolist(),
                                          strict=True))
        return Chunk(images, frozenset(meta.get("unreadable", ()))), meta


# -- one model's folder ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelCache:
    """One model's folder in a cache: its cache.json and its chunks.

    Attributes:
      path: the folder (CACHE/levelN-KEY12).
      meta: cache.json: {"version", "key", "run_dir", "level", "checkpoint", "mids",
        "settings"}; `settings` are what the detections depend on besides the weights
        (score threshold, NMS IoU, detections per image, flip TTA).
    """

    path: str
    meta: dict

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def level(self) -> int | None:
        return self.meta.get("level")

    @property
    def name(self) -> str:
        return os.path.basename(self.path.rstrip("/"))

    @staticmethod
    def folder_name(level: int | None, key: str) -> str:
        return f"level{level if level is not None else 'X'}-{key[:12]}"

    @classmethod
    def create(cls, root: str, meta: dict) -> ModelCache:
        """The folder of the model `meta` describes under `root`, made (with its cache.json)
        if missing. Call it on the process that writes (the chief)."""
        path = fileio.join(root, cls.folder_name(meta.get("level"), meta["key"]))
        _makedirs(path)
        meta_path = fileio.join(path, META_FILE)
        if not fileio.exists(meta_path):
            with fileio.atomic_output(meta_path) as f:
                f.write(json.dumps({"version": FORMAT_VERSION, **meta}, indent=1) + "\n")
        return cls(path, {"version": FORMAT_VERSION, **meta})

    @classmethod
    def open(cls, path: str) -> ModelCache:
        """An existing model folder (it must hold cache.json)."""
        meta_path = fileio.join(path, META_FILE)
        if not fileio.exists(meta_path):
            raise InputFileError(path, None, f"no {META_FILE}: not a model folder of "
                                             "predict.py's detection cache")
        try:
            meta = json.loads(fileio.read_text(meta_path))
        except json.JSONDecodeError as e:
            raise InputFileError(meta_path, e.lineno, f"not JSON ({e.msg}); delete the "
                                                      "folder and run predict.py again") from None
        if meta.get("version") != FORMAT_VERSION or "key" not in meta:
            raise InputFileError(meta_path, None, f"cache format {meta.get('version')!r}, this "
                                                  f"version reads {FORMAT_VERSION}; run "
                                                  "predict.py again to rewrite it")
        return cls(str(path), meta)

    def chunk_path(self, index: int) -> str:
        return fileio.join(self.path, f"{_CHUNK_PREFIX}{index:06d}{_CHUNK_SUFFIX}")

    def chunks(self) -> list[int]:
        """Indices of the complete chunks (files with their final name), ascending."""
        found = []
        for name in _listdir(self.path):
            if name.startswith(_CHUNK_PREFIX) and name.endswith(_CHUNK_SUFFIX):
                digits = name[len(_CHUNK_PREFIX):-len(_CHUNK_SUFFIX)]
                if digits.isdigit():
                    found.append(int(digits))
        return sorted(found)

    def write(self, index: int, chunk: Chunk, source: str | None = None) -> str:
        """Writes chunk `index` (its images read from `source`, recorded when given) under a
        temporary name and renames it into place."""
        path = self.chunk_path(index)
        meta = {k: self.meta.get(k) for k in ("version", "key", "run_dir", "level",
                                              "checkpoint")}
        table = chunk.to_table({**meta, "chunk": index, "source": source})
        temp = path if _remote(path) else path + ".partial"
        with fileio.open_file(temp, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        if temp != path:
            os.replace(temp, path)
        return path

    def read(self, index: int) -> Chunk:
        """Chunk `index`; InputFileError when it is unreadable or another model's."""
        path = self.chunk_path(index)
        try:
            with fileio.open_file(path, "rb") as f:
                table = pq.read_table(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputFileError(path, None, f"cannot be read as Parquet ({e}); delete it and "
                                             "run predict.py again") from None
        chunk, meta = Chunk.from_table(table, path)
        if meta.get("key") != self.key:
            raise InputFileError(path, None, f"written for the cache key {meta.get('key')}, "
                                             f"its folder's is {self.key}; delete the file")
        return chunk

    def chunk_meta(self, index: int) -> dict:
        """The metadata of chunk `index`, read from its footer only."""
        path = self.chunk_path(index)
        try:
            with fileio.open_file(path, "rb") as f:
                raw = (pq.read_schema(f).metadata or {}).get(METADATA_KEY)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputFileError(path, None, f"cannot be read as Parquet ({e})") from None
        if raw is None:
            raise InputFileError(path, None, f"no {METADATA_KEY.decode()} metadata: not a "
                                             "chunk of predict.py's detection cache")
        return json.loads(raw)

    def is_valid(self, index: int, image_ids: Sequence[str] | None,
                 source: str | None = None, present: set[int] | None = None) -> bool:
        """Whether chunk `index` exists (in `present`, the listing, when given) and holds
        this model's detections of exactly `image_ids` (any when None) read from `source`
        (any when None). A file that exists but does not fit is logged with the reason and
        will be written again. Reads the file's footer only."""
        if index not in (present if present is not None else set(self.chunks())):
            return False
        path = self.chunk_path(index)
        try:
            meta = self.chunk_meta(index)
        except InputFileError as e:
            logger.warning("ignoring %s: %s; it is computed again", e.path, e.problem)
            return False
        why = None
        if meta.get("key") != self.key:
            why = f"written for the cache key {meta.get('key')}, not this model's {self.key}"
        elif image_ids is not None and meta.get("image_ids") != list(image_ids):
            why = (f"it holds other images than chunk {index} of this run (other images or "
                   "another --cache_chunk_images)")
        elif source is not None and meta.get("source") != source:
            why = f"it was read from {meta.get('source')}, chunk {index} is now {source}"
        if why:
            logger.info("ignoring %s: %s; it is computed again", path, why)
            return False
        return True

    def iter_chunks(self) -> Iterator[tuple[int, Chunk]]:
        """(index, chunk) of every complete chunk, in index order."""
        for index in self.chunks():
            yield index, self.read(index)


def model_caches(path: str) -> list[ModelCache]:
    """The model folders of a cache: `path` itself if it is one (has cache.json); else those
    of the last predict.py run (predict.json), in its order; else every subfolder that is
    one, in name order."""
    if fileio.exists(fileio.join(path, META_FILE)):
        return [ModelCache.open(path)]
    if not _isdir(path):
        raise InputFileError(path, None, "no such folder; pass predict.py's --cache_dir (by "
                                         "default OUTPUT.cache) or one model's folder in it")
    run_file = fileio.join(path, RUN_FILE)
    if fileio.exists(run_file):
        try:
            names = json.loads(fileio.read_text(run_file))["models"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputFileError(run_file, None, "not predict.py's list of model folders; "
                                                 "delete it to use every folder") from None
        return [ModelCache.open(fileio.join(path, name)) for name in names]
    found = [ModelCache.open(fileio.join(path, name)) for name in sorted(_listdir(path))
             if fileio.exists(fileio.join(path, name, META_FILE))]
    if not found:
        raise InputFileError(path, None, f"holds no model folder (levelN-KEY/{META_FILE}); "
                                         "pass predict.py's --cache_dir")
    return found


def write_run(root: str, caches: Sequence[ModelCache]) -> None:
    """Records `caches` as the model folders of the last run writing to `root`."""
    with fileio.atomic_output(fileio.join(root, RUN_FILE)) as f:
        f.write(json.dumps({"models": [c.name for c in caches]}, indent=1) + "\n")


def stale_caches(root: str, run_dir: str, key: str) -> list[ModelCache]:
    """The other folders under `root` written for the model at `run_dir` (another
    checkpoint, config or setting): the caches a run of that model now ignores."""
    out = []
    for name in sorted(_listdir(root)):
        folder = fileio.join(root, name)
        if not fileio.exists(fileio.join(folder, META_FILE)):
            continue
        try:
            cache = ModelCache.open(folder)
        except InputFileError:
            continue
        if cache.meta.get("run_dir") == run_dir and cache.key != key:
            out.append(cache)
    return out


def remove_partials(cache: ModelCache) -> int:
    """Deletes the .partial chunk files a killed run left; returns how many (local only)."""
    removed = 0
    for name in _listdir(cache.path):
        if name.endswith(_CHUNK_SUFFIX + ".partial"):
            _remove(fileio.join(cache.path, name))
            removed += 1
    return removed
