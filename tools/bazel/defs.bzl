"""Shared lists for the BUILD files."""

# Every project py_library: tests and entry points depend on all of them.
# A new package directory (tfrecords/, model/, beam_jobs/) needs a copy of
# oid/BUILD.bazel and its label here.
PY_LIBS = [
    "//oid",
    "//tfrecords",
    "//beam_jobs",
    "//model",
]

# Data every pytest run needs: pytest's config (pyproject.toml), top-level and
# tests/ conftest.py files. constraints.txt is listed so that a change to the
# pinned dependencies re-runs cached tests.
PYTEST_DATA = [
    "//:pytest_config",
    "//tests:pytest_support",
]

PYTEST_MAIN = "//tools/bazel:pytest_main.py"
