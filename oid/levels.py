"""Levels: the classes split into groups, one detector trained per group.

Open Images is long-tailed: a few classes have hundreds of thousands of boxes,
hundreds have a few hundred. Like the original system, classes are ranked by
training box count and cut into consecutive groups ("levels") of configurable
sizes, so each detector sees classes of comparable frequency. Optional levels
are taken out of that ranking first:
  * a hand-listed "hard" level (classes a user wants trained on their own);
  * "parents" levels of the classes that have Subcategory children (e.g.
    Animal, Vehicle), whose boxes are the most specific label an annotator
    gave and which a submission otherwise gets only by copying child boxes up:
    one level, or several cut by frequency (`--parents_level_sizes`), the
    parents ranked by the boxes the challenge metric scores them on (their own
    and their descendants').

The result is a small JSON level spec that every later stage reads, so the
Beam job, training, evaluation and prediction agree on which class is index
k of level N:

    {"version": 1, "levels": [{"index": 1, "name": "level1", "kind": "count",
                               "classes": [MID, ...]}, ...]}

A class's level-local index is its position in `classes` (0-based).

    python -m oid.levels --data_dir D [--level_sizes 100,150] [--out levels.json]
    python -m oid.levels --data_dir D --level_sizes 100,100,100 --hard_classes MID,... \
        --parents_level_sizes 20     # the original system's shape: 4 count, hard, 2 parents

levels_from_boxes is that command as a function: the records job calls it
(with the defaults) when it is given no spec, so its levels are the ones the
command would have written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from oid import errors, fileio
from oid.annotations import read_boxes
from oid.classes import ClassTable, load_classes
from oid.errors import InputFileError, UsageError
from oid.hierarchy import Hierarchy, load_hierarchy
from oid.layout import DataLayout

SPEC_VERSION = 1
KINDS = ("count", "hard", "parents")
DEFAULT_LEVEL_SIZES = (100, 150)  # the command's --level_sizes; the records job uses them too
SPEC_FIX = "make the spec with python -m oid.levels (see docs/data.md#levels)"


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
        """The spec of a parsed levels.json; ValueError saying what is wrong with it."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"expected a JSON object, found {type(obj).__name__}")
        if obj.get("version") != SPEC_VERSION:
            raise ValueError(f"level spec version {obj.get('version')!r}, expected {SPEC_VERSION}")
        entries = obj.get("levels")
        if not isinstance(entries, list) or not entries:
            raise ValueError("'levels' must be a non-empty list")
        levels = []
        for k, d in enumerate(entries, start=1):
            if not isinstance(d, Mapping) or not {"index", "kind", "classes"} <= set(d):
                raise ValueError(f"level entry {k} needs 'index', 'kind' and 'classes'")
            mids = d["classes"]
            if not isinstance(mids, list) or not all(isinstance(m, str) for m in mids):
                raise ValueError(f"level entry {k}: 'classes' must be a list of MIDs")
            if not isinstance(d["index"], int) or isinstance(d["index"], bool):
                raise ValueError(f"level entry {k}: 'index' must be an integer")
            levels.append(Level(d["index"], d["kind"], tuple(mids)))
        return cls(tuple(levels))

    def save(self, path: str) -> None:
        """Writes the spec as JSON; a complete file or none under `path`."""
        with fileio.atomic_output(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)
            f.write("\n")

    @classmethod
    def load(cls, path: str) -> LevelSpec:
        """Reads a spec; InputFileError naming the file (and line) for anything wrong with it."""
        try:
            text = fileio.read_text(path)
        except OSError as e:
            raise InputFileError(path, None, f"cannot be read ({e.strerror or e}); "
                                             "check the path") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputFileError(path, e.lineno, f"not valid JSON: {e.msg}; {SPEC_FIX}") from None
        try:
            return cls.from_json(obj)
        except ValueError as e:
            raise InputFileError(path, None, f"not a level spec: {e}; {SPEC_FIX}") from None

    def check_classes(self, classes: ClassTable, path: str, classes_path: str) -> None:
        """Raises InputFileError naming `path` and the line of the first class of the spec
        that is not in the class table (a spec made for other data)."""
        for level in self.levels:
            for mid in level.classes:
                if mid not in classes:
                    raise InputFileError(
                        path, _line_of(path, json.dumps(mid)),
                        f"class {mid} of level {level.index} is not in the class table "
                        f"{classes_path}; the spec was made for other data: make one for "
                        "this data with python -m oid.levels, or fix the MID")


