"""How train.py, eval.py and predict.py end a refused start: one line `error: ...` on stderr
naming the flag and its value (or the file), exit status 2, no traceback, nothing written.

absl reports a flag that fails its type or bounds with exit status 1 and a "FATAL Flags
parsing error" line; parse_flags turns that into the same one line and status as every other
refusal, so a script calling these commands can tell a usage error (2) from a crash (1).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import flags

USAGE_ERROR = 2


def refuse(message: str) -> NoReturn:
    """Ends the program: `error: MESSAGE` on stderr, exit status 2.

    The process ends at once (os._exit, after flushing the logs): a refusal can come while
    tf.data threads are still running Python generators, and the interpreter's normal
    shutdown would then wait for them forever.
    """
    logging.disable(logging.CRITICAL)  # other threads' log lines must not follow the error
    logging.shutdown()
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(USAGE_ERROR)


def parse_flags(argv: Sequence[str], known_only: bool = False) -> list[str]:
    """absl's parsing of `argv` with refuse() for a bad flag. Returns the leftover arguments.

    known_only: ignore flags this program does not define when they come from a flagfile
    (a train.py flagfile passed to eval.py), while an unknown flag typed on the command line
    is still an error.
    """
    try:
        rest = flags.FLAGS(list(argv), known_only=known_only)
    except flags.Error as e:
        refuse(f"{e}; see --helpshort")
    if known_only:
        direct = set(argv[1:])
        unknown = [a for a in rest[1:] if a.startswith("-") and a in direct]
        if unknown:
            refuse(f"unknown flag {unknown[0]!r}; see --helpshort")
    return rest[:1] if known_only else rest


def flags_parser(known_only: bool = False) -> Callable[[list[str]], list[str]]:
    """For absl.app.run(main, flags_parser=...)."""
    return lambda argv: parse_flags(argv, known_only)


def check(condition: bool, message: str) -> None:
    """refuse(message) unless `condition`."""
    if not condition:
        refuse(message)


def bound(name: str, low: float | None = None, high: float | None = None,
          above: float | None = None) -> None:
    """Registers a check of flag `name` (None passes): low <= value <= high, value > above."""
    parts = ([f">= {low}"] if low is not None else []) + \
        ([f"> {above}"] if above is not None else []) + \
        ([f"<= {high}"] if high is not None else [])

    def ok(value) -> bool:
        return value is None or ((low is None or value >= low) and
                                 (high is None or value <= high) and
                                 (above is None or value > above))

    flags.register_validator(name, ok, message=f"must be {' and '.join(parts)}")
