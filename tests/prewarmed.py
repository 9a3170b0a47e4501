"""Run a Python command line in a process that has TensorFlow imported already.

Importing TensorFlow and Keras costs about 6 CPU-seconds, and the tests start some 200 Python
commands (train.py, eval.py, predict.py, tools/demo.py and the stages it runs, python -m
oid...), most of which run for a few seconds after that. `run()` is `subprocess.run` for
those: a server process per test process imports the heavy libraries once and forks a child
for each command. The child is a new process as far as TensorFlow's runtime is concerned (the
server imports, it never runs an op, so no thread pool or device exists yet); it takes the
command's working directory, environment, argv and standard streams, runs the script as
`__main__` and exits with its code, as `python script.py ...` would.

Commands started by such a command go the same way: in the child, `sys.executable` is a small
launcher script (`python -S`, no site-packages, so it starts in milliseconds) that hands its
argv, cwd, environment and standard streams (the file descriptors themselves) to the server
over its Unix socket and exits with the command's code, or execs the real interpreter when the
server would not run the command the same. So tools/demo.py's stages and tools/ablate.py's
runs skip the import too, and their output goes where the caller sent it.

Only commands that a fresh interpreter would run the same way are forked: a script, `-m
module` or `-c code`, with exactly the server's environment (the tests' ENV, whose variables
the libraries read when imported). Anything else, and every command when
OID_TESTS_PREWARM=0, runs as a plain subprocess. A test that signals its process or runs
several at once uses subprocess.Popen itself.

The protocol, one connection per command: the client sends a JSON line (argv, cwd, env, the
process group to join) with its stdin, stdout and stderr attached (SCM_RIGHTS); the server
forks a handler, which replies `{"fallback": true}`, or forks the command and replies
`{"pid": N}` and then `{"code": C}` (C < 0: killed by signal -C).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

# Imported by the server before it forks: what nearly every command imports, nothing that starts
# threads or connections when imported (Apache Beam's gRPC stays out).
PRELOAD = ("numpy", "pandas", "PIL.Image", "absl.app", "absl.flags", "tensorflow", "keras")

# The launcher that stands in for `sys.executable` in the server's children. Standard library
# only, and nothing of this module: it runs under `python -S`.
_LAUNCHER = '''#!{python} -S
"""python, through the tests' prewarmed server when it takes the command (tests/prewarmed.py)."""
import json, os, signal, socket, sys

SOCKET, PYTHON = {socket!r}, {python!r}


def real_python():
    os.execv(PYTHON, [PYTHON, *sys.argv[1:]])


def main():
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(SOCKET)
        data = (json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ),
                             "pgid": os.getpgrp()}}) + "\\n").encode()
        sent = socket.send_fds(conn, [data], [0, 1, 2])
        conn.sendall(data[sent:])
        replies = conn.makefile("rb")
        reply = json.loads(replies.readline())
    except (OSError, ValueError):  # no server (it ended with the tests) or a closed stream
        real_python()
    if reply.get("fallback"):
        real_python()
    pid = reply["pid"]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    line = replies.readline()
    code = json.loads(line)["code"] if line else 1
    if code < 0:  # end as the command did: by its signal
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


