"""Every command that README.md and docs/ show runs as written on the demo data.

The commands are read from the pages' fenced code blocks: each line (with its backslash
continuations) that starts with `python`, `make` or a path. A short demo run (tools/demo.py on
40 images, two training steps per level) lays out demo_out/ in a temporary folder first; then
each command runs from the checkout with its paths moved there:

    demo_out/           -> TMP/demo_out/
    DATA                -> the demo's data folder (with the demo's levels.json in it)
    RECORDS             -> TMP/records, written by the pages' own records commands
    runs/levelN         -> TMP/runs/levelN: level 1 trained by the pages' own train.py command,
                           level 2 a copy of the demo's
    DIR                 -> TMP/dir
    submission.csv[.gz] -> TMP/...

and with these flags appended, so that a training command is short: train.py gets
`--epochs=1 --steps_per_epoch=1 --noexport` and, for the full-size flagfiles
(r50/r101/r152.flags), a 128 px canvas, batch 1 and random backbone weights instead of
ImageNet's (no download here; `SHORT_TRAINING`, `FULL_SIZE_SHORT` below). Nothing else is
changed. A command that tools/demo.py itself ran on the tree, word for word, is not run again.
Commands that need what a test cannot have are listed in SKIP with the reason; a command in
no category fails the test, so a new page's commands are run or explicitly excused.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import sys

import pytest

from oid.machine import cpu_model
from tests import prewarmed
from tests.train_fixtures import ENV, REPO

pytestmark = [
    pytest.mark.slow,
    # The pages, the Makefile and the virtualenv the commands use are the checkout's; Bazel's
    # sandbox has none of them. `make test` runs this test.
    pytest.mark.skipif("TEST_SRCDIR" in os.environ, reason="needs the checkout, not runfiles"),
]

PAGES = [pathlib.Path(REPO) / "README.md", *sorted((pathlib.Path(REPO) / "docs").glob("*.md"))]
FULL_SIZE = ("r50.flags", "r101.flags", "r152.flags")
# No export either: every later command reads a run directory's checkpoint, and the pages'
# own `python -m engine.export` command exports one.
SHORT_TRAINING = ["--epochs=1", "--steps_per_epoch=1", "--noexport"]
# --backbone_weights= : the flagfiles start from ImageNet, which a test cannot download.
FULL_SIZE_SHORT = ["--global_batch_size=1", "--image_min_side=128", "--image_max_side=128",
                   "--backbone_weights="]
# (pattern in the command, why it is not run here)
SKIP = [
    ("make demo", "the whole demo: the fixture runs tools/demo.py, its script, on fewer images"),
    ("make test", "this test suite itself"),
    ("make bazel-test", "the same tests under Bazel (apt-get install of Bazel)"),
    ("TF_CONFIG=", "several hosts"),
    ("gs://", "cloud storage"),
    ("--runner=Dataflow", "a cloud runner"),
    ("benchmarks/", "benchmarks are measured by hand (docs/performance.md), not tested"),
    ("challenge-2019-validation", "the official validation files, not in the repository"),
    ("tools/fetch_weights.py", "downloads ImageNet weights: needs the internet"),
    ("tools/ablate.py --demo_out demo_out/ --out ablate_out --seeds 0,1,2",
     "the full ablation: hours of training; the quick ablate.py command beside it runs"),
]
STAGES = ["oid.demo_data", "oid.levels", "make_records.py", "train.py", "eval.py",
          "predict.py", "oid.combine", "oid.metric", "make lint"]


def documented_commands() -> list[tuple[str, str]]:
    """(page name, command) of every shell command in a fenced block of the pages."""
    found = []
    for page in PAGES:
        in_block = False
        pending = ""
        for line in page.read_text().splitlines():
            if line.strip().startswith("```"):
                in_block, pending = not in_block, ""
                continue
            if not in_block:
                continue
            text = pending + line.strip()
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            text = " ".join(text.split("  #")[0].split())  # no trailing comment or runs of spaces
            if re.match(r"(python3? |make |\./|[\w-]+/[\w./-]+\.py )", text):
                found.append((page.name, text))
    return found


def _stage(command: str) -> int:
    return next((i for i, s in enumerate(STAGES) if s in command), len(STAGES))


def command_key(argv: list[str]) -> tuple[str, ...]:
    """What makes two commands the same: their words, with `--flag value` read as
    `--flag=value` and the order of the flags ignored."""
    words, i = [], 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--") and "=" not in word and i + 1 < len(argv) and \
                not argv[i + 1].startswith("-"):
            word, i = f"{word}={argv[i + 1]}", i + 1
        words.append(word)
        i += 1
    return tuple(sorted(words))


def demo_commands(stdout: str) -> set[tuple[str, ...]]:
    """The commands tools/demo.py ran (it prints each as `$ command`), as command_key()s.
    Under tests/prewarmed.py its interpreter is the server's launcher: read as sys.executable."""
    launcher = prewarmed.launcher()
    return {command_key([sys.executable if w == launcher else w for w in shlex.split(line[2:])])
            for line in stdout.splitlines() if line.startswith("$ ")}


def _skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIP if pattern in command), None)


