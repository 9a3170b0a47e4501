"""Mistakes a user makes with train.py, eval.py and predict.py: each ends in one line naming
the culprit and exit status 2, with no traceback and nothing left under a final name; bad
records are skipped and counted, not fatal."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from PIL import Image

from engine.export import PARTIAL, write_then_rename
from tests import prewarmed
from tests.refusals import assert_refused
from tests.train_fixtures import ENV, REPO, make_records, train_cmd
from tfrecords.proto import write_tfrecord

pytestmark = pytest.mark.slow


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return prewarmed.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    make_records(str(root / "level1"), n=4)
    return root


# -- train.py -------------------------------------------------------------------------------


def test_train_batch_size_0_names_the_flag_and_writes_nothing(records, tmp_path):
    model_dir = tmp_path / "run"
    assert_refused(run(train_cmd(records, model_dir, "--global_batch_size=0")),
                   "--global_batch_size=0")
    assert not model_dir.exists()


@pytest.mark.parametrize("flag", ["--learning_rate=-1", "--scale_jitter=abc",
                                  "--focal_alpha=1.5", "--epochs=0", "--backbone=resnet9"])
def test_train_out_of_range_flags(records, tmp_path, flag):
    assert_refused(run(train_cmd(records, tmp_path / "run", flag)), flag.split("=")[0])
    assert not (tmp_path / "run").exists()


def test_train_level_with_labels_but_no_shards(records, tmp_path):
    (tmp_path / "records" / "level2").mkdir(parents=True)
    (tmp_path / "records" / "level2" / "labels.json").write_text(
        (records / "level1" / "labels.json").read_text())
    assert_refused(run(train_cmd(tmp_path / "records", tmp_path / "run", "--level=2")),
                   "level2", "no train shards")
    assert not (tmp_path / "run").exists()


def test_train_missing_records_dir(tmp_path):
    assert_refused(run(train_cmd(tmp_path / "nowhere", tmp_path / "run")),
                   f"--records_dir={tmp_path / 'nowhere'}")


def test_train_model_dir_that_is_a_file(records, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    assert_refused(run(train_cmd(records, tmp_path / "run")), f"--model_dir={tmp_path / 'run'}")


def _corrupt_copy(records, tmp_path, damage) -> tuple[str, int]:
    """RECORDS copy whose train shard has `damage(bytearray, starts)` applied; returns the
    shard's path and the offset of its third record."""
    level = tmp_path / "records" / "level1"
    level.mkdir(parents=True)
    (level / "labels.json").write_text((records / "level1" / "labels.json").read_text())
    import tensorflow as tf

    shard = records / "level1" / "train-00000-of-00001.tfrecord"
    buf, starts = io.BytesIO(), []
    for r in tf.data.TFRecordDataset(str(shard)):
        starts.append(buf.tell())
        write_tfrecord(buf, r.numpy())
    data = bytearray(buf.getvalue())
    damage(data, starts)
    out = level / shard.name
    out.write_bytes(bytes(data))
    return str(out), starts[2]


