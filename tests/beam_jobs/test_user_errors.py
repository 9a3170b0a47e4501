"""Mistakes a user makes with beam_jobs/make_records.py: each ends in one last stderr line
`error: <flag or file>: ...` and exit status 2, with no traceback and nothing written under
--output_dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.beam_jobs import fixtures as fx
from tests.refusals import assert_refused

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_records(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "beam_jobs/make_records.py", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny dataset with its DATA/levels.json (levels 1 and 2)."""
    return fx.make_dataset(str(tmp_path_factory.mktemp("oid") / "data")).data_dir


def refused(data_dir, out, *flags: str, culprits=()) -> str:
    """Runs the job on `data_dir` with `flags`; asserts the refusal and that `out` stays
    unwritten. Returns the error line."""
    last = assert_refused(make_records(f"--data_dir={data_dir}", f"--output_dir={out}", *flags),
                          *culprits)
    assert not os.path.exists(out) or os.listdir(out) == [], os.listdir(out)
    return last


def test_level_that_is_no_number(data, tmp_path):
    refused(data, tmp_path / "out", "--level", "abc", culprits=["--level=abc", "1, 2, ..."])


@pytest.mark.parametrize("level", ["0", "-1"])
def test_level_below_1(data, tmp_path, level):
    refused(data, tmp_path / "out", f"--level={level}", culprits=[f"--level={level}"])


def test_level_the_spec_lacks(data, tmp_path):
    last = refused(data, tmp_path / "out", "--level=3", culprits=["--level=3"])
    assert "levels 1 to 2" in last


def test_level_the_computed_levels_lack(data, tmp_path):
    bare = tmp_path / "bare"
    fx.make_dataset(str(bare))
    os.remove(bare / "levels.json")  # so the job computes one level of the 4 classes
    last = refused(bare, tmp_path / "out", "--level=2", culprits=["--level=2"])
    assert "only level 1" in last


def test_unknown_mid_in_the_levels_spec(data, tmp_path):
    spec = tmp_path / "levels.json"
    spec.write_text(json.dumps({"version": 1, "levels": [
        {"index": 1, "name": "level1", "kind": "count", "classes": [fx.DOG, "/m/0nope"]}]},
        indent=1))
    last = refused(data, tmp_path / "out", f"--levels_spec={spec}",
                   culprits=[f"{spec}:", "/m/0nope", "class table"])
    line = spec.read_text().splitlines().index('    "/m/0nope"') + 1
    assert f"{spec}:{line}:" in last


@pytest.mark.parametrize("content, problem", [
    ('{"version": 1, "levels": [', "not valid JSON"),
    ('{"version": 7, "levels": []}', "version"),
    ('{"version": 1, "levels": [{"index": 2, "kind": "count", "classes": []}]}', "numbered"),
])
def test_broken_levels_spec(data, tmp_path, content, problem):
    spec = tmp_path / "levels.json"
    spec.write_text(content)
    refused(data, tmp_path / "out", f"--levels_spec={spec}", culprits=[str(spec), problem])


def test_missing_levels_spec(data, tmp_path):
    spec = tmp_path / "nowhere.json"
    refused(data, tmp_path / "out", f"--levels_spec={spec}",
            culprits=[f"--levels_spec={spec}", "no such file"])


def test_output_dir_that_is_a_file(data, tmp_path):
    out = tmp_path / "records"
    out.write_text("not a folder")
    assert_refused(make_records(f"--data_dir={data}", f"--output_dir={out}"),
                   f"--output_dir={out}", "is a file")
    assert out.read_text() == "not a folder"


def test_output_level_folder_that_is_a_file(data, tmp_path):
    out = tmp_path / "records"
    out.mkdir()
    (out / "level1").write_text("in the way")
    assert_refused(make_records(f"--data_dir={data}", f"--output_dir={out}", "--level=1"),
                   f"--output_dir={out}", "level1")
    assert os.listdir(out) == ["level1"]


