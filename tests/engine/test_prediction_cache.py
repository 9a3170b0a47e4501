"""predict.py's engine around the cache: the chunk plan, inference only on missing chunks, the
cache read back bit for bit, records chunked per file, and the model identity."""

import io
import logging
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from engine.prediction import (
    ChunkedPrediction,
    cache_meta,
    model_identity,
    open_caches,
    plan_chunks,
)
from model.config import PostprocessConfig
from oid.detection_cache import model_caches
from tests.inference_fixtures import (
    LABELS,
    red_detector,
    red_scene,
    spread_random_model,
    write_images,
    write_model_dir,
)
from tfrecords import proto
from tfrecords.example import ImageAnnotation, build_example
from tfrecords.inference_input import ImageFolderSource, RecordSource

POST = PostprocessConfig(score_threshold=0.5, max_detections=100, pre_nms_top_k=1000)
IDENTITY = {"run_dir": "red_detector", "checkpoint": "none", "digest": "red"}


def _predict(tmp_path, source, chunk_images=2):
    """(the plan, each planned chunk's missing detectors, [(chunk, per-detector Chunks)],
    the prediction) of one run of the red detector with its cache under tmp_path/cache."""
    detector = red_detector()
    meta = cache_meta(IDENTITY, detector, POST, flip_tta=False)
    caches = open_caches(str(tmp_path / "cache"), [meta], chief=True)
    prediction = ChunkedPrediction(tf.distribute.get_strategy(), [detector], POST, False, caches,
                                   chief=True)
    plan = plan_chunks(source, chunk_images)
    missing = prediction.missing(plan)
    return plan, missing, list(prediction.run(plan, missing, batch_size=2)), prediction


def _same(a, b):
    assert [d.image_id for d in a.images] == [d.image_id for d in b.images]
    assert a.unreadable == b.unreadable
    for x, y in zip(a.images, b.images, strict=True):
        assert x.boxes.tobytes() == y.boxes.tobytes() and x.scores.tobytes() == y.scores.tobytes()
        assert x.mids.tolist() == y.mids.tolist()


def test_a_second_run_reads_every_chunk_and_a_lost_chunk_is_computed_again(tmp_path, caplog):
    paths = write_images(tmp_path / "images", 5)
    (tmp_path / "images" / "zz.png").write_bytes(b"not a PNG")  # unreadable, in chunk 2
    source = ImageFolderSource.from_dir(str(tmp_path / "images"))
    plan, missing, first, prediction = _predict(tmp_path, source)
    # 6 images in chunks of 2: [im00, im01], [im02, im03], [im04, zz].
    assert [c.image_ids for c in plan] == [("im00", "im01"), ("im02", "im03"), ("im04", "zz")]
    assert missing == [(0,), (0,), (0,)] and prediction.images_inferred == 6
    assert prediction.unreadable == ["zz"]
    assert all(len(d) for _, (chunk,) in first[:2] for d in chunk.images)  # red rectangles
    assert len(paths) == 5

    _, missing, second, prediction = _predict(tmp_path, source)
    assert missing == [(), (), ()] and prediction.images_inferred == 0
    for (_, (a,)), (_, (b,)) in zip(first, second, strict=True):
        _same(a, b)

    (cache,) = model_caches(str(tmp_path / "cache"))
    os.remove(cache.chunk_path(1))
    with caplog.at_level(logging.INFO):
        _, missing, third, prediction = _predict(tmp_path, source)
    assert missing == [(), (0,), ()] and prediction.images_inferred == 2
    _same(third[1][1][0], first[1][1][0])
    assert "predict: 3 chunks, 1 to compute, 2 complete in the cache" in caplog.text

    # Another chunk size: the old chunks hold other images and are computed again.
    with caplog.at_level(logging.INFO):
        _, missing, _, _ = _predict(tmp_path, source, chunk_images=3)
    assert missing == [(0,), (0,)]
    assert "holds other images than chunk 0 of this run" in caplog.text


def _write_records(path, ids):
    with open(path, "wb") as f:
        for image_id in ids:
            pixels = red_scene(int(image_id[-1]))[0]
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "PNG")
            ann = ImageAnnotation(image_id, "test", [], [], [], [], [], [], [])
            h, w = pixels.shape[:2]
            proto.write_tfrecord(f, build_example(ann, buf.getvalue(), h, w, h, w)
                                 .SerializeToString())
    return str(path)


def test_records_are_chunked_per_file_with_sorted_image_ids(tmp_path):
    a = _write_records(tmp_path / "test-00000-of-00002.tfrecord", ["img3", "img1"])
    b = _write_records(tmp_path / "test-00001-of-00002.tfrecord", ["img2"])
    plan, missing, out, _ = _predict(tmp_path, RecordSource(str(tmp_path / "test-*.tfrecord")))
    assert [(c.image_ids, c.label) for c in plan] == [
        (None, os.path.basename(a)), (None, os.path.basename(b))]
    assert [chunk.image_ids for _, (chunk,) in out] == [["img1", "img3"], ["img2"]]
    _, missing, again, _ = _predict(tmp_path, RecordSource(str(tmp_path / "test-*.tfrecord")))
    assert missing == [(), ()]
    _same(again[0][1][0], out[0][1][0])


def test_the_identity_names_the_checkpoint_and_changes_with_the_weights(tmp_path):
    run = tmp_path / "run"
    write_model_dir(run, spread_random_model(seed=0), LABELS, 1)
    first = model_identity(str(run))
    assert first["checkpoint"].endswith("ckpt-1") and first["run_dir"] == str(run)
    assert model_identity(str(run)) == first
    write_model_dir(run, spread_random_model(seed=1), LABELS, 1)  # retrained in place
    assert model_identity(str(run))["digest"] != first["digest"]
    detector = red_detector()
    key = cache_meta(first, detector, POST, False)["key"]
    assert cache_meta(first, detector, POST, True)["key"] != key  # flip TTA
    assert cache_meta(first, detector, PostprocessConfig(score_threshold=0.3), False)["key"] \
        != key
    assert np.array_equal(cache_meta(first, detector, POST, False)["mids"], ["/m/red", "/m/blue"])
