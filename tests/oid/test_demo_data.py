import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from oid import demo_data
from oid.annotations import read_boxes, read_image_labels
from oid.classes import load_classes
from oid.hierarchy import load_hierarchy
from oid.layout import DataLayout

IMAGES = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    demo_data.write_dataset(str(out), seed=7, images=IMAGES, test_images=5, progress=False)
    return DataLayout(str(out))


@pytest.fixture(scope="module")
def tables(dataset):
    classes = load_classes(dataset.classes)
    boxes, box_report = read_boxes(dataset.train_boxes, classes)
    labels, label_report = read_image_labels(dataset.train_labels, classes)
    return classes, boxes, box_report, labels, label_report


def test_round_trips_through_the_readers_without_warnings(tables):
    _, boxes, box_report, labels, label_report = tables
    assert box_report.num_skipped == 0 and label_report.num_skipped == 0
    assert box_report.rows == len(boxes) > IMAGES


def test_hierarchy_shape(dataset):
    h = load_hierarchy(dataset.hierarchy)
    classes = load_classes(dataset.classes)
    assert h.classes == set(classes.mids) and len(classes) == 13
    assert max(h.depth(c) for c in h.classes) == 3
    assert h.parents(demo_data.STAR) == {demo_data.POLYGON, demo_data.SYMBOL}
    assert h.parts(demo_data.SMILEY) == {demo_data.EYE}
    assert h.ancestors(demo_data.EYE) == frozenset()


def test_every_image_exists_and_has_the_right_size(dataset, tables):
    _, boxes, *_ = tables
    ids = set(boxes["ImageID"].astype(str))
    assert len(os.listdir(dataset.image_dir("train"))) == IMAGES
    for iid in list(ids)[:20]:
        with Image.open(dataset.image_path("train", iid)) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 256 <= max(im.size) <= 320 and min(im.size) >= 150


def test_annotation_variety(tables):
    classes, boxes, _, labels, _ = tables
    assert boxes["IsGroupOf"].sum() > 0
    assert boxes["IsOccluded"].sum() > 0
    assert boxes["IsTruncated"].sum() > 0
    # A non-leaf label given directly, as annotators do.
    assert (boxes["LabelName"] == demo_data.POLYGON).any()
    assert set(labels["Confidence"].unique()) == {0.0, 1.0}
    widths = (boxes["XMax"] - boxes["XMin"]).to_numpy()
    assert widths.min() < 0.1 and widths.max() > 0.3  # small and large objects


def test_group_of_boxes_hold_several_objects(tables):
    _, boxes, *_ = tables
    group = boxes[boxes["IsGroupOf"] == 1]
    assert set(group["LabelName"].astype(str)) <= set(demo_data.GROUP_CLASSES)


def test_labels_agree_with_boxes(dataset, tables):
    _, boxes, _, labels, _ = tables
    h = load_hierarchy(dataset.hierarchy)
    boxed = boxes.groupby("ImageID", observed=True)["LabelName"].apply(lambda s: set(s.astype(str)))
    for row in labels.itertuples():
        present = boxed.get(row.ImageID, set())
        if row.Confidence == 1:
            assert row.LabelName in present
        else:  # verified absent: neither it nor anything below it is boxed
            assert row.LabelName not in present
            assert not (h.descendants(row.LabelName) & present)


def test_test_split_has_images_without_labels(dataset, tables):
    _, boxes, *_ = tables
    test_ids = {f[:-4] for f in os.listdir(dataset.image_dir("test"))}
    assert len(test_ids) == 5
    assert not test_ids & set(boxes["ImageID"].astype(str))


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(f.encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_deterministic_for_a_seed(tmp_path):
    for name in ("a", "b"):
        demo_data.write_dataset(str(tmp_path / name), seed=1, images=8, test_images=1,
                                progress=False)
    demo_data.write_dataset(str(tmp_path / "c"), seed=2, images=8, test_images=1, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_objects_are_drawn_where_the_boxes_are():
    # Solid shapes are filled with one colour, the background is noisy: the
    # centre of an unoccluded circle or square box is flat, the image is not.
    checked = 0
    for index in range(12):
        iid, img, boxes = demo_data.render_image(seed=0, split="train", index=index)
        assert iid == demo_data.image_id(0, "train", index) and len(iid) == 16
        arr = np.asarray(img, np.float32)
        assert arr.std() > 20
        for b in boxes:
            if b.mid not in (demo_data.CIRCLE, demo_data.SQUARE) or b.occluded or b.group_of:
                continue
            cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
            r = 0.15 * (b.x1 - b.x0)
            if r < 2 or not (0 <= cx - r and cx + r < img.width and 0 <= cy - r
                             and cy + r < img.height):
                continue
            patch = arr[int(cy - r):int(cy + r), int(cx - r):int(cx + r)]
            assert patch.std(axis=(0, 1)).max() < 1.0, (iid, b)
            checked += 1
    assert checked >= 5


def test_command(tmp_path, capsys):
    assert demo_data.main(["--out", str(tmp_path), "--images", "4", "--test_images", "1"]) == 0
    assert "4 train images, 1 test images" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, flag", [({"images": -5}, "--images=-5"),
                                          ({"quality": 500}, "--jpeg_quality=500"),
                                          ({"seed": -1}, "--seed=-1"),
                                          ({"test_images": -1}, "--test_images=-1"),
                                          ({"images": 2.5}, "--images=2.5")])
def test_write_dataset_refuses_bad_arguments_before_writing(tmp_path, kwargs, flag):
    from oid.errors import UsageError

    with pytest.raises(UsageError, match=f"^{flag}: must be"):
        demo_data.write_dataset(str(tmp_path / "out"), progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_command_refuses_bad_flags(tmp_path, capsys):
    assert demo_data.main(["--out", str(tmp_path / "d"), "--images=-5"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: --images=-5: must be")
    assert not (tmp_path / "d").exists()
