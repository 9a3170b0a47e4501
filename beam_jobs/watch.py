"""The records job's progress, watched by the driver: images done per split, from the shards.

Beam's counters cannot be read while the local runner runs a job (its FnApiRunner returns
them with the result, at the end), so the driver watches the level folder instead, which
works alike on every runner and file system:

- a shard renamed into place by this run counts every image the plan dealt to it (written or
  skipped); a shard of an earlier run with the same name counts once it has been rewritten;
- a shard still being written under beam-temp-shards/ counts the records complete in it so
  far, read from the TFRecord framing (local files only: an object store such as gs:// shows
  an object once it is closed, so there the count moves shard by shard).

watch_shards() polls in a thread while the pipeline runs and feeds an oid.progress.Progress
(a bar, log lines or nothing, by --progress).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
from collections.abc import Iterator

from apache_beam.io.filesystems import FileSystems

from oid import fileio
from oid.progress import Progress

# tfrecords.layout.shard_name's "{split}-%05d-of-%05d.tfrecord"; a temporary copy adds ".{uuid}".
_SHARD = re.compile(r"(?P<split>\w+)-(?P<shard>\d{5})-of-(?P<of>\d{5})\.tfrecord(\.\w+)?")
_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the data

log = logging.getLogger(__name__)


def planned_per_shard(images: dict[str, int], num_shards: dict[str, int]) -> dict[str, list[int]]:
    """Images the plan deals to each shard of each split: write_plan deals a split's shuffled
    images round-robin, image p to shard p % n, so the first m % n shards get one more."""
    out = {}
    for split, n in num_shards.items():
        m = images.get(split, 0)
        out[split] = [m // n + (1 if k < m % n else 0) for k in range(n)] if n else []
    return out


def count_records(path: str, offset: int = 0, count: int = 0) -> tuple[int, int]:
    """(end of the last complete record, records) of a local TFRecord file being written,
    continuing from an earlier (offset, count). Stops at a record still incomplete."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        while offset + _HEADER <= size:
            f.seek(offset)
            (length,) = struct.unpack("<Q", f.read(8))
            end = offset + _HEADER + length + _FOOTER
            if end > size:
                break
            offset, count = end, count + 1
    return offset, count


def _parse(path: str) -> tuple[str, int, int] | None:
    found = _SHARD.fullmatch(path.rstrip("/").rsplit("/", 1)[-1])
    return (found["split"], int(found["shard"]), int(found["of"])) if found else None


class ShardWatcher:
    """Counts the images done per split of one level's run.

    Args:
      level_dir: the level's output folder (local or gs://...).
      temp_dir: where shards are written before their rename (make_records.TEMP_DIR in it).
      planned: split -> images per shard (planned_per_shard).

    Shards present when the watcher is made are taken as an earlier run's: they count only
    once rewritten (their modification time changes).
    """

    def __init__(self, level_dir: str, temp_dir: str, planned: dict[str, list[int]]):
        self.level_dir, self.temp_dir, self.planned = level_dir, temp_dir, planned
        self._local = "://" not in temp_dir
        self._before = self._finals()
        self._done: set[tuple[str, int]] = set()
        self._partial: dict[str, tuple[int, int]] = {}  # temp path -> (offset, records)

    def _finals(self) -> dict[str, float]:
        pattern = fileio.join(self.level_dir, "*-of-*.tfrecord")
        return {m.path: m.last_updated_in_seconds
                for m in FileSystems.match([pattern])[0].metadata_list}

    def _ours(self, path: str) -> tuple[str, int] | None:
        parsed = _parse(path)
        if parsed is None:
            return None
        split, shard, of = parsed
        planned = self.planned.get(split, [])
        return (split, shard) if of == len(planned) and shard < of else None

    def poll(self) -> dict[str, int]:
        """Images done per split (every split of `planned`, 0 when none yet)."""
        for path, updated in self._finals().items():
            key = self._ours(path)
            if key is not None and self._before.get(path) != updated:
                self._done.add(key)
        partial: dict[tuple[str, int], int] = {}
        if self._local:
            found = FileSystems.match([fileio.join(self.temp_dir, "*")])[0].metadata_list
            current = {}
            for m in found:
                key = self._ours(m.path)
                if key is None or key in self._done:
                    continue
                try:
                    current[m.path] = count_records(m.path, *self._partial.get(m.path, (0, 0)))
                except OSError:  # renamed into place since it was listed: counted next time
                    continue
                partial[key] = max(partial.get(key, 0), current[m.path][1])
            self._partial = current
        return {split: sum(n if (split, k) in self._done else min(partial.get((split, k), 0), n)
                           for k, n in enumerate(shards))
                for split, shards in self.planned.items()}


@contextlib.contextmanager
def watch_shards(watcher: ShardWatcher, bar: Progress, interval: float) -> Iterator[None]:
    """Polls `watcher` every `interval` seconds in a thread while the body runs, and once more
    after it succeeds, updating `bar` with the images done and, as its postfix, each split's
    done/planned."""
    totals = {split: sum(shards) for split, shards in watcher.planned.items()}
    stop = threading.Event()

    def report() -> None:
        done = watcher.poll()
        postfix = {split: f"{done[split]:,}/{totals[split]:,}" for split in done}
        bar.update(max(sum(done.values()) - bar.count, 0), **postfix)

    def loop() -> None:
        while not stop.wait(interval):
            try:
                report()
            except OSError as e:  # a listing that failed: progress must not end the job
                log.warning("progress: could not list %s: %s", watcher.level_dir, e)

    thread = threading.Thread(target=loop, name="watch_shards", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    report()
