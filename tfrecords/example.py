"""Building tf.train.Example records (the Beam job's side)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tfrecords import features as F
from tfrecords import proto


@dataclasses.dataclass
class ImageAnnotation:
    """Everything the records keep about one image, besides its pixels.

    Boxes are (ymin, xmin, ymax, xmax), normalized to [0, 1].

    Attributes:
      image_id: the Open Images ImageID.
      split: "train", "val" or "test".
      boxes: [N, 4] as nested lists.
      labels: N level-local class indices (0-based).
      mids: N class MIDs.
      group_of, occluded, truncated, depiction: N ints (0/1; -1 not annotated).
      image_labels: (MID, level-local index or -1, confidence 1.0/0.0) triples.
      repeat_factor: LVIS repeat factor of the image (>= 1).
    """

    image_id: str
    split: str
    boxes: list[list[float]] = dataclasses.field(default_factory=list)
    labels: list[int] = dataclasses.field(default_factory=list)
    mids: list[str] = dataclasses.field(default_factory=list)
    group_of: list[int] = dataclasses.field(default_factory=list)
    occluded: list[int] = dataclasses.field(default_factory=list)
    truncated: list[int] = dataclasses.field(default_factory=list)
    depiction: list[int] = dataclasses.field(default_factory=list)
    image_labels: list[tuple[str, int, float]] = dataclasses.field(default_factory=list)
    repeat_factor: float = 1.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> ImageAnnotation:
        obj = dict(obj)
        obj["image_labels"] = [tuple(x) for x in obj.get("image_labels", [])]
        return cls(**obj)


def _bytes(values: Sequence[bytes]) -> proto.Feature:
    return proto.Feature(bytes_list=proto.BytesList(value=list(values)))


def _floats(values: Sequence[float]) -> proto.Feature:
    return proto.Feature(float_list=proto.FloatList(value=list(values)))


def _ints(values: Sequence[int]) -> proto.Feature:
    return proto.Feature(int64_list=proto.Int64List(value=list(values)))


def build_example(
    annotation: ImageAnnotation,
    encoded_jpeg: bytes,
    height: int,
    width: int,
    original_height: int,
    original_width: int,
) -> proto.Example:
    """One record: the (resized) JPEG, its sizes and the annotation.

    Returns an Example message whose serialized bytes are a tf.train.Example.
    """
    boxes = annotation.boxes
    feature = {
        F.ENCODED: _bytes([encoded_jpeg]),
        F.FORMAT: _bytes([b"jpeg"]),
        F.HEIGHT: _ints([height]),
        F.WIDTH: _ints([width]),
        F.ORIGINAL_HEIGHT: _ints([original_height]),
        F.ORIGINAL_WIDTH: _ints([original_width]),
        F.SOURCE_ID: _bytes([annotation.image_id.encode()]),
        F.REPEAT_FACTOR: _floats([annotation.repeat_factor]),
        F.YMIN: _floats([b[0] for b in boxes]),
        F.XMIN: _floats([b[1] for b in boxes]),
        F.YMAX: _floats([b[2] for b in boxes]),
        F.XMAX: _floats([b[3] for b in boxes]),
        F.CLASS_LABEL: _ints(annotation.labels),
        F.CLASS_TEXT: _bytes([m.encode() for m in annotation.mids]),
        F.GROUP_OF: _ints(annotation.group_of),
        F.OCCLUDED: _ints(annotation.occluded),
        F.TRUNCATED: _ints(annotation.truncated),
        F.DEPICTION: _ints(annotation.depiction),
        F.IMAGE_CLASS_TEXT: _bytes([m.encode() for m, _, _ in annotation.image_labels]),
        F.IMAGE_CLASS_LABEL: _ints([i for _, i, _ in annotation.image_labels]),
        F.IMAGE_CLASS_CONFIDENCE: _floats([c for _, _, c in annotation.image_labels]),
    }
    return proto.Example(features=proto.Features(feature=feature))
