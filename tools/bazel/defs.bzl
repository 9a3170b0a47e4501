"""Shared lists for the BUILD files."""

# Every project py_library: tests and entry points depend on all of them.
# A new package directory needs a BUILD.bazel whose deps follow the layering
# (docs/architecture.md) and its label here.
PY_LIBS = [
    "//oid",
    "//boxes",
    "//tfrecords",
    "//model",
    "//beam_jobs",
    "//engine",
]

# Data every pytest run needs: pytest's config (pyproject.toml), top-level and
# tests/ conftest.py files. constraints.txt is listed so that a change to the
# pinned dependencies re-runs cached tests.
PYTEST_DATA = [
    "//:pytest_config",
    "//tests:pytest_support",
]

PYTEST_MAIN = "//tools/bazel:pytest_main.py"

def pytest_tests(data = [], large = []):
    """One py_test per test_*.py of the calling package, each running pytest on its file,
    plus a test_support library of the package's other .py files (conftest, fixtures).
    Files named in `large` get Bazel's 15-minute timeout instead of 5."""
    native.py_library(
        name = "test_support",
        testonly = True,
        srcs = native.glob(["*.py"], exclude = ["test_*.py"]),
        deps = PY_LIBS,
    )
    for f in native.glob(["test_*.py"]):
        native.py_test(
            name = f[:-3],
            size = "large" if f in large else "medium",
            srcs = [f, PYTEST_MAIN],
            main = PYTEST_MAIN,
            args = ["$(rootpath %s)" % f],
            # Non-Python files here (fixtures, testdata/).
            data = PYTEST_DATA + data + native.glob(
                ["**"],
                exclude = ["**/*.py", "**/*.pyc", "**/__pycache__/**", "BUILD.bazel"],
            ),
            deps = [":test_support"] + PY_LIBS,
        )
