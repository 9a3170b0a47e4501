"""Bazel py_test entry point: run pytest on the test file given as arguments.

The repo's tests are pytest-style (plain test_* functions, no __main__), so every
py_test uses this file as its `main` and passes its own test file via `args`.
"""

import os
import sys

import pytest

if __name__ == "__main__":
    args = [*sys.argv[1:], "-q", "-p", "no:cacheprovider"]
    # Bazel asks for a JUnit XML report here, which gives per-test-case results.
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args.append(f"--junitxml={xml}")
    sys.exit(pytest.main(args))
