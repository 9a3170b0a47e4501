"""The shared inference loop: every image once, bad images kept, flip TTA, sharding, and the
same detections for any batch size and replica count."""

import io
import json
import os
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from boxes.ops import flip_left_right
from engine.inference import (
    Inference,
    detector_from_model,
    flip_canvas,
    load_detector,
)
from model.config import PostprocessConfig
from tests import prewarmed
from tests.inference_fixtures import (
    LABELS,
    MAX_SIDE,
    MIN_SIDE,
    TINY,
    red_detector,
    red_image,
    save,
    spread_random_model,
    write_images,
)
from tfrecords import proto
from tfrecords.example import ImageAnnotation, build_example
from tfrecords.inference_input import (
    ImageFolderSource,
    RecordSource,
    build_inference_dataset,
    decode_image_ids,
    decode_image_or_blank,
)
from tfrecords.input_pipeline import InputConfig, inference_canvas

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
POST = PostprocessConfig(score_threshold=0.5, max_detections=100, pre_nms_top_k=1000)
CANVAS = InputConfig("", is_training=False, image_min_side=MIN_SIDE, image_max_side=MAX_SIDE)


def _run(detector, source, batch, flip_tta=False, strategy=None):
    inference = Inference(strategy or tf.distribute.get_strategy(), [detector], POST, flip_tta)
    return list(inference.run(source, batch)), inference.stats


def _iou(a, b):
    y0, x0 = np.maximum(a[:2], b[:2])
    y1, x1 = np.minimum(a[2:], b[2:])
    inter = max(y1 - y0, 0) * max(x1 - x0, 0)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_flip_left_right_mirrors_x_and_swaps_xmin_xmax():
    # (ymin, xmin, ymax, xmax) = (0.1, 0.2, 0.5, 0.6) in a mirrored image covers x in
    # [1 - 0.6, 1 - 0.2] = [0.4, 0.8] of the image.
    np.testing.assert_allclose(flip_left_right(tf.constant([[0.1, 0.2, 0.5, 0.6]])).numpy(),
                               [[0.1, 0.4, 0.5, 0.8]], rtol=1e-6)


def test_flip_canvas_is_the_canvas_of_the_mirrored_image():
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3)).astype(np.uint8)
    canvas, info = inference_canvas(tf.constant(image), CANVAS)
    mirrored, _ = inference_canvas(tf.constant(image[:, ::-1]), CANVAS)
    flipped = flip_canvas(canvas[None], info[None])[0].numpy()
    # 70 x 90 at scale min(96 / 70, 128 / 90) = 1.371 -> 96 x 123 pixels at the top left.
    assert info.numpy()[1].tolist() == [96, 123]
    diff = np.abs(flipped.astype(int) - mirrored.numpy().astype(int))
    assert diff.max() <= 1  # bilinear resizing commutes with mirroring up to rounding
    assert not flipped[:, 123:].any() and not flipped[96:].any()


def test_flip_tta_maps_the_mirrored_pass_back_onto_the_object(tmp_path):
    # A red rectangle on the left of a 128 x 96 image (scale 1 on the 128 canvas, whose
    # anchor grid is symmetric), and the same image mirrored.
    box = (20, 10, 60, 50)  # ymin, xmin, ymax, xmax pixels
    image = red_image(96, 128, box)
    paths = (save(tmp_path / "left.png", image), save(tmp_path / "right.png", image[:, ::-1]))
    detector = red_detector()
    plain = {r.image_id: r.detections[0] for r in _run(detector, ImageFolderSource(paths), 2)[0]}
    left, right = plain["left"], plain["right"]
    truth = np.array(box, np.float32) / [96, 128, 96, 128]
    assert _iou(left.boxes[0], truth) > 0.5
    # The mirrored image's best box, mapped back, is the original's best box.
    np.testing.assert_allclose(flip_left_right(right.boxes[:1]).numpy()[0], left.boxes[0],
                               atol=1e-6)
    # With TTA both passes find the rectangle; nothing is detected at its mirror image.
    tta = {r.image_id: r.detections[0] for r in _run(detector, ImageFolderSource(paths), 2,
                                                     flip_tta=True)[0]}
    mirror = np.array([truth[0], 1 - truth[3], truth[2], 1 - truth[1]])
    for name, where, elsewhere in (("left", truth, mirror), ("right", mirror, truth)):
        dets = tta[name]
        assert len(dets) >= 1 and _iou(dets.boxes[0], where) > 0.5
        assert all(_iou(b, elsewhere) < 0.1 for b in dets.boxes)
        # NMS merged the two passes' copies of the best box into one.
        assert sum(_iou(b, dets.boxes[0]) >= POST.nms_iou for b in dets.boxes) == 1


