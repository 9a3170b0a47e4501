"""Mistakes a user makes with `python -m oid.metric` and `python -m oid.demo_data`.

Each runs the command in a subprocess on tiny files made here. A refused run exits with
status 2, its last stderr line is `error: <culprit>: <what is wrong>; <how to fix>`
naming the flag and value or the file (and line), nothing is printed as a result, no
traceback appears anywhere, and no output file is left.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import subprocess
import sys

import pytest

from tests import refusals

REPO = pathlib.Path(__file__).resolve().parents[2]

DOG, CAT, ANIMAL = "/m/0bt9lr", "/m/01yrx", "/m/0jbk"
BOX_HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,"
              "IsGroupOf,IsDepiction,IsInside")
GOOD_ROW = f"A,{DOG} 0.9 0.1 0.1 0.4 0.4 {ANIMAL} 0.8 0.1 0.1 0.4 0.4"


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def assert_refused(result: subprocess.CompletedProcess, *culprits: str) -> str:
    """tests.refusals.assert_refused, with nothing on stdout and a fix in the line."""
    return refusals.assert_refused(result, *culprits, quiet_stdout=True, with_fix=True)


def assert_ok(result: subprocess.CompletedProcess) -> dict:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    return json.loads(result.stdout)


# -- oid.metric ----------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path) -> dict[str, pathlib.Path]:
    """Ground truth of images A and B (a Dog box in each), a class list, a hierarchy
    (Animal above Dog and Cat) and a good submission; `output`, the --output path."""
    paths = {k: tmp_path / name for k, name in (
        ("boxes", "boxes.csv"), ("labels", "labels.csv"), ("classes", "classes.csv"),
        ("hierarchy", "hierarchy.json"), ("predictions", "predictions.csv"),
        ("output", "metrics.json"))}
    paths["boxes"].write_text(f"{BOX_HEADER}\nA,xclick,{DOG},1,0.1,0.4,0.1,0.4,0,0,0,0,0\n"
                              f"B,xclick,{DOG},1,0.2,0.5,0.2,0.5,0,0,0,0,0\n")
    paths["labels"].write_text(f"ImageID,Source,LabelName,Confidence\nA,verification,{DOG},1\n"
                               f"B,verification,{CAT},0\n")
    paths["classes"].write_text(f"{ANIMAL},Animal\n{DOG},Dog\n{CAT},Cat\n")
    paths["hierarchy"].write_text(json.dumps({"LabelName": "/m/0bl9f", "Subcategory": [
        {"LabelName": ANIMAL, "Subcategory": [{"LabelName": DOG}, {"LabelName": CAT}]}]}))
    write_predictions(paths["predictions"], [GOOD_ROW, f"B,{DOG} 0.7 0.2 0.2 0.5 0.5"])
    return paths


def write_predictions(path: pathlib.Path, rows: list[str]) -> None:
    path.write_text("ImageId,PredictionString\n" + "".join(r + "\n" for r in rows))


def metric(files: dict[str, pathlib.Path], *extra: str, **replace) -> subprocess.CompletedProcess:
    """The command on `files` with --output; `replace` swaps a flag's path (None: left out)."""
    paths = {**files, **replace}
    args = [a for k in ("boxes", "labels", "classes", "hierarchy", "predictions", "output")
            if paths[k] is not None for a in (f"--{k}", str(paths[k]))]
    return run("oid.metric", *args, *extra)


