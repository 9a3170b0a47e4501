"""The class table: MID <-> display name.

The official files (`challenge-2019-classes-description-500.csv`,
`class-descriptions-boxable.csv`) are `MID,DisplayName` rows with no header.
Display names are not unique (the 2018 challenge table has two "Bench" and two
"Mouse"), so everything downstream keys on MIDs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Iterable, Iterator

from oid import fileio
from oid.errors import InputFileError

# Freebase/Knowledge Graph ids as used by Open Images: /m/0xyz or /g/11abc.
MID_PATTERN = re.compile(r"^/[mg]/[0-9a-z_]+$")


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """An ordered table of classes.

    Attributes:
      mids: MIDs in file order.
      names: display names, parallel to `mids`.
    """

    mids: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.mids) != len(self.names):
            raise ValueError("mids and names must have the same length")
        index = {mid: i for i, mid in enumerate(self.mids)}
        if len(index) != len(self.mids):
            raise ValueError("duplicate MIDs in class table")
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.mids)

    def __contains__(self, mid: object) -> bool:
        return mid in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.mids)

    def index(self, mid: str) -> int:
        """Position of `mid` in the table; KeyError naming the MID if unknown."""
        try:
            return self._index[mid]
        except KeyError:
            raise KeyError(f"unknown class MID {mid!r} (not in the class table)") from None

    def name(self, mid: str) -> str:
        return self.names[self.index(mid)]

    def subset(self, mids: Iterable[str]) -> ClassTable:
        """A new table with `mids` in the given order (each must be known)."""
        mids = tuple(mids)
        return ClassTable(mids, tuple(self.name(m) for m in mids))

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows(zip(self.mids, self.names, strict=True))
        return out.getvalue()


def parse_classes(text: str, path: str = "<string>") -> ClassTable:
    """Parses `MID,DisplayName` rows (no header; a V6-style header row is tolerated)."""
    mids: list[str] = []
    names: list[str] = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if line_no == 1 and [c.strip() for c in row] == ["LabelName", "DisplayName"]:
            continue
        if len(row) != 2:
            raise InputFileError(
                path, line_no,
                f"expected 2 fields 'MID,DisplayName', found {len(row)}: {row!r}; "
                "quote display names that contain commas")
        mid, name = row[0].strip(), row[1].strip()
        if not MID_PATTERN.match(mid):
            raise InputFileError(
                path, line_no, f"{mid!r} is not a MID (expected the form /m/0abc or /g/11abc)")
        if mid in seen:
            raise InputFileError(
                path, line_no, f"MID {mid} is listed twice (first on line {seen[mid]})")
        seen[mid] = line_no
        mids.append(mid)
        names.append(name)
    if not mids:
        raise InputFileError(path, None, "the class table is empty")
    return ClassTable(tuple(mids), tuple(names))


def load_classes(path: str) -> ClassTable:
    """Reads a class table from a local path or any path tf.io.gfile/fsspec-free `open` accepts."""
    return parse_classes(fileio.read_text(path), str(path))