def test_every_image_once_with_a_partial_last_batch(tmp_path):
    paths = write_images(tmp_path, 7)
    for batch in (1, 3, 8):
        rows, stats = _run(red_detector(), ImageFolderSource(tuple(paths)), batch)
        assert [r.image_id for r in rows] == [f"im{i:02d}" for i in range(7)]
        assert stats.images == 7 and not stats.unreadable
        assert all(r.readable and len(r.detections[0]) > 0 for r in rows)


def _write_records(path, images: dict[str, np.ndarray]):
    with open(path, "wb") as f:
        for image_id, pixels in images.items():
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "PNG")  # decode_image reads PNG bytes too
            ann = ImageAnnotation(image_id, "val", [[0.1, 0.1, 0.5, 0.5]], [0], ["/m/red"],
                                  [0], [0], [0], [0])
            h, w = pixels.shape[:2]
            proto.write_tfrecord(f, build_example(ann, buf.getvalue(), h, w, h, w)
                                 .SerializeToString())
    return str(path)


def test_records_and_folder_give_the_same_rows(tmp_path):
    paths = write_images(tmp_path / "images", 5)
    images = {os.path.basename(p)[:-4]: np.asarray(Image.open(p)) for p in paths}
    records = _write_records(tmp_path / "val-00000-of-00001.tfrecord", images)
    from_folder = _run(red_detector(), ImageFolderSource(tuple(paths)), 2)[0]
    from_records = _run(red_detector(), RecordSource(records), 2)[0]
    assert [r.image_id for r in from_records] == [r.image_id for r in from_folder]
    for a, b in zip(from_folder, from_records, strict=True):
        np.testing.assert_array_equal(a.detections[0].boxes, b.detections[0].boxes)
        np.testing.assert_array_equal(a.detections[0].scores, b.detections[0].scores)


def test_unreadable_images_get_rows_without_detections(tmp_path):
    good = red_image(96, 128, (10, 10, 50, 60))
    jpeg = io.BytesIO()
    Image.fromarray(good).save(jpeg, "JPEG")
    save(tmp_path / "good.png", good)
    save(tmp_path / "png_named.jpg", good, "PNG")  # readable: the format is sniffed
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (tmp_path / "truncated.jpg").write_bytes(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
    (tmp_path / "notes.txt").write_text("not an image extension: not listed")
    source = ImageFolderSource.from_dir(str(tmp_path))
    assert source.image_ids == ["empty", "garbage", "good", "png_named", "truncated"]
    rows, stats = _run(red_detector(), source, 2)
    by_id = {r.image_id: r for r in rows}
    assert sorted(by_id) == source.image_ids
    assert sorted(stats.unreadable) == ["empty", "garbage", "truncated"]
    for name in stats.unreadable:
        assert not by_id[name].readable and len(by_id[name].detections[0]) == 0
    for name in ("good", "png_named"):
        assert by_id[name].readable and len(by_id[name].detections[0]) > 0


def test_two_files_with_one_image_id_are_refused(tmp_path):
    save(tmp_path / "a.jpg", red_image(8, 8, None), "JPEG")
    save(tmp_path / "a.png", red_image(8, 8, None))
    with pytest.raises(ValueError, match="both have the ImageID 'a'"):
        ImageFolderSource.from_dir(str(tmp_path))


@pytest.mark.parametrize("num_files", [1, 3])
def test_input_pipelines_split_the_images_between_them(tmp_path, num_files):
    images = {f"r{i}": red_image(20, 30, None, seed=i) for i in range(7)}
    items = list(images.items())
    for k in range(num_files):  # 1 file: records are split; 3 files: files are
        _write_records(tmp_path / f"val-{k:05d}-of-{num_files:05d}.tfrecord",
                       dict(items[k::num_files]))
    paths = [save(tmp_path / f"{name}.png", pixels) for name, pixels in items]
    for source in (RecordSource(str(tmp_path / "val-*.tfrecord")),
                   ImageFolderSource(tuple(paths))):
        seen = []
        for pipeline in range(2):
            context = tf.distribute.InputContext(num_input_pipelines=2,
                                                 input_pipeline_id=pipeline,
                                                 num_replicas_in_sync=2)
            for batch in build_inference_dataset(source, [CANVAS], 4, context):
                assert batch["real"].shape == (2,)  # 4 over 2 replicas
                ids = decode_image_ids(batch["image_id"].numpy())
                seen += [i for i, real in zip(ids, batch["real"].numpy(), strict=True) if real]
        assert sorted(seen) == sorted(images), source


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_does(orientation):
    from PIL import ImageOps

    blocks = np.random.default_rng(1).integers(0, 255, (3, 5, 3)).astype(np.uint8)
    image = Image.fromarray(np.kron(blocks, np.ones((8, 8, 1), np.uint8)))  # 24 x 40
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes(), quality=100, subsampling=0)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    got, readable = decode_image_or_blank(buf.getvalue(), "test")
    assert readable
    assert got.shape == expected.shape
    # Two JPEG decoders: equal up to rounding where blocks meet.
    assert np.abs(got.numpy().astype(int) - expected.astype(int)).mean() < 1