main()
'''


def _send(conn: socket.socket, message: dict, fds: tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode() + b"\n"
    sent = socket.send_fds(conn, [data], list(fds)) if fds else 0
    conn.sendall(data[sent:])


class _Lines:
    """The JSON lines of a connection, read unbuffered (select() must see what is unread)."""

    def __init__(self, conn: socket.socket, with_fds: int = 0) -> None:
        self.conn, self.pending, self.fds, self.with_fds = conn, b"", [], with_fds

    def next(self, timeout: float | None = None) -> dict | None:
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.conn], [], [], timeout)
            if not ready:
                raise TimeoutError
            if self.with_fds:
                chunk, fds, _, _ = socket.recv_fds(self.conn, 1 << 20, self.with_fds)
                self.fds += fds
                self.with_fds = 0 if fds else self.with_fds
            else:
                chunk = self.conn.recv(1 << 20)
            if not chunk:
                return None
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)


# The server's environment before the imports, and what the imports set in it (TensorFlow sets
# TF2_BEHAVIOR and others): a child has them as a fresh interpreter would after its imports.
_BEFORE_IMPORTS: dict[str, str] = {}
_SET_BY_IMPORTS: dict[str, str] = {}


def _runs_here(request: dict) -> bool:
    """Whether a forked child runs the command as a fresh `python ARGV...` would."""
    argv = request["argv"]
    form = bool(argv) and (not argv[0].startswith("-") or (argv[0] in ("-m", "-c")
                                                          and len(argv) > 1))
    # A command started by a child inherits what the imports set: that is no difference.
    env = {k: v for k, v in request["env"].items()
           if not (k in _SET_BY_IMPORTS and k not in _BEFORE_IMPORTS
                   and _SET_BY_IMPORTS[k] == v)}
    return form and env == _BEFORE_IMPORTS


def _server(directory: str) -> None:
    """The server: forks a handler per connection on DIRECTORY/socket until stdin closes."""
    import importlib

    _BEFORE_IMPORTS.update(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    _SET_BY_IMPORTS.update({k: v for k, v in os.environ.items() if _BEFORE_IMPORTS.get(k) != v})
    launcher = os.path.join(directory, "python")
    with open(launcher, "w") as f:
        f.write(_LAUNCHER.format(python=sys.executable,
                                 socket=os.path.join(directory, "socket")))
    os.chmod(launcher, 0o755)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(directory, "socket"))
    listener.listen(128)
    os.write(1, b'{"ready": true}\n')
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # nothing of ours or the libraries' mixes in
    while True:
        ready, _, _ = select.select([listener, 0], [], [], 1.0)
        # Reaped here, the handlers' and commands' CPU time counts in the test process's
        # children's, as a subprocess's would (`time make test` sees it).
        _reap_for(0.0)
        if 0 in ready and not os.read(0, 1):  # the tests ended: reap the last handlers, exit
            _reap_for(5.0)
            os._exit(0)
        if listener in ready:
            conn, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                _handle(conn, launcher)
            conn.close()


def _reap_for(seconds: float) -> None:
    """Reaps ended children for up to `seconds` (0: those ended already), until none is left."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0]:
                continue
        except ChildProcessError:
            return
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def _handle(conn: socket.socket, launcher: str) -> None:
    """One command: fork it (or refuse it), report its pid and exit code; never returns."""
    import traceback

    try:
        lines = _Lines(conn, with_fds=3)
        request = lines.next()
        if request is None or len(lines.fds) != 3 or not _runs_here(request):
            _send(conn, {"fallback": True})
            os._exit(0)
        pid = os.fork()
        if pid == 0:
            conn.close()
            _child(request, lines.fds, launcher)
        for fd in lines.fds:
            os.close(fd)
        _send(conn, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(conn, {"code": os.waitstatus_to_exitcode(status)})
    except BrokenPipeError:  # the caller is gone; the command ran anyway
        pass
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    os._exit(0)


def _child(request: dict, fds: list[int], launcher: str) -> None:
    """Becomes `python ARGV...` in request["cwd"] with request["env"]; never returns."""
    import runpy
    import threading
    import traceback

    code = 1
    try:
        try:  # the caller's process group: killing it on a timeout kills this command too
            os.setpgid(0, request.get("pgid") or 0)
        except OSError:
            os.setpgid(0, 0)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for name, value in _SET_BY_IMPORTS.items():
            os.environ.setdefault(name, value)
        sys.executable = launcher  # the commands this one starts come back to the server
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
        # A Unix socket's path has at most 107 bytes: a long TMPDIR gives way to /tmp.
        short = len(tempfile.gettempdir()) > 60 and os.path.isdir("/tmp")
        self.directory = tempfile.mkdtemp(prefix="prewarmed-", dir="/tmp" if short else None)
        self.launcher = os.path.join(self.directory, "python")
        self.socket = os.path.join(self.directory, "socket")
        self.process = subprocess.Popen(
            [sys.executable, "-c",
             f"from tests.prewarmed import _server; _server({self.directory!r})"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        ready, _, _ = select.select([self.process.stdout], [], [], 300)
        if not ready or json.loads(os.read(self.process.stdout.fileno(), 100)) != {"ready": True}:
            raise RuntimeError("tests/prewarmed.py: the server did not start")

    def run(self, argv: list[str], cwd: str, timeout: float | None
            ) -> tuple[int, bytes, bytes] | None:
        """(exit code, stdout, stderr) of `python ARGV...`; None if the server refuses it."""
        with tempfile.TemporaryDirectory(prefix="prewarmed-") as tmp, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
            fds = (os.open(os.devnull, os.O_RDONLY),
                   os.open(out, os.O_WRONLY | os.O_CREAT, 0o644),
                   os.open(err, os.O_WRONLY | os.O_CREAT, 0o644))
            try:
                conn.connect(self.socket)
                _send(conn, {"argv": argv, "cwd": cwd, "env": self.env, "pgid": 0}, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            lines = _Lines(conn)
            reply = lines.next(timeout=60)
            if reply is None:
                raise RuntimeError(f"tests/prewarmed.py: the server exited "
                                   f"(code {self.process.poll()})")
            if reply.get("fallback"):
                return None
            pid, timed_out = reply["pid"], False
            try:
                reply = lines.next(timeout=timeout)
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                reply = lines.next(timeout=60)
                timed_out = True
            code = reply["code"] if reply else 1
            with open(out, "rb") as f, open(err, "rb") as g:
                stdout, stderr = f.read(), g.read()
        if timed_out:
            raise subprocess.TimeoutExpired(["python", *argv], timeout, stdout, stderr)
        return code, stdout, stderr

    def close(self) -> None:
        self.process.stdin.close()  # the server reaps what it started, then exits
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


_SERVER: _Server | None = None


def enabled() -> bool:
    return os.environ.get("OID_TESTS_PREWARM", "1") != "0"


def launcher() -> str | None:
    """The path that stands in for `sys.executable` in the commands the server runs (what
    tools/demo.py prints as its commands' interpreter), or None before the first command."""
    return _SERVER.launcher if _SERVER is not None else None


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
    ran = None
    if enabled() and capture_output and env == ENV and python_command:
        if _SERVER is None or _SERVER.process.poll() is not None:
            _SERVER = _Server(ENV)
            atexit.register(_SERVER.close)
        ran = _SERVER.run(args[1:], os.path.abspath(cwd or os.getcwd()), timeout)
    if ran is None:
        return subprocess.run(args, env=env, cwd=cwd, capture_output=capture_output, text=text,
                              timeout=timeout, check=check)
    code, stdout, stderr = ran
    if text:
        stdout, stderr = stdout.decode(errors="replace"), stderr.decode(errors="replace")
    result = subprocess.CompletedProcess(args, code, stdout, stderr)
    if check:
        result.check_returncode()
    return result
