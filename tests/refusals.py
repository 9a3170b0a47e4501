"""The check every user-error test makes of a refused command (the convention of
docs/development.md): exit status 2, the last stderr line `error: ...` naming the culprits,
no Python traceback anywhere in the output."""

from __future__ import annotations

import subprocess


def assert_refused(result: subprocess.CompletedProcess, *culprits: str,
                   quiet_stdout: bool = False, with_fix: bool = False) -> str:
    """Returns the error line. quiet_stdout: nothing may be printed on stdout; with_fix: the
    line also says how to fix it ("<problem>; <fix>")."""
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    if quiet_stdout:
        assert not result.stdout, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    if with_fix:
        assert "; " in last, last
    for culprit in culprits:
        assert culprit in last, last
    return last
