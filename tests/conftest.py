"""Shared fixtures, and a guard that the tests read nothing outside the checkout.

A user's fresh clone has nothing beside it, so a test (or the code it runs) that opens a file
next to the checkout would pass here and fail there. Every file opened by the test process
under the checkout's parent folder must lie inside the checkout (or the temporary folder).
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
OPENIMAGES = REPO / "third_party" / "openimages"


def outside_checkout(path: str, repo: str, temp: str) -> bool:
    """Whether `path` lies beside the checkout `repo`: under its parent folder but neither in
    `repo` nor in the temporary folder `temp`."""
    parent = os.path.dirname(repo)
    if parent in ("", os.sep):
        return False  # a checkout at the file system's root has no "beside"
    path = os.path.abspath(path)
    inside = lambda root: path == root or path.startswith(root + os.sep)  # noqa: E731
    return inside(parent) and not inside(repo) and not inside(temp)


def _guard_reads_outside_the_checkout() -> None:
    repo, temp = str(REPO), os.path.realpath(tempfile.gettempdir())

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if outside_checkout(path, repo, temp):
                raise PermissionError(
                    f"{path} is outside the checkout {repo}: a fresh clone has nothing beside "
                    "it; keep what the tests need inside the repository")

    sys.addaudithook(hook)


# Under Bazel the sandbox already shows a test only its declared inputs, and the runfiles
# folder beside the checkout's copy holds other repositories' files legitimately.
if "TEST_SRCDIR" not in os.environ:
    _guard_reads_outside_the_checkout()


@pytest.fixture(scope="session")
def openimages_dir() -> pathlib.Path:
    """The real Open Images label files (CC BY 4.0) kept in third_party/openimages/."""
    return OPENIMAGES
