import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfrecords import features as F
from tfrecords.decode import FEATURE_SPEC, decode_example
from tfrecords.example import ImageAnnotation, build_example


def _jpeg(w=40, h=30):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


ANN = ImageAnnotation(
    image_id="0001abc", split="train",
    boxes=[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]],
    labels=[3, 0], mids=["/m/dog", "/m/cat"], group_of=[0, 1], occluded=[1, -1],
    truncated=[0, 1], depiction=[0, 0],
    image_labels=[("/m/animal", -1, 1.0), ("/m/cat", 0, 1.0), ("/m/dog", 3, 0.0)],
    repeat_factor=2.5)


def _check(d, jpeg):
    assert d["source_id"].numpy() == b"0001abc"
    assert d["encoded"].numpy() == jpeg
    assert (d["height"].numpy(), d["width"].numpy()) == (30, 40)
    assert (d["original_height"].numpy(), d["original_width"].numpy()) == (300, 400)
    assert d["repeat_factor"].numpy() == pytest.approx(2.5)
    np.testing.assert_allclose(d["boxes"].numpy(), ANN.boxes, rtol=1e-6)
    assert d["classes"].numpy().tolist() == [3, 0]
    assert d["mids"].numpy().tolist() == [b"/m/dog", b"/m/cat"]
    assert d["group_of"].numpy().tolist() == [False, True]
    assert d["occluded"].numpy().tolist() == [1, -1]
    assert d["truncated"].numpy().tolist() == [0, 1]
    assert d["depiction"].numpy().tolist() == [0, 0]
    assert d["image_mids"].numpy().tolist() == [b"/m/animal", b"/m/cat", b"/m/dog"]
    assert d["image_classes"].numpy().tolist() == [-1, 0, 3]
    assert d["image_confidences"].numpy().tolist() == [1.0, 1.0, 0.0]
    assert d["image"].shape == (30, 40, 3) and d["image"].dtype == tf.uint8


def test_every_feature_round_trips_eagerly():
    jpeg = _jpeg()
    serialized = build_example(ANN, jpeg, 30, 40, 300, 400).SerializeToString()
    _check(decode_example(tf.constant(serialized)), jpeg)


def test_every_feature_round_trips_in_tf_data():
    jpeg = _jpeg()
    serialized = build_example(ANN, jpeg, 30, 40, 300, 400).SerializeToString()
    ds = tf.data.Dataset.from_tensors(serialized).map(decode_example)
    _check(next(iter(ds)), jpeg)


def test_no_boxes():
    empty = ImageAnnotation(image_id="x1", split="val")
    d = decode_example(tf.constant(build_example(empty, _jpeg(), 30, 40, 30, 40)
                                   .SerializeToString()))
    assert d["boxes"].shape == (0, 4) and d["classes"].shape == (0,)
    assert d["image_classes"].shape == (0,)


def test_feature_spec_covers_every_key():
    assert set(FEATURE_SPEC) == set(F.ALL_KEYS)
    example = build_example(ANN, _jpeg(), 30, 40, 300, 400)
    assert set(example.features.feature) == set(F.ALL_KEYS)


def test_annotation_json_round_trip():
    assert ImageAnnotation.from_json(ANN.to_json()) == ANN


def test_our_example_bytes_are_a_tf_train_example():
    jpeg = _jpeg()
    ours = build_example(ANN, jpeg, 30, 40, 300, 400)
    theirs = tf.train.Example.FromString(ours.SerializeToString())
    assert theirs.features.feature[F.SOURCE_ID].bytes_list.value == [b"0001abc"]
    assert list(theirs.features.feature[F.CLASS_LABEL].int64_list.value) == [3, 0]
    again = type(ours).FromString(theirs.SerializeToString())
    assert again == ours


def test_tfrecord_framing_matches_tensorflow(tmp_path):
    from tfrecords.proto import write_tfrecord

    records = [b"", b"x", b"hello world" * 1000]
    ours, theirs = tmp_path / "ours.tfrecord", tmp_path / "theirs.tfrecord"
    with open(ours, "wb") as f:
        for r in records:
            write_tfrecord(f, r)
    with tf.io.TFRecordWriter(str(theirs)) as w:
        for r in records:
            w.write(r)
    assert ours.read_bytes() == theirs.read_bytes()
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours))] == records
