"""The guard of tests/conftest.py: nothing beside the checkout is read."""

import os

import pytest

from tests.conftest import REPO, outside_checkout


def test_a_file_beside_the_checkout_is_outside():
    # /work/main is the checkout: /work/data/x.csv is beside it; /work/main/x, /tmp/x and
    # /usr/lib/x are not.
    assert outside_checkout("/work/data/x.csv", "/work/main", "/tmp")
    assert outside_checkout("/work/main/../sibling/x", "/work/main", "/tmp")
    assert not outside_checkout("/work/main/third_party/x", "/work/main", "/tmp")
    assert not outside_checkout("/tmp/pytest-1/x", "/work/main", "/tmp")
    assert not outside_checkout("/usr/lib/x", "/work/main", "/tmp")
    # A sibling whose name starts like the checkout's is still beside it.
    assert outside_checkout("/work/main2/x", "/work/main", "/tmp")


@pytest.mark.skipif("TEST_SRCDIR" in os.environ, reason="Bazel's sandbox is the guard there")
def test_opening_a_file_beside_the_checkout_fails(tmp_path):
    beside = os.path.join(os.path.dirname(REPO), "no-such-file-beside-the-checkout")
    with pytest.raises(PermissionError, match="outside the checkout"):
        open(beside)