def test_check_labels_refuses_another_level_or_other_classes():
    detector = red_detector()
    detector.check_labels(list(LABELS), "labels.json", level=1)
    with pytest.raises(ValueError, match="trained for level 1, not level 2"):
        detector.check_labels(list(LABELS), "labels.json", level=2)
    other = [{"index": 0, "mid": "/m/red", "name": "red"}, {"index": 1, "mid": "/m/x", "name": "x"}]
    with pytest.raises(ValueError, match=r"red_detector was trained on 2 classes that do not "
                                         r"match the 2 of RECORDS/level1/labels.json \(MIDs only "
                                         r"on one side: /m/blue, /m/x\)"):
        detector.check_labels(other, "RECORDS/level1/labels.json")


@pytest.mark.slow
def test_same_detections_for_batch_1_and_8_and_two_replicas(tmp_path):
    """A random tiny RetinaNet (GroupNorm: nothing depends on the batch) over 10 images and
    an unreadable file, at batch 1 and 8 on one device and at batch 8 and 3 on two replicas:
    the same rows, classes and counts, and boxes and scores equal up to float32 rounding
    (convolution kernels split their work by batch size)."""
    write_images(tmp_path / "images", 10)
    (tmp_path / "images" / "broken.png").write_bytes(b"\x89PNG broken")
    script = textwrap.dedent(f"""
        import json
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from model.config import PostprocessConfig
        from engine.inference import Inference, detector_from_model
        from tests.inference_fixtures import (LABELS, MAX_SIDE, MIN_SIDE, TINY,
                                                spread_random_model)
        from tfrecords.inference_input import ImageFolderSource

        post = PostprocessConfig(score_threshold=0.5, max_detections=100, pre_nms_top_k=1000)
        source = ImageFolderSource.from_dir({str(tmp_path / "images")!r})
        results = {{}}
        for name, strategy, batches in [
                ("one", tf.distribute.OneDeviceStrategy("/cpu:0"), (1, 8)),
                ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), (8, 3))]:
            with strategy.scope():
                model = spread_random_model()
            detector = detector_from_model(model, TINY, MIN_SIDE, MAX_SIDE, LABELS)
            inference = Inference(strategy, [detector], post)
            for batch in batches:
                rows = list(inference.run(source, batch))
                results[f"{{name}}{{batch}}"] = {{
                    r.image_id: {{"readable": r.readable,
                                  "boxes": r.detections[0].boxes.tolist(),
                                  "scores": r.detections[0].scores.tolist(),
                                  "classes": r.detections[0].classes.tolist()}}
                    for r in rows}}
                assert len(rows) == len(results[f"{{name}}{{batch}}"]) == 11
        json.dump(results, open({str(tmp_path / "out.json")!r}, "w"))
    """)
    run = prewarmed.run([sys.executable, "-c", script], env=ENV, cwd=REPO,
                        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads((tmp_path / "out.json").read_text())
    reference = results.pop("one1")
    assert not reference["broken"]["readable"] and reference["broken"]["classes"] == []
    assert sum(len(r["classes"]) for r in reference.values()) > 100
    for name, rows in results.items():
        assert rows.keys() == reference.keys(), name
        for image_id, ref in reference.items():
            got = rows[image_id]
            assert got["readable"] == ref["readable"]
            assert got["classes"] == ref["classes"], (name, image_id)
            np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-5, err_msg=name)
            np.testing.assert_allclose(np.reshape(got["boxes"], (-1, 4)),
                                       np.reshape(ref["boxes"], (-1, 4)),
                                       atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_saved_model_gives_the_detections_of_its_keras_model(tmp_path):
    from engine.export import export_saved_model

    model = spread_random_model()
    export_saved_model(model, TINY, list(LABELS), CANVAS, str(tmp_path / "export"), level=1)
    loaded = load_detector(str(tmp_path / "export"))
    assert loaded.level == 1 and [e["mid"] for e in loaded.labels] == ["/m/red", "/m/blue"]
    assert (loaded.image_min_side, loaded.image_max_side) == (MIN_SIDE, MAX_SIDE)
    source = ImageFolderSource(tuple(write_images(tmp_path / "images", 3)))
    live = detector_from_model(model, TINY, MIN_SIDE, MAX_SIDE, LABELS)
    for a, b in zip(_run(live, source, 2)[0], _run(loaded, source, 2)[0], strict=True):
        assert a.image_id == b.image_id and len(a.detections[0]) > 0
        np.testing.assert_array_equal(a.detections[0].classes, b.detections[0].classes)
        np.testing.assert_allclose(a.detections[0].scores, b.detections[0].scores, atol=1e-6)
