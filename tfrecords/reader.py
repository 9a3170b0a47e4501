"""Reading TFRecord files that may hold corrupt or truncated records.

tf.data.TFRecordDataset stops at the first bad record of a file with a DataLossError that
names neither the file nor a way past it, and a resumed run meets the same record again. Here a
record whose framing or checksum is wrong is skipped: the reader scans forward to the next
offset where a whole valid record starts, counts the skip per file and logs the file, the byte
offset and the reason (one skip may span several damaged records: their boundaries are
unknowable). A file that is mostly corrupt (more than `max_corrupt_fraction` of its bytes
skipped) stops the run naming it, since it is more likely a
wrong or broken file than a few bad sectors. `strict` stops at the first bad record instead.

TFRecord framing (per record): uint64 length, uint32 masked CRC-32C of the length, the data,
uint32 masked CRC-32C of the data; little-endian.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import struct
import threading
from collections.abc import Iterator
from typing import BinaryIO

import tensorflow as tf

from tfrecords.proto import masked_crc

log = logging.getLogger(__name__)

_HEADER = 12  # length (8) + its masked CRC (4)
_FOOTER = 4
# A record's length beyond this is a corrupt header, not a record (images are < 100 MB).
_MAX_RECORD_BYTES = 1 << 30
MARKER = "corrupt TFRecord"  # begins every error message, so callers can find it in a TF error


class CorruptRecordsError(ValueError):
    """A file with a corrupt record in strict mode, or with mostly corrupt records."""


@dataclasses.dataclass
class FileCount:
    """records: good records read (every pass over the file counts); corrupt_offsets: where
    the distinct skipped records start (a repeated pass finds the same ones)."""

    records: int = 0
    corrupt_offsets: set[int] = dataclasses.field(default_factory=set)

    @property
    def corrupt(self) -> int:
        return len(self.corrupt_offsets)


class CorruptionLog:
    """Counts of good and skipped records per file, shared by every reader of the process
    (tf.data runs them in several threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.files: dict[str, FileCount] = collections.defaultdict(FileCount)
        self.fatal: str | None = None  # the first file that must stop the run, and why

    def set_fatal(self, message: str) -> None:
        with self._lock:
            self.fatal = self.fatal or message

    def good(self, path: str) -> None:
        with self._lock:
            self.files[path].records += 1

    def corrupt(self, path: str, offset: int) -> tuple[bool, int]:
        """Records a skip; returns (whether this offset is new, distinct skips in the file)."""
        with self._lock:
            count = self.files[path]
            new = offset not in count.corrupt_offsets
            count.corrupt_offsets.add(offset)
            return new, count.corrupt

    def reset(self) -> None:
        with self._lock:
            self.files.clear()
            self.fatal = None

    @property
    def total_corrupt(self) -> int:
        with self._lock:
            return sum(c.corrupt for c in self.files.values())

    def summary(self) -> str:
        """One line: the skipped records and the files that had them, or that there were none."""
        with self._lock:
            bad = {p: c for p, c in self.files.items() if c.corrupt}
            read = sum(c.records for c in self.files.values())
        if not bad:
            return f"records: {read} read, none corrupt"
        detail = "; ".join(
            f"{p}: {c.corrupt} (at bytes {', '.join(map(str, sorted(c.corrupt_offsets)[:10]))}"
            f"{' ...' if c.corrupt > 10 else ''})" for p, c in sorted(bad.items()))
        return (f"records: {read} read, {sum(c.corrupt for c in bad.values())} corrupt ones "
                f"skipped in {len(bad)} files: {detail}")


CORRUPTION = CorruptionLog()


class _Window:
    """A growing window over a file: bytes [start, start + len(buf)) of it."""

    def __init__(self, f: BinaryIO, chunk: int = 1 << 22):
        self.f, self.chunk = f, chunk
        self.buf = bytearray()
        self.start = 0
        self.eof = False

    def has(self, pos: int, n: int) -> bool:
        """Makes [pos, pos + n) available if the file is that long; forgets what is before pos."""
        if pos - self.start > self.chunk:
            del self.buf[:pos - self.start]
            self.start = pos
        while self.start + len(self.buf) < pos + n and not self.eof:
            data = self.f.read(max(self.chunk, pos + n - self.start - len(self.buf)))
            if not data:
                self.eof = True
            self.buf += data
        return self.start + len(self.buf) >= pos + n

    def get(self, pos: int, n: int) -> bytes:
        return bytes(self.buf[pos - self.start:pos - self.start + n])


def _record_at(window: _Window, pos: int) -> tuple[bytes | None, str]:
    """(the record's data, "") when a whole valid record starts at byte `pos`, else
    (None, the reason)."""
    if not window.has(pos, _HEADER):
        return None, "truncated header"
    header = window.get(pos, _HEADER)
    if masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
        return None, "bad length checksum"
    (length,) = struct.unpack("<Q", header[:8])
    if length > _MAX_RECORD_BYTES:
        return None, f"implausible length {length}"
    if not window.has(pos, _HEADER + length + _FOOTER):
        return None, "truncated record"
    data = window.get(pos + _HEADER, length)
    (crc,) = struct.unpack("<I", window.get(pos + _HEADER + length, _FOOTER))
    if masked_crc(data) != crc:
        return None, "bad data checksum"
    return data, ""


def _next_record(window: _Window, pos: int) -> int | None:
    """The first offset >= pos where a whole valid record starts, or None."""
    while window.has(pos, _HEADER):
        header = window.get(pos, _HEADER)
        if masked_crc(header[:8]) == struct.unpack("<I", header[8:])[0] and \
                _record_at(window, pos)[0] is not None:
            return pos
        pos += 1
    return None


def read_records(path: str, strict: bool = False, max_corrupt_fraction: float = 0.5,
                 counts: CorruptionLog = CORRUPTION) -> Iterator[bytes]:
    """Yields the data of every valid record of the TFRecord file `path` (local or gs://).

    Raises:
      CorruptRecordsError: at the first bad record when `strict`; at the end of the file when
        more than `max_corrupt_fraction` of its bytes were skipped.
    """
    skipped_bytes = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        window = _Window(f)
        pos: int | None = 0
        while pos is not None and window.has(pos, 1):
            data, reason = _record_at(window, pos)
            if data is not None:
                counts.good(path)
                pos += _HEADER + len(data) + _FOOTER
                yield data
                continue
            new, n = counts.corrupt(path, pos)
            if strict:
                raise CorruptRecordsError(
                    f"{MARKER}: {path}: record at byte {pos}: {reason}; rewrite the file with "
                    "beam_jobs/make_records.py, or train without --strict_records to skip it")
            if new:  # each epoch reads the file again; say it once
                log.warning("%s: %s: skipped the record at byte %d (%s); %d in this file so far",
                            MARKER, path, pos, reason, n)
            start, pos = pos, _next_record(window, pos + 1)
            skipped_bytes += (pos if pos is not None else window.start + len(window.buf)) - start
    size = window.start + len(window.buf)
    if skipped_bytes and skipped_bytes > max_corrupt_fraction * size:
        raise CorruptRecordsError(
            f"{MARKER}: {path}: {skipped_bytes} of its {size} bytes are corrupt (more than "
            f"{max_corrupt_fraction:.0%}); the file is broken: rewrite it with "
            "beam_jobs/make_records.py or remove it")


def records_dataset(path: tf.Tensor, strict: bool = False,
                    max_corrupt_fraction: float = 0.5,
                    counts: CorruptionLog = CORRUPTION) -> tf.data.Dataset:
    """The serialized records of one file as a dataset of [] strings (read_records in tf.data;
    use it as the function of an interleave over file names).

    A file that must stop the run ends its dataset early and sets counts.fatal, which the
    training loop checks (an exception raised in a tf.data generator would reach the user
    wrapped in TensorFlow's traceback of the Python op).
    """
    @tf.autograph.experimental.do_not_convert  # a Python generator, run as is
    def generate(name: bytes):
        try:
            yield from read_records(name.decode(), strict, max_corrupt_fraction, counts)
        except CorruptRecordsError as e:
            log.error("%s", e)
            counts.set_fatal(str(e))

    return tf.data.Dataset.from_generator(generate, args=(path,),
                                          output_signature=tf.TensorSpec([], tf.string))
