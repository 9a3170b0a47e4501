import numpy as np
import pandas as pd
import pytest

from oid import annotations
from oid.annotations import read_boxes, read_image_labels
from oid.errors import InputFileError

HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,"
          "IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside")
GOOD = [
    "000002b66c9c498e,xclick,/m/01g317,1,0.0125,0.195312,0.148438,0.5875,0,1,0,0,0",
    "000002b66c9c498e,xclick,/m/0dzct,1,0.25,0.5,0.1,0.2,1,0,1,0,0",
    "00000c4b4f3b5b8a,activemil,/m/01g317,1,0,1,0,1,0,0,0,0,0",
]
CLASSES = {"/m/01g317", "/m/0dzct"}


def write(tmp_path, lines, name="boxes.csv", header=HEADER):
    path = tmp_path / name
    path.write_text("\n".join(([header] if header else []) + lines) + "\n")
    return str(path)


def test_clean_file_types_and_values(tmp_path):
    frame, report = read_boxes(write(tmp_path, GOOD), CLASSES)
    assert list(frame.columns) == list(annotations.BOX_COLUMNS)
    assert report.rows == 3 and report.num_skipped == 0
    for c in ("ImageID", "Source", "LabelName"):
        assert isinstance(frame[c].dtype, pd.CategoricalDtype)
    assert all(frame[c].dtype == np.float32 for c in annotations.BOX_COORDS)
    assert all(frame[c].dtype == np.int8 for c in annotations.BOX_FLAGS)
    assert frame["XMax"].iloc[0] == np.float32(0.195312)
    assert frame["IsGroupOf"].tolist() == [0, 1, 0]
    assert frame["ImageID"].tolist() == ["000002b66c9c498e"] * 2 + ["00000c4b4f3b5b8a"]


def test_empty_file_with_header_only(tmp_path):
    frame, report = read_boxes(write(tmp_path, []), CLASSES)
    assert len(frame) == 0 and report.rows == 0


@pytest.mark.parametrize("drop", ["XMin", "IsGroupOf", "LabelName"])
def test_missing_column(tmp_path, drop):
    cols = HEADER.split(",")
    keep = [i for i, c in enumerate(cols) if c != drop]
    lines = [",".join(r.split(",")[i] for i in keep) for r in GOOD]
    path = write(tmp_path, lines, header=",".join(cols[i] for i in keep))
    with pytest.raises(InputFileError, match=rf"boxes.csv:1: missing column\(s\) {drop}"):
        read_boxes(path, CLASSES, lenient=True)  # not skippable: no row is usable


def test_optional_columns_filled(tmp_path):
    path = write(tmp_path, ["a1,/m/01g317,0.1,0.2,0.3,0.4,1"],
                 header="ImageID,LabelName,XMin,XMax,YMin,YMax,IsGroupOf")
    frame, _ = read_boxes(path)
    assert frame["Source"].tolist() == ["unknown"]
    assert frame["Confidence"].tolist() == [1.0]
    assert frame["IsOccluded"].tolist() == [-1]  # not annotated
    assert frame["IsGroupOf"].tolist() == [1]


# (bad row, reason, message fragment). Each bad row is line 3: header, one good row, it.
BAD_ROWS = [
    ("0001,xclick,/m/01g317,1,0.1,0.2,-0.01,0.3,0,0,0,0,0", annotations.COORD_OUT_OF_RANGE,
     "YMin=-0.01 is outside"),
    ("0001,xclick,/m/01g317,1,0.1,1.2,0.1,0.3,0,0,0,0,0", annotations.COORD_OUT_OF_RANGE,
     "XMax=1.2 is outside"),
    ("0001,xclick,/m/01g317,1,0.5,0.2,0.1,0.3,0,0,0,0,0", annotations.MIN_GT_MAX,
     "XMin=0.5 > XMax=0.2"),
    ("0001,xclick,/m/01g317,1,0.1,0.2,0.6,0.3,0,0,0,0,0", annotations.MIN_GT_MAX,
     "YMin=0.6 > YMax=0.3"),
    ("0001,xclick,/m/unicorn,1,0.1,0.2,0.1,0.3,0,0,0,0,0", annotations.UNKNOWN_MID,
     "/m/unicorn is not a known class"),
    (GOOD[0], annotations.DUPLICATE, "appears earlier"),
    ("../../etc/passwd,xclick,/m/01g317,1,0.1,0.2,0.1,0.3,0,0,0,0,0", annotations.BAD_IMAGE_ID,
     "'../../etc/passwd' is not a plain ID"),
    ("a/b,xclick,/m/01g317,1,0.1,0.2,0.1,0.3,0,0,0,0,0", annotations.BAD_IMAGE_ID, "a/b"),
    ("0001,xclick,/m/01g317,1,0.1,0.2,0.1,,0,0,0,0,0", annotations.MISSING_VALUE, "YMax is empty"),
    ("0001,xclick,/m/01g317,1,0.1,0.2,0.1,abc,0,0,0,0,0", annotations.MISSING_VALUE,
     "YMax is empty or not a number"),
    ("0001,xclick,/m/01g317,1,0.1,0.2,0.1,0.3,0,0,2,0,0", annotations.BAD_FLAG, "IsGroupOf is 2"),
    ("0001,xclick,/m/01g317,1,0.1,0.2,0.1,0.3,0,0,0,0", annotations.MALFORMED,
     "wrong number of fields"),
]


