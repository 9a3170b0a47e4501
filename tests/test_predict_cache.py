"""predict.py's detection cache end to end: kill -9 and resume to the same bytes, a changed
model's cache ignored, python -m oid.combine rebuilding predict.py's submission from the
cache, and the merged submission without a cap scoring no lower than a capped one."""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from oid.classes import load_classes
from oid.detection_cache import model_caches
from oid.hierarchy import load_hierarchy
from oid.layout import DataLayout
from oid.metric import evaluate_files
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

pytestmark = pytest.mark.slow
CHUNK = ["--cache_chunk_images=3", "--batch_size=1"]  # 11 images: chunks of 3, 3, 3, 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """images/: 10 PNGs with a red rectangle and broken.jpg (chunk 0 holds it: "broken"
    sorts first); records/level1/ for the level-1 ground truth; data/label/; random tiny
    models runs/level1, runs/level1b (an ensemble) and runs/level2."""
    root = tmp_path_factory.mktemp("cache_world")
    scenes = {f"img{i:02d}": red_scene(i, size=(20, 24)) for i in range(10)}
    write_level(root / "records" / "level1", LABELS, scenes)
    write_label_files(root / "data")
    write_model_dir(root / "runs" / "level1", spread_random_model(seed=0, bias=-4.5), LABELS, 1)
    write_model_dir(root / "runs" / "level1b", spread_random_model(seed=2, bias=-4.5), LABELS, 1)
    write_model_dir(root / "runs" / "level2", spread_random_model(seed=1, bias=-4.5),
                    LEVEL2_LABELS, 2)
    images = root / "images"
    images.mkdir()
    for image_id, (pixels, _) in scenes.items():
        save(images / f"{image_id}.png", pixels)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    return root


def _argv(world, runs, output, *extra):
    return [sys.executable, os.path.join(REPO, "predict.py"), f"--data_dir={world / 'data'}",
            f"--model=level1={runs / 'level1'}", f"--model=level1={runs / 'level1b'}",
            f"--model=level2={runs / 'level2'}", f"--images={world / 'images'}",
            f"--output={output}", "--score_threshold=0.3", "--strategy=one_device",
            "--log_every_seconds=0", *CHUNK, *extra]


def _predict(world, runs, output, *extra):
    out = prewarmed.run(_argv(world, runs, output, *extra), env=ENV, capture_output=True,
                        text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stderr


def _kill_when(world, runs, output, marker: str) -> str:
    """Runs predict.py and kill -9s it as soon as a stderr line contains `marker`."""
    process = subprocess.Popen(_argv(world, runs, output), env=ENV, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if marker in line:
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.wait(timeout=600)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "".join(seen)[-4000:]
    return "".join(seen)


def _combine(*args):
    out = prewarmed.run([sys.executable, "-m", "oid.combine", *args], env=ENV, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


def _chunks(cache) -> list[list[int]]:
    return [c.chunks() for c in model_caches(str(cache))]


@pytest.fixture(scope="module")
def one_go(world, tmp_path_factory):
    """The submission of an uninterrupted run, its cache and its log."""
    out = tmp_path_factory.mktemp("one_go") / "sub.csv.gz"
    log = _predict(world, world / "runs", out)
    return out, log


def test_a_killed_run_resumes_from_its_chunks_and_writes_the_same_bytes(world, one_go, tmp_path):
    reference, log = one_go
    assert "predict: 4 chunks, 4 to compute, 0 complete in the cache" in log
    cache = str(reference) + ".cache"
    assert _chunks(cache) == [[0, 1, 2, 3]] * 3

    output = tmp_path / "sub.csv.gz"
    # Killed just after chunk 2 of 4 is complete (at a chunk boundary).
    _kill_when(world, world / "runs", output, "predict: chunk 2/4")
    done = _chunks(str(output) + ".cache")
    assert all(c[:2] == [0, 1] and len(c) < 4 for c in done), done
    assert not output.exists()
    # Killed again, inside the first chunk that this run computes: after its first image.
    first = min(len(c) for c in done)
    log = _kill_when(world, world / "runs", output, f"predict chunk {first + 1}/4: 1/")
    assert f"{4 - first} to compute, {first} complete in the cache" in log
    assert not output.exists()
    # Run to the end: the same bytes as the uninterrupted run, gzip included.
    log = _predict(world, world / "runs", output)
    assert output.read_bytes() == reference.read_bytes()
    assert "read from the cache" in log
    assert not [p for p in os.listdir(str(output) + ".cache") if p.endswith(".partial")]


def test_the_offline_command_rebuilds_the_submission_from_the_cache(world, one_go, tmp_path):
    reference, _ = one_go
    rebuilt = tmp_path / "rebuilt.csv.gz"
    _combine(f"--cache={reference}.cache", f"--data_dir={world / 'data'}", f"--output={rebuilt}")
    assert rebuilt.read_bytes() == reference.read_bytes()


def test_a_changed_model_never_reuses_the_old_cache(world, one_go, tmp_path):
    reference, _ = one_go
    runs = tmp_path / "runs"
    shutil.copytree(world / "runs", runs)
    cache = tmp_path / "sub.csv.gz.cache"
    shutil.copytree(str(reference) + ".cache", cache)
    for folder in [p for p in cache.iterdir() if p.is_dir()]:
        meta = folder / "cache.json"  # the copied caches name the original run directories
        meta.write_text(meta.read_text().replace(str(world / "runs"), str(runs)))
    # Level 2 retrained (other weights) in the same directory.
    shutil.rmtree(runs / "level2")
    write_model_dir(runs / "level2", spread_random_model(seed=5, bias=-4.5), LEVEL2_LABELS, 2)
    output = tmp_path / "sub.csv.gz"
    log = _predict(world, runs, output)
    assert "ignoring the cache" in log and f"of {runs / 'level2'}:" in log
    assert "predict: 4 chunks, 4 to compute" in log  # level 2's chunks, level 1's reused
    folders = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert len(folders) == 4 and sum(n.startswith("level2-") for n in folders) == 2
    assert output.read_bytes() != reference.read_bytes()
    # The cache's predict.json names this run's folders: the offline command takes them,
    # not the old level-2 folder beside them.
    rebuilt = tmp_path / "rebuilt.csv.gz"
    _combine(f"--cache={cache}", f"--data_dir={world / 'data'}", f"--output={rebuilt}")
    assert rebuilt.read_bytes() == output.read_bytes()


def test_no_cap_scores_no_lower_than_a_capped_merge(world, one_go, tmp_path):
    reference, _ = one_go
    layout = DataLayout(str(world / "data"))
    classes, hierarchy = load_classes(layout.classes), load_hierarchy(layout.hierarchy)
    level = world / "records" / "level1"
    scores = {}
    for top_k in (0, 3):
        path = tmp_path / f"top{top_k}.csv"
        _combine(f"--cache={reference}.cache", f"--data_dir={world / 'data'}",
                 f"--top_k={top_k}", f"--output={path}")
        result, report, _ = evaluate_files(str(level / "val-bbox.csv"),
                                           str(level / "val-image-labels.csv"), classes,
                                           hierarchy, str(path))
        scores[top_k] = (result.mean_ap, report.detections)
    (uncapped, n_all), (capped, n_capped) = scores[0], scores[3]
    assert n_all > n_capped  # the cap cut detections
    assert uncapped >= capped, scores


def test_the_bar_counts_cached_and_inferred_images_to_the_same_bytes(world, one_go, tmp_path):
    """--progress=bar on a resumed run: chunks 0-2 (9 images) come from the cache, chunk 3
    (2 images) is inferred; the bar reaches 11/11 and the submission keeps its bytes."""
    reference, _ = one_go
    cache = tmp_path / "cache"
    shutil.copytree(str(reference) + ".cache", cache)
    for model in model_caches(str(cache)):
        os.remove(model.chunk_path(3))
    output = tmp_path / "sub.csv.gz"
    out = prewarmed.run(_argv(world, world / "runs", output, f"--cache_dir={cache}",
                              "--progress=bar"), env=ENV, capture_output=True, timeout=600)
    stderr = out.stderr.decode()
    assert out.returncode == 0, stderr[-4000:]
    assert output.read_bytes() == reference.read_bytes()
    frames = [f.split("\n")[0] for f in stderr.split("\r")[1:] if f.strip()]
    assert frames[0].startswith("predict:   0% [....................] 0/11 images")
    # The cached chunks advance the bar 3 images at a time (the bar redraws at most 4 times
    # a second, so not every count is drawn), the inferred chunk 1 at a time.
    # (A log record first erases the bar: the text after that carriage return is the record.)
    counts = [int(m.group(1)) for m in (re.match(r"predict: .*\] (\d+)/11 images", f)
                                        for f in frames) if m]
    assert counts == sorted(counts) and counts[-1] == 11
    assert not {1, 2, 4, 5, 7, 8} & set(counts)
    # The inference loop's periodic lines (--log_every_seconds=0: one per image) give way to
    # the bar; each chunk's line stays.
    assert not re.search(r"predict chunk 4/4: 1/2 images", stderr)
    assert "predict: chunk 4/4, 11/11 images" in stderr
