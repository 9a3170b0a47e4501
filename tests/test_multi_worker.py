"""train.py as two MultiWorkerMirroredStrategy workers on localhost (TF_CONFIG, --strategy auto)."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from tests.train_fixtures import ENV, make_records, train_cmd

# A run takes 40-110 s on 2 cores, depending on their load; a hang fails at 240 s, before
# Bazel's 300 s limit for a medium test would kill it without the workers' stderr.
TIMEOUT_S = 240


def free_ports(n):
    """n distinct localhost ports that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_workers(cmds, envs, log_dir, timeout=TIMEOUT_S):
    """Runs the commands side by side; returns their stderr once every one has exited 0.

    As soon as one exits non-zero, or after `timeout` seconds, kills the others and fails
    with every worker's exit code and stderr: a collective whose peer died would otherwise
    wait for it until the coordination service gives up.
    """
    paths = [os.path.join(log_dir, f"worker{i}.stderr") for i in range(len(cmds))]
    procs = []
    try:
        for cmd, env, path in zip(cmds, envs, paths, strict=True):
            with open(path, "w") as err:  # a file, not a pipe: nobody reads while they run
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                              stderr=err))
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                problem = f"worker {failed[0]} exited with {codes[failed[0]]}"
                break
            if all(code == 0 for code in codes):
                problem = None
                break
            if time.monotonic() > deadline:
                problem = f"timed out after {timeout} s"
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    stderrs = []
    for path in paths:
        with open(path, errors="replace") as f:
            stderrs.append(f.read())
    if problem is not None:
        report = "\n".join(f"--- worker {i} (exit code {p.returncode}), end of stderr:\n"
                           f"{err[-3000:]}" for i, (p, err) in enumerate(zip(procs, stderrs, strict=True)))
        pytest.fail(f"{problem}\n{report}", pytrace=False)
    return stderrs


def test_a_failing_worker_stops_the_other_and_reports_both_stderrs(tmp_path):
    # Worker 1 writes its stderr and then waits forever; worker 0 fails once it sees that.
    waiting = "import sys, time; print('worker one waiting', file=sys.stderr, flush=True); " \
              "time.sleep(3600)"
    failing = (f"import os, sys, time\n"
               f"while not os.path.getsize({str(tmp_path / 'worker1.stderr')!r}):\n"
               f"    time.sleep(0.05)\n"
               f"sys.exit('worker zero failed')")
    with pytest.raises(pytest.fail.Exception) as failure:
        run_workers([[sys.executable, "-c", failing], [sys.executable, "-c", waiting]],
                    [ENV, ENV], str(tmp_path))
    message = str(failure.value)
    assert message.startswith("worker 0 exited with 1")
    assert "worker zero failed" in message and "worker one waiting" in message
    assert "worker 1 (exit code -9)" in message  # killed, not waited for


def test_a_hanging_worker_is_killed_at_the_timeout(tmp_path):
    hang = [sys.executable, "-c", "import time; time.sleep(3600)"]
    with pytest.raises(pytest.fail.Exception, match="timed out after 1 s") as failure:
        run_workers([hang, hang], [ENV, ENV], str(tmp_path), timeout=1)
    assert str(failure.value).count("(exit code -9)") == 2


@pytest.mark.slow
def test_two_workers_train_in_step_and_only_the_chief_writes(tmp_path):
    records, model_dir = tmp_path / "records", tmp_path / "run"
    make_records(str(records / "level1"))  # one file for two workers: records are sharded
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    # 3 steps of 2 images per worker; checkpoints at step 2 and at the epoch end (step 3).
    cmd = train_cmd(records, model_dir, "--strategy=auto", "--global_batch_size=4",
                    "--epochs=1", "--steps_per_epoch=3", "--checkpoint_every_steps=2")
    envs, tmp_dirs = [], []
    for index in range(2):
        tmp_dirs.append(tmp_path / f"tmp{index}")  # where a worker's temporary files go
        tmp_dirs[-1].mkdir()
        envs.append({**ENV, "TMPDIR": str(tmp_dirs[-1]), "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})})

    chief, other = run_workers([cmd, cmd], envs, str(tmp_path))

    for err in (chief, other):
        assert "strategy CollectiveAllReduceStrategy with 2 replicas" in err
    # The step's losses are all-reduced over both workers: each logs the same numbers.
    logged = [re.findall(r" INFO (step \d+/3 epoch 1: loss \S+ \(cls \S+, box \S+\))", err)
              for err in (chief, other)]
    assert len(logged[0]) == 3 and logged[0][-1].startswith("step 3/3")
    assert logged[0] == logged[1]

    # The chief wrote the run; the other worker wrote nothing into MODEL_DIR.
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "config.json", "export", "logs"]
    assert sorted(os.listdir(model_dir / "checkpoints")) == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
        "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    with open(model_dir / "checkpoints" / "checkpoint") as f:
        assert f.readline().strip() == 'model_checkpoint_path: "ckpt-3"'
    with open(model_dir / "config.json") as f:
        config = json.load(f)
    assert config["input"]["global_batch_size"] == 4 and config["train"]["steps_per_epoch"] == 3
    assert len(os.listdir(model_dir / "logs")) == 1  # one event file: the chief's
    assert (model_dir / "export" / "saved_model.pb").exists()
    # The other worker saved its own copy of each checkpoint under its TMPDIR and deleted it.
    assert f"checkpoint {tmp_dirs[1]}{os.sep}ckpt_worker1_" in other
    assert not [name for name in os.listdir(tmp_dirs[1]) if name.startswith("ckpt_worker")]
    # It finished only after the chief's export: had it exited earlier, the chief's
    # coordination service would have reported it as crashed. (Same clock, same log format.)
    exported = re.search(r"^(\S+ \S+) INFO exported the inference model", chief, re.M)
    finished = re.search(r"^(\S+ \S+) INFO finished; the run is in", other, re.M)
    assert exported and finished and finished.group(1) >= exported.group(1)
