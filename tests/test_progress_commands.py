"""--progress of train.py and eval.py: a bar when asked (or at a terminal), silence with none,
and the log lines otherwise (tests/test_train.py and test_eval_predict.py check those)."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from tests import prewarmed
from tests.inference_fixtures import (
    LABELS,
    red_scene,
    spread_random_model,
    write_label_files,
    write_level,
    write_model_dir,
)
from tests.train_fixtures import ENV, REPO, make_records, train_cmd

pytestmark = pytest.mark.slow


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    """The command's output as str with its carriage returns kept (text=True would turn
    them into newlines)."""
    out = prewarmed.run(cmd, env=ENV, cwd=REPO, capture_output=True, timeout=600)
    return subprocess.CompletedProcess(cmd, out.returncode, out.stdout.decode(),
                                       out.stderr.decode())


def _frames(stderr: str) -> list[str]:
    """The bar's frames: every text that follows a carriage return."""
    return [f.split("\n")[0] for f in stderr.split("\r")[1:] if f.strip()]


def test_train_bar_replaces_the_step_lines(tmp_path):
    records, model_dir = str(tmp_path / "records"), str(tmp_path / "run")
    make_records(os.path.join(records, "level1"), n=4)
    out = _run(train_cmd(records, model_dir, "--epochs=1", "--steps_per_epoch=3", "--noexport",
                         "--progress=bar"))
    assert out.returncode == 0, out.stderr[-3000:]
    frames = _frames(out.stderr)
    assert frames[0].startswith("train:   0% [....................] 0/3 steps, 0.0 steps/s, ")
    assert re.fullmatch(r"train: 100% \[#{20}\] 3/3 steps, [\d.]+ steps/s, \d+:\d\d elapsed, "
                        r"ETA 0:00, epoch 1/1, loss [\d.e+-]+, images/s [\d.,e+-]+", frames[-1])
    assert frames[-1] + "\n" in out.stderr  # the last frame ends its line
    # --log_every_steps=1 (TINY_FLAGS) would log every step; the bar replaces those lines,
    # and the epoch's summary line stays.
    assert " INFO step " not in out.stderr
    assert re.search(r"INFO epoch 1 done in \d+ s", out.stderr)


@pytest.fixture(scope="module")
def level(tmp_path_factory):
    root = tmp_path_factory.mktemp("level")
    write_level(root / "records" / "level1", LABELS,
                {f"img{i}": red_scene(i, size=(20, 24)) for i in range(5)})
    write_label_files(root / "data")
    write_model_dir(root / "run", spread_random_model(seed=0, bias=-4.5), LABELS, 1)
    return root


def test_eval_bar_counts_the_images_none_prints_no_progress_and_log_lines(level, tmp_path):
    # One process runs eval.py's main once per mode (one TensorFlow start-up, not three).
    script = textwrap.dedent(f"""
        import sys
        from absl import flags
        import eval as ev
        from engine import cli
        for mode in ("bar", "none", "log"):
            print("=== " + mode, file=sys.stderr, flush=True)
            flags.FLAGS.unparse_flags()
            cli.parse_flags(["eval.py", "--records_dir={level / 'records'}",
                             "--data_dir={level / 'data'}", "--model_dir={level / 'run'}",
                             "--output_dir={tmp_path}/" + mode, "--strategy=one_device",
                             "--batch_size=2", "--log_every_seconds=0", "--progress=" + mode])
            ev.main([])
    """)
    out = _run([sys.executable, "-c", script])
    assert out.returncode == 0, out.stderr[-3000:]
    runs = dict(re.findall(r"=== (\w+)\n(.*?)(?=\n=== |\Z)", out.stderr, re.S))
    periodic = r"eval: \d/5 images \(\d+%\), [\d.]+ images/s, ETA \d+ s"

    frames = _frames(runs["bar"])
    assert frames[0].startswith("eval:   0% [....................] 0/5 images, ")
    assert re.fullmatch(r"eval: 100% \[#{20}\] 5/5 images, [\d.]+ images/s, \d+:\d\d elapsed, "
                        r"ETA 0:00", frames[-1])
    # The inference loop's lines every --log_every_seconds are replaced; its summary stays.
    assert not re.search(periodic, runs["bar"])
    assert "eval: 5/5 images (100%)" in runs["bar"]

    assert "\r" not in runs["none"] and not re.search(periodic, runs["none"])
    assert "eval: 5/5 images (100%)" in runs["none"]  # the summary line

    # Batches of 2: lines at 2, 4 and 5 images, then the summary.
    assert "\r" not in runs["log"]
    assert [m.split(",")[0] for m in re.findall(periodic, runs["log"])] == \
        ["eval: 2/5 images (40%)", "eval: 4/5 images (80%)", "eval: 5/5 images (100%)"]
    # The same figures whatever the mode.
    metrics = [json.loads((tmp_path / mode / "metrics.json").read_text()) for mode in runs]
    assert all((m["mAP"], m["per_class"]) == (metrics[0]["mAP"], metrics[0]["per_class"])
               for m in metrics)
