"""Levels: the classes split into groups, one detector trained per group.

Open Images is long-tailed: a few classes have hundreds of thousands of boxes,
hundreds have a few hundred. Like the original system, classes are ranked by
training box count and cut into consecutive groups ("levels") of configurable
sizes, so each detector sees classes of comparable frequency. Two optional
levels are taken out of that ranking first:
  * a hand-listed "hard" level (classes a user wants trained on their own);
  * a "parents" level of every class that has Subcategory children (e.g.
    Animal, Vehicle), whose boxes are the most specific label an annotator
    gave and which a submission otherwise gets only by copying child boxes up.

The result is a small JSON level spec that every later stage reads, so the
Beam job, training, evaluation and prediction agree on which class is index
k of level N:

    {"version": 1, "levels": [{"index": 1, "name": "level1", "kind": "count",
                               "classes": [MID, ...]}, ...]}

A class's level-local index is its position in `classes` (0-based).

    python -m oid.levels --data_dir D [--level_sizes 100,150] [--out levels.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from oid import fileio
from oid.annotations import read_boxes
from oid.classes import ClassTable, load_classes
from oid.hierarchy import load_hierarchy
from oid.layout import DataLayout

SPEC_VERSION = 1
KINDS = ("count", "hard", "parents")


@dataclasses.dataclass(frozen=True)
class Level:
    """One level.

    Attributes:
      index: 1-based level number, as in `--level N`.
      name: "level{index}".
      kind: "count" (a cut of the box-count ranking), "hard" or "parents".
      classes: MIDs; a class's level-local index is its position here.
    """

    index: int
    kind: str
    classes: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"level{self.index}"

    def class_index(self) -> dict[str, int]:
        return {mid: i for i, mid in enumerate(self.classes)}


@dataclasses.dataclass(frozen=True)
class LevelSpec:
    levels: tuple[Level, ...]

    def __post_init__(self):
        seen: dict[str, int] = {}
        for level in self.levels:
            if level.kind not in KINDS:
                raise ValueError(f"level {level.index}: kind {level.kind!r} not in {KINDS}")
            for mid in level.classes:
                if mid in seen:
                    raise ValueError(f"class {mid} is in level {seen[mid]} and level {level.index}")
                seen[mid] = level.index
        if [lv.index for lv in self.levels] != list(range(1, len(self.levels) + 1)):
            raise ValueError("levels must be numbered 1, 2, ... in order")

    def level(self, index: int) -> Level:
        if not 1 <= index <= len(self.levels):
            raise ValueError(f"no level {index}: the spec has levels 1..{len(self.levels)}")
        return self.levels[index - 1]

    def level_of(self, mid: str) -> int:
        for level in self.levels:
            if mid in level.classes:
                return level.index
        raise KeyError(f"class {mid} is in no level")

    def to_json(self) -> dict:
        return {"version": SPEC_VERSION, "levels": [
            {"index": lv.index, "name": lv.name, "kind": lv.kind, "classes": list(lv.classes)}
            for lv in self.levels]}

    @classmethod
    def from_json(cls, obj: Mapping) -> LevelSpec:
        if obj.get("version") != SPEC_VERSION:
            raise ValueError(f"level spec version {obj.get('version')!r}, expected {SPEC_VERSION}")
        return cls(tuple(Level(int(d["index"]), d["kind"], tuple(d["classes"]))
                         for d in obj["levels"]))

    def save(self, path: str) -> None:
        with fileio.open_file(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str) -> LevelSpec:
        return cls.from_json(json.loads(fileio.read_text(path)))


def rank_classes(box_counts: Mapping[str, int], all_classes: Sequence[str] = ()) -> list[str]:
    """MIDs by box count, most first; ties by MID. Classes without boxes come last."""
    counts = {mid: 0 for mid in all_classes}
    counts.update({m: int(n) for m, n in box_counts.items()})
    return sorted(counts, key=lambda m: (-counts[m], m))


def make_levels(
    box_counts: Mapping[str, int],
    level_sizes: Sequence[int],
    *,
    all_classes: Sequence[str] = (),
    hard_classes: Sequence[str] = (),
    parent_classes: Sequence[str] = (),
) -> LevelSpec:
    """Splits classes into levels.

    Args:
      box_counts: MID -> number of training boxes.
      level_sizes: sizes of the first count levels, in ranking order; the
        classes left over form one more count level. (100, 150) on 500 classes
        gives levels of 100, 150 and 250 classes.
      all_classes: classes to place even if they have no boxes (they rank last).
      hard_classes: taken out of the ranking into a "hard" level.
      parent_classes: taken out of the ranking into a "parents" level (pass
        the classes that have Subcategory children to get one).

    Returns:
      LevelSpec: count levels first, then hard, then parents (empty ones omitted).
    """
    if any(s <= 0 for s in level_sizes):
        raise ValueError(f"level sizes must be positive, got {list(level_sizes)}")
    ranked = rank_classes(box_counts, all_classes)
    known = set(ranked)
    for name, group in (("hard", hard_classes), ("parent", parent_classes)):
        unknown = [m for m in group if m not in known]
        if unknown:
            raise ValueError(f"{name} classes not among the classes: {', '.join(unknown)}")
    hard = [m for m in ranked if m in set(hard_classes)]
    parents = [m for m in ranked if m in set(parent_classes) and m not in set(hard)]
    rest = [m for m in ranked if m not in set(hard) | set(parents)]

    groups: list[tuple[str, list[str]]] = []
    start = 0
    for size in level_sizes:
        if start >= len(rest):
            break
        groups.append(("count", rest[start:start + size]))
        start += size
    if start < len(rest):
        groups.append(("count", rest[start:]))
    groups += [("hard", hard), ("parents", parents)]
    return LevelSpec(tuple(Level(i + 1, kind, tuple(mids))
                           for i, (kind, mids) in enumerate(g for g in groups if g[1])))


def level_table(spec: LevelSpec, boxes: pd.DataFrame) -> pd.DataFrame:
    """Per level: classes, images (with a box of the level), boxes, boxes per image.

    Args:
      boxes: a frame from oid.annotations.read_boxes (ImageID, LabelName, ...).
    """
    labels = boxes["LabelName"]
    label_codes = labels.cat.codes.to_numpy()
    image_codes = boxes["ImageID"].cat.codes.to_numpy()
    cat_index = {m: i for i, m in enumerate(labels.cat.categories)}
    rows = []
    for level in spec.levels:
        in_level = np.zeros(len(labels.cat.categories), dtype=bool)
        in_level[[cat_index[m] for m in level.classes if m in cat_index]] = True
        mask = in_level[label_codes]
        n_boxes = int(mask.sum())
        n_images = int(np.unique(image_codes[mask]).size)
        rows.append({"level": level.index, "kind": level.kind, "classes": len(level.classes),
                     "images": n_images, "boxes": n_boxes,
                     "boxes_per_image": n_boxes / n_images if n_images else 0.0})
    return pd.DataFrame(rows)


def plot_levels(spec: LevelSpec, box_counts: Mapping[str, int], path: str,
                names: ClassTable | None = None) -> None:
    """Bar chart of boxes per class (log scale), classes in level order, cuts marked."""
    # Deferred: only --plot needs matplotlib, and it takes a second to import.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"), so no display is needed

    mids = [m for lv in spec.levels for m in lv.classes]
    counts = np.array([max(box_counts.get(m, 0), 0) for m in mids], dtype=float)
    colors = np.concatenate([[i] * len(lv.classes) for i, lv in enumerate(spec.levels)])
    fig, ax = plt.subplots(figsize=(max(8.0, min(40.0, len(mids) * 0.08)), 4.5))
    ax.bar(np.arange(len(mids)), np.maximum(counts, 0.8), width=1.0,
           color=plt.cm.tab10(colors % 10))
    ax.set_yscale("log")
    start = 0
    for lv in spec.levels:
        end = start + len(lv.classes)
        if start:
            ax.axvline(start - 0.5, color="black", linewidth=1)
        ax.text((start + end - 1) / 2, ax.get_ylim()[1], f"{lv.name}\n({lv.kind})",
                ha="center", va="top", fontsize=9)
        start = end
    if names is not None and len(mids) <= 60:
        ax.set_xticks(np.arange(len(mids)))
        ax.set_xticklabels([names.name(m) if m in names else m for m in mids],
                           rotation=60, ha="right", fontsize=8)
    ax.set_xlabel("class (ranked by training boxes within each level)")
    ax.set_ylabel("training boxes")
    fig.tight_layout()
    with fileio.open_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _mids(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oid.levels", description="Split classes into levels by box count.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="official layout: label/, train/")
    parser.add_argument("--level_sizes", default="100,150",
                        help="comma-separated sizes of the first count levels; the rest form "
                             "one more level")
    parser.add_argument("--hard_classes", default="", help="comma-separated MIDs for a hard level")
    parser.add_argument("--parents_level", action="store_true",
                        help="put every class with Subcategory children in its own level")
    parser.add_argument("--out", default=None, help="level spec JSON (default DATA_DIR/levels.json)")
    parser.add_argument("--plot", default=None,
                        help="bar chart PNG (default next to --out, levels.png)")
    parser.add_argument("--lenient", action="store_true", help="skip and count bad CSV rows")
    args = parser.parse_args(argv)

    layout = DataLayout(args.data_dir)
    classes = load_classes(layout.classes)
    hierarchy = load_hierarchy(layout.hierarchy)
    print(f"reading {layout.train_boxes} ...", file=sys.stderr)
    boxes, report = read_boxes(layout.train_boxes, classes, lenient=args.lenient)
    if report.num_skipped:
        print(report.summary(), file=sys.stderr)
    counts = boxes["LabelName"].value_counts()
    box_counts = {m: int(n) for m, n in counts.items() if n}
    parents = [m for m in classes.mids if m in hierarchy and not hierarchy.is_leaf(m)] \
        if args.parents_level else []
    spec = make_levels(box_counts, [int(s) for s in _mids(args.level_sizes)],
                       all_classes=classes.mids, hard_classes=_mids(args.hard_classes),
                       parent_classes=parents)
    out = args.out or fileio.join(args.data_dir, "levels.json")
    plot = args.plot or (out.rsplit("/", 1)[0] + "/levels.png" if "/" in out else "levels.png")
    spec.save(out)
    plot_levels(spec, box_counts, plot, classes)

    table = level_table(spec, boxes)
    print(f"{'level':>5} {'kind':<8} {'classes':>7} {'images':>9} {'boxes':>10} {'boxes/img':>9}")
    for r in table.itertuples():
        print(f"{r.level:>5} {r.kind:<8} {r.classes:>7} {r.images:>9} {r.boxes:>10} "
              f"{r.boxes_per_image:>9.2f}")
    for level in spec.levels:
        shown = ", ".join(f"{classes.name(m)} ({box_counts.get(m, 0)})" for m in level.classes[:8])
        more = f", ... {len(level.classes) - 8} more" if len(level.classes) > 8 else ""
        print(f"  {level.name}: {shown}{more}")
    print(f"wrote {out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
