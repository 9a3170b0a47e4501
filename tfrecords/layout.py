"""The records folder that beam_jobs/make_records.py writes and every other stage reads:

    RECORDS/levelN/{split}-00000-of-000NN.tfrecord ...  shards (split: train, val)
    RECORDS/levelN/labels.json                          [{index, mid, name}] of the level
    RECORDS/levelN/stats.json                           images, boxes, skips per split
                                                        (BoxCounts reads its boxes per image)
    RECORDS/levelN/{split}-bbox.csv                     ground truth of a split, official format
    RECORDS/levelN/{split}-image-labels.csv
    RECORDS/levelN/skipped.csv                          ImageID,reason of every input left out
    RECORDS/test/test-*.tfrecord                        unlabelled test images (--split test)

No TensorFlow: the Beam job writes through Beam's FileSystems with these names. Paths are
joined with '/', right for local POSIX paths and for gs:// URLs alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence


def _join(*parts: str) -> str:
    return "/".join([str(parts[0]).rstrip("/")] + [str(p).strip("/") for p in parts[1:]])


def shard_name(split: str, shard: int, num_shards: int) -> str:
    """"train-00003-of-00010.tfrecord"."""
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


@dataclasses.dataclass(frozen=True)
class LevelRecords:
    """The files of one level's folder (or of the test folder)."""

    dir: str

    def path(self, name: str) -> str:
        return _join(self.dir, name)

    def shards(self, split: str) -> str:
        """Glob of a split's shards."""
        return self.path(f"{split}-*.tfrecord")

    def shard(self, split: str, shard: int, num_shards: int) -> str:
        return self.path(shard_name(split, shard, num_shards))

    @property
    def labels(self) -> str:
        return self.path("labels.json")

    @property
    def stats(self) -> str:
        return self.path("stats.json")

    @property
    def skipped(self) -> str:
        return self.path("skipped.csv")

    def boxes_csv(self, split: str = "val") -> str:
        return self.path(f"{split}-bbox.csv")

    def image_labels_csv(self, split: str = "val") -> str:
        return self.path(f"{split}-image-labels.csv")


@dataclasses.dataclass(frozen=True)
class RecordsLayout:
    """RECORDS (local or gs://): one folder per level and one for the test split."""

    root: str

    def level(self, level: int) -> LevelRecords:
        return LevelRecords(_join(self.root, f"level{level}"))

    @property
    def test(self) -> LevelRecords:
        return LevelRecords(_join(self.root, "test"))


def sorted_labels(entries: Sequence[dict]) -> tuple[dict, ...]:
    """labels.json's entries [{index, mid, name}] sorted by index.

    Raises:
      ValueError when the indices are not 0..K-1.
    """
    labels = tuple(sorted(entries, key=lambda e: e["index"]))
    if [e["index"] for e in labels] != list(range(len(labels))):
        raise ValueError("labels must have the indices 0..K-1")
    return labels


@dataclasses.dataclass(frozen=True)
class BoxCounts:
    """A split's ground-truth boxes per image, as stats.json records them.

    Attributes:
      max_boxes: the largest box count of an image (0 for a split without boxes).
      images_with: box count -> images with that many boxes.
      most: (boxes, ImageID) of the images with the most boxes, most first (the 20 the
        records job lists).
    """

    max_boxes: int
    images_with: Mapping[int, int]
    most: tuple[tuple[int, str], ...]

    @classmethod
    def from_stats(cls, stats: Mapping, split: str = "train") -> BoxCounts | None:
        """The counts of `split` in a parsed stats.json; None when the records were made
        before stats.json counted boxes per image (or the split has no images)."""
        entry = stats.get("splits", {}).get(split) if isinstance(stats, Mapping) else None
        if not isinstance(entry, Mapping) or "boxes_per_image" not in entry:
            return None
        return cls(int(entry["max_boxes"]),
                   {int(n): int(k) for n, k in entry["boxes_per_image"].items()},
                   tuple((int(n), str(i)) for n, i in entry.get("most_boxes", ())))

    def past(self, max_boxes: int) -> tuple[int, int]:
        """(images with more than max_boxes boxes, boxes past max_boxes in them)."""
        over = {n: k for n, k in self.images_with.items() if n > max_boxes}
        return sum(over.values()), sum((n - max_boxes) * k for n, k in over.items())

    def named_past(self, max_boxes: int) -> list[tuple[int, str]]:
        """(boxes, ImageID) of the listed images with more than max_boxes boxes."""
        return [(n, i) for n, i in self.most if n > max_boxes]
