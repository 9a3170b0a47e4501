"""beam_jobs.watch: the records job's progress, counted from the shards in the level folder."""

import io
import json
import logging
import os
import re
from collections import Counter

import pytest
from apache_beam.testing import test_pipeline

from beam_jobs import make_records, watch
from oid.progress import Progress
from tests.beam_jobs import fixtures as fx
from tests.beam_jobs.test_make_records import ARGS, plan_for
from tfrecords import proto
from tfrecords.example import ImageAnnotation


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _records(path, n, partial=b""):
    with open(path, "wb") as f:
        for i in range(n):
            proto.write_tfrecord(f, b"record %d" % i)
        f.write(partial)


def test_planned_per_shard_agrees_with_the_plan_the_job_writes(tmp_path):
    # 7 train images on 3 shards: positions 0..6 dealt to p % 3 -> 3, 2, 2; 2 val on 2 -> 1, 1.
    annotations = [ImageAnnotation(f"t{i}", "train") for i in range(7)] + \
        [ImageAnnotation(f"v{i}", "val") for i in range(2)]
    shards = {"train": 3, "val": 2}
    pattern = make_records.write_plan(annotations, str(tmp_path), shards, seed=1)
    dealt = Counter()
    for name in os.listdir(tmp_path):
        with open(tmp_path / name) as f:
            dealt.update((e["split"], e["shard"]) for e in map(json.loads, f))
    assert pattern.endswith("plan-*.jsonl")
    planned = watch.planned_per_shard({"train": 7, "val": 2}, shards)
    assert planned == {"train": [3, 2, 2], "val": [1, 1]}
    assert {(s, k): n for s, counts in planned.items() for k, n in enumerate(counts)} == dealt
    assert watch.planned_per_shard({"train": 0}, {"train": 0}) == {"train": []}


def test_count_records_stops_at_an_incomplete_record_and_resumes(tmp_path):
    path = str(tmp_path / "shard")
    whole = io.BytesIO()
    proto.write_tfrecord(whole, b"the fourth record")
    _records(path, 3, partial=whole.getvalue()[:15])  # header and 3 bytes of the fourth
    # Each record: 12 header + len("record i") = 8 + 4 footer = 24 bytes.
    assert watch.count_records(path) == (72, 3)
    with open(path, "ab") as f:
        f.write(whole.getvalue()[15:])
    assert watch.count_records(path, 72, 3) == (72 + 12 + 17 + 4, 4)
    open(tmp_path / "empty", "wb").close()
    assert watch.count_records(str(tmp_path / "empty")) == (0, 0)


def test_watcher_counts_this_runs_shards_and_the_records_of_shards_being_written(tmp_path):
    level, temp = tmp_path / "level1", tmp_path / "level1" / make_records.TEMP_DIR
    temp.mkdir(parents=True)
    planned = {"train": [3, 2], "val": [1]}
    _records(level / "train-00000-of-00002.tfrecord", 3)  # an earlier run's
    watcher = watch.ShardWatcher(str(level), str(temp), planned)
    assert watcher.poll() == {"train": 0, "val": 0}

    _records(temp / "train-00001-of-00002.tfrecord.0a1b", 2, partial=b"\x10\x00")
    _records(level / "train-00000-of-00005.tfrecord", 1)  # another shard count: not ours
    (temp / "notes.txt").write_text("not a shard")
    assert watcher.poll() == {"train": 2, "val": 0}  # the temp shard's 2 complete records

    _records(level / "val-00000-of-00001.tfrecord", 1)
    os.rename(temp / "train-00001-of-00002.tfrecord.0a1b", level / "train-00001-of-00002.tfrecord")
    assert watcher.poll() == {"train": 2, "val": 1}  # shard 1 done: its planned 2 images

    old = level / "train-00000-of-00002.tfrecord"
    os.utime(old, (os.path.getmtime(old) + 60,) * 2)  # rewritten by this run
    assert watcher.poll() == {"train": 5, "val": 1}


def test_watch_shards_polls_once_more_at_the_end_and_shows_each_split(tmp_path):
    level, temp = tmp_path / "level1", tmp_path / "level1" / make_records.TEMP_DIR
    temp.mkdir(parents=True)
    watcher = watch.ShardWatcher(str(level), str(temp), {"train": [3, 2], "val": [1]})
    clock, out = Clock(), io.StringIO()
    with Progress(total=6, unit="images", description="level1", mode="log", stream=out,
                  log_every_seconds=None, clock=clock) as bar:
        with watch.watch_shards(watcher, bar, interval=3600):  # no poll before the end
            for name in ("train-00000-of-00002", "train-00001-of-00002", "val-00000-of-00001"):
                _records(level / f"{name}.tfrecord", 1)
            clock.now = 2
        assert bar.count == 6
    # 6 images in 2 s: 3.0/s.
    assert out.getvalue() == \
        "level1: 6/6 images (100%), 3.0 images/s, done in 2 s, train 5/5, val 1/1\n"

    failed = Progress(total=6, mode="none")
    with pytest.raises(RuntimeError), watch.watch_shards(watcher, failed, interval=3600):
        raise RuntimeError("the pipeline failed")
    assert failed.count == 0  # no last poll after a failure


def test_run_level_reports_per_split_and_workers_log_only_in_log_mode(tmp_path, caplog):
    lay = fx.make_dataset(str(tmp_path / "data"))
    plan = plan_for(lay, 1)
    image_dirs = {"train": lay.image_dir("train"), "test": lay.image_dir("test")}
    caplog.set_level(logging.INFO)
    for mode in ("log", "none"):
        caplog.clear()
        make_records.run_level(str(tmp_path / mode / "level1"), plan, image_dirs,
                               make_records.SPLITS, None, test_pipeline.TestPipeline,
                               {**ARGS, "log_every": 1, "progress": mode})
        lines = [r.getMessage() for r in caplog.records]
        if mode == "log":
            done = [m for m in lines if m.startswith("level1: ") and "done in" in m]
            counts = Counter(a.split for a in plan.annotations)
            assert len(done) == 1 and re.fullmatch(
                rf"level1: {len(plan.annotations)}/{len(plan.annotations)} images \(100%\), "
                rf"[\d.]+ images/s, done in \d+ s, train {counts['train']}/{counts['train']}, "
                rf"val {counts['val']}/{counts['val']}", done[0]), lines
            assert any(re.match(r"worker \d+: 1 images", m) for m in lines)
        else:
            assert not any(m.startswith(("level1: ", "worker ")) and "images/s" in m
                           for m in lines), lines
