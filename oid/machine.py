"""What machine a figure was measured on: benchmarks and tools/ablate.py print it beside their
numbers, since another CPU rounds differently (TensorFlow's oneDNN kernels) and runs at
another speed.

A virtual machine often names its CPU only "AMD EPYC" or "Intel Xeon Processor": two hosts
of one cloud can then differ in generation and in the vector instructions oneDNN picks its
kernels by, and give another mAP for the same seed. So the name comes with the family, model
and stepping numbers and the widest instruction set oneDNN can use, which tell them apart.
"""

from __future__ import annotations

import platform

# oneDNN's CPU instruction-set levels (its ONEDNN_MAX_CPU_ISA names), widest first, each with
# the /proc/cpuinfo flags it needs.
_ISA_LEVELS = [
    ("avx512_core_amx", {"amx_tile", "amx_bf16", "amx_int8", "avx512f", "avx512bw",
                         "avx512vl", "avx512dq"}),
    ("avx512_core_bf16", {"avx512_bf16", "avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    ("avx512_core_vnni", {"avx512_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    ("avx512_core", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
    ("avx2", {"avx2"}),
    ("avx", {"avx"}),
    ("sse41", {"sse4_1"}),
]


def _first_processor(cpuinfo: str) -> dict[str, str]:
    """The "key : value" lines of /proc/cpuinfo's first processor block ({} if unreadable)."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_isa(flags: str) -> str | None:
    """The widest oneDNN instruction-set level a /proc/cpuinfo "flags" line allows
    ("avx512_core_bf16" for a Zen 4 EPYC), or None when none of them is there (an ARM CPU)."""
    have = set(flags.split())
    return next((name for name, need in _ISA_LEVELS if need <= have), None)


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, as `lscpu` shows it, with what tells two CPUs of one name apart:
    "AMD EPYC (family 25 model 17 stepping 1, avx512_core_bf16)".

    Read from the first processor of /proc/cpuinfo on Linux (the parenthesis holds what it
    has of family, model, stepping and the oneDNN level, and is left out when it has none),
    else the platform's processor string, else "unknown".
    """
    fields = _first_processor(cpuinfo)
    name = fields.get("model name")
    if not name:
        return platform.processor() or "unknown"
    numbers = " ".join(f"{label} {fields[key]}" for key, label in
                       (("cpu family", "family"), ("model", "model"), ("stepping", "stepping"))
                       if fields.get(key))
    isa = cpu_isa(fields.get("flags", ""))
    details = ", ".join(part for part in (numbers, isa) if part)
    return f"{name} ({details})" if details else name
