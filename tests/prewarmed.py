"""Run a Python command line in a process that has TensorFlow imported already.

Importing TensorFlow and Keras costs about 6 CPU-seconds, and the tests start some 150 Python
commands (train.py, eval.py, predict.py, tools/demo.py, python -m oid...), most of which run
for a few seconds after that. `run()` is `subprocess.run` for those: a server process per test
process imports the heavy libraries once and forks a child for each command. The child is a
new process as far as TensorFlow's runtime is concerned (the server imports, it never runs an
op, so no thread pool or device exists yet); it takes the command's working directory,
environment, argv and standard streams, runs the script as `__main__` and exits with its code,
as `python script.py ...` would.

Only commands that a fresh interpreter would run the same way go through the server:
`sys.executable` with a script, `-m module` or `-c code`, the tests' environment (ENV, whose
variables the libraries read when imported) and captured output. Anything else, and every
command when OID_TESTS_PREWARM=0, runs as a plain subprocess. A test that signals its process
or runs several at once uses subprocess.Popen itself.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile

# Imported by the server before it forks: what nearly every command imports, nothing that starts
# threads or connections when imported (Apache Beam's gRPC stays out).
PRELOAD = ("numpy", "pandas", "PIL.Image", "absl.app", "absl.flags", "tensorflow", "keras")


def _server() -> None:
    """The server's loop: a JSON request per line on stdin, replies on stdout (fd 1)."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    requests = os.fdopen(0, "r")
    reply_fd = os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing of ours or the libraries' mixes in
    os.write(reply_fd, b'{"ready": true}\n')
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, reply_fd)
        os.write(reply_fd, json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        os.write(reply_fd, json.dumps({"code": os.waitstatus_to_exitcode(status)}).encode()
                 + b"\n")


def _child(request: dict, reply_fd: int) -> None:
    """Becomes `python ARGV...` in request["cwd"] with request["env"]; never returns."""
    import runpy
    import threading
    import traceback

    code = 1
    try:
        os.setpgid(0, 0)  # a timeout kills the command and whatever it started
        os.close(reply_fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if "numpy" in sys.modules:  # a fresh interpreter's global RNG state, not the server's
            sys.modules["numpy"].random.seed()
        argv = request["argv"]
        try:
            if argv[0] == "-m":
                sys.argv = argv[1:]
                sys.path[0] = os.getcwd()
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            elif argv[0] == "-c":
                sys.argv = ["-c", *argv[2:]]
                sys.path[0] = ""
                exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
            else:
                sys.argv = argv
                sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what the interpreter does with it: print, exit 1
            traceback.print_exc()
            code = 1
        # What the interpreter does on its way out: wait for non-daemon threads, run atexit.
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a closed stream has nothing to flush
                pass
        os._exit(code)


class _Server:
    def __init__(self, env: dict) -> None:
        self.env = env
        self._pending = b""
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from tests.prewarmed import _server; _server()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if json.loads(self._read(timeout=300)) != {"ready": True}:
            raise RuntimeError("tests/prewarmed.py: the server did not start")

    def _read(self, timeout: float | None) -> str:
        """The server's next reply line. The pipe is read with os.read into our own buffer:
        a buffered readline could swallow the next reply too (the pid and the exit code of a
        quick command arrive together) and select() would then wait on an empty pipe."""
        fd = self.process.stdout.fileno()
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("tests/prewarmed.py: the server exited "
                                   f"(code {self.process.poll()})")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode()

    def run(self, argv: list[str], cwd: str, timeout: float | None
            ) -> tuple[int, bytes, bytes]:
        with tempfile.TemporaryDirectory(prefix="prewarmed-") as tmp:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            self.process.stdin.write(json.dumps({"argv": argv, "cwd": cwd, "env": self.env,
                                                 "stdout": out, "stderr": err}).encode() + b"\n")
            self.process.stdin.flush()
            pid = json.loads(self._read(timeout=60))["pid"]
            try:
                code = json.loads(self._read(timeout=timeout))["code"]
                timed_out = False
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                self._read(timeout=60)
                timed_out = True
            with open(out, "rb") as f, open(err, "rb") as g:
                stdout, stderr = f.read(), g.read()
        if timed_out:
            raise subprocess.TimeoutExpired(["python", *argv], timeout, stdout, stderr)
        return code, stdout, stderr

    def close(self) -> None:
        self.process.stdin.close()
        self.process.kill()
        self.process.wait()


_SERVER: _Server | None = None


def enabled() -> bool:
    return os.environ.get("OID_TESTS_PREWARM", "1") != "0"


def run(args: list[str], *, env: dict | None = None, cwd: str | os.PathLike | None = None,
        capture_output: bool = False, text: bool = False, timeout: float | None = None,
        check: bool = False) -> subprocess.CompletedProcess:
    """subprocess.run(args, env=, cwd=, capture_output=, text=, timeout=, check=), through the
    server when the command is a Python command line that runs the same there."""
    global _SERVER
    from tests.train_fixtures import ENV

    args = [os.fspath(a) for a in args]
    python_command = len(args) > 1 and args[0] == sys.executable and (
        not args[1].startswith("-") or (args[1] in ("-m", "-c") and len(args) > 2))
    if not (enabled() and capture_output and env == ENV and python_command):
        return subprocess.run(args, env=env, cwd=cwd, capture_output=capture_output, text=text,
                              timeout=timeout, check=check)
    if _SERVER is None or _SERVER.process.poll() is not None:
        _SERVER = _Server(ENV)
        atexit.register(_SERVER.close)
    code, stdout, stderr = _SERVER.run(args[1:], os.path.abspath(cwd or os.getcwd()), timeout)
    if text:
        stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
    result = subprocess.CompletedProcess(args, code, stdout, stderr)
    if check:
        result.check_returncode()
    return result
