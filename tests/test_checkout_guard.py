"""The guard of tests/conftest.py: nothing beside the checkout is read."""

import os

import pytest

from tests.conftest import folders_beside, open_guard


@pytest.fixture
def layout(tmp_path):
    """PARENT/checkout, PARENT/shared/x.csv, PARENT/.cache/y, PARENT/notes.txt, PARENT/tmp."""
    parent = tmp_path / "parent"
    for folder in ("checkout/data", "shared", ".cache", "tmp"):
        (parent / folder).mkdir(parents=True)
    for f in ("shared/x.csv", ".cache/y", "notes.txt", "checkout/data/z.csv"):
        (parent / f).write_text("")
    return parent


def test_the_folders_beside_the_checkout(layout):
    # shared/ is beside; the checkout, a hidden cache, a plain file and the temporary folder
    # are not.
    assert folders_beside(str(layout / "checkout"), str(layout / "tmp")) == \
        [str(layout / "shared")]
    # A checkout at the root has no "beside"; nor does one whose parent is the temp folder's.
    assert folders_beside("/checkout", "/tmp") == []
    assert folders_beside(str(layout / "checkout"), str(layout)) == []


def test_the_hook_refuses_opening_a_file_beside_the_checkout(layout):
    repo = str(layout / "checkout")
    hook = open_guard(repo, folders_beside(repo, str(layout / "tmp")))
    with pytest.raises(PermissionError, match="beside the checkout"):
        hook("open", (str(layout / "shared" / "x.csv"), "r", 0))
    with pytest.raises(PermissionError):
        hook("open", (os.path.join(repo, "..", "shared", "x.csv"), "r", 0))
    for allowed in (layout / "checkout" / "data" / "z.csv", layout / ".cache" / "y",
                    layout / "tmp" / "w"):
        hook("open", (str(allowed), "r", 0))
    hook("open", (3, "r", 0))  # a file descriptor: nothing to check
    hook("exec", (str(layout / "shared" / "x.csv"),))  # other events pass
