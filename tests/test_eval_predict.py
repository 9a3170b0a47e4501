"""eval.py and predict.py end to end on a tiny level made in code and random tiny models."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.model.inference_util import (
    LABELS,
    LEVEL2_LABELS,
    red_scene,
    spread_random_model,
    write_label_files,
    write_level,
    write_model_dir,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """records/level{1,2}/ (6 val images, a red rectangle each), data/label/ (red, blue and
    green under shape) and a random tiny model per level (runs/level{1,2})."""
    root = tmp_path_factory.mktemp("world")
    # Small rectangles: most of a random model's boxes are P3's (16 to 25 pixels), and
    # some of them overlap these by IoU >= 0.5, so that the mAP is not 0.
    scenes = {f"img{i}": red_scene(i, size=(20, 24)) for i in range(6)}
    write_level(root / "records" / "level1", LABELS, scenes)
    write_level(root / "records" / "level2", LEVEL2_LABELS,
                {i: (pixels, []) for i, (pixels, _) in scenes.items()})
    write_label_files(root / "data")
    write_model_dir(root / "runs" / "level1", spread_random_model(seed=0, bias=-4.5), LABELS, 1)
    write_model_dir(root / "runs" / "level2", spread_random_model(seed=1, bias=-4.5), LEVEL2_LABELS, 2)
    return root


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
        for name, extra in {runs!r}.items():
            flags.FLAGS.unparse_flags()
            ev.parse_flags(["eval.py", *{_eval_args(world)!r}, "--level=1",
                            "--model_dir={world / 'runs' / 'level1'}",
                            "--output_dir={tmp_path}/" + name,
                            "--predictions_csv={tmp_path}/" + name + ".csv.gz", *extra])
            ev.main([])
    """)
    out = subprocess.run([sys.executable, "-c", script], env=ENV, cwd=REPO, capture_output=True,
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
    from oid.layout import DataLayout

    layout = DataLayout(str(world / "data"))
    level = world / "records" / "level1"
    scored = subprocess.run(
        [sys.executable, "-m", "oid.metric", f"--boxes={level / 'val-bbox.csv'}",
         f"--labels={level / 'val-image-labels.csv'}", f"--classes={layout.classes}",
         f"--hierarchy={layout.hierarchy}", f"--predictions={tmp_path / 'batch8.csv.gz'}"],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-3000:]
    per_class = json.loads(scored.stdout)["per_class"]
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
    out = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), *_eval_args(world),
                          "--level=1", f"--model_dir={world / 'runs' / 'level2'}",
                          f"--output_dir={tmp_path}", "--strategy=one_device"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert f"error: {world / 'runs' / 'level2'} was trained for level 2, not level 1" in out.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_eval_refuses_an_unknown_flag_on_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), "--records_dir=x",
                          "--model_dir=y", "--batchsize=4"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "Unknown command line flag '--batchsize=4'" in out.stderr
