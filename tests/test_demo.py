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


def test_records_commands_turn_boxes_to_ancestors_on_and_off(tmp_path):
    """The demo's records commands, run on a few images with and without the flag."""
    import json
    import subprocess
    import sys

    from oid.levels import Level, LevelSpec
    from tests.train_fixtures import ENV

    demo = _demo_module()
    data = tmp_path / "data"
    demo_data.write_dataset(str(data), seed=3, images=12, test_images=1, progress=False)
    spec = tmp_path / "levels.json"
    # Level 1 holds Symbol, a parent with no box of its own, and Cross, one of its children.
    LevelSpec((Level(1, "count", (demo_data.SYMBOL, demo_data.CROSS)),)).save(str(spec))
    added = {}
    for on in (False, True):
        records = tmp_path / f"records_{on}"
        levels_cmd, test_cmd = demo.records_commands(sys.executable, str(data), str(spec),
                                                     str(records), on, "--num_shards=1")
        assert f"--boxes_to_ancestors={str(on).lower()}" in levels_cmd
        assert levels_cmd[-1] == "--num_shards=1" and "--split" in test_cmd
        done = subprocess.run(levels_cmd + ["--direct_num_workers=1"], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        with open(records / "level1" / "stats.json") as f:
            stats = json.load(f)
        added[on] = stats.get("boxes_to_ancestors")
        symbol_boxes = sum(s["boxes_per_class"].get(demo_data.SYMBOL, 0)
                           for s in stats["splits"].values())
        # Off: Symbol has no box. On: every Star box is a Symbol box (Cross keeps its own).
        assert (symbol_boxes > 0) == on
    assert added[False] is None
    assert added[True]["copied_to"] == {demo_data.STAR: demo_data.SYMBOL}
    assert sum(added[True]["added"].values()) == added[True]["added_per_class"][demo_data.SYMBOL]
