"""File access for local paths and, when TensorFlow is installed, remote ones (gs://, s3://).

The oid package does not import TensorFlow at module load; remote paths use
tf.io.gfile lazily so that `gs://` data works in the Beam job and on clusters.
"""

from __future__ import annotations

import os
from typing import IO


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def open_file(path: str, mode: str = "r") -> IO:
    """Opens a local or remote file. Text modes use UTF-8."""
    path = str(path)
    if _is_remote(path):
        import tensorflow as tf  # Only for remote paths.

        return tf.io.gfile.GFile(path, mode)
    if "b" in mode:
        return open(path, mode)
    return open(path, mode, encoding="utf-8", newline="")


def read_text(path: str) -> str:
    with open_file(path, "r") as f:
        return f.read()


def exists(path: str) -> bool:
    path = str(path)
    if _is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def join(*parts: str) -> str:
    """Joins path parts with '/', which is right for local POSIX paths and for URLs."""
    return "/".join([str(parts[0]).rstrip("/")] + [str(p).strip("/") for p in parts[1:]])
