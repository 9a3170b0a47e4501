"""File access for local paths and, when TensorFlow is installed, remote ones (gs://, s3://).

The oid package does not import TensorFlow at module load; remote paths use
tf.io.gfile lazily so that `gs://` data works in the Beam job and on clusters.

Files that cannot be read as what they claim to be (a cut-short or corrupt
`.gz`, bytes that are not UTF-8) raise oid.errors.InputFileError naming the
file, never a bare EOFError or UnicodeDecodeError; a command-line path that
cannot be read or written at all is refused up front by check_input_file /
check_output_file with oid.errors.UsageError naming the flag.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import zlib
from collections.abc import Iterator
from typing import IO

from oid.errors import InputFileError, UsageError

_GZIP_MAGIC = b"\x1f\x8b"


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def open_file(path: str, mode: str = "r", *, errors: str = "strict") -> IO:
    """Opens a local or remote file. Text modes use UTF-8 (`errors` as for `open`)."""
    path = str(path)
    if _is_remote(path):
        import tensorflow as tf  # Only for remote paths.

        return tf.io.gfile.GFile(path, mode)
    if "b" in mode:
        return open(path, mode)
    return open(path, mode, encoding="utf-8", errors=errors, newline="")


def open_maybe_gzip(path: str, mode: str = "r", *, gzipped: bool | None = None,
                    compresslevel: int = 6, errors: str = "strict") -> IO:
    """Like open_file, through gzip when `gzipped` (default: when the path ends in .gz).

    Written gzip files have no name or time in their header: equal text, equal bytes.

    Text modes use UTF-8 with newlines untranslated, as open_file. Closing the
    returned file closes the underlying one too. compresslevel 6 (zlib's
    default) writes about three times faster than gzip's 9 for a few per cent
    more bytes. Reading a gzipped file that is cut short, corrupt or no gzip
    at all raises InputFileError naming it ("truncated or not gzip").
    """
    path = str(path)
    if gzipped is None:
        gzipped = path.endswith(".gz")
    if not gzipped:
        return open_file(path, mode, errors=errors)
    raw_mode = mode.replace("t", "").replace("b", "") + "b"
    raw = open_file(path, raw_mode)
    # Written without a file name or time in the header (as `gzip -n`), so that the same
    # text always gives the same bytes: a resumed predict.py run, or python -m oid.combine,
    # can be compared with cmp.
    fixed = {"filename": "", "mtime": 0} if "r" not in raw_mode else {}
    packed = _NamedGzipFile(path, fileobj=raw, mode=raw_mode, compresslevel=compresslevel,
                            **fixed)
    packed.myfileobj = raw  # GzipFile closes `myfileobj` on close, as when it opens a name
    if "b" in mode:
        return packed
    return io.TextIOWrapper(packed, encoding="utf-8", errors=errors, newline="")


class _NamedGzipFile(gzip.GzipFile):
    """A GzipFile whose read errors name the file (Arrow re-raises them as they are)."""

    def __init__(self, path: str, **kwargs):
        self._path = path
        super().__init__(**kwargs)

    def read(self, size=-1):
        try:
            return super().read(size)
        except (EOFError, OSError, zlib.error) as e:
            raise _gzip_error(self._path, e) from None

    def read1(self, size=-1):
        try:
            return super().read1(size)
        except (EOFError, OSError, zlib.error) as e:
            raise _gzip_error(self._path, e) from None

    def peek(self, n):
        try:
            return super().peek(n)
        except (EOFError, OSError, zlib.error) as e:
            raise _gzip_error(self._path, e) from None

    def readline(self, size=-1):
        try:
            return super().readline(size)
        except (EOFError, OSError, zlib.error) as e:
            raise _gzip_error(self._path, e) from None


def _gzip_error(path: str, e: BaseException) -> BaseException:
    """The InputFileError for a gzip stream that cannot be read whole (other OSErrors as is)."""
    if not isinstance(e, EOFError | gzip.BadGzipFile | zlib.error):
        return e  # a disk or network error: not the file's content
    again = ("the rows after the {} are unknowable, so not even --lenient can skip them: "
             "write or download the file again (`gzip -t FILE` checks it)")
    if isinstance(e, EOFError):
        what = "the gzip data ends before its end-of-stream marker (the file was cut short)"
        again = again.format("cut")
    elif str(e).startswith("Not a gzipped file") and not _starts_with_gzip_magic(path):
        return InputFileError(path, None, "truncated or not gzip: the name ends in .gz but the "
                                          "file is not gzip-compressed; gzip it, or drop .gz "
                                          "from the name of a plain file")
    else:  # a bad CRC or length, corrupt deflate data, or garbage after the last member
        what = f"the gzip data is corrupt ({e})"
        again = again.format("damage")
    return InputFileError(path, None, f"truncated or not gzip: {what}; {again}")


def _starts_with_gzip_magic(path: str) -> bool:
    with open_file(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def not_utf8_error(path: str, line: int | None, byte: int | None) -> InputFileError:
    """The InputFileError for a file whose line `line` is not UTF-8 text."""
    what = f" (byte 0x{byte:02x})" if byte is not None else ""
    fix = "pass the right file, saved as UTF-8 text"
    if not str(path).endswith(".gz") and not _is_remote(path):
        with contextlib.suppress(OSError), open_file(path, "rb") as f:
            if f.read(2) == _GZIP_MAGIC:
                fix = "it is gzip-compressed: name it *.gz or gunzip it"
    return InputFileError(path, line, f"not UTF-8 text{what}; {fix}")


def first_non_utf8_line(path: str) -> tuple[int | None, int | None]:
    """(1-based line, first bad byte) of the first line of `path` that is not UTF-8.

    (None, None) when every line decodes. Lines are split on b"\\n", which
    never occurs inside a UTF-8 multi-byte sequence.
    """
    with open_maybe_gzip(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return line, raw[e.start]
    return None, None


def decode_utf8(data: bytes, path: str) -> str:
    """`data` (the whole of `path`) as text, a leading byte-order mark dropped.

    Raises InputFileError naming the line of the first byte that is not UTF-8.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8_error(path, data.count(b"\n", 0, e.start) + 1, data[e.start]) from None


