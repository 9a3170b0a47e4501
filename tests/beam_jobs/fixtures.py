"""A tiny Open Images dataset made in code, with one of each bad input."""

from __future__ import annotations

import io
import json
import os

from PIL import Image

from oid import ROOT_MID, layout
from oid.levels import Level, LevelSpec

ANIMAL, DOG, CAT, CAR = "/m/0animal", "/m/0dog", "/m/0cat", "/m/0car"
CLASSES = [(ANIMAL, "Animal"), (DOG, "Dog"), (CAT, "Cat"), (CAR, "Car")]
HIERARCHY = {"LabelName": ROOT_MID, "Subcategory": [
    {"LabelName": ANIMAL, "Subcategory": [{"LabelName": DOG}, {"LabelName": CAT}]},
    {"LabelName": CAR}]}
SPEC = LevelSpec((Level(1, "count", (DOG, CAT)), Level(2, "count", (CAR, ANIMAL))))

# Kept images of level 1 and how they are stored.
GOOD = ["good1", "good2", "cmyk1", "grey1", "png1", "exif1"]
# ImageID -> expected skip reason.
BAD = {
    "corrupt1": "corrupt_image",
    "trunc1": "truncated_image",
    "missing1": "missing_image",
    "badbox1": "coordinate_out_of_range",
    "../../escape": "bad_image_id",
}
EXIF_BOX = (0.0, 0.0, 0.25, 0.25)  # (ymin, xmin, ymax, xmax) of the red block, as displayed


def _encode(img, fmt="JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _picture(w, h, color=(30, 120, 200)):
    img = Image.new("RGB", (w, h), color)
    img.paste((250, 250, 0), (w // 4, h // 4, w // 2, h // 2))
    return img


def _truncated(data: bytes) -> bytes:
    """The first two thirds of a file: headers intact, scan data cut short."""
    return data[: len(data) * 2 // 3]


def box_row(iid, mid, xmin, xmax, ymin, ymax, group_of=0, occluded=0, truncated=0):
    return (f"{iid},xclick,{mid},1,{xmin},{xmax},{ymin},{ymax},"
            f"{occluded},{truncated},{group_of},0,0")


def make_dataset(root: str) -> layout.DataLayout:
    """Writes the dataset under root; returns its layout."""
    lay = layout.DataLayout(root)
    os.makedirs(lay.label_dir)
    os.makedirs(lay.image_dir("train"))
    os.makedirs(lay.image_dir("test"))
    files = {
        "good1": _encode(_picture(400, 300)),
        "good2": _encode(_picture(640, 480)),
        "cmyk1": _encode(_picture(320, 240).convert("CMYK")),
        "grey1": _encode(_picture(300, 300).convert("L")),
        "png1": _encode(_picture(200, 100), "PNG"),
        "car1": _encode(_picture(300, 200)),
        "badbox1": _encode(_picture(300, 200)),
        "corrupt1": b"\xff\xd8\xff\xe0 this is not a JPEG" * 20,
        "trunc1": _truncated(_encode(_picture(400, 300))),
    }
    shown = Image.new("RGB", (400, 300), (255, 255, 255))
    shown.paste((255, 0, 0), (0, 0, 100, 75))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; the viewer turns it back
    files["exif1"] = _encode(shown.transpose(Image.ROTATE_90), exif=exif.tobytes())
    for iid, data in files.items():
        with open(os.path.join(lay.image_dir("train"), f"{iid}.jpg"), "wb") as f:
            f.write(data)
    for iid in ("test1", "test2"):
        _picture(350, 250).save(os.path.join(lay.image_dir("test"), f"{iid}.jpg"))
    # A file name that is no plain ImageID.
    _picture(50, 50).save(os.path.join(lay.image_dir("test"), "bad name.jpg"))

    boxes = ["ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
             "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside",
             box_row("good1", DOG, 0.1, 0.4, 0.2, 0.6, occluded=1),
             box_row("good1", CAT, 0.5, 0.9, 0.5, 0.9, truncated=1),
             box_row("good2", DOG, 0.0, 0.5, 0.0, 0.5, group_of=1),
             box_row("good2", CAR, 0.6, 0.9, 0.6, 0.9),
             box_row("cmyk1", DOG, 0.2, 0.3, 0.2, 0.3),
             box_row("grey1", CAT, 0.25, 0.5, 0.25, 0.5),
             box_row("png1", DOG, 0.1, 0.9, 0.1, 0.9),
             box_row("exif1", DOG, EXIF_BOX[1], EXIF_BOX[3], EXIF_BOX[0], EXIF_BOX[2]),
             box_row("car1", CAR, 0.1, 0.2, 0.1, 0.2),
             box_row("corrupt1", DOG, 0.1, 0.2, 0.1, 0.2),
             box_row("trunc1", DOG, 0.1, 0.2, 0.1, 0.2),
             box_row("missing1", DOG, 0.1, 0.2, 0.1, 0.2),
             box_row("badbox1", CAT, 0.1, 0.2, 0.1, 0.2),
             box_row("badbox1", DOG, 0.1, 1.3, 0.1, 0.2),
             box_row("../../escape", DOG, 0.1, 0.2, 0.1, 0.2)]
    labels = ["ImageID,Source,LabelName,Confidence",
              "good1,verification,/m/0dog,1", "good1,verification,/m/0cat,1",
              "good1,verification,/m/0car,0", "good1,verification,/m/0animal,1",
              "good2,verification,/m/0dog,1", "good2,verification,/m/0car,1",
              "car1,verification,/m/0car,1", "car1,verification,/m/0animal,0"]
    with open(lay.train_boxes, "w") as f:
        f.write("\n".join(boxes) + "\n")
    with open(lay.train_labels, "w") as f:
        f.write("\n".join(labels) + "\n")
    with open(lay.classes, "w") as f:
        f.write("".join(f"{m},{n}\n" for m, n in CLASSES))
    with open(lay.hierarchy, "w") as f:
        json.dump(HIERARCHY, f)
    SPEC.save(os.path.join(root, "levels.json"))
    return lay
