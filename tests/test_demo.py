"""tools/demo.py: the validation set it scores the merged submission on."""

import csv
import importlib.util
import os

from oid import demo_data
from oid.split import is_val

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "tools", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ids(path):
    with open(path, newline="") as f:
        return {row["ImageID"] for row in csv.DictReader(f)}


def test_validation_set_is_the_records_val_split_of_every_class(tmp_path):
    demo = _demo_module()
    data = tmp_path / "data"
    demo_data.write_dataset(str(data), seed=3, images=40, test_images=2)
    images, boxes, labels = demo.write_validation_set(str(data), str(tmp_path / "val"))

    all_ids = {os.path.splitext(n)[0] for n in os.listdir(data / "train")}
    val_ids = {i for i in all_ids if is_val(i, demo.VAL_FRACTION)}
    assert 0 < images == len(val_ids) < len(all_ids)
    linked = {os.path.splitext(n)[0] for n in os.listdir(tmp_path / "val" / "images")}
    assert linked == val_ids
    assert all(os.path.exists(tmp_path / "val" / "images" / f"{i}.jpg") for i in val_ids)
    # Every class's boxes and labels of those images, and nothing of the others.
    source = data / "label" / "challenge-2019-train-detection-bbox.csv"
    with open(source, newline="") as f:
        expected = [r for r in csv.DictReader(f) if r["ImageID"] in val_ids]
    with open(boxes, newline="") as f:
        assert list(csv.DictReader(f)) == expected
    assert _ids(labels) <= val_ids and _ids(boxes) <= val_ids
    assert len({r["LabelName"] for r in expected}) > 1