def _line_of(path: str, needle: str) -> int | None:
    """1-based line of the first occurrence of `needle` in the text file `path`, or None."""
    try:
        text = fileio.read_text(path)
    except (OSError, ValueError):
        return None
    at = text.find(needle)
    return text.count("\n", 0, at) + 1 if at >= 0 else None


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
    parents_level_sizes: Sequence[int] = (),
    parent_box_counts: Mapping[str, int] | None = None,
) -> LevelSpec:
    """Splits classes into levels.

    Args:
      box_counts: MID -> number of training boxes.
      level_sizes: sizes of the first count levels, in ranking order; the
        classes left over form one more count level. (100, 150) on 500 classes
        gives levels of 100, 150 and 250 classes.
      all_classes: classes to place even if they have no boxes (they rank last).
      hard_classes: taken out of the ranking into a "hard" level.
      parent_classes: taken out of the ranking into "parents" levels (pass
        the classes that have Subcategory children to get them).
      parents_level_sizes: sizes of the first parents levels, parents ranked by
        `parent_box_counts`; the parents left over form one more. () gives one
        parents level of them all.
      parent_box_counts: MID -> boxes of the parents' ranking (expanded_box_counts:
        what the challenge metric scores them on); default `box_counts`.

    Returns:
      LevelSpec: count levels first, then hard, then parents (empty ones omitted).
    """
    for what, sizes in (("level", level_sizes), ("parents level", parents_level_sizes)):
        if any(s <= 0 for s in sizes):
            raise ValueError(f"{what} sizes must be positive, got {list(sizes)}")
    ranked = rank_classes(box_counts, all_classes)
    known = set(ranked)
    for name, group in (("hard", hard_classes), ("parent", parent_classes)):
        unknown = [m for m in group if m not in known]
        if unknown:
            raise ValueError(f"{name} classes not among the classes: {', '.join(unknown)}")
    hard = [m for m in ranked if m in set(hard_classes)]
    parents_ranked = rank_classes(box_counts if parent_box_counts is None else parent_box_counts,
                                  ranked)
    parents = [m for m in parents_ranked if m in set(parent_classes) and m not in set(hard)]
    rest = [m for m in ranked if m not in set(hard) | set(parents)]

    groups = [("count", g) for g in _cut(rest, level_sizes)] + [("hard", hard)]
    groups += [("parents", g) for g in _cut(parents, parents_level_sizes)]
    return LevelSpec(tuple(Level(i + 1, kind, tuple(mids))
                           for i, (kind, mids) in enumerate(g for g in groups if g[1])))


def _cut(ranked: list[str], sizes: Sequence[int]) -> list[list[str]]:
    """Consecutive groups of the given sizes, then one of what is left; never an empty one."""
    groups, start = [], 0
    for size in sizes:
        if start >= len(ranked):
            break
        groups.append(ranked[start:start + size])
        start += size
    if start < len(ranked):
        groups.append(ranked[start:])
    return groups


def box_counts(boxes: pd.DataFrame) -> dict[str, int]:
    """MID -> number of boxes, for the classes with at least one.

    Args:
      boxes: a frame from oid.annotations.read_boxes (categorical LabelName).
    """
    counts = boxes["LabelName"].value_counts()
    return {str(m): int(n) for m, n in counts.items() if n}


def expanded_box_counts(box_counts: Mapping[str, int], hierarchy: Hierarchy) -> dict[str, int]:
    """MID -> its own boxes plus every Subcategory descendant's: the boxes the challenge
    metric scores a class on. A box counts once for each of its class's ancestors (a Star box
    for Polygon and for Symbol); classes missing from the hierarchy keep their own count."""
    out = {m: int(n) for m, n in box_counts.items()}
    for mid, n in box_counts.items():
        if mid in hierarchy:
            for ancestor in hierarchy.ancestors(mid):
                out[ancestor] = out.get(ancestor, 0) + int(n)
    return out


