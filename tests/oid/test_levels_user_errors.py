"""Mistakes a user makes with `python -m oid.levels`: each ends in one last stderr line
`error: <flag or file>: ...` and exit status 2, with no traceback and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from oid import demo_data
from oid.layout import DataLayout
from tests.refusals import assert_refused

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def levels_cmd(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oid.levels", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels") / "data"
    demo_data.write_dataset(str(root), seed=1, images=12, test_images=1, progress=False)
    return root


def refused(data_dir, tmp_path, *flags, culprits=()) -> str:
    """Runs the command writing to tmp_path/out/; asserts the refusal and that nothing was
    written there or into the data folder."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    before = sorted(os.listdir(data_dir)) if os.path.isdir(data_dir) else None
    last = assert_refused(levels_cmd("--data_dir", data_dir, "--out", out / "levels.json",
                                     "--plot", out / "levels.png", *flags), *culprits)
    assert os.listdir(out) == []
    if before is not None:
        assert sorted(os.listdir(data_dir)) == before
    return last


def test_missing_data_dir(tmp_path):
    refused(tmp_path / "nowhere", tmp_path, culprits=[f"--data_dir={tmp_path / 'nowhere'}",
                                                      "no such folder"])


def test_data_dir_without_label_files(tmp_path):
    (tmp_path / "data").mkdir()
    refused(tmp_path / "data", tmp_path, culprits=[f"--data_dir={tmp_path / 'data'}", "label/"])


@pytest.mark.parametrize("sizes", ["abc", "0", "-5", "10,1.5"])
def test_bad_level_sizes(data, tmp_path, sizes):
    refused(data, tmp_path, f"--level_sizes={sizes}", culprits=[f"--level_sizes={sizes}"])


@pytest.mark.parametrize("sizes", ["x", "0"])
def test_bad_parents_level_sizes(data, tmp_path, sizes):
    refused(data, tmp_path, f"--parents_level_sizes={sizes}",
            culprits=[f"--parents_level_sizes={sizes}"])


def test_unknown_hard_class(data, tmp_path):
    last = refused(data, tmp_path, "--hard_classes=/m/0zzz",
                   culprits=["--hard_classes=/m/0zzz", "/m/0zzz", "class table"])
    assert "classes-description" in last


def test_out_that_is_a_folder(data, tmp_path):
    folder = tmp_path / "somewhere"
    folder.mkdir()
    assert_refused(levels_cmd("--data_dir", data, "--out", folder), f"--out={folder}",
                   "directory")
    assert os.listdir(folder) == []


def test_out_in_a_missing_folder(data, tmp_path):
    target = tmp_path / "nowhere" / "levels.json"
    assert_refused(levels_cmd("--data_dir", data, "--out", target), f"--out={target}")
    assert not (tmp_path / "nowhere").exists()


def test_plot_over_the_out_file_or_an_input(data, tmp_path):
    same = tmp_path / "levels.json"
    assert_refused(levels_cmd("--data_dir", data, "--out", same, "--plot", same),
                   f"--plot={same}", "--out")
    boxes = DataLayout(str(data)).train_boxes
    size = os.path.getsize(boxes)
    assert_refused(levels_cmd("--data_dir", data, "--out", same, "--plot", boxes),
                   f"--plot={boxes}")
    assert os.path.getsize(boxes) == size and not same.exists()


def test_bad_box_row_names_file_and_line(tmp_path):
    root = tmp_path / "data"
    demo_data.write_dataset(str(root), seed=1, images=4, test_images=1, progress=False)
    boxes = DataLayout(str(root)).train_boxes
    with open(boxes, "a") as f:
        f.write("img,xclick,/m/0nope,1,0.1,0.2,0.1,0.2,0,0,0,0,0\n")
    lines = sum(1 for _ in open(boxes))
    refused(root, tmp_path, culprits=[f"{boxes}:{lines}:", "/m/0nope"])


def test_broken_hierarchy_with_parents_level(tmp_path):
    root = tmp_path / "data"
    demo_data.write_dataset(str(root), seed=1, images=4, test_images=1, progress=False)
    hierarchy = DataLayout(str(root)).hierarchy
    with open(hierarchy, "w") as f:
        f.write("{oops")
    refused(root, tmp_path, "--parents_level", culprits=[f"{hierarchy}:1:", "JSON"])


def test_unknown_flag(data, tmp_path):
    last = refused(data, tmp_path, "--sizes=5", culprits=["--sizes=5"])
    assert "unrecognized" in last
