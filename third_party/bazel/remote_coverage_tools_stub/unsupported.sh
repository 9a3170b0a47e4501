#!/bin/sh
echo "remote_coverage_tools is stubbed out: bazel coverage is not supported offline" >&2
exit 1