def read_text(path: str) -> str:
    """The whole UTF-8 text of a file (.gz: gzipped), a leading byte-order mark dropped."""
    with open_maybe_gzip(path, "rb") as f:
        data = f.read()
    return decode_utf8(data, str(path))


def exists(path: str) -> bool:
    path = str(path)
    if _is_remote(path):
        import tensorflow as tf  # Only for remote paths.

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def join(*parts: str) -> str:
    """Joins path parts with '/', which is right for local POSIX paths and for URLs."""
    return "/".join([str(parts[0]).rstrip("/")] + [str(p).strip("/") for p in parts[1:]])


# -- command-line paths ----------------------------------------------------------------


def check_input_file(flag: str, path: str) -> None:
    """Raises UsageError naming `flag` unless `path` is a readable regular file.

    Remote paths are not checked here (that would import TensorFlow); reading
    them reports their errors.
    """
    path = str(path)
    if not path:
        raise UsageError(flag, path, "the path is empty; pass a file")
    if _is_remote(path):
        return
    if not os.path.exists(path):
        raise UsageError(flag, path, "no such file; check the path")
    if os.path.isdir(path):
        raise UsageError(flag, path, "is a directory, not a file; pass the file itself")
    if not os.path.isfile(path):
        raise UsageError(flag, path, "is not a regular file; pass a file")
    if not os.access(path, os.R_OK):
        raise UsageError(flag, path, "cannot be read (permission denied); check its permissions")


def check_output_file(flag: str, path: str, inputs: dict[str, str] | None = None) -> None:
    """Raises UsageError naming `flag` unless `path` can be written as a file.

    The folder must exist and be writable, `path` must not be a folder, and it
    must not be one of `inputs` (flag -> path), which writing would destroy.
    """
    path = str(path)
    if not path:
        raise UsageError(flag, path, "the path is empty; pass a file name")
    if _is_remote(path):
        return
    if os.path.isdir(path):
        raise UsageError(flag, path, "is a directory; pass a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(flag, path, f"the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(flag, path, f"the folder {folder} is not writable; choose another path")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(flag, path, "the file exists and is not writable; choose another path")
    for other_flag, other in (inputs or {}).items():
        if other and not _is_remote(other) and os.path.exists(other) \
                and os.path.exists(path) and os.path.samefile(path, other):
            raise UsageError(flag, path, f"is the {other_flag} file, which writing would "
                                         "destroy; choose another path")


def check_output_dir(flag: str, path: str, subdirs: tuple[str, ...] = ()) -> None:
    """Raises UsageError naming `flag` unless `path` is (or can be made) a writable folder.

    Missing folders are fine when their nearest existing parent is a writable
    folder; `subdirs` of `path` that exist must be folders too.
    """
    path = str(path)
    if not path:
        raise UsageError(flag, path, "the path is empty; pass a folder")
    if _is_remote(path):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(flag, path, "is a file, not a folder; choose a folder")
    for sub in subdirs:
        inner = os.path.join(path, sub)
        if os.path.exists(inner) and not os.path.isdir(inner):
            raise UsageError(flag, path, f"{inner} is a file where a folder goes; remove it "
                                         "or choose another folder")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(flag, path, f"{parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(flag, path, f"{parent} is not writable; choose another folder")


@contextlib.contextmanager
def atomic_output(path: str, mode: str = "w") -> Iterator[IO]:
    """Opens `path` for writing under a temporary name; renames it into place on success.

    A write that fails (an exception, an interrupt) deletes the temporary file,
    so a complete-looking file under `path` is always complete. Remote paths
    are written in place (object stores publish a file only when it is closed).
    .gz paths are gzipped.
    """
    path = str(path)
    if _is_remote(path):
        with open_maybe_gzip(path, mode) as f:
            yield f
        return
    temp = f"{path}.partial"
    try:
        with open_maybe_gzip(temp, mode, gzipped=path.endswith(".gz")) as f:
            yield f
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise


def invalid_row_collector(lenient: bool):
    """(handler, skipped) for pyarrow.csv's ParseOptions(invalid_row_handler=...): in
    lenient mode a row with the wrong number of fields is skipped and its text appended to
    `skipped`; otherwise Arrow raises at it."""
    skipped: list[str] = []

    def handler(row):
        if not lenient:
            return "error"
        skipped.append(row.text)
        return "skip"

    return handler, skipped