def parent_classes(classes: ClassTable, hierarchy: Hierarchy) -> list[str]:
    """The classes of the table that have Subcategory children, in table order."""
    return [m for m in classes.mids if m in hierarchy and not hierarchy.is_leaf(m)]


def levels_from_boxes(
    boxes: pd.DataFrame,
    classes: ClassTable,
    hierarchy: Hierarchy | None = None,
    level_sizes: Sequence[int] = DEFAULT_LEVEL_SIZES,
    hard_classes: Sequence[str] = (),
    parents_level: bool = False,
    parents_level_sizes: Sequence[int] = (),
) -> LevelSpec:
    """The levels `python -m oid.levels` makes from a data directory's tables.

    Every class of the table is placed (those without boxes rank last).

    Args:
      boxes: the training boxes (oid.annotations.read_boxes).
      classes: the class table.
      hierarchy: needed only for parents levels.
      level_sizes, hard_classes, parents_level_sizes: as in make_levels.
      parents_level: put the classes with Subcategory children in levels of their own
        (implied by `parents_level_sizes`), ranked by expanded_box_counts.
    """
    parents_level = parents_level or bool(parents_level_sizes)
    if parents_level and hierarchy is None:
        raise ValueError("parents_level needs the hierarchy")
    counts = box_counts(boxes)
    parents = parent_classes(classes, hierarchy) if parents_level else []
    return make_levels(counts, level_sizes, all_classes=classes.mids,
                       hard_classes=hard_classes, parent_classes=parents,
                       parents_level_sizes=parents_level_sizes,
                       parent_box_counts=expanded_box_counts(counts, hierarchy)
                       if parents_level else None)


def parse_level_sizes(text: str, flag: str = "--level_sizes") -> list[int]:
    """"100,150" -> [100, 150]; UsageError naming `flag` unless every size is a positive int."""
    sizes = []
    for part in _mids(text):
        try:
            size = int(part)
        except ValueError:
            raise UsageError(flag, text, f"{part!r} is not a whole number; pass comma-separated "
                                         "class counts, e.g. 100,150") from None
        if size <= 0:
            raise UsageError(flag, text, f"sizes must be at least 1, got {size}; pass "
                                         "comma-separated class counts, e.g. 100,150")
        sizes.append(size)
    return sizes


def check_mids(flag: str, text: str, classes: ClassTable, classes_path: str) -> list[str]:
    """The comma-separated MIDs of a flag; UsageError naming it for one not in the table."""
    mids = _mids(text)
    unknown = [m for m in mids if m not in classes]
    if unknown:
        raise UsageError(flag, text, f"{', '.join(unknown)} not in the class table "
                                     f"{classes_path}; pass MIDs (/m/...) from its first column")
    return mids


