"""Where the official Open Images files live under a data directory.

    DATA_DIR/label/challenge-2019-classes-description-500.csv
    DATA_DIR/label/challenge-2019-label500-hierarchy.json
    DATA_DIR/label/challenge-2019-train-detection-bbox.csv
    DATA_DIR/label/challenge-2019-train-detection-human-imagelabels.csv
    DATA_DIR/train/{ImageID}.jpg
    DATA_DIR/test/{ImageID}.jpg

The synthetic mini dataset (oid.demo_data) is written in exactly this layout.
"""

from __future__ import annotations

import dataclasses

from oid import fileio
from oid.annotations import IMAGE_ID_PATTERN

CLASSES_FILE = "challenge-2019-classes-description-500.csv"
HIERARCHY_FILE = "challenge-2019-label500-hierarchy.json"
TRAIN_BOXES_FILE = "challenge-2019-train-detection-bbox.csv"
TRAIN_LABELS_FILE = "challenge-2019-train-detection-human-imagelabels.csv"


@dataclasses.dataclass(frozen=True)
class DataLayout:
    """Paths inside one data directory (local or gs://)."""

    data_dir: str

    @property
    def label_dir(self) -> str:
        return fileio.join(self.data_dir, "label")

    @property
    def classes(self) -> str:
        return fileio.join(self.label_dir, CLASSES_FILE)

    @property
    def hierarchy(self) -> str:
        return fileio.join(self.label_dir, HIERARCHY_FILE)

    @property
    def train_boxes(self) -> str:
        return fileio.join(self.label_dir, TRAIN_BOXES_FILE)

    @property
    def train_labels(self) -> str:
        return fileio.join(self.label_dir, TRAIN_LABELS_FILE)

    def image_dir(self, split: str) -> str:
        return fileio.join(self.data_dir, split)

    def image_path(self, split: str, image_id: str) -> str:
        """The JPEG of `image_id`; refuses ids that could name another path."""
        if not IMAGE_ID_PATTERN.fullmatch(image_id):
            raise ValueError(f"ImageID {image_id!r} is not a plain ID; refusing to build a path")
        return fileio.join(self.image_dir(split), f"{image_id}.jpg")
