"""engine/malloc.py: when it leaves glibc alone, and what mallopt() changes in a fresh process."""

import subprocess
import sys

import pytest

from engine import malloc
from tests.train_fixtures import ENV, REPO


@pytest.mark.parametrize("environ, platform, reason", [
    ({}, "linux", None),
    ({"OID_MALLOC_TUNING": "1"}, "linux", None),
    ({"OID_MALLOC_TUNING": "0"}, "linux", "OID_MALLOC_TUNING=0"),
    ({"MALLOC_ARENA_MAX": "2"}, "linux", None),  # not one of glibc's (they end in _)
    ({"MALLOC_ARENA_MAX_": "2"}, "linux", "glibc's malloc variables are set"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "linux",
     "glibc's malloc variables are set"),
    ({}, "darwin", "darwin: not glibc"),
])
def test_skip_reason(environ, platform, reason):
    assert malloc.skip_reason(environ, platform) == reason


# Whether glibc serves a block of N bytes with its own mmap(): bit 1 (IS_MMAPPED) of the size
# field in the chunk header just before the pointer. The first 4 MB block is mmapped (the
# default threshold is 128 KB) and freeing it raises glibc's dynamic threshold to 4 MB, so a
# 16 MB block is mmapped too unless tune() set the threshold to 32 MB.
_PROBE = """
import ctypes, sys
sys.path.insert(0, {repo!r})
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mmapped(n):
    p = libc.malloc(n)
    flags = ctypes.c_size_t.from_address(p - ctypes.sizeof(ctypes.c_size_t)).value
    libc.free(p)
    return bool(flags & 2)

first = mmapped(4 << 20)
from engine import malloc
print(first, malloc.tune(), mmapped(16 << 20))
"""


def _probe(**env):
    environ = {k: v for k, v in ENV.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    out = subprocess.run([sys.executable, "-c", _PROBE.format(repo=REPO)], cwd=REPO,
                         env={**environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tune_keeps_blocks_up_to_32_mb_on_the_heap():
    assert _probe() == ["True", "True", "False"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_turned_off_glibc_keeps_its_own_thresholds():
    assert _probe(OID_MALLOC_TUNING="0") == ["True", "False", "True"]