def check_data_dir(data_dir: str, files: Sequence[str] = (), folders: Sequence[str] = (),
                   flag: str = "--data_dir") -> None:
    """UsageError naming `flag` unless `data_dir` is a folder holding `files` and `folders`.

    Args:
      files, folders: paths inside data_dir (as DataLayout gives them) that must exist.
    Remote (gs://) directories are not checked here; reading them reports their errors.
    """
    data_dir = str(data_dir)
    layout_fix = "pass the folder laid out as docs/data.md shows (label/, train/, test/)"
    if not data_dir:
        raise UsageError(flag, data_dir, f"the path is empty; {layout_fix}")
    if "://" in data_dir:
        return
    if not os.path.exists(data_dir):
        raise UsageError(flag, data_dir, f"no such folder; {layout_fix}")
    if not os.path.isdir(data_dir):
        raise UsageError(flag, data_dir, f"is a file, not a folder; {layout_fix}")
    for path in files:
        rel = os.path.relpath(path, data_dir)
        if os.path.isdir(path) or not os.path.exists(path):
            what = "a folder, not a file" if os.path.isdir(path) else "missing"
            raise UsageError(flag, data_dir, f"{rel} is {what}; {layout_fix}")
        if not os.access(path, os.R_OK):
            raise UsageError(flag, data_dir, f"{rel} cannot be read (permission denied); check "
                                             "its permissions")
    for path in folders:
        if not os.path.isdir(path):
            raise UsageError(flag, data_dir, f"no {os.path.relpath(path, data_dir)}/ folder in "
                                             f"it; {layout_fix}")


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
    with fileio.atomic_output(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def _mids(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """The command; bad flags and input files end in one `error: ...` line, exit status 2."""
    parser = errors.ArgumentParser(
        prog="python -m oid.levels", description="Split classes into levels by box count.")
    parser.add_argument("--data_dir", required=True, help="official layout: label/, train/")
    parser.add_argument("--level_sizes", default=",".join(map(str, DEFAULT_LEVEL_SIZES)),
                        help="comma-separated sizes of the first count levels; the rest form "
                             "one more level")
    parser.add_argument("--hard_classes", default="", help="comma-separated MIDs for a hard level")
    parser.add_argument("--parents_level", action="store_true",
                        help="put every class with Subcategory children in its own level")
    parser.add_argument("--parents_level_sizes", default="",
                        help="comma-separated sizes of the first parents levels, parents ranked "
                             "by their own and their descendants' boxes; the rest form one more "
                             "(implies --parents_level; e.g. 20 cuts the challenge's 57 parents "
                             "into 20 and 37)")
    parser.add_argument("--out", default=None,
                        help="level spec JSON (default DATA_DIR/levels.json)")
    parser.add_argument("--plot", default=None,
                        help="bar chart PNG (default next to --out, levels.png)")
    parser.add_argument("--lenient", action="store_true", help="skip and count bad CSV rows")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (UsageError, InputFileError) as e:
        return errors.report(e)


def _run(args) -> int:
    layout = DataLayout(args.data_dir)
    parents_level_sizes = parse_level_sizes(args.parents_level_sizes, "--parents_level_sizes")
    parents_level = args.parents_level or bool(parents_level_sizes)
    check_data_dir(args.data_dir, [layout.classes, layout.train_boxes]
                   + ([layout.hierarchy] if parents_level else []))
    level_sizes = parse_level_sizes(args.level_sizes)
    out = args.out or fileio.join(args.data_dir, "levels.json")
    plot = args.plot or (out.rsplit("/", 1)[0] + "/levels.png" if "/" in out else "levels.png")
    inputs = {"label/ class table": layout.classes, "label/ box CSV": layout.train_boxes}
    fileio.check_output_file("--out", out, inputs)
    fileio.check_output_file("--plot", plot, {**inputs, "--out": out})
    if os.path.abspath(plot) == os.path.abspath(out):
        raise UsageError("--plot", plot, "is the --out file; give the chart another name")
    classes = load_classes(layout.classes)
    hard = check_mids("--hard_classes", args.hard_classes, classes, layout.classes)
    hierarchy = load_hierarchy(layout.hierarchy) if parents_level else None

    print(f"reading {layout.train_boxes} ...", file=sys.stderr)
    boxes, report = read_boxes(layout.train_boxes, classes, lenient=args.lenient)
    if report.num_skipped:
        print(report.summary(), file=sys.stderr)
    spec = levels_from_boxes(boxes, classes, hierarchy, level_sizes, hard, parents_level,
                             parents_level_sizes)
    counts = box_counts(boxes)
    spec.save(out)
    plot_levels(spec, counts, plot, classes)

    table = level_table(spec, boxes)
    print(f"{'level':>5} {'kind':<8} {'classes':>7} {'images':>9} {'boxes':>10} {'boxes/img':>9}")
    for r in table.itertuples():
        print(f"{r.level:>5} {r.kind:<8} {r.classes:>7} {r.images:>9} {r.boxes:>10} "
              f"{r.boxes_per_image:>9.2f}")
    scored = expanded_box_counts(counts, hierarchy) if hierarchy is not None else counts
    for level in spec.levels:
        # A parent's own boxes, and with its descendants' those the metric scores it on.
        shown = ", ".join(f"{classes.name(m)} ({counts.get(m, 0)}"
                          + (f"; {scored.get(m, 0)} with descendants" if level.kind == "parents"
                             else "") + ")" for m in level.classes[:8])
        more = f", ... {len(level.classes) - 8} more" if len(level.classes) > 8 else ""
        print(f"  {level.name}: {shown}{more}")
    print(f"wrote {out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