def adapt(command: str, tmp: pathlib.Path) -> list[str]:
    """The command as argv, its paths moved into `tmp` and optional parts dropped."""
    command = re.sub(r"\s\[[^\]]*\]", "", command)  # usage lines: "[--seed 0]" is optional
    demo = tmp / "demo_out"
    words = []
    for word in shlex.split(command):
        word = word.replace("demo_out/", f"{demo}/")
        word = re.sub(r"(?<![\w/])DATA(?=/|$)", str(demo / "data"), word)
        word = re.sub(r"(?<![\w/])RECORDS(?=/|$)", str(tmp / "records"), word)
        word = re.sub(r"(?<![\w/])DIR(?=/|$)", str(tmp / "dir"), word)
        word = re.sub(r"(?<![\w/.])runs/", f"{tmp}/runs/", word)
        word = re.sub(r"^(--\w+=|)(submission\.csv(\.gz)?|metrics\.json|levels\.(json|png))$",
                      lambda m: m[1] + str(tmp / m[2]), word)
        words.append(word)
    if words[0] in ("python", "python3"):
        words[0] = sys.executable
    if any(w.endswith("train.py") for w in words):
        words += SHORT_TRAINING
        if any(f in command for f in FULL_SIZE):
            words += FULL_SIZE_SHORT
    return words


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    result = prewarmed.run(
        [sys.executable, "tools/demo.py", "--out", str(tmp / "demo_out"), "--images", "40",
         "--visualize", "1", "--train_args", " ".join(SHORT_TRAINING)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    (tmp / "demo_stdout.txt").write_text(result.stdout)
    # The demo's figures name the CPU they ran on (checked here rather than in a test of its
    # own, which xdist could give the other worker, where this fixture would run again).
    summary = json.loads((tmp / "demo_out" / "summary.json").read_text())
    assert summary["cpu"] == cpu_model() and summary["cores"] == os.cpu_count()
    assert f"CPU {cpu_model()}, {os.cpu_count()} cores" in result.stdout
    shutil.copy(tmp / "demo_out" / "levels.json", tmp / "demo_out" / "data" / "levels.json")
    shutil.copytree(tmp / "demo_out" / "models" / "level2", tmp / "runs" / "level2")
    return tmp


def test_the_pages_show_the_flow():
    commands = " ".join(c for _, c in documented_commands())
    for stage in ("make_records.py", "train.py", "eval.py", "predict.py", "oid.metric"):
        assert stage in commands, stage


@pytest.mark.runs_first
def test_every_documented_command_runs_on_the_demo_data(demo_tree):
    commands = sorted({c for _, c in documented_commands()}, key=_stage)
    assert commands
    # A page's command that tools/demo.py ran on this very tree (the same words, as `make
    # demo` prints them) has run as written already: it is not run a second time.
    by_the_demo = demo_commands((demo_tree / "demo_stdout.txt").read_text())
    failures, ran = [], 0
    for command in commands:
        if _skip_reason(command):
            continue
        argv = adapt(command, demo_tree)
        if command_key(argv) in by_the_demo:
            ran += 1
            continue
        if argv[0] == "make":
            argv = ["make", "-s", *argv[1:]]
        result = prewarmed.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True,
                               timeout=900)
        ran += 1
        if result.returncode != 0:
            failures.append(f"{command}\n  -> {' '.join(argv)}\n  exit {result.returncode}: "
                            f"{result.stderr.strip().splitlines()[-1:] or result.stdout[-300:]}")
    assert not failures, "\n\n".join(failures)
    assert ran >= 8


def test_the_adaptation_moves_paths_and_shortens_training(tmp_path):
    argv = adapt("python train.py --flagfile=r101.flags --level 1 --records_dir RECORDS "
                 "--model_dir runs/level1", tmp_path)
    assert argv[:3] == [sys.executable, "train.py", "--flagfile=r101.flags"]
    assert argv[argv.index("--records_dir") + 1] == str(tmp_path / "records")
    assert argv[argv.index("--model_dir") + 1] == str(tmp_path / "runs" / "level1")
    assert argv[-7:] == SHORT_TRAINING + FULL_SIZE_SHORT
    argv = adapt("python -m oid.demo_data --out DIR [--seed 0] --images 5", tmp_path)
    assert argv[1:] == ["-m", "oid.demo_data", "--out", str(tmp_path / "dir"), "--images", "5"]


def test_a_command_the_demo_ran_is_recognised_in_either_flag_form(tmp_path):
    py = sys.executable
    stdout = (f"making the data ...\n$ {py} train.py --flagfile=demo.flags --level=1 "
              f"--records_dir={tmp_path}/demo_out/records --model_dir={tmp_path}/demo_out/models/"
              "level1 --epochs=1 --steps_per_epoch=1 --noexport\nlevel 1: mAP 0.0\n")
    ran = demo_commands(stdout)
    same = adapt("python train.py --flagfile=demo.flags --level 1 --records_dir "
                 "demo_out/records --model_dir demo_out/models/level1", tmp_path)
    assert command_key(same) in ran
    other = adapt("python train.py --flagfile=demo.flags --level 2 --records_dir "
                  "demo_out/records --model_dir demo_out/models/level1", tmp_path)
    assert command_key(other) not in ran
    # A boolean flag before another flag stays a word of its own.
    assert command_key(["p", "--flip_tta", "--output", "x"]) == ("--flip_tta", "--output=x", "p")
