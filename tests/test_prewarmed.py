"""tests/prewarmed.py behaves as subprocess.run for the commands it takes."""

import os
import subprocess
import sys
import time

import pytest

from tests import prewarmed
from tests.train_fixtures import ENV, REPO


def test_exit_code_output_cwd_and_argv_as_a_fresh_interpreter(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import os, sys\nprint(os.getcwd(), sys.argv[1:])\n"
                      "print('err', file=sys.stderr)\nsys.exit(3)\n")
    out = prewarmed.run([sys.executable, str(script), "a", "b"], env=ENV, cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout, out.stderr) == (3, f"{tmp_path} ['a', 'b']\n", "err\n")
    failed = prewarmed.run([sys.executable, "-c", "raise ValueError('x')"], env=ENV, cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and failed.stderr.endswith("ValueError: x\n")


def test_quick_commands_back_to_back_each_get_their_own_reply():
    # A command that ends at once sends its pid and exit code together; each reply is still
    # read for its own command (a buffered read once swallowed the second and hung).
    for i in range(20):
        out = prewarmed.run([sys.executable, "-c", f"import sys; print({i}); sys.exit({i % 3})"],
                            env=ENV, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout) == (i % 3, f"{i}\n")


def test_timeout_kills_the_command_and_the_next_one_runs():
    with pytest.raises(subprocess.TimeoutExpired):
        prewarmed.run([sys.executable, "-c", "import time; time.sleep(60)"], env=ENV, cwd=REPO,
                      capture_output=True, timeout=1)
    out = prewarmed.run([sys.executable, "-m", "json.tool", "--help"], env=ENV, cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage" in out.stdout


def test_a_command_started_by_a_command_runs_in_the_server_with_the_callers_streams(tmp_path):
    # The outer command starts `sys.executable inner.py` with its own pipe as stdout and a
    # file as stderr, as tools/demo.py starts its stages. The inner one finds TensorFlow
    # imported already (it did not import it itself: a fresh interpreter would not have it),
    # writes into the caller's pipe and file, reads the caller's stdin, and its exit code
    # comes back; a command the server would not run the same (`-u`) still runs, as python.
    inner = tmp_path / "inner.py"
    inner.write_text("import sys\nprint('tf' if 'tensorflow' in sys.modules else 'cold', "
                     "sys.stdin.read(), sys.argv[1:])\nprint('to err', file=sys.stderr)\n"
                     "sys.exit(5)\n")
    outer = tmp_path / "outer.py"
    outer.write_text(
        "import subprocess, sys\n"
        f"err = open({str(tmp_path / 'err.txt')!r}, 'w')\n"
        f"p = subprocess.run([sys.executable, {str(inner)!r}, 'x'], input=b'hi',\n"
        "                   stdout=subprocess.PIPE, stderr=err)\n"
        "print(p.returncode, p.stdout.decode().strip())\n"
        "q = subprocess.run([sys.executable, '-u', '-c', 'import sys; print(sys.version_info[0])'],"
        "\n                   stdout=subprocess.PIPE)\n"
        "print(q.returncode, q.stdout.decode().strip())\n")
    out = prewarmed.run([sys.executable, str(outer)], env=ENV, cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["5 tf hi ['x']", "0 3"]
    assert (tmp_path / "err.txt").read_text() == "to err\n"


def test_a_timeout_kills_the_commands_a_command_started():
    # The outer command starts a sleeping inner one through the server and waits for it; the
    # timeout kills both (the inner one joined the outer one's process group).
    code = ("import subprocess, sys\n"
            "subprocess.run([sys.executable, '-c', 'import os, time; "
            "print(os.getpid(), flush=True); time.sleep(60)'])")
    with pytest.raises(subprocess.TimeoutExpired) as raised:
        prewarmed.run([sys.executable, "-c", code], env=ENV, cwd=REPO, capture_output=True,
                      timeout=15)
    inner_pid = int(raised.value.stdout.split()[0])
    for _ in range(50):
        try:
            os.kill(inner_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the inner command {inner_pid} outlived the timeout")
