import functools
import io
import os
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from boxes.anchors import AnchorConfig, generate_anchors
from boxes.assign import LabelerConfig, add_image_targets, add_targets
from tfrecords import proto
from tfrecords.example import ImageAnnotation, build_example
from tfrecords.input_pipeline import InputConfig, build_dataset, preprocess_example


def make_record(image_id, w, h, boxes, classes, group_of=None, repeat_factor=1.0, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")  # lossless, so decoded pixels are known
    ann = ImageAnnotation(image_id=image_id, split="train", boxes=boxes, labels=classes,
                          mids=[f"/m/{c}" for c in classes],
                          group_of=group_of or [0] * len(classes),
                          occluded=[0] * len(classes), truncated=[0] * len(classes),
                          depiction=[0] * len(classes), repeat_factor=repeat_factor)
    # decode_jpeg reads PNG too, which keeps pixel checks exact.
    return build_example(ann, buf.getvalue(), h, w, h, w).SerializeToString(), pixels


def write(path, records):
    with open(path, "wb") as f:
        for r in records:
            proto.write_tfrecord(f, r)
    return str(path)


# 200 wide, 100 high; boxes normalized (ymin, xmin, ymax, xmax).
BOX = [0.1, 0.2, 0.5, 0.6]
RECORD, PIXELS = make_record("img0", 200, 100, [BOX, [0.0, 0.0, 1.0, 1.0]], [3, 1], [0, 1])
SMALL = dict(image_min_side=64, image_max_side=128, max_boxes=4)


def test_eval_resize_pad_and_image_info():
    config = InputConfig("unused", is_training=False, **SMALL)
    out = preprocess_example(tf.constant(RECORD), config)
    # scale = min(64 / 100, 128 / 200) = 0.64 -> 64 x 128; canvas 128 x 128.
    assert out["image"].shape == (128, 128, 3) and out["image"].dtype == tf.uint8
    np.testing.assert_allclose(out["image_info"].numpy(),
                               [[100, 200], [64, 128], [0.64, 0.64], [0, 0]], rtol=1e-6)
    # Box (0.1, 0.2, 0.5, 0.6) of 64 x 128 pixels -> (6.4, 25.6, 32, 76.8).
    np.testing.assert_allclose(out["boxes"].numpy()[0], [6.4, 25.6, 32.0, 76.8], rtol=1e-5)
    assert out["num_boxes"].numpy() == 2
    assert out["classes"].numpy().tolist() == [3, 1, -1, -1]
    assert out["group_of"].numpy().tolist() == [False, True, False, False]
    assert not out["boxes"].numpy()[2:].any()
    assert not out["image"].numpy()[64:].any()  # padding below the image is zero
    # Mapping back: (box + offset) / scale / decoded size = the normalized box.
    info = out["image_info"].numpy()
    back = (out["boxes"].numpy()[0] + np.tile(info[3], 2)) / np.tile(info[2], 2) \
        / np.tile(info[0], 2)
    np.testing.assert_allclose(back, BOX, rtol=1e-5)


def test_no_boxes_and_more_boxes_than_max():
    empty, _ = make_record("e", 50, 40, [], [])
    config = InputConfig("unused", is_training=False, **SMALL)
    out = preprocess_example(tf.constant(empty), config)
    assert out["num_boxes"].numpy() == 0 and out["classes"].numpy().tolist() == [-1] * 4
    many, _ = make_record("m", 50, 40, [[0.1, 0.1, 0.2, 0.2 + k / 100] for k in range(6)],
                          list(range(6)))
    out = preprocess_example(tf.constant(many), config)
    assert out["num_boxes"].numpy() == 4
    assert out["classes"].numpy().tolist() == [0, 1, 2, 3]


def test_boxes_past_max_boxes_are_counted_eagerly_and_in_tf_data(tmp_path, caplog):
    from tfrecords.input_pipeline import DROPPED_BOXES

    # "m6" has 6 boxes, "m5" 5, "ok" 4: with max_boxes 4, m6 loses 2 and m5 loses 1.
    def boxes(n):
        return [[0.1, 0.1, 0.2, 0.2 + k / 100] for k in range(n)]

    records = [make_record(i, 50, 40, boxes(n), list(range(n)))[0]
               for i, n in (("m6", 6), ("ok", 4), ("m5", 5))]
    config = InputConfig(write(tmp_path / "m.tfrecord", records), is_training=False,
                         global_batch_size=3, **SMALL)
    DROPPED_BOXES.reset()
    with caplog.at_level("WARNING", logger="tfrecords.input_pipeline"):
        out = preprocess_example(tf.constant(records[0]), config)  # eagerly
    assert out["num_boxes"].numpy() == 4
    assert DROPPED_BOXES.images == {"m6": (6, 2)}
    assert "image m6 has 6 boxes, more than max_boxes=4" in caplog.text
    assert "--max_boxes=6" in caplog.text

    DROPPED_BOXES.reset()
    for _ in range(2):  # two passes: each read counts, each image is named once
        batch = next(iter(build_dataset(config)))
        assert batch["num_boxes"].numpy().tolist() == [4, 4, 4]
    assert DROPPED_BOXES.images == {"m6": (6, 2), "m5": (5, 1)}
    assert (DROPPED_BOXES.times, DROPPED_BOXES.boxes) == (4, 6)  # 2 x (2 + 1)
    assert DROPPED_BOXES.summary() == (
        "boxes past max_boxes: 2 images lost boxes, 6 boxes in 4 reads: m6 (2 of 6), "
        "m5 (1 of 5); pass --max_boxes=6 to keep them all")
    DROPPED_BOXES.reset()
    assert DROPPED_BOXES.summary().endswith("none, every ground-truth box was trained")


def test_flip_maps_boxes_and_pixels():
    evaluated = preprocess_example(tf.constant(RECORD), InputConfig("u", is_training=False,
                                                                    **SMALL))
    config = InputConfig("u", is_training=True, flip=True, seed=3, **SMALL)
    seen = set()
    for i in range(12):
        out = preprocess_example(tf.constant(RECORD), config, i)
        box = out["boxes"].numpy()[0]
        if np.allclose(box, evaluated["boxes"].numpy()[0]):
            seen.add("kept")
            np.testing.assert_array_equal(out["image"].numpy(), evaluated["image"].numpy())
        else:
            seen.add("flipped")
            # Mirrored within the 128-wide image: x' = 128 - x.
            np.testing.assert_allclose(box, [6.4, 128 - 76.8, 32.0, 128 - 25.6], rtol=1e-5)
            np.testing.assert_array_equal(out["image"].numpy()[:64, :128],
                                          evaluated["image"].numpy()[:64, :128][:, ::-1])
    assert seen == {"kept", "flipped"}


def test_scale_jitter_crops_and_keeps_boxes_inside():
    config = InputConfig("u", is_training=True, flip=False, scale_jitter=(2.0, 2.0), seed=1,
                         **SMALL)
    for i in range(5):
        out = preprocess_example(tf.constant(RECORD), config, i)
        info = out["image_info"].numpy()
        np.testing.assert_allclose(info[1], [128, 256])  # 100 x 200 at scale 1.28
        assert 0 <= info[3][0] == 0 and 0 <= info[3][1] <= 128  # crop offset within the excess
        n = out["num_boxes"].numpy()
        boxes = out["boxes"].numpy()[:n]
        assert (boxes >= 0).all() and (boxes <= 128).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0.5).all()


