"""glibc malloc settings for TensorFlow on CPU: keep freed memory instead of handing it back.

TensorFlow's CPU kernels allocate and free their activations and gradients every step, most
of them between 128 KB and a few MB. glibc serves such blocks with fresh mmap()s or trims the
freed memory of its arenas back to the kernel, so every step faults in (and zeroes) the same
pages again: on the demo's training about 500 mmap/munmap calls per second, and about 40% of
the CPU time in the kernel. Keeping the memory (a trim threshold of 1 GB, heap growth in
256 MB steps, heap blocks up to glibc's 32 MB limit) trains the demo model about 2x faster on
a 2-core AMD EPYC (benchmarks/bench_malloc.py; docs/performance.md, Memory allocator) for 9%
more peak memory: the process's resident memory stays near its peak between steps.

The commands that run a model (train.py, eval.py, predict.py) call tune() first. It does
nothing where glibc is not the C library, when the user set glibc's own malloc variables
(MALLOC_*_ or GLIBC_TUNABLES: theirs win), or with OID_MALLOC_TUNING=0. A process that loads
jemalloc or tcmalloc (LD_PRELOAD) keeps that allocator: mallopt() is then glibc's, unused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

# mallopt() parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

SETTINGS = ((M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20),
            (M_MMAP_THRESHOLD, 32 << 20))  # glibc's largest mmap threshold on 64-bit
OFF_VARIABLE = "OID_MALLOC_TUNING"

log = logging.getLogger(__name__)


def skip_reason(environ: dict | None = None, platform: str = sys.platform) -> str | None:
    """Why tune() leaves the allocator alone, or None."""
    environ = os.environ if environ is None else environ
    if environ.get(OFF_VARIABLE, "1") == "0":
        return f"{OFF_VARIABLE}=0"
    if "GLIBC_TUNABLES" in environ or any(k.startswith("MALLOC_") and k.endswith("_")
                                          for k in environ):
        return "glibc's malloc variables are set"
    if not platform.startswith("linux"):
        return f"{platform}: not glibc"
    return None


def tune() -> bool:
    """Applies SETTINGS with mallopt(); True if glibc took all of them."""
    reason = skip_reason()
    if reason is not None:
        log.debug("malloc settings unchanged: %s", reason)
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)