def test_data_dir_without_label_folder(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    refused(empty, tmp_path / "out", culprits=[f"--data_dir={empty}", "label/"])


def test_missing_data_dir(tmp_path):
    refused(tmp_path / "nowhere", tmp_path / "out",
            culprits=[f"--data_dir={tmp_path / 'nowhere'}", "no such folder"])


def test_test_split_without_test_folder(data, tmp_path):
    refused(os.path.join(data, "label"), tmp_path / "out", "--split=test",
            culprits=["--data_dir=", "test/"])


@pytest.mark.parametrize("flag", [
    "--max_side=0", "--max_side=abc", "--jpeg_quality=0", "--jpeg_quality=101",
    "--num_shards=-1", "--shard_size_mb=0", "--shard_size_mb=inf", "--val_fraction=1.5",
    "--val_fraction=-0.1", "--val_fraction=nan", "--repeat_threshold=-1",
    "--max_dominant_fraction=1.5", "--dominant_top_k=0", "--log_every=-5", "--shuffle_seed=-1",
    "--split=validation", "--strict=maybe", "--beam_log_level=LOUD",
])
def test_flag_out_of_range_or_of_the_wrong_type(data, tmp_path, flag):
    refused(data, tmp_path / "out", flag, culprits=[flag.split("=")[0] + "="])


def test_dominant_classes_unknown_or_without_their_fraction(data, tmp_path):
    refused(data, tmp_path / "out", "--dominant_classes=/m/0dog",
            culprits=["--dominant_classes=/m/0dog", "--max_dominant_fraction"])
    refused(data, tmp_path / "out", "--dominant_classes=/m/0nope",
            "--max_dominant_fraction=0.9", culprits=["--dominant_classes=/m/0nope",
                                                     "class table"])


def test_missing_required_flags(data, tmp_path):
    assert_refused(make_records(f"--output_dir={tmp_path / 'out'}"), "--data_dir")
    assert_refused(make_records(f"--data_dir={data}"), "--output_dir")
    assert not (tmp_path / "out").exists()


def test_flag_without_value(data, tmp_path):
    refused(data, tmp_path / "out", "--max_side", culprits=["--max_side", "no value"])


def test_misspelt_flag_is_refused_not_handed_to_beam(data, tmp_path):
    last = refused(data, tmp_path / "out", "--max_sid=3", culprits=["--max_sid=3"])
    assert "did you mean --max_side?" in last


def test_bad_beam_option(data, tmp_path):
    refused(data, tmp_path / "out", "--direct_num_workers=abc",
            culprits=["--direct_num_workers=abc", "invalid int value"])
    refused(data, tmp_path / "out", "--runner=NoSuchRunner", culprits=["--runner=NoSuchRunner"])


def test_stray_argument(data, tmp_path):
    refused(data, tmp_path / "out", "level1", culprits=["'level1'"])


def test_bad_annotation_row_with_strict(data, tmp_path):
    boxes = os.path.join(data, "label", "challenge-2019-train-detection-bbox.csv")
    last = refused(data, tmp_path / "out", "--strict", culprits=[f"{boxes}:15:", "XMax=1.3"])
    assert "drop --strict" in last and "--lenient" not in last


def test_stale_computed_levels_in_output_dir(tmp_path):
    bare = tmp_path / "data"
    fx.make_dataset(str(bare))
    os.remove(bare / "levels.json")
    out = tmp_path / "records"
    out.mkdir()
    fx.SPEC.save(str(out / "levels.json"))  # not the one level the job computes
    before = (out / "levels.json").read_text()
    assert_refused(make_records(f"--data_dir={bare}", f"--output_dir={out}"),
                   f"{out / 'levels.json'}", "--levels_spec")
    assert os.listdir(out) == ["levels.json"] and (out / "levels.json").read_text() == before


def test_help_lists_our_flags():
    result = make_records("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--beam_log_level" in result.stdout and "--levels_spec" in result.stdout