def test_eager_and_tf_data_agree(tmp_path):
    records = [make_record(f"i{k}", 60 + 10 * k, 50, [[0.1, 0.1, 0.9, 0.5]], [k], seed=k)[0]
               for k in range(5)]
    path = write(tmp_path / "a.tfrecord", records)
    config = InputConfig(path, is_training=False, global_batch_size=2, **SMALL)
    batches = list(build_dataset(config))
    assert [b["image"].shape[0] for b in batches] == [2, 2, 1]  # eval keeps the remainder
    flat = {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}
    for i, r in enumerate(records):
        ref = preprocess_example(tf.constant(r), config, i)  # the slow eager reference
        for k, v in ref.items():
            np.testing.assert_array_equal(flat[k][i], v.numpy(), err_msg=k)


def test_seeded_training_is_deterministic(tmp_path):
    records = [make_record(f"i{k}", 64, 48, [[0.1, 0.1, 0.6, 0.5]], [k], seed=k)[0]
               for k in range(6)]
    path = write(tmp_path / "a.tfrecord", records)
    config = InputConfig(path, global_batch_size=2, seed=7, scale_jitter=(0.8, 1.2), **SMALL)

    def take(n):
        return [{k: v.numpy() for k, v in b.items()} for b in build_dataset(config).take(n)]

    first, second = take(5), take(5)
    for a, b in zip(first, second, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_labeling_in_pipeline_equals_labeling_in_train_step(tmp_path):
    records = [make_record(f"i{k}", 64, 48, [[0.1, 0.1, 0.6, 0.5], [0.5, 0.5, 0.9, 0.9]],
                           [k, 1], [0, 1], seed=k)[0] for k in range(4)]
    path = write(tmp_path / "a.tfrecord", records)
    config = InputConfig(path, global_batch_size=2, seed=3, **SMALL)
    anchor_config = AnchorConfig()
    anchors = tf.constant(generate_anchors(config.output_size, config.output_size,
                                           anchor_config))
    label_fn = functools.partial(add_image_targets, anchors=anchors, config=LabelerConfig(),
                                 variances=anchor_config.variances)
    for plain, with_targets in zip(build_dataset(config).take(3),
                                   build_dataset(config, label_fn=label_fn).take(3), strict=True):
        step = tf.function(add_targets, autograph=False)(plain, anchors, LabelerConfig(),
                                                         anchor_config.variances)
        assert with_targets["cls_targets"].shape == (2, anchors.shape[0])
        np.testing.assert_array_equal(step["cls_targets"].numpy(),
                                      with_targets["cls_targets"].numpy())
        # Graph rewrites may round the last bit of a float differently.
        np.testing.assert_allclose(step["box_targets"].numpy(),
                                   with_targets["box_targets"].numpy(), rtol=1e-6, atol=1e-6)
        assert (with_targets["cls_targets"].numpy() >= 0).any()


def test_repeat_factor_sampling(tmp_path):
    often, _ = make_record("often", 32, 32, [[0.1, 0.1, 0.5, 0.5]], [0], repeat_factor=3.0)
    once, _ = make_record("once", 32, 32, [[0.1, 0.1, 0.5, 0.5]], [1], repeat_factor=1.0)
    path = write(tmp_path / "a.tfrecord", [often, once])
    config = InputConfig(path, global_batch_size=1, seed=0, repeat_factor_sampling=True,
                         shuffle_buffer=1, image_min_side=32, image_max_side=32)
    ids = Counter(b["source_id"].numpy()[0] for b in build_dataset(config).take(400))
    assert ids == {b"often": 300, b"once": 100}  # exactly 3 copies per epoch


def test_fractional_repeat_factor(tmp_path):
    half, _ = make_record("half", 32, 32, [[0.1, 0.1, 0.5, 0.5]], [0], repeat_factor=1.5)
    once, _ = make_record("once", 32, 32, [[0.1, 0.1, 0.5, 0.5]], [1], repeat_factor=1.0)
    path = write(tmp_path / "a.tfrecord", [half, once])
    config = InputConfig(path, global_batch_size=1, seed=0, repeat_factor_sampling=True,
                         shuffle_buffer=1, image_min_side=32, image_max_side=32)
    ids = Counter(b["source_id"].numpy()[0] for b in build_dataset(config).take(1000))
    assert 1.3 < ids[b"half"] / ids[b"once"] < 1.7


def test_input_context_splits_files_between_pipelines(tmp_path):
    paths = []
    for f in range(2):
        recs = [make_record(f"f{f}i{k}", 32, 32, [], [], seed=k)[0] for k in range(3)]
        paths.append(write(tmp_path / f"s{f}.tfrecord", recs))
    pattern = str(tmp_path / "s*.tfrecord")
    config = InputConfig(pattern, is_training=False, global_batch_size=2, image_min_side=32,
                         image_max_side=32)
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                         num_replicas_in_sync=2)
        ids = [i for b in build_dataset(config, ctx) for i in b["source_id"].numpy()]
        seen.append(set(ids))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 6


def test_missing_files():
    with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
        build_dataset(InputConfig("/nonexistent/*.tfrecord"))


def test_cache(tmp_path):
    path = write(tmp_path / "a.tfrecord", [RECORD])
    config = InputConfig(path, is_training=False, cache=True, global_batch_size=1, **SMALL)
    ds = build_dataset(config)
    a = [b["image"].numpy() for b in ds]
    os.remove(path)  # the second pass reads the cache
    b = [b["image"].numpy() for b in ds]
    np.testing.assert_array_equal(a[0], b[0])


def test_inference_canvas_matches_the_eval_pipeline():
    from tfrecords.input_pipeline import inference_canvas

    config = InputConfig("unused", is_training=False, **SMALL)
    expected = preprocess_example(tf.constant(RECORD), config)
    canvas, info = inference_canvas(tf.constant(PIXELS), config)
    np.testing.assert_array_equal(canvas.numpy(), expected["image"].numpy())
    np.testing.assert_allclose(info.numpy(), expected["image_info"].numpy())
