"""oid/machine.py: the CPU model the benchmarks and the ablation print beside their figures."""

from oid.machine import cpu_isa, cpu_model

# Two processors of a 2-core VM, as its /proc/cpuinfo shows them (flags shortened).
ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC\nstepping\t: 1\n"
        "flags\t\t: fpu sse4_1 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni "
        "avx512_bf16\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 99\nmodel\t\t: 99\n"
        "model name\t: Another name\n")


def test_cpu_model_names_the_first_processor_with_family_model_and_isa(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN4)
    # The first block only: processor 1's "family 99" and name are not read.
    assert cpu_model(str(info)) == "AMD EPYC (family 25 model 17 stepping 1, avx512_core_bf16)"


def test_cpu_model_with_a_name_only_is_the_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9B14\n")
    assert cpu_model(str(info)) == "AMD EPYC 9B14"


def test_cpu_isa_is_the_widest_level_the_flags_allow():
    assert cpu_isa("sse4_1 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni "
                   "avx512_bf16") == "avx512_core_bf16"
    # VNNI without BF16 (Cascade Lake): one level down.
    assert cpu_isa("avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni") == "avx512_core_vnni"
    # AVX-512 foundation without BW/VL (Knights Landing) is not oneDNN's avx512_core.
    assert cpu_isa("sse4_1 avx avx2 avx512f avx512cd") == "avx2"
    assert cpu_isa("sse4_1 avx avx2") == "avx2"
    assert cpu_isa("fp asimd evtstrm") is None  # ARM


def test_cpu_model_without_cpuinfo_falls_back(tmp_path, monkeypatch):
    import platform

    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert cpu_model(str(tmp_path / "missing")) == "arm"
    no_name = tmp_path / "cpuinfo"
    no_name.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # an ARM board's cpuinfo
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert cpu_model(str(no_name)) == "unknown"