def test_train_skips_a_corrupt_record_and_counts_it(records, tmp_path):
    def flip(data, starts):
        data[starts[2] + 20] ^= 0xFF

    shard, offset = _corrupt_copy(records, tmp_path, flip)
    result = run(train_cmd(tmp_path / "records", tmp_path / "run", "--epochs=1",
                           "--steps_per_epoch=2", "--noexport"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{shard}: skipped the record at byte {offset} (bad data checksum)" in result.stderr
    assert "1 corrupt ones skipped in 1 files" in result.stderr


def test_train_strict_records_stops_at_the_corrupt_record(records, tmp_path):
    def truncate(data, starts):
        del data[starts[3] + 30:]

    shard, _ = _corrupt_copy(records, tmp_path, truncate)
    assert_refused(run(train_cmd(tmp_path / "records", tmp_path / "run", "--epochs=1",
                                 "--steps_per_epoch=2", "--noexport", "--strict_records")),
                   shard, "truncated record")


def test_train_stops_on_a_mostly_corrupt_shard(records, tmp_path):
    def scramble(data, starts):
        for start in starts[:3]:
            data[start + 20] ^= 0xFF

    shard, _ = _corrupt_copy(records, tmp_path, scramble)
    assert_refused(run(train_cmd(tmp_path / "records", tmp_path / "run", "--epochs=1",
                                 "--steps_per_epoch=2", "--noexport")),
                   shard, "are corrupt")


# -- export ---------------------------------------------------------------------------------


def test_an_export_that_dies_leaves_no_saved_model(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "saved_model.pb").write_text("the previous export")

    def dies(path):
        os.makedirs(os.path.join(path, "variables"))
        raise KeyboardInterrupt  # the run killed halfway through writing

    with pytest.raises(KeyboardInterrupt):
        write_then_rename(str(target), dies)
    assert (target / "saved_model.pb").read_text() == "the previous export"
    assert not os.path.exists(str(target) + PARTIAL)


def test_an_export_replaces_the_previous_one_and_a_stale_partial(tmp_path):
    target = str(tmp_path / "export")
    os.makedirs(target + PARTIAL + "/variables")  # left by a kill -9 during an export
    os.makedirs(target)

    def writes(path):
        os.makedirs(path)
        open(os.path.join(path, "saved_model.pb"), "w").write("new")

    write_then_rename(target, writes)
    assert open(os.path.join(target, "saved_model.pb")).read() == "new"
    assert not os.path.exists(target + PARTIAL)


# -- eval.py and predict.py -----------------------------------------------------------------


def _eval(*args):
    return run([sys.executable, os.path.join(REPO, "eval.py"), *args])


def _predict(*args):
    return run([sys.executable, os.path.join(REPO, "predict.py"), *args])


def test_eval_batch_size_0(records, tmp_path):
    assert_refused(_eval(f"--records_dir={records}", f"--model_dir={tmp_path}",
                         "--batch_size=0"), "--batch_size=0")


def test_eval_unknown_flag_on_the_command_line(records, tmp_path):
    assert_refused(_eval(f"--records_dir={records}", f"--model_dir={tmp_path}",
                         "--batch_sise=4"), "--batch_sise")


def test_eval_missing_ground_truth(records, tmp_path):
    assert_refused(_eval(f"--records_dir={records}", f"--model_dir={tmp_path}"),
                   "val-bbox.csv not found")


def test_predict_missing_model_dir(tmp_path):
    (tmp_path / "images").mkdir()
    assert_refused(_predict(f"--model=level1={tmp_path / 'nope'}",
                            f"--images={tmp_path / 'images'}", "--noexpand",
                            f"--output={tmp_path / 'sub.csv'}"), f"level1={tmp_path / 'nope'}")
    assert not (tmp_path / "sub.csv").exists()


def test_predict_output_that_is_a_folder(tmp_path):
    (tmp_path / "images").mkdir()
    assert_refused(_predict(f"--model=level1={tmp_path}", f"--images={tmp_path / 'images'}",
                            "--noexpand", f"--output={tmp_path}"), f"--output={tmp_path}")


def test_predict_negative_top_k(tmp_path):  # 0 is no cap, the default
    assert_refused(_predict(f"--model=level1={tmp_path}", f"--images={tmp_path}",
                            f"--output={tmp_path / 's.csv'}", "--top_k=-1"), "--top_k=-1")


def test_predict_cache_chunk_images_0(tmp_path):
    assert_refused(_predict(f"--model=level1={tmp_path}", f"--images={tmp_path}",
                            f"--output={tmp_path / 's.csv'}", "--cache_chunk_images=0"),
                   "--cache_chunk_images=0")


def test_predict_refuses_an_image_name_that_cannot_be_an_image_id_before_inference(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("good.png", "has space.png", "comma,name.png"):
        Image.new("RGB", (8, 8)).save(images / name)
    result = _predict(f"--model=level1={tmp_path}", f"--images={images}", "--noexpand",
                      f"--output={tmp_path / 'sub.csv'}")
    last = assert_refused(result, "has space.png", "comma,name.png")
    assert "good.png" not in last
    assert not (tmp_path / "sub.csv").exists()
