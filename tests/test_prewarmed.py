"""tests/prewarmed.py behaves as subprocess.run for the commands it takes."""

import subprocess
import sys

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
