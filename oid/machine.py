"""What machine a figure was measured on: benchmarks and tools/ablate.py print it beside their
numbers, since another CPU rounds differently (TensorFlow's oneDNN kernels) and runs at
another speed."""

from __future__ import annotations

import platform


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, as `lscpu` shows it ("AMD EPYC 9B14"): the first "model name"
    line of /proc/cpuinfo on Linux, else the platform's processor string, else "unknown"."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
