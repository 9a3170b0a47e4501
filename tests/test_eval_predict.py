"""eval.py and predict.py end to end on a tiny level made in code and random tiny models."""

import json
import os
import sys
import textwrap

import numpy as np
import pytest

from oid.levels import Level, LevelSpec
from tests import prewarmed
from tests.inference_fixtures import (
    LABELS,
    LEVEL2_LABELS,
    red_scene,
    save,
    spread_random_model,
    write_label_files,
    write_level,
    write_model_dir,
)
from tests.train_fixtures import ENV, REPO


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """records/level{1,2}/ (6 val images, a red rectangle each), the same images and a
    broken file in images/, data/label/ (red, blue and green under shape), levels.json and
    random tiny models: runs/level1 and runs/level1b (an ensemble) and runs/level2."""
    root = tmp_path_factory.mktemp("world")
    # Small rectangles: most of a random model's boxes are P3's (16 to 25 pixels), and
    # some of them overlap these by IoU >= 0.5, so that the mAP is not 0.
    scenes = {f"img{i}": red_scene(i, size=(20, 24)) for i in range(6)}
    write_level(root / "records" / "level1", LABELS, scenes)
    write_level(root / "records" / "level2", LEVEL2_LABELS,
                {i: (pixels, []) for i, (pixels, _) in scenes.items()})
    write_label_files(root / "data")
    write_model_dir(root / "runs" / "level1", spread_random_model(seed=0, bias=-4.5), LABELS, 1)
    write_model_dir(root / "runs" / "level1b", spread_random_model(seed=2, bias=-4.5), LABELS, 1)
    write_model_dir(root / "runs" / "level2", spread_random_model(seed=1, bias=-4.5),
                    LEVEL2_LABELS, 2)
    LevelSpec((Level(1, "count", tuple(e["mid"] for e in LABELS)),
               Level(2, "count", tuple(e["mid"] for e in LEVEL2_LABELS)))).save(
        str(root / "levels.json"))
    images = root / "images"
    images.mkdir()
    for image_id, (pixels, _) in scenes.items():
        save(images / f"{image_id}.png", pixels)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    return root


