"""Shared fixtures: the real Open Images label files kept beside the repository."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def shared_dir() -> pathlib.Path:
    """../shared next to the checkout (CI lays it there); OID_SHARED_DIR overrides."""
    return pathlib.Path(os.environ.get("OID_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def openimages_dir() -> pathlib.Path:
    path = shared_dir() / "data" / "openimages"
    if not path.is_dir():
        pytest.fail(f"{path} not found: the real Open Images label files live in ../shared/data/"
                    "openimages beside the checkout (set OID_SHARED_DIR to point elsewhere)")
    return path