def truncate_gzip(path: pathlib.Path) -> pathlib.Path:
    packed = path.with_name(path.name + ".gz")
    data = gzip.compress(path.read_bytes())
    packed.write_bytes(data[:len(data) * 2 // 3])
    return packed


def test_truncated_gzip_predictions_names_the_file(files):
    write_predictions(files["predictions"], [GOOD_ROW] * 200)
    cut = truncate_gzip(files["predictions"])
    for extra in ((), ("--lenient",)):
        last = assert_refused(metric(files, *extra, predictions=cut), f"error: {cut}: ",
                              "truncated or not gzip", "cut short", "not even --lenient")
        assert not files["output"].exists(), last


@pytest.mark.parametrize("flag", ["boxes", "labels"])
def test_truncated_gzip_ground_truth_names_the_file(files, flag):
    # A gzipped ground-truth CSV is read like the plain one...
    plain = assert_ok(metric(files))
    packed = files[flag].with_name(files[flag].name + ".gz")
    packed.write_bytes(gzip.compress(files[flag].read_bytes()))
    assert assert_ok(metric(files, **{flag: packed}))["per_class"] == plain["per_class"]
    files["output"].unlink()
    # ... and a cut one names the file.
    with open(files[flag], "a") as f:
        f.writelines(f"C{k},verification,{DOG},1\n" if flag == "labels" else
                     f"C{k},xclick,{DOG},1,0.1,0.4,0.1,0.4,0,0,0,0,0\n" for k in range(300))
    cut = truncate_gzip(files[flag])
    assert_refused(metric(files, **{flag: cut}), f"error: {cut}: ", "truncated or not gzip")
    assert not files["output"].exists()


def test_plain_file_named_gz_is_not_gzip(files):
    fake = files["predictions"].with_name("predictions.csv.gz")
    fake.write_bytes(files["predictions"].read_bytes())
    last = assert_refused(metric(files, predictions=fake), str(fake), "truncated or not gzip",
                          "not gzip-compressed")
    assert "drop .gz" in last
    assert not files["output"].exists()


@pytest.mark.parametrize("flag", ["boxes", "labels", "classes", "hierarchy", "predictions"])
def test_missing_input_file_names_the_flag(files, flag):
    missing = files[flag].with_name("nowhere.csv")
    assert_refused(metric(files, **{flag: missing}), f"--{flag}={missing}", "no such file")
    assert not files["output"].exists()


@pytest.mark.parametrize("flag", ["boxes", "predictions", "classes"])
def test_directory_as_input_file_names_the_flag(files, flag, tmp_path):
    assert_refused(metric(files, **{flag: tmp_path}), f"--{flag}={tmp_path}", "is a directory")
    assert not files["output"].exists()


@pytest.mark.parametrize("score", ["1.5", "-0.1", "nan"])
def test_score_outside_unit_interval_is_a_malformed_row(files, score):
    write_predictions(files["predictions"], [GOOD_ROW, f"B,{DOG} {score} 0.2 0.2 0.5 0.5"])
    reason = "bad_number" if score == "nan" else "score_out_of_range"
    assert_refused(metric(files), f"{files['predictions']}:3: ImageId 'B', detection 1, {reason}")
    assert not files["output"].exists()
    out = assert_ok(metric(files, "--lenient"))
    assert out["submission"]["skipped_detections"] == {reason: 1}
    assert json.loads(files["output"].read_text()) == out


@pytest.mark.parametrize("box, detail", [("0.5 0.2 0.2 0.5", "XMin=0.5 > XMax=0.2"),
                                         ("0.2 0.5 0.5 0.2", "YMin=0.5 > YMax=0.2")])
def test_min_greater_than_max_is_a_malformed_row(files, box, detail):
    write_predictions(files["predictions"], [GOOD_ROW, f"B,{DOG} 0.7 0.3 0.3 0.6 0.6 "
                                                       f"{DOG} 0.6 {box}"])
    assert_refused(metric(files), f"{files['predictions']}:3: ImageId 'B', detection 2, "
                                  f"min_greater_than_max: {detail}", "XMin <= XMax")
    assert not files["output"].exists()
    result = metric(files, "--lenient")
    out = assert_ok(result)
    assert out["submission"]["skipped_detections"] == {"min_greater_than_max": 1}
    assert out["submission"]["detections"] == 3
    assert "1 detections (min_greater_than_max)" in result.stderr
    assert f"{files['predictions']}:3: min_greater_than_max: ImageId 'B', detection 2" \
        in result.stderr


def test_ground_truth_min_greater_than_max_is_an_error_too(files):
    with open(files["boxes"], "a") as f:
        f.write(f"C,xclick,{DOG},1,0.5,0.2,0.1,0.4,0,0,0,0,0\n")
    assert_refused(metric(files), f"{files['boxes']}:4: min_greater_than_max: XMin=0.5 > XMax=0.2")
    assert not files["output"].exists()


def test_ground_truth_images_without_a_row_are_counted_and_named(files):
    with open(files["boxes"], "a") as f:
        f.writelines(f"G{k},xclick,{DOG},1,0.1,0.4,0.1,0.4,0,0,0,0,0\n" for k in range(6))
    write_predictions(files["predictions"], [GOOD_ROW])
    result = metric(files)
    out = assert_ok(result)
    warning = next(line for line in result.stderr.splitlines() if "no row for" in line)
    assert warning.startswith("warning: the submission has no row for 7 of the 8 ground-truth "
                              "images (B, G0, G1, G2, G3, ...)"), warning
    assert out["submission"]["ground_truth_images_without_row"] == 7
    assert out["submission"]["rows_without_ground_truth"] == 0
    # A complete submission says nothing.
    write_predictions(files["predictions"], [GOOD_ROW, "B,"] + [f"G{k}," for k in range(6)])
    result = metric(files)
    assert assert_ok(result)["submission"]["ground_truth_images_without_row"] == 0
    assert "warning" not in result.stderr


def test_help_reads_right():
    result = run("oid.metric", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--expand, --no-expand" in text
    assert "--no-expand when the CSVs are expanded already (default: True)" in text
    assert "(default: None)" not in text


def test_missing_required_flag_and_hierarchy(files):
    assert_refused(run("oid.metric", "--boxes", files["boxes"]), "required", "--predictions")
    assert_refused(metric(files, hierarchy=None), "--hierarchy", "--no-expand")
    # --no-expand needs none, and says that a given one is not read.
    result = metric(files, "--no-expand")
    assert_ok(result)
    assert "warning: --hierarchy=" in result.stderr


def test_unreadable_class_table(files):
    files["classes"].write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    assert_refused(metric(files), f"{files['classes']}:1: not UTF-8 text")
    files["classes"].write_text("")
    assert_refused(metric(files), f"{files['classes']}: the class table is empty", "--classes")
    files["classes"].write_text("Dog\n")
    assert_refused(metric(files), f"{files['classes']}:1: expected 2 fields")
    assert not files["output"].exists()


def test_hierarchy_that_is_not_json(files):
    files["hierarchy"].write_text('{"LabelName": "/m/0bl9f",\n "Subcategory": [}\n')
    assert_refused(metric(files), f"{files['hierarchy']}:2: not valid JSON", "--hierarchy takes")
    files["hierarchy"].write_text("[1, 2]")
    assert_refused(metric(files), f"{files['hierarchy']}: the top node has no 'LabelName'",
                   "--hierarchy takes")
    files["hierarchy"].write_bytes(b"\xff\xfe{}")
    assert_refused(metric(files), f"{files['hierarchy']}:1: not UTF-8 text")
    assert not files["output"].exists()


def test_csv_with_a_missing_column(files, tmp_path):
    boxes = tmp_path / "short_boxes.csv"
    boxes.write_text(f"ImageID,LabelName,XMin,XMax,YMin\nA,{DOG},0.1,0.4,0.1\n")
    assert_refused(metric(files, boxes=boxes), f"{boxes}:1: missing column(s) YMax, IsGroupOf")
    files["predictions"].write_text(f"ImageId\nA {DOG} 0.9 0.1 0.1 0.4 0.4\n")
    assert_refused(metric(files),
                   f"{files['predictions']}:1: expected the header ImageId,PredictionString")
    assert not files["output"].exists()


def test_box_file_passed_as_labels(files):
    # It has every label column, so it used to pass and lose the verified-absent labels.
    assert_refused(metric(files, labels=files["boxes"]), f"{files['boxes']}:1: has box columns")


def test_empty_predictions_file(files):
    files["predictions"].write_text("")
    assert_refused(metric(files), f"{files['predictions']}: the file is empty", "header")
    files["predictions"].write_bytes(gzip.compress(b""))
    packed = files["predictions"].rename(files["predictions"].with_name("empty.csv.gz"))
    assert_refused(metric(files, predictions=packed), f"{packed}: the file is empty")
    assert not files["output"].exists()


def test_predictions_not_utf8(files):
    files["predictions"].write_bytes(b"ImageId,PredictionString\nA\xff,"
                                     + f"{DOG} 0.9 0.1 0.1 0.4 0.4\n".encode())
    assert_refused(metric(files), f"{files['predictions']}:2: not UTF-8 text")


def test_output_that_cannot_be_written(files, tmp_path):
    assert_refused(metric(files, output=tmp_path), f"--output={tmp_path}", "is a directory")
    nowhere = tmp_path / "no" / "metrics.json"
    assert_refused(metric(files, output=nowhere), f"--output={nowhere}", "does not exist")
    before = files["predictions"].read_bytes()
    assert_refused(metric(files, output=files["predictions"]),
                   f"--output={files['predictions']}", "is the --predictions file")
    assert files["predictions"].read_bytes() == before


def test_output_is_written_whole(files):
    out = assert_ok(metric(files))
    assert json.loads(files["output"].read_text()) == out
    assert not files["output"].with_name("metrics.json.partial").exists()


# -- oid.demo_data -------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--images=-5", "--images=0", "--images=abc",
                                  "--jpeg_quality=500", "--jpeg_quality=0", "--seed=-1",
                                  "--test_images=-1"])
def test_demo_data_refuses_bad_flags_and_writes_nothing(tmp_path, flag):
    out = tmp_path / "data"
    culprit = flag if not flag.endswith("abc") else "argument --images: invalid int value"
    assert_refused(run("oid.demo_data", f"--out={out}", "--images=3", flag), culprit)
    assert not out.exists()


def test_demo_data_out_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    assert_refused(run("oid.demo_data", f"--out={tmp_path / 'data'}", "--images=2"),
                   f"--out={tmp_path / 'data'}", "is a file")
    assert_refused(run("oid.demo_data", f"--out={tmp_path / 'data' / 'sub'}", "--images=2"),
                   f"--out={tmp_path / 'data' / 'sub'}", "is a file, not a folder")
    (tmp_path / "other" / "label").mkdir(parents=True)
    (tmp_path / "other" / "train").write_text("a file where a folder goes")
    assert_refused(run("oid.demo_data", f"--out={tmp_path / 'other'}", "--images=2"),
                   f"--out={tmp_path / 'other'}", "is a file where a folder goes")
    assert_refused(run("oid.demo_data", "--out=", "--images=2"), "--out=''", "empty")


def test_demo_data_refuses_a_folder_with_another_datasets_images(tmp_path):
    out = tmp_path / "data"
    result = run("oid.demo_data", f"--out={out}", "--images=3", "--test_images=1")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    listing = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert not any(p.name.endswith(".partial") for p in listing)
    # The same dataset again, or a larger one of the same seed, overwrites in place ...
    assert run("oid.demo_data", f"--out={out}", "--images=4", "--test_images=1").returncode == 0
    # ... but fewer images or another seed would leave images that no label file lists.
    for flag in ("--images=2", "--seed=5"):
        args = ["--images=4", "--test_images=1", flag]
        assert_refused(run("oid.demo_data", f"--out={out}", *args),
                       f"--out={out}", "does not write", "choose a new folder")
    assert len(list((out / "train").iterdir())) == 4