def _score_with_oid_metric(world, predictions) -> dict:
    """`python -m oid.metric` on the level-1 val ground truth; its JSON."""
    from oid.layout import DataLayout

    layout = DataLayout(str(world / "data"))
    level = world / "records" / "level1"
    scored = prewarmed.run(
        [sys.executable, "-m", "oid.metric", f"--boxes={level / 'val-bbox.csv'}",
         f"--labels={level / 'val-image-labels.csv'}", f"--classes={layout.classes}",
         f"--hierarchy={layout.hierarchy}", f"--predictions={predictions}"],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    return json.loads(scored.stdout)


def _eval_args(world, *extra):
    return ["--flagfile=" + os.path.join(REPO, "base.flags"),  # training flags are ignored
            f"--records_dir={world / 'records'}", f"--data_dir={world / 'data'}",
            "--score_threshold=0.5", "--log_every_seconds=0", *extra]


@pytest.mark.slow
def test_eval_gives_the_same_metrics_at_batch_1_and_8_and_on_two_replicas(world, tmp_path):
    runs = {"batch1": ["--batch_size=1", "--strategy=one_device"],
            "batch8": ["--batch_size=8", "--strategy=one_device"],
            "two_replicas": ["--batch_size=8", "--strategy=mirrored"]}
    # One process with two logical CPUs runs eval.py's main three times.
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from absl import flags
        import eval as ev
        from engine import cli
        for name, extra in {runs!r}.items():
            flags.FLAGS.unparse_flags()
            cli.parse_flags(["eval.py", *{_eval_args(world)!r}, "--level=1",
                            "--model_dir={world / 'runs' / 'level1'}",
                            "--output_dir={tmp_path}/" + name,
                            "--predictions_csv={tmp_path}/" + name + ".csv.gz", *extra])
            ev.main([])
    """)
    out = prewarmed.run([sys.executable, "-c", script], env=ENV, cwd=REPO, capture_output=True,
                        text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in runs}
    assert metrics["two_replicas"]["replicas"] == 2 and metrics["batch1"]["replicas"] == 1
    reference = metrics["batch1"]
    assert reference["images"] == 6 and reference["per_class"]["/m/red"]["num_gt"] == 6
    assert reference["mAP"] > 0  # the random model hits some red squares at IoU >= 0.5
    for name, m in metrics.items():
        assert m["mAP"] == reference["mAP"], name
        assert m["per_class"] == reference["per_class"], name
    assert "eval: 6/6 images (100%)" in out.stderr and "images/s" in out.stderr

    # The predictions score the same with `python -m oid.metric` (full class table: its mAP
    # also averages the expanded parent, so compare the level's classes).
    per_class = _score_with_oid_metric(world, tmp_path / "batch8.csv.gz")["per_class"]
    for mid in ("/m/red", "/m/blue"):
        assert per_class[mid]["num_gt"] == reference["per_class"][mid]["num_gt"]
        if reference["per_class"][mid]["ap"] is None:
            assert per_class[mid]["ap"] is None
        else:  # the CSV rounds scores to 6 digits and coordinates to 6 decimals
            assert per_class[mid]["ap"] == pytest.approx(reference["per_class"][mid]["ap"],
                                                         abs=1e-6)
    csv_rows = (tmp_path / "batch1" / "per_class.csv").read_text().splitlines()
    assert csv_rows[0] == "mid,name,ap,num_gt" and len(csv_rows) == 3  # red and blue


@pytest.mark.slow
def test_eval_refuses_a_model_of_another_level(world, tmp_path):
    out = prewarmed.run([sys.executable, os.path.join(REPO, "eval.py"), *_eval_args(world),
                         "--level=1", f"--model_dir={world / 'runs' / 'level2'}",
                         f"--output_dir={tmp_path}", "--strategy=one_device"],
                        env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert f"error: {world / 'runs' / 'level2'} was trained for level 2, not level 1" in out.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_eval_refuses_an_unknown_flag_on_the_command_line(tmp_path):
    out = prewarmed.run([sys.executable, os.path.join(REPO, "eval.py"), "--records_dir=x",
                         "--model_dir=y", "--batchsize=4"],
                        env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "error: unknown flag '--batchsize=4'" in out.stderr


def _predict(world, *extra):
    return prewarmed.run([sys.executable, os.path.join(REPO, "predict.py"),
                          f"--data_dir={world / 'data'}", "--score_threshold=0.5",
                          "--strategy=one_device", "--log_every_seconds=0", *extra],
                         env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_predict_writes_every_image_with_levels_merged_and_ancestors(world, tmp_path):
    from oid.classes import load_classes
    from oid.layout import DataLayout
    from oid.metric import read_submission
    from oid.submission import read_submission_rows

    output = tmp_path / "submission.csv.gz"
    out = _predict(world, f"--model=level1={world / 'runs' / 'level1'}",
                   f"--model=level1={world / 'runs' / 'level1b'}",
                   f"--model=level2={world / 'runs' / 'level2'}", f"--images={world / 'images'}",
                   f"--levels_spec={world / 'levels.json'}", f"--output={output}", "--flip_tta",
                   "--top_k=1000", "--visualize=2", "--visualize_threshold=0.5")
    assert out.returncode == 0, out.stderr[-4000:]
    rows = {d.image_id: d for d in read_submission_rows(str(output))}
    assert sorted(rows) == ["broken"] + [f"img{i}" for i in range(6)]
    assert len(rows["broken"]) == 0  # unreadable: reported, and an empty row
    assert f"unreadable image {world / 'images' / 'broken.jpg'}" in out.stderr
    assert "1 unreadable images got rows without detections: broken" in out.stderr
    for image_id, dets in rows.items():
        if image_id == "broken":
            continue
        mids = set(dets.mids.tolist())
        assert {"/m/red", "/m/green", "/m/shape"} <= mids, image_id  # both levels' classes
        # Every leaf box has a shape copy with the same coordinates (written with 6
        # decimals) and at least its score.
        shapes = dets.take(dets.mids == "/m/shape")
        for k in np.flatnonzero(dets.mids != "/m/shape"):
            same = np.abs(shapes.boxes - dets.boxes[k]).max(axis=1) < 1e-6
            assert same.any() and shapes.scores[same].max() >= dets.scores[k], (image_id, k)
    assert sorted(os.listdir(tmp_path / "visualize")) == ["img0.png", "img1.png"]

    # It parses back and scores with the challenge metric.
    submission, report = read_submission(
        str(output), load_classes(DataLayout(str(world / "data")).classes))
    assert len(set(submission.image_ids)) == 7 and not report.skipped
    assert _score_with_oid_metric(world, output)["per_class"]["/m/shape"]["num_gt"] == 6


@pytest.mark.slow
def test_predict_from_records(world, tmp_path):
    output = tmp_path / "out" / "submission.csv"
    out = _predict(world, f"--model=level1={world / 'runs' / 'level1'}", "--noexpand",
                   f"--records={world / 'records' / 'level1' / 'val-*.tfrecord'}",
                   f"--output={output}", "--visualize=1", "--batch_size=4")
    assert out.returncode == 0, out.stderr[-4000:]
    lines = output.read_text().splitlines()
    assert lines[0] == "ImageId,PredictionString" and len(lines) == 7
    assert "/m/shape" not in output.read_text()  # --noexpand
    assert os.listdir(tmp_path / "out" / "visualize") == ["img0.png"]


def test_predict_refuses_a_model_under_another_level_key(world, tmp_path):
    out = _predict(world, f"--model=level2={world / 'runs' / 'level1'}",
                   f"--images={world / 'images'}", f"--output={tmp_path / 's.csv'}")
    assert out.returncode != 0
    assert (f"error: --model level2={world / 'runs' / 'level1'}: {world / 'runs' / 'level1'} "
            "was trained for level 1, not level 2") in out.stderr
    assert not (tmp_path / "s.csv").exists()

