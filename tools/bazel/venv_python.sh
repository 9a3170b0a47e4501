#!/bin/sh
# Python interpreter for Bazel (see tools/bazel/BUILD): execs the project's
# virtualenv, <checkout>/.venv/bin/python, without hard-coding the checkout path.
# Bazel reaches this file through runfiles/execroot symlinks that end at the
# source file, so resolving them gives <checkout>/tools/bazel/venv_python.sh.
here=$(dirname "$(readlink -f "$0")")
root=$(dirname "$(dirname "$here")")
if [ ! -x "$root/.venv/bin/python" ]; then
    echo "venv_python.sh: $root/.venv/bin/python not found; run 'make venv' first" >&2
    exit 1
fi
exec "$root/.venv/bin/python" "$@"
