"""Reading TFRecords past corrupt and truncated records (tfrecords/reader.py)."""

from __future__ import annotations

import io
import logging
import struct

import numpy as np
import pytest
import tensorflow as tf

from tfrecords.proto import write_tfrecord
from tfrecords.reader import (
    MARKER,
    CorruptionLog,
    CorruptRecordsError,
    read_records,
    records_dataset,
)

RECORDS = [f"record {i} ".encode() * (i + 3) for i in range(6)]


def framed(records=RECORDS) -> tuple[bytes, list[int]]:
    """The TFRecord bytes of `records` and each record's start offset."""
    buf = io.BytesIO()
    starts = []
    for r in records:
        starts.append(buf.tell())
        write_tfrecord(buf, r)
    return buf.getvalue(), starts


def write(tmp_path, data: bytes, name="a.tfrecord") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def read(path, **kw):
    counts = CorruptionLog()
    return list(read_records(path, counts=counts, **kw)), counts


def test_a_clean_file_reads_as_tfrecorddataset_reads_it(tmp_path):
    path = write(tmp_path, framed()[0])
    got, counts = read(path)
    assert got == RECORDS == [r.numpy() for r in tf.data.TFRecordDataset(path)]
    assert counts.total_corrupt == 0 and counts.files[path].records == 6


def test_an_empty_file_has_no_records(tmp_path):
    assert read(write(tmp_path, b""))[0] == []


def test_a_flipped_data_byte_skips_that_record_only(tmp_path, caplog):
    data, starts = framed()
    broken = bytearray(data)
    broken[starts[2] + 12 + 3] ^= 0xFF  # inside record 2's data: its data checksum fails
    path = write(tmp_path, bytes(broken))
    with caplog.at_level(logging.WARNING):
        got, counts = read(path)
    assert got == RECORDS[:2] + RECORDS[3:]
    assert counts.files[path].corrupt_offsets == {starts[2]}
    assert f"{path}: skipped the record at byte {starts[2]} (bad data checksum)" in caplog.text
    # TensorFlow's own reader stops there.
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(path))


def test_a_broken_length_resyncs_at_the_next_record(tmp_path):
    data, starts = framed()
    broken = bytearray(data)
    broken[starts[1]:starts[1] + 8] = struct.pack("<Q", 10**12)  # length and its CRC disagree
    got, counts = read(write(tmp_path, bytes(broken)))
    assert got == [RECORDS[0]] + RECORDS[2:]
    assert counts.total_corrupt == 1


def test_a_truncated_file_keeps_every_whole_record(tmp_path):
    data, starts = framed()
    path = write(tmp_path, data[:starts[5] + 20])  # cut inside the last record
    got, counts = read(path)
    assert got == RECORDS[:5]
    assert counts.files[path].corrupt_offsets == {starts[5]}
    assert "1 corrupt ones skipped in 1 files" in counts.summary()


def test_strict_stops_at_the_first_bad_record_naming_file_and_offset(tmp_path):
    data, starts = framed()
    path = write(tmp_path, data[:-1])
    with pytest.raises(CorruptRecordsError, match=rf"{MARKER}: .*a.tfrecord: record at byte "
                                                  rf"{starts[5]}: truncated record"):
        read(path, strict=True)


def test_a_mostly_corrupt_file_stops_the_run(tmp_path):
    data, starts = framed()
    broken = bytearray(data)
    for k in range(5):  # records 0-4 bad: bytes 0 to starts[5], 5/6 of the file and more
        broken[starts[k] + 12] ^= 0xFF
    path = write(tmp_path, bytes(broken))
    with pytest.raises(CorruptRecordsError, match=f"{starts[5]} of its {len(data)} bytes are "
                                                  "corrupt"):
        read(path)
    assert read(path, max_corrupt_fraction=0.9)[0] == RECORDS[5:]


def test_in_tf_data_as_eagerly(tmp_path):
    data, starts = framed()
    broken = bytearray(data)
    broken[starts[3] + 13] ^= 0x01
    path = write(tmp_path, bytes(broken))
    eager, _ = read(path)
    ds = tf.data.Dataset.from_tensor_slices([path]).interleave(records_dataset)
    assert [r.numpy() for r in ds] == eager == RECORDS[:3] + RECORDS[4:]


def test_random_corruption_never_yields_a_damaged_record(tmp_path):
    # Whatever bytes are damaged, every record read is one of the originals, in order.
    data, _ = framed()
    rng = np.random.default_rng(0)
    for trial in range(30):
        broken = bytearray(data)
        for i in rng.integers(0, len(data), rng.integers(1, 4)):
            broken[i] = int(rng.integers(0, 256))
        got, _ = read(write(tmp_path, bytes(broken), f"t{trial}.tfrecord"),
                      max_corrupt_fraction=1.0)
        assert [RECORDS.index(r) for r in got] == sorted(RECORDS.index(r) for r in got)


def test_a_second_pass_over_the_file_counts_the_same_skip_once(tmp_path, caplog):
    data, starts = framed()
    broken = bytearray(data)
    broken[starts[1] + 12] ^= 0xFF
    path = write(tmp_path, bytes(broken))
    counts = CorruptionLog()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # three epochs without a cache
            assert len(list(read_records(path, counts=counts))) == 5
    assert counts.files[path].corrupt == 1 and counts.files[path].records == 15
    assert caplog.text.count("skipped the record") == 1


def test_in_tf_data_a_broken_file_ends_its_records_and_sets_fatal(tmp_path):
    data, starts = framed()
    path = write(tmp_path, data[:-1])
    counts = CorruptionLog()
    ds = records_dataset(tf.constant(path), strict=True, counts=counts)
    assert [r.numpy() for r in ds] == RECORDS[:5]
    assert counts.fatal.startswith(f"{MARKER}: {path}: record at byte {starts[5]}")
