"""Readers for the official annotation CSVs, with validation.

Box files (`*-bbox.csv`):
    ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,
    IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside
Image-level label files (`*-imagelabels.csv`):
    ImageID,Source,LabelName,Confidence     (1 = verified present, 0 = verified absent)

Coordinates are normalized to [0, 1]; note the box CSV orders them
XMin, XMax, YMin, YMax.

The full challenge box file has 12.2M rows. It is parsed by Arrow's
multi-threaded CSV reader straight into compact columns: categorical ImageID,
Source and LabelName, float32 coordinates and confidences, int8 flags (about
30 bytes a row). Validation runs vectorized on those columns, mostly on the
categories (1.7M image ids, 500 MIDs) rather than on the rows.

A path ending in .gz is read through gzip; a cut-short or corrupt .gz, or
bytes that are not UTF-8, raise InputFileError naming the file (and line).

Every problem names the file and the 1-based line (the header is line 1). In
strict mode (the default) the first problem raises InputFileError; with
`lenient=True` bad rows are skipped, counted by reason in the returned
ReadReport, and listed with their line numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections import Counter
from collections.abc import Container

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from oid import fileio
from oid.errors import InputFileError

# Open Images ImageIDs are 16 hex digits; accept any plain token of letters,
# digits, '_' and '-' so that other datasets work too. Nothing with '.', '/' or
# '\\' passes, so an ImageID can never name a path outside the image folder.
IMAGE_ID_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")

BOX_COORDS = ("XMin", "XMax", "YMin", "YMax")
BOX_FLAGS = ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
BOX_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence") + BOX_COORDS + BOX_FLAGS
LABEL_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")

# Columns a box file must have; the other BOX_COLUMNS are filled when absent
# (Source "unknown", Confidence 1, flags -1 meaning "not annotated").
BOX_REQUIRED = ("ImageID", "LabelName") + BOX_COORDS + ("IsGroupOf",)
LABEL_REQUIRED = ("ImageID", "LabelName", "Confidence")

_DICT = pa.dictionary(pa.int32(), pa.string())
_ARROW_TYPES = {
    "ImageID": _DICT, "Source": _DICT, "LabelName": _DICT, "Confidence": pa.float32(),
    **{c: pa.float32() for c in BOX_COORDS}, **{c: pa.int8() for c in BOX_FLAGS},
}

# Skip reasons, in the order they are checked; a row is counted once, under the first.
MALFORMED = "malformed_row"
MISSING_VALUE = "missing_value"
BAD_IMAGE_ID = "bad_image_id"
UNKNOWN_MID = "unknown_mid"
COORD_OUT_OF_RANGE = "coordinate_out_of_range"
MIN_GT_MAX = "min_greater_than_max"
BAD_FLAG = "bad_flag"
BAD_CONFIDENCE = "bad_confidence"
DUPLICATE = "duplicate_row"

_FIXES = {
    MALFORMED: "every row needs one field per header column",
    MISSING_VALUE: "fill the empty field",
    BAD_IMAGE_ID: "ImageIDs are plain tokens of letters, digits, '_' and '-'",
    UNKNOWN_MID: "add the MID to the class table or drop the row",
    COORD_OUT_OF_RANGE: "coordinates are normalized to [0, 1]",
    MIN_GT_MAX: "check the column order XMin,XMax,YMin,YMax",
    BAD_FLAG: "flags are 0, 1 or -1 (not annotated)",
    BAD_CONFIDENCE: "image-level confidence is 1 (present) or 0 (absent)",
    DUPLICATE: "remove the repeated row",
}

MAX_LISTED = 10_000  # skipped lines kept with their details; counts are always complete


@dataclasses.dataclass
class ReadReport:
    """What a reader kept and skipped.

    Attributes:
      path: the file read.
      rows: data rows kept.
      skipped: reason -> number of rows skipped for it.
      skipped_lines: (line, reason, detail) for the first MAX_LISTED skipped rows.
      skipped_images: ImageID -> reason of its first skipped row (every skipped
        row, no cap), so that callers can leave out partly annotated images.
    """

    path: str
    rows: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    skipped_lines: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    skipped_images: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.path}: {self.rows} rows"
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items()))
        return f"{self.path}: {self.rows} rows kept, {self.num_skipped} skipped ({reasons})"


def read_boxes(
    path: str, classes: Container[str] | None = None, *, lenient: bool = False,
    coord_dtype: type = np.float32, check_duplicates: bool = True,
) -> tuple[pd.DataFrame, ReadReport]:
    """Reads and validates a box CSV.

    Args:
      path: local or remote (gs://) path.
      classes: if given, every LabelName must be in it (a ClassTable, a
        Hierarchy or a set of MIDs).
      lenient: skip and count bad rows instead of raising.
      coord_dtype: np.float32 (compact) or np.float64 (the exact decimal
        values, as the challenge metric needs them: float32 rounding moves
        IoUs that sit exactly on 0.5).
      check_duplicates: treat a row repeating an earlier one as a problem.
        Hierarchy-expanded files repeat rows legitimately.

    Returns:
      (frame, report). The frame has BOX_COLUMNS in that order: categorical
      ImageID/Source/LabelName, float32 Confidence, XMin, XMax, YMin, YMax
      (normalized) of `coord_dtype`, int8 flags; a RangeIndex.
    """
    return _read(path, BOX_COLUMNS, BOX_REQUIRED, classes, lenient, boxes=True,
                 coord_dtype=coord_dtype, check_duplicates=check_duplicates)


def read_image_labels(
    path: str, classes: Container[str] | None = None, *, lenient: bool = False,
    check_duplicates: bool = True,
) -> tuple[pd.DataFrame, ReadReport]:
    """Reads and validates an image-level label CSV.

    Returns (frame, report); the frame has LABEL_COLUMNS: categorical ImageID,
    Source, LabelName and float32 Confidence (1 present, 0 absent).
    `check_duplicates` as in read_boxes.
    """
    return _read(path, LABEL_COLUMNS, LABEL_REQUIRED, classes, lenient, boxes=False,
                 check_duplicates=check_duplicates)


def _read_header(path: str) -> list[str]:
    with fileio.open_maybe_gzip(path, "rb") as f:
        first = f.readline()
    text = fileio.decode_utf8(first, path).rstrip("\r\n")
    if not text:
        raise InputFileError(path, 1, "the file is empty; expected a header row")
    return [c.strip().strip('"') for c in text.split(",")]


def _read(path, columns, required, classes, lenient, boxes, coord_dtype=np.float32,
          check_duplicates=True):
    path = str(path)
    header = _read_header(path)
    if not boxes and "XMin" in header:
        # A box file has every label column (Confidence 1 throughout): read as labels it
        # would pass, and the real verified-absent labels would silently be missing.
        raise InputFileError(path, 1, f"has box columns ({', '.join(BOX_COORDS)}): this is a "
                                      f"box file; image-level labels are {','.join(columns)}")
    missing = [c for c in required if c not in header]
    if missing:
        raise InputFileError(
            path, 1,
            f"missing column(s) {', '.join(missing)}; the header has {', '.join(header)}; "
            f"expected {','.join(columns)}")
    present = [c for c in columns if c in header]
    report = ReadReport(path)
    on_invalid_row, malformed = fileio.invalid_row_collector(lenient)

    try:
        table = _arrow_read(path, present, on_invalid_row, typed=True, coord_dtype=coord_dtype)
    except pa.ArrowInvalid as e:
        # A value that does not convert (a word in a float column, say), or a
        # malformed row in strict mode: find the exact line the slow way.
        if "UTF8" in str(e):
            raise fileio.not_utf8_error(path, *fileio.first_non_utf8_line(path)) from None
        if "conversion error" in str(e) or "expected" not in str(e).lower():
            table = None
        else:
            line, text = _first_malformed_line(path, len(header))
            raise InputFileError(
                path, line, f"{MALFORMED}: {_malformed_detail(text, len(header))}; "
                f"{_FIXES[MALFORMED]}") from None
    if table is None:
        malformed.clear()
        try:
            table = _arrow_read(path, present, on_invalid_row, typed=False)
        except pa.ArrowInvalid as e:
            if "UTF8" not in str(e):
                raise
            raise fileio.not_utf8_error(path, *fileio.first_non_utf8_line(path)) from None
    frame = _to_frame(table, present, columns, typed=table.schema.field("ImageID").type == _DICT,
                      coord_dtype=coord_dtype)
    del table

    problems = _validate(frame, classes, boxes, check_duplicates)
    if malformed:
        report.skipped[MALFORMED] += len(malformed)
    if problems:
        row_to_line = _row_lines(path, len(header)) if (malformed or _has_blank_lines(path)) else None
        first_row, first_reason, first_detail = problems[0]
        if not lenient:
            line = _line(first_row, row_to_line)
            raise InputFileError(
                path, line, f"{first_reason}: {first_detail}; {_FIXES[first_reason]} "
                "(or pass --lenient to skip and count such rows)")
        bad = np.zeros(len(frame), dtype=bool)
        for row, reason, detail in problems:
            if bad[row]:
                continue
            bad[row] = True
            report.skipped[reason] += 1
            report.skipped_images.setdefault(str(frame["ImageID"].iat[row]), reason)
            if len(report.skipped_lines) < MAX_LISTED:
                report.skipped_lines.append((_line(row, row_to_line), reason, detail))
        frame = frame.loc[~bad].reset_index(drop=True)
    if malformed:
        lines = _malformed_lines(path, len(header))
        for _, text in lines:
            report.skipped_images.setdefault(text.split(",", 1)[0], MALFORMED)
        for line, text in lines[: max(0, MAX_LISTED - len(report.skipped_lines))]:
            report.skipped_lines.append((line, MALFORMED, _malformed_detail(text, len(header))))
        report.skipped_lines.sort()
    report.rows = len(frame)
    return frame, report


def _arrow_read(path, present, on_invalid_row, typed, coord_dtype=np.float32):
    read_opts = pacsv.ReadOptions(block_size=64 << 20, use_threads=True)
    parse_opts = pacsv.ParseOptions(invalid_row_handler=on_invalid_row)
    types = {c: (_ARROW_TYPES[c] if typed else pa.string()) for c in present}
    if typed:
        types.update({c: pa.from_numpy_dtype(coord_dtype) for c in BOX_COORDS if c in types})
    convert = pacsv.ConvertOptions(
        column_types=types, include_columns=present,
        strings_can_be_null=False, quoted_strings_can_be_null=False)
    with fileio.open_maybe_gzip(path, "rb") as f:
        return pacsv.read_csv(f, read_options=read_opts, parse_options=parse_opts,
                              convert_options=convert)


def _to_frame(table: pa.Table, present, columns, typed: bool,
              coord_dtype=np.float32) -> pd.DataFrame:
    """Arrow table -> pandas with the documented dtypes, consuming `table`.

    On the slow path (typed=False, all strings) values that do not parse become
    NaN / the sentinel -128 and are reported by _validate.
    """
    n = table.num_rows
    if typed:
        data = {}
        for c in present:
            col = table.column(c)
            if _ARROW_TYPES[c] == _DICT:
                data[c] = _categorical(col)
            else:
                data[c] = col.to_numpy()  # zero-copy for one chunk, one concatenation otherwise
        del table
        frame = pd.DataFrame(data, copy=False)
    else:
        data = {}
        for c in present:
            col = table.column(c)
            kind = _ARROW_TYPES[c]
            if kind == _DICT:
                data[c] = _categorical(col.dictionary_encode())
                continue
            values = pd.to_numeric(pd.Series(col.to_numpy(zero_copy_only=False)), errors="coerce")
            if kind == pa.int8():
                ok = values.notna() & (values == values.round()) & values.abs().le(127)
                data[c] = np.where(ok, values.fillna(0), -128).astype(np.int8)
            else:
                dtype = coord_dtype if c in BOX_COORDS else np.float32
                data[c] = values.to_numpy(dtype, na_value=np.nan)
        frame = pd.DataFrame(data, copy=False)
    for c in columns:
        if c in present:
            continue
        if c == "Source":
            frame[c] = pd.Categorical.from_codes(np.zeros(n, np.int8), ["unknown"])
        elif c == "Confidence":
            frame[c] = np.ones(n, np.float32)
        else:
            frame[c] = np.full(n, -1, np.int8)
    return frame[list(columns)]


def _categorical(col: pa.ChunkedArray) -> pd.Categorical:
    """A dictionary-encoded Arrow column as a pandas Categorical, without a per-row pass in Python.

    Arrow encodes each parse block with its own dictionary; unifying them and
    handing pandas the codes directly is about twice as fast as to_pandas().
    """
    col = col.unify_dictionaries() if col.num_chunks > 1 else col
    if col.num_chunks == 0:
        return pd.Categorical([])
    dictionary = col.chunk(0).dictionary
    codes = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in col.chunks]) \
        if col.num_chunks > 1 else col.chunk(0).indices.to_numpy(zero_copy_only=False)
    dtype = pd.CategoricalDtype(pd.Index(dictionary.to_pandas()))
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def _codes_where(cat: pd.Series, bad_categories: np.ndarray) -> np.ndarray:
    """Row indices whose category is flagged in `bad_categories` (a bool per category)."""
    if not bad_categories.any():
        return np.empty(0, np.int64)
    codes = cat.cat.codes.to_numpy()
    return np.flatnonzero(bad_categories[codes] & (codes >= 0))


def _validate(frame: pd.DataFrame, classes, boxes: bool,
              check_duplicates: bool = True) -> list[tuple[int, str, str]]:
    """All problems as (row, reason, detail), sorted by row; a row may appear more than once."""
    problems: list[tuple[int, str, str]] = []

    def add(rows, reason, detail_fn):
        problems.extend((int(r), reason, detail_fn(int(r))) for r in rows)

    image_ids = frame["ImageID"]
    cats = image_ids.cat.categories
    bad_ids = ~np.asarray(cats.str.fullmatch(IMAGE_ID_PATTERN.pattern), dtype=bool)
    add(_codes_where(image_ids, bad_ids), BAD_IMAGE_ID,
        lambda r: f"ImageID {image_ids.iat[r]!r} is not a plain ID")

    labels = frame["LabelName"]
    if classes is not None:
        unknown = np.array([m not in classes for m in labels.cat.categories], dtype=bool)
        add(_codes_where(labels, unknown), UNKNOWN_MID,
            lambda r: f"LabelName {labels.iat[r]} is not a known class")

    numeric = list(BOX_COORDS) + ["Confidence"] if boxes else ["Confidence"]
    for c in numeric:
        add(np.flatnonzero(np.isnan(frame[c].to_numpy())), MISSING_VALUE,
            lambda r, c=c: f"{c} is empty or not a number")

    if boxes:
        for c in BOX_COORDS:
            v = frame[c].to_numpy()
            add(np.flatnonzero((v < 0) | (v > 1)), COORD_OUT_OF_RANGE,
                lambda r, c=c, v=v: f"{c}={float(v[r]):g} is outside [0, 1]")
        for lo, hi in (("XMin", "XMax"), ("YMin", "YMax")):
            a, b = frame[lo].to_numpy(), frame[hi].to_numpy()
            add(np.flatnonzero(a > b), MIN_GT_MAX,
                lambda r, lo=lo, hi=hi, a=a, b=b: f"{lo}={float(a[r]):g} > {hi}={float(b[r]):g}")
        for c in BOX_FLAGS:
            v = frame[c].to_numpy()
            add(np.flatnonzero((v < -1) | (v > 1)), BAD_FLAG,
                lambda r, c=c, v=v: f"{c} is {int(v[r]) if v[r] != -128 else 'not an integer'}")
    else:
        v = frame["Confidence"].to_numpy()
        add(np.flatnonzero(~np.isnan(v) & (v != 0) & (v != 1)), BAD_CONFIDENCE,
            lambda r: f"Confidence={float(v[r]):g}")

    if check_duplicates:
        add(_duplicate_rows(frame), DUPLICATE, lambda r: "the same row appears earlier in the file")
    problems.sort(key=lambda p: p[0])
    return problems


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def _pack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two 32-bit columns as one exact uint64 key per row."""
    out = np.empty((len(a), 2), np.uint32)
    out[:, 0] = a
    out[:, 1] = b
    return out.view(np.uint64).ravel()


def _bits32(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy()
    values = col.to_numpy()
    if values.dtype.itemsize == 8:  # float64 coordinates: fold to 32 bits (a hash input only)
        wide = values.view(np.uint64)
        return (wide ^ (wide >> np.uint64(32))).astype(np.uint32)
    return values.view(np.uint32)


def _duplicate_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows that repeat an earlier row exactly (every column equal).

    A 64-bit hash of (ImageID, LabelName, XMin, YMin) finds candidates in one
    pass (two different boxes of one class rarely share a corner); candidates
    are then confirmed by comparing whole rows, so neither a shared corner nor
    a hash collision ever reports a false duplicate.
    """
    b = {c: _bits32(frame[c]) for c in ("ImageID", "LabelName", "XMin", "YMin") if c in frame}
    pairs = [("ImageID", "LabelName"), ("XMin", "YMin")]
    h = np.zeros(len(frame), np.uint64)
    with np.errstate(over="ignore"):
        for (x, y), mix in zip([p for p in pairs if p[0] in b], _MIX, strict=False):
            key = _pack(b[x], b[y])
            key *= mix
            h ^= key
            h ^= h >> np.uint64(29)
    # Sorting is several times faster than a hash table at 12M rows, and the
    # common case (no duplicates) stops here.
    ordered = np.sort(h)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return np.empty(0, np.int64)
    dup = np.isin(h, repeated)
    candidates = frame.loc[dup]
    confirmed = candidates.duplicated(keep="first").to_numpy()
    return candidates.index.to_numpy()[confirmed]


def _line(row: int, row_to_line: np.ndarray | None) -> int:
    return int(row_to_line[row]) if row_to_line is not None else row + 2


def _iter_lines(path: str):
    with fileio.open_maybe_gzip(path, "rb") as f:
        yield from enumerate(f, start=1)


def _is_malformed(raw: bytes, num_fields: int) -> bool:
    # OID CSVs quote nothing in box and label files; quoted commas would need
    # the csv module, which this error path can afford.
    if b'"' in raw:
        return len(next(csv.reader([raw.decode("utf-8", "replace")]))) != num_fields
    return raw.count(b",") + 1 != num_fields


def _has_blank_lines(path: str) -> bool:
    return any(not raw.strip() for _, raw in _iter_lines(path))


def _row_lines(path: str, num_fields: int) -> np.ndarray:
    """Physical line of every data row that Arrow kept (blank and malformed lines are not rows)."""
    lines = []
    for line_no, raw in _iter_lines(path):
        if line_no == 1 or not raw.strip() or _is_malformed(raw.rstrip(b"\r\n"), num_fields):
            continue
        lines.append(line_no)
    return np.asarray(lines, np.int64)


def _malformed_lines(path: str, num_fields: int) -> list[tuple[int, str]]:
    out = []
    for line_no, raw in _iter_lines(path):
        raw = raw.rstrip(b"\r\n")
        if line_no > 1 and raw.strip() and _is_malformed(raw, num_fields):
            out.append((line_no, raw.decode("utf-8", "replace")))
    return out


def _malformed_detail(text: str, num_fields: int) -> str:
    return f"{text!r} has the wrong number of fields (the header has {num_fields})"


def _first_malformed_line(path: str, num_fields: int) -> tuple[int | None, str]:
    found = _malformed_lines(path, num_fields)
    return found[0] if found else (None, "")
