"""tools/demo.py: the validation set it scores the merged submission on."""

import csv
import importlib.util
import io
import logging
import os

from oid import demo_data
from oid.progress import Progress
from oid.split import is_val
from tests import prewarmed

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


def _as_shown(text: str) -> list[str]:
    """The lines a terminal shows for `text`: a carriage return moves back to the line's start,
    where the following characters overwrite the old ones."""
    shown = []
    for line in text.split("\n"):
        cells: list[str] = []
        col = 0
        for ch in line:
            if ch == "\r":
                col = 0
                continue
            cells[col:col + 1] = [ch]
            col += 1
        shown.append("".join(cells).rstrip())
    return shown


def test_stage_output_sends_the_bar_to_the_terminal_and_every_other_line_to_the_log():
    demo = _demo_module()
    stage = io.StringIO()  # what a stage run with --progress=bar writes
    handler = logging.StreamHandler(stage)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    now = [0.0]
    try:
        stage.write("starting\n")
        with Progress(total=2, unit="steps", description="train", mode="bar", stream=stage,
                      min_interval=0, clock=lambda: now[0]) as bar:
            now[0] = 1
            bar.update(1)
            logging.getLogger("tests.demo").warning("epoch 1 done")  # erases the bar
            now[0] = 2
            bar.update(1)
        stage.write("finished\n")
    finally:
        logging.getLogger().removeHandler(handler)
    log, terminal = io.StringIO(), io.StringIO()
    split = demo.StageOutput(log, terminal)
    text = stage.getvalue()
    for i in range(0, len(text), 7):  # as the pipe hands it over, in pieces
        split.feed(text[i:i + 7])
    # 2 steps in 2 s: 1.0 steps/s.
    last = ("train: 100% [####################] 2/2 steps, 1.0 steps/s, 0:02 elapsed, "
            "ETA 0:00")
    assert log.getvalue() == f"starting\nWARNING epoch 1 done\n{last}\nfinished\n"
    assert _as_shown(terminal.getvalue()) == [last, ""]
    assert "train:  50% [##########..........] 1/2 steps" in terminal.getvalue()

    narrow = io.StringIO()
    split = demo.StageOutput(io.StringIO(), narrow, columns=21)
    split.feed(text)
    assert _as_shown(narrow.getvalue()) == [last[:20], ""]  # a line that never wraps
def test_records_commands_turn_boxes_to_ancestors_on_and_off(tmp_path):
    """The demo's records commands, run on a few images with and without the flag."""
    import json
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
        # The demo's repeat threshold, shown in the command (demo.REPEAT_THRESHOLD).
        assert levels_cmd[levels_cmd.index("--repeat_threshold") + 1] == "0.3"
        assert levels_cmd[-1] == "--num_shards=1" and "--split" in test_cmd
        done = prewarmed.run(levels_cmd + ["--direct_num_workers=1"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        with open(records / "level1" / "stats.json") as f:
            stats = json.load(f)
        added[on] = stats.get("boxes_to_ancestors")
        assert stats["repeat_factor"]["threshold"] == 0.3
        symbol_boxes = sum(s["boxes_per_class"].get(demo_data.SYMBOL, 0)
                           for s in stats["splits"].values())
        # Off: Symbol has no box. On: every Star box is a Symbol box (Cross keeps its own).
        assert (symbol_boxes > 0) == on
    assert added[False] is None
    assert added[True]["copied_to"] == {demo_data.STAR: demo_data.SYMBOL}
    assert sum(added[True]["added"].values()) == added[True]["added_per_class"][demo_data.SYMBOL]
