"""The detection cache: chunks written whole and read back bit for bit, with their images."""

import json
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from oid.detection_cache import (
    Chunk,
    ModelCache,
    cache_key,
    model_caches,
    remove_partials,
    stale_caches,
    write_run,
)
from oid.errors import InputFileError
from oid.submission import ImageDetections

META = {"key": cache_key({"digest": "abc", "level": 1}), "run_dir": "runs/level1",
        "level": 1, "checkpoint": "runs/level1/checkpoints/ckpt-3", "mids": ["/m/a", "/m/b"],
        "settings": {"score_threshold": 0.05}}


def _chunk():
    """a: two detections (an odd float32 score kept exactly); b: none; c: unreadable."""
    a = ImageDetections("a", [[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 1.0, 1.0]],
                        np.array([0.9, np.float32(1 / 3)], np.float32), ["/m/a", "/m/b"])
    return Chunk((a, ImageDetections.empty("b"), ImageDetections.empty("c")), frozenset({"c"}))


def test_a_chunk_round_trips_exactly_with_its_empty_and_unreadable_images(tmp_path):
    cache = ModelCache.create(str(tmp_path), META)
    assert cache.name == f"level1-{META['key'][:12]}"
    path = cache.write(0, _chunk(), source="test-00000.tfrecord")
    assert path.endswith("chunk-000000.parquet") and cache.chunks() == [0]
    back = cache.read(0)
    assert back.image_ids == ["a", "b", "c"] and back.unreadable == {"c"}
    a = back.images[0]
    assert a.boxes.dtype == np.float32 and a.scores.tobytes() == _chunk().images[0].scores.tobytes()
    np.testing.assert_array_equal(a.boxes, _chunk().images[0].boxes)
    assert a.mids.tolist() == ["/m/a", "/m/b"] and len(back.images[1]) == 0
    # What a user sees with pandas and pyarrow: one row per detection, the model in the
    # metadata, every image (the ones without detections too) in the image list.
    frame = pd.read_parquet(path)
    assert frame["image_id"].tolist() == ["a", "a"] and frame["mid"].tolist() == ["/m/a", "/m/b"]
    meta = json.loads(pq.read_schema(path).metadata[b"oid_detection_cache"])
    assert meta["run_dir"] == "runs/level1" and meta["level"] == 1
    assert meta["checkpoint"].endswith("ckpt-3") and meta["key"] == META["key"]
    assert meta["image_ids"] == ["a", "b", "c"] and meta["unreadable"] == ["c"]
    assert meta["source"] == "test-00000.tfrecord"


def test_a_chunk_without_any_detection(tmp_path):
    cache = ModelCache.create(str(tmp_path), META)
    cache.write(3, Chunk((ImageDetections.empty("x"),)))
    assert cache.read(3).image_ids == ["x"] and len(cache.read(3).images[0]) == 0


def test_a_partial_file_is_not_a_chunk_and_is_removed(tmp_path):
    cache = ModelCache.create(str(tmp_path), META)
    cache.write(0, _chunk())
    (tmp_path / cache.name / "chunk-000001.parquet.partial").write_bytes(b"PAR1 cut short")
    assert cache.chunks() == [0]
    assert remove_partials(cache) == 1
    assert sorted(p.name for p in (tmp_path / cache.name).iterdir()) == \
        ["cache.json", "chunk-000000.parquet"]


def test_is_valid_checks_images_source_and_key(tmp_path, caplog):
    cache = ModelCache.create(str(tmp_path), META)
    cache.write(0, _chunk(), source="f0")
    assert cache.is_valid(0, ["a", "b", "c"], "f0")
    assert cache.is_valid(0, None, None)
    assert not cache.is_valid(1, None)  # missing: no message
    with caplog.at_level(logging.INFO):
        assert not cache.is_valid(0, ["a", "b"])
        assert not cache.is_valid(0, None, "f1")
    assert "holds other images than chunk 0" in caplog.text
    assert "it was read from f0, chunk 0 is now f1" in caplog.text
    other = ModelCache(cache.path, {**META, "key": "0" * 64})
    assert not other.is_valid(0, None)
    with pytest.raises(InputFileError, match="written for the cache key"):
        other.read(0)


def test_a_corrupt_chunk_is_ignored_with_a_warning_and_refused_when_read(tmp_path, caplog):
    cache = ModelCache.create(str(tmp_path), META)
    (tmp_path / cache.name / "chunk-000000.parquet").write_bytes(b"not parquet")
    with caplog.at_level(logging.WARNING):
        assert not cache.is_valid(0, None)
    assert "cannot be read as Parquet" in caplog.text
    with pytest.raises(InputFileError, match="chunk-000000.parquet: cannot be read as Parquet"):
        cache.read(0)


def test_model_caches_and_stale_caches(tmp_path):
    level1 = ModelCache.create(str(tmp_path), META)
    new_key = cache_key({"digest": "def", "level": 1})
    ModelCache.create(str(tmp_path), {**META, "key": new_key, "checkpoint": "ckpt-4"})
    level2 = ModelCache.create(str(tmp_path), {**META, "key": cache_key({"level": 2}),
                                               "level": 2, "run_dir": "runs/level2"})
    assert sorted(c.name for c in model_caches(str(tmp_path))) == sorted(
        p.name for p in tmp_path.iterdir())
    assert [c.name for c in model_caches(level2.path)] == [level2.name]
    assert [c.name for c in stale_caches(str(tmp_path), "runs/level1", new_key)] == [level1.name]
    # Once a run recorded its folders, the cache means those (the stale level-1 one is left).
    write_run(str(tmp_path), [level2, level1])
    assert [c.name for c in model_caches(str(tmp_path))] == [level2.name, level1.name]
    with pytest.raises(InputFileError, match="no such folder"):
        model_caches(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="holds no model folder"):
        model_caches(str(tmp_path / "empty"))


def test_the_key_depends_on_every_entry():
    base = {"digest": "abc", "level": 1, "settings": {"score_threshold": 0.05}}
    assert cache_key(base) == cache_key(dict(reversed(base.items())))
    assert cache_key(base) != cache_key({**base, "digest": "abd"})
    assert cache_key(base) != cache_key({**base, "settings": {"score_threshold": 0.1}})