@pytest.mark.parametrize("bad,reason,fragment", BAD_ROWS, ids=[r[1] + str(i)
                                                               for i, r in enumerate(BAD_ROWS)])
def test_strict_names_file_line_and_problem(tmp_path, bad, reason, fragment):
    path = write(tmp_path, [GOOD[0], bad, GOOD[2]])
    with pytest.raises(InputFileError) as info:
        read_boxes(path, CLASSES)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: {reason}")
    assert fragment in str(info.value)


@pytest.mark.parametrize("bad,reason,fragment", BAD_ROWS, ids=[r[1] + str(i)
                                                               for i, r in enumerate(BAD_ROWS)])
def test_lenient_skips_counts_and_keeps_the_rest(tmp_path, bad, reason, fragment):
    path = write(tmp_path, [GOOD[0], bad, GOOD[2]])
    frame, report = read_boxes(path, CLASSES, lenient=True)
    assert report.skipped == {reason: 1}
    assert report.skipped_lines[0][:2] == (3, reason)
    assert fragment in report.skipped_lines[0][2]
    assert frame["ImageID"].tolist() == ["000002b66c9c498e", "00000c4b4f3b5b8a"]
    assert report.rows == 2


def test_line_numbers_survive_blank_and_malformed_lines(tmp_path):
    lines = [GOOD[0], "", "x,y", GOOD[1], "0001,xclick,/m/01g317,1,0.5,0.2,0.1,0.3,0,0,0,0,0"]
    path = write(tmp_path, lines)
    frame, report = read_boxes(path, CLASSES, lenient=True)
    assert report.skipped_lines == [
        (4, annotations.MALFORMED, "'x,y' has the wrong number of fields (the header has 13)"),
        (6, annotations.MIN_GT_MAX, "XMin=0.5 > XMax=0.2"),
    ]
    assert len(frame) == 2
    assert report.skipped_images == {"x": annotations.MALFORMED, "0001": annotations.MIN_GT_MAX}
    with pytest.raises(InputFileError, match=r"boxes.csv:4: malformed_row"):
        read_boxes(path, CLASSES)


def test_several_problems_in_one_row_count_once(tmp_path):
    path = write(tmp_path, ["../x,xclick,/m/unicorn,1,0.5,1.2,0.1,0.3,0,0,0,0,0"])
    _, report = read_boxes(path, CLASSES, lenient=True)
    assert report.num_skipped == 1


def test_duplicate_needs_every_column_equal(tmp_path):
    # Same box, other flag: not a duplicate row.
    other_flag = GOOD[0][:-1] + "1"
    frame, report = read_boxes(write(tmp_path, [GOOD[0], other_flag]), CLASSES)
    assert len(frame) == 2 and report.num_skipped == 0


def test_zero_area_box_is_accepted(tmp_path):
    frame, _ = read_boxes(write(tmp_path, ["0001,xclick,/m/01g317,1,0.2,0.2,0.1,0.3,0,0,0,0,0"]))
    assert len(frame) == 1


def test_no_class_check_without_classes(tmp_path):
    frame, _ = read_boxes(write(tmp_path, ["0001,xclick,/m/unicorn,1,0.1,0.2,0.1,0.3,0,0,0,0,0"]))
    assert frame["LabelName"].tolist() == ["/m/unicorn"]


def test_image_labels(tmp_path):
    path = write(tmp_path, ["0001,verification,/m/01g317,1", "0001,verification,/m/0dzct,0"],
                 name="labels.csv", header="ImageID,Source,LabelName,Confidence")
    frame, report = read_image_labels(path, CLASSES)
    assert list(frame.columns) == list(annotations.LABEL_COLUMNS)
    assert frame["Confidence"].tolist() == [1.0, 0.0]
    assert report.rows == 2


def test_image_labels_bad_confidence_and_unknown_mid(tmp_path):
    path = write(tmp_path, ["0001,verification,/m/01g317,0.5", "0001,verification,/m/x,1",
                            "0002,verification,/m/0dzct,1"],
                 name="labels.csv", header="ImageID,Source,LabelName,Confidence")
    with pytest.raises(InputFileError, match=r"labels.csv:2: bad_confidence: Confidence=0.5"):
        read_image_labels(path, CLASSES)
    frame, report = read_image_labels(path, CLASSES, lenient=True)
    assert report.skipped == {annotations.BAD_CONFIDENCE: 1, annotations.UNKNOWN_MID: 1}
    assert frame["ImageID"].tolist() == ["0002"]


def test_image_labels_missing_confidence_column(tmp_path):
    path = write(tmp_path, ["0001,verification,/m/01g317"], name="labels.csv",
                 header="ImageID,Source,LabelName")
    with pytest.raises(InputFileError, match="missing column.*Confidence"):
        read_image_labels(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(InputFileError, match="empty.csv:1: the file is empty"):
        read_boxes(str(path))


def test_report_summary(tmp_path):
    path = write(tmp_path, [GOOD[0], GOOD[0]])
    _, report = read_boxes(path, CLASSES, lenient=True)
    assert report.summary().endswith("1 rows kept, 1 skipped (duplicate_row 1)")
