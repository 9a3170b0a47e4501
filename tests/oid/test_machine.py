"""oid/machine.py: the CPU model the benchmarks and the ablation print beside their figures."""

from oid.machine import cpu_model


def test_cpu_model_is_the_first_model_name_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                    "model name\t: AMD EPYC 9B14\nflags\t: avx512f\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9B14\n")
    assert cpu_model(str(info)) == "AMD EPYC 9B14"


def test_cpu_model_without_cpuinfo_falls_back(tmp_path, monkeypatch):
    import platform

    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert cpu_model(str(tmp_path / "missing")) == "arm"
    no_name = tmp_path / "cpuinfo"
    no_name.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # an ARM board's cpuinfo
    monkeypatch.setattr(platform, "processor", lambda: "")
    assert cpu_model(str(no_name)) == "unknown"
