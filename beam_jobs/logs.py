"""Logging of the records job: its own lines always, Apache Beam's from --beam_log_level up.

The driver and every local worker process (beam_jobs/worker.py) call setup() before Beam is
first imported, because importing Beam already logs: a warning through the root logger
("apitools not found", from its BigQuery client). A record logged while the root logger has
no handler makes Python install its default stderr handler, and that handler then prints
every later Beam record in its "LEVEL:name:message" format: each worker's start-up
(semi_persistent_directory, the pipeline options with their OAuth scopes, gRPC channels),
and the runner's copies of the workers' records ("Worker: severity: ..."). With our handler
in place first, a record of Beam's passes only at or above the chosen level; ours always do.

Our own lines are the ones logged from code outside Beam's package: the driver's plan and
summary lines, the workers' progress lines and their warnings about skipped inputs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_BEAM_LEVEL = "ERROR"  # Beam's errors explain a failed run; its warnings are chatter
FLAG = "beam_log_level"
FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _beam_dir() -> str | None:
    """Beam's package folder with a trailing separator, found without importing Beam."""
    spec = importlib.util.find_spec("apache_beam")
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(os.path.realpath(spec.origin)) + os.sep


_BEAM_DIR = _beam_dir()


def is_beam(record: logging.LogRecord) -> bool:
    """Whether Beam logged `record`.

    By logger name, and by the file that logged it for Beam's code that logs elsewhere: the
    root logger (the import-time apitools warning) and `__main__` (Beam's SDK harness runs
    as a script). A Python warning raised in Beam's code counts as Beam's too.
    """
    if record.name.startswith("apache_beam"):
        return True
    if _BEAM_DIR is None:
        return False
    if os.path.realpath(record.pathname).startswith(_BEAM_DIR):
        return True
    return record.name == "py.warnings" and \
        os.path.realpath(record.getMessage().split(":", 1)[0]).startswith(_BEAM_DIR)


class BeamFilter(logging.Filter):
    """Passes our records, and Beam's at `level` or above."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not is_beam(record)


_filter: BeamFilter | None = None


def setup(beam_level: str = DEFAULT_BEAM_LEVEL) -> None:
    """Root logger -> stderr in FORMAT: our INFO and above, Beam's from `beam_level` up.

    Replaces the root logger's handlers (absl, or an earlier call, may have set some) and
    routes Python warnings through logging, so that Beam's are filtered like its records.
    """
    global _filter
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    _filter = BeamFilter(logging.ERROR)
    handler.addFilter(_filter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_beam_level(beam_level)
    logging.captureWarnings(True)


def set_beam_level(beam_level: str) -> None:
    """Changes the level from which Beam's records pass; nothing before setup()."""
    if _filter is None:
        return  # logging is someone else's (a test, a notebook)
    level = logging.getLevelName(beam_level)
    _filter.level = level
    # The root level gates every logger without its own level, ours included.
    logging.getLogger().setLevel(min(logging.INFO, level))


def level_from_argv(argv: Sequence[str]) -> str:
    """The --beam_log_level of `argv` ("--beam_log_level=X" or "--beam_log_level X").

    Read before flags are parsed (Beam logs on import); an absent or unknown value gives
    the default here, and flag parsing then refuses an unknown one.
    """
    argv = list(argv)
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{FLAG}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{FLAG}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value.upper() if value and value.upper() in LEVELS else DEFAULT_BEAM_LEVEL
