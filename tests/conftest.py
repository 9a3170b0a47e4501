"""Shared fixtures, and a guard that the tests read nothing beside the checkout.

A user's fresh clone has nothing beside it, so a test (or the code it runs in the test process)
that opens a file in a folder next to the checkout would pass here and fail there. The guard
refuses opening anything inside the folders that sit beside the checkout when the tests start,
except hidden ones (caches such as ~/.keras when the checkout is in a home folder) and the
temporary folder.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
from collections.abc import Callable

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
OPENIMAGES = REPO / "third_party" / "openimages"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def folders_beside(repo: str, temp: str) -> list[str]:
    """The folders next to `repo` (in its parent) that a fresh clone would not have: not
    hidden, not holding the temporary folder `temp`, not `repo` itself. None for a checkout at
    the file system's root, whose "beside" is the whole system."""
    parent = os.path.dirname(repo)
    if parent in ("", os.sep):
        return []
    beside = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if name.startswith(".") or path == repo or not os.path.isdir(path) or \
                _inside(temp, path) or _inside(path, temp):
            continue
        beside.append(path)
    return beside


def open_guard(repo: str, beside: list[str]) -> Callable[[str, tuple], None]:
    """An audit hook that refuses the "open" of a path inside one of `beside`."""

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if any(_inside(path, root) for root in beside):
                raise PermissionError(
                    f"{path} is beside the checkout {repo}: a fresh clone has nothing there; "
                    "keep what the tests need inside the repository")

    return hook


# Under Bazel the sandbox already shows a test only its declared inputs, and the runfiles
# folder beside the checkout's copy holds other repositories' files legitimately.
if "TEST_SRCDIR" not in os.environ:
    sys.addaudithook(open_guard(str(REPO), folders_beside(
        str(REPO), os.path.realpath(tempfile.gettempdir()))))


@pytest.fixture(scope="session")
def openimages_dir() -> pathlib.Path:
    """The real Open Images label files (CC BY 4.0) kept in third_party/openimages/."""
    return OPENIMAGES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `runs_first` go to the front of the run. `make test`'s two workers
    (pytest-xdist's load scheduling) take tests in collection order, so the longest test then
    starts at once on one worker while the other works through the rest; left in file order it
    would start late and run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("runs_first") is None)  # stable
