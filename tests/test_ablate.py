"""tools/ablate.py: variants parsed, statistics over seeds and tables; one tiny ablation run
end to end (slow)."""

import importlib.util
import json
import os
import sys

import pytest

from oid.machine import cpu_model
from tests import prewarmed
from tests.train_fixtures import ENV

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ablate():
    spec = importlib.util.spec_from_file_location("ablate", os.path.join(ROOT, "tools",
                                                                           "ablate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ablate = _ablate()


@pytest.mark.parametrize("text,expected", [
    ("base=", ("base", [])),
    ("atss=--assigner=atss", ("atss", ["--assigner=atss"])),
    ("best=--assigner=atss,--box_loss=giou", ("best", ["--assigner=atss", "--box_loss=giou"])),
    ("p2=--min_level=2,--anchor_sizes=8,16,32,64,128,256",
     ("p2", ["--min_level=2", "--anchor_sizes=8,16,32,64,128,256"])),
    ("sp=--assigner=atss --ema_decay=0.999", ("sp", ["--assigner=atss", "--ema_decay=0.999"])),
])
def test_parse_variant(text, expected):
    assert ablate.parse_variant(text) == expected


@pytest.mark.parametrize("text", ["atss", "=--x=1", "a b=--x=1", "v=assigner=atss"])
def test_parse_variant_refuses(text):
    with pytest.raises(ValueError, match="--variant"):
        ablate.parse_variant(text)


def test_mean_std_is_the_sample_std():
    # 0.4, 0.5, 0.6: mean 0.5, squared deviations 0.01 + 0 + 0.01, / (3 - 1) = 0.01: std 0.1.
    s = ablate.mean_std([0.4, 0.5, 0.6])
    assert s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    assert ablate.mean_std([0.3])["std"] is None
    assert ablate.mean_std([None, 0.2])["values"] == [0.2]  # a class without ground truth
    assert ablate.fmt(s) == "0.500 ± 0.100" and ablate.fmt(ablate.mean_std([])) == "n/a"
    # A figure over fewer seeds than the table's says how many.
    assert ablate.fmt(s, seeds=3) == "0.500 ± 0.100"
    assert ablate.fmt(ablate.mean_std([0.4, 0.6]), seeds=3) == "0.500 ± 0.141 (2 seeds)"
    assert ablate.fmt(ablate.mean_std([0.3]), seeds=3) == "0.300 (1 seed)"


def test_training_rate_leaves_out_the_first_interval():
    log = "\n".join(f"INFO step {i}/9 epoch 1: loss 1.0 (cls 1, box 0), lr 1e-3, {r} images/s"
                    for i, r in ((3, 1.0), (6, 8.0), (9, 10.0)))
    assert ablate.training_rate(log) == pytest.approx(9.0)
    assert ablate.training_rate("no rates") is None


def _run(map1, ap_eye, merged, rate=10.0):
    return {"levels": {"1": {"mAP": map1, "images_per_s": rate, "train_min": 2.0,
                             "per_class": {"/m/eye": {"name": "Eye", "ap": ap_eye},
                                           "/m/sq": {"name": "Square", "ap": None}}}},
            "merged_mAP": merged}


def test_summary_and_tables():
    results = {"base": {"0": _run(0.4, 0.1, 0.3), "1": _run(0.6, 0.3, 0.5)},
               "atss": {"0": _run(0.5, 0.2, 0.45, 9.0), "1": _run(0.5, 0.4, 0.45, 9.0)}}
    summary = ablate.summarize(results, ["base", "atss"], [1])
    assert summary["base"]["levels"]["1"]["mean"] == pytest.approx(0.5)
    assert summary["base"]["levels"]["1"]["std"] == pytest.approx(0.141421, abs=1e-6)
    assert summary["atss"]["levels"]["1"]["std"] == 0
    assert summary["atss"]["per_class"]["/m/eye"]["mean"] == pytest.approx(0.3)
    assert summary["base"]["merged"]["mean"] == pytest.approx(0.4)
    variants = {"base": [], "atss": ["--assigner=atss"]}
    text = ablate.tables(summary, variants, [1])
    assert "base     (flagfile)       0.500 ± 0.141  0.400 ± 0.141  10.0 ± 0.0" in text
    assert "Eye     1      0.200 ± 0.141  0.300 ± 0.141" in text
    assert "Square  1      n/a" in text
    md = ablate.tables(summary, variants, [1], markdown=True)
    assert "| atss | --assigner=atss | 0.500 ± 0.000 | 0.450 ± 0.000 | 9.0 ± 0.0 |" in md


def test_the_header_names_the_cpus_the_runs_trained_on():
    one = {"base": {"0": _run(0.4, 0.1, 0.3), "1": _run(0.6, 0.3, 0.5)}}
    for entry in one["base"].values():
        entry["levels"]["1"]["cpu"] = "AMD EPYC (family 25 model 17 stepping 1, avx2)"
    assert ablate.trained_on(one) == \
        "trained on CPU AMD EPYC (family 25 model 17 stepping 1, avx2)"
    # A run saved before the CPU was recorded, and one from another host: the table mixes
    # machines, and says so with the count of runs of each.
    mixed = {"base": {**one["base"], "2": _run(0.5, 0.2, 0.4)},
             "atss": {"0": _run(0.5, 0.2, 0.45)}}
    mixed["atss"]["0"]["levels"]["1"]["cpu"] = "AMD EPYC (family 25 model 1, avx2)"
    assert ablate.runs_per_cpu(mixed) == {
        "AMD EPYC (family 25 model 1, avx2)": 1,
        "AMD EPYC (family 25 model 17 stepping 1, avx2)": 2, "not recorded": 1}
    assert ablate.trained_on(mixed) == (
        "trained on several CPUs (mixed rounding): AMD EPYC (family 25 model 1, avx2) "
        "(1 run); AMD EPYC (family 25 model 17 stepping 1, avx2) (2 runs); not recorded "
        "(1 run)")


def test_bad_arguments_name_the_flag(tmp_path):
    for argv, message in ((["--variant", "x"], "--variant 'x'"),
                          (["--seeds", "a"], "--seeds=a"),
                          (["--variant", "a=", "--variant", "a=--x=1"], "share a name"),
                          (["--demo_out", str(tmp_path / "none")], "--demo_out=")):
        out = prewarmed.run([sys.executable, os.path.join(ROOT, "tools", "ablate.py"),
                             "--out", str(tmp_path / "out"), *argv],
                            capture_output=True, text=True, env=ENV, timeout=120)
        assert out.returncode != 0 and message in out.stderr, (argv, out.stderr)


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path):
    # Tiny data (30 images), a tiny model and 2 steps per run: it checks the plumbing (data
    # made once, train/eval per level, predict + metric of the merged levels, tables and
    # files, a second call resuming from the results), not accuracy.
    flagfile = tmp_path / "tiny.flags"
    flagfile.write_text("\n".join([f"--flagfile={os.path.join(ROOT, 'demo.flags')}",
                                   "--image_min_side=128", "--image_max_side=128",
                                   "--fpn_channels=16", "--head_convs=1", "--head_channels=16",
                                   "--global_batch_size=2", "--log_every_steps=1",
                                   "--warmup_steps=1"]) + "\n")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "ablate.py"), "--out",
           str(tmp_path / "out"), "--images", "30", "--flagfile", str(flagfile),
           "--variant", "atss=--assigner=atss,--box_loss=giou", "--seeds", "0",
           "--epochs", "1", "--steps", "2", "--json", str(tmp_path / "a.json"),
           "--markdown", str(tmp_path / "a.md")]
    out = prewarmed.run(cmd, capture_output=True, text=True, env=ENV, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["levels"] == [1, 2] and result["seeds"] == [0]
    run = result["runs"]["atss"]["0"]
    for level in ("1", "2"):
        assert 0.0 <= run["levels"][level]["mAP"] <= 1.0
        assert run["levels"][level]["images_per_s"] > 0
        assert "--assigner=atss" in run["levels"][level]["command"]
        assert run["levels"][level]["cpu"] == cpu_model()
    assert 0.0 <= run["merged_mAP"] <= 1.0
    assert "| atss | --assigner=atss --box_loss=giou |" in (tmp_path / "a.md").read_text()
    assert "level 1 mAP" in out.stdout and "per-class AP" in out.stdout
    assert f"trained on CPU {cpu_model()}, " in out.stdout
    config = json.loads((tmp_path / "out" / "runs" / "atss" / "seed0" / "level1" / "model"
                         / "config.json").read_text())
    assert config["labeler"]["assigner"] == "atss" and config["train"]["epochs"] == 1
    again = prewarmed.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    # Both levels and the merged score come back from the first call's files.
    assert again.stdout.count("done before") == 3, again.stdout
    assert "train.py" not in again.stdout and "predict.py" not in again.stdout
    assert f"{run['merged_mAP']:.3f}" in again.stdout

    # --report trains nothing: a variant never run is n/a, and a seed not run yet leaves the
    # figures over one seed of the two asked, which they say.
    report = [c for c in cmd if c not in ("--json", str(tmp_path / "a.json"))]
    report[report.index("--seeds") + 1] = "0,1"
    out = prewarmed.run([*report, "--variant", "never=--ema_decay=0.9", "--report"],
                        capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "$ " not in out.stdout and "runs finished before (--report)" in out.stdout
    table = out.stdout.split("per-class AP")[0]
    atss_row = next(line for line in table.splitlines() if line.startswith("atss "))
    assert f"{run['levels']['1']['mAP']:.3f} (1 seed)" in atss_row
    assert f"{run['merged_mAP']:.3f} (1 seed)" in atss_row
    never_row = next(line for line in table.splitlines() if line.startswith("never "))
    assert never_row.split()[2:5] == ["n/a", "n/a", "n/a"]
    assert not (tmp_path / "out" / "runs" / "never").exists()
