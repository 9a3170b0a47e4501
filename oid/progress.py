"""Progress of long commands: a bar with rate and ETA at a terminal, plain lines in a log.

    with Progress(total=5000, unit="images", description="eval", mode=FLAGS.progress,
                  log=logging.info) as bar:
        for batch in batches:
            ...
            bar.update(len(batch), loss=0.8123)

Modes (the `--progress` flag of make_records.py, train.py, eval.py):
  bar   one line redrawn with '\\r' at most 1/min_interval times a second:
          eval:  42% [########............] 1,200/2,860 images, 41.3 images/s, 0:29 elapsed,
          ETA 0:40, loss 0.8123
        and left on screen, with a newline, when the work ends.
  log   a plain line every `log_every` units and/or every `log_every_seconds`, and one at the
        end, in the format of the inference loop's lines so that CI logs stay line-based:
          eval: 1,200/2,860 images (42%), 41.3 images/s, ETA 40 s, loss 0.8123
          eval: 2,860/2,860 images (100%), 41.3 images/s, done in 69 s
  none  nothing.
  auto  bar when the stream is a terminal (stream.isatty()), else log.

The total may be unknown (None): no percentage, bar or ETA then. The rate, and the ETA from
it, run from the first update that counted units to the latest one: the start-up before
the first unit (building a model, tracing a step, starting workers) is left out, as is the
time since work last advanced; until two updates have counted units it is the average since
the start. The "done" line gives the average over the whole run. Units are counted from
`initial` (e.g. the step a training run resumed at). While a bar is
shown, log records that the root logger writes to the same stream first erase it, so that
they do not end up glued to the bar; the next update draws it again below them.

No TensorFlow, no third-party package: the Beam job and the TensorFlow entry points share it.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

MODES = ("auto", "bar", "log", "none")
FLAG_HELP = ("Progress of the long work on stderr: bar (redrawn line with rate and ETA), log "
             "(plain lines), none, or auto (bar when stderr is a terminal, else log).")
BAR_WIDTH = 20  # characters between the brackets


def resolve(mode: str, stream: TextIO) -> str:
    """"bar", "log" or "none" for `mode` (one of MODES) writing to `stream`.

    Raises:
      ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # no isatty(), or a closed stream
        return "log"


def format_duration(seconds: float) -> str:
    """0:07, 12:34, 1:02:03 (seconds rounded to the nearest)."""
    s = int(seconds + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_rate(rate: float) -> str:
    """One decimal from 1 unit/s up (the log lines' format), three below (0.050)."""
    return f"{rate:.1f}" if rate >= 1 or rate == 0 else f"{rate:.3f}"


def _value(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or abs(v) >= 1000:  # 12,345 rather than 1.234e+04
        return f"{v:,.0f}"
    return f"{v:.4g}"


class Progress:
    """Progress of one piece of work, counted in `unit`s; a context manager.

    Args:
      total: units expected; None when unknown.
      unit: what is counted, plural ("images", "steps").
      description: leads every line ("eval", "train", "level1").
      mode: one of MODES; "auto" is resolved against `stream`.
      stream: where bars (and log lines without `log`) go; default sys.stderr.
      log: log mode writes each line with log(line) (e.g. logging.info, for the timestamped
        format of the other lines); None writes line + newline to `stream`.
      log_every: log mode: a line whenever the count passes a multiple of this; None: off.
      log_every_seconds: log mode: a line on the first update this long after the last line
        (0: every update); None: off.
      initial: the count to start from (a resumed run); the rate counts only what follows.
      min_interval: bar mode: seconds between redraws at least.
      columns: bar mode: the terminal's width (lines are cut to columns - 1); None: asked
        from the stream's terminal, no limit when it has none.
      clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, total: int | None = None, unit: str = "items", description: str = "",
                 mode: str = "auto", stream: TextIO | None = None,
                 log: Callable[[str], None] | None = None, log_every: int | None = None,
                 log_every_seconds: float | None = 10.0, initial: int = 0,
                 min_interval: float = 0.25, columns: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if total is not None and total < 0:
            raise ValueError(f"total must be 0 or more, got {total}")
        if log_every is not None and log_every < 1:
            raise ValueError(f"log_every must be at least 1 (None: off), got {log_every}")
        self.stream = stream if stream is not None else sys.stderr
        self.mode = resolve(mode, self.stream)
        self.total, self.unit, self.description = total, unit, description
        self.count = self._initial = initial
        self.postfix: dict[str, object] = {}
        self._log = log
        self._log_every, self._log_every_seconds = log_every, log_every_seconds
        self._min_interval = min_interval
        self._columns = columns if columns is not None else self._terminal_columns()
        self._clock = clock
        self._start = self._last_line = clock()
        self._first: tuple[float, int] | None = None  # (time, count) after the first units
        self._latest: tuple[float, int] | None = None  # (time, count) after the latest units
        self._last_draw = -math.inf
        self._shown = 0  # characters of the bar on screen; 0: none
        self._closed = False
        self._lock = threading.RLock()
        self._guard = _EraseBar(self)
        self._guarded: list[logging.Handler] = []
        if self.mode == "bar":
            for handler in logging.getLogger().handlers:
                if getattr(handler, "stream", None) is self.stream:
                    handler.addFilter(self._guard)
                    self._guarded.append(handler)
            self._draw()

    # -- figures -------------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        """Seconds since the start."""
        return max(self._clock() - self._start, 0.0)

    @property
    def rate(self) -> float:
        """Units per second between the first and the latest update that counted units;
        until there are two, the average since the start (0 before any time has passed)."""
        if self._first is not None and self._latest is not None:
            (t0, n0), (t1, n1) = self._first, self._latest
            if t1 > t0 and n1 > n0:
                return (n1 - n0) / (t1 - t0)
        return self.average_rate

    @property
    def average_rate(self) -> float:
        """Units per second since the start (0 before any time has passed)."""
        elapsed = self.elapsed
        return (self.count - self._initial) / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate; None without a total or a rate."""
        rate = self.rate
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.count, 0) / rate

    # -- updates -------------------------------------------------------------------------

    def update(self, n: int = 1, **postfix) -> None:
        """Counts `n` more units; `postfix` (name=value, e.g. loss=0.81) replaces the
        figures shown after the standard ones (ints, and floats from 1,000 up, whole with
        thousands separators; smaller floats with 4 significant digits; anything else as
        str())."""
        with self._lock:
            if self._closed:
                return
            before = self.count
            self.count += n
            if postfix:
                self.postfix = dict(postfix)
            now = self._clock()
            if n:
                self._latest = (now, self.count)
                if self._first is None:
                    self._first = self._latest
            if self.mode == "bar":
                if now - self._last_draw >= self._min_interval:
                    self._draw()
            elif self.mode == "log":
                every = self._log_every
                by_units = every is not None and self.count // every > before // every
                by_time = self._log_every_seconds is not None and \
                    now - self._last_line >= self._log_every_seconds
                if by_units or by_time:
                    self._emit(self.line())

    def close(self, failed: bool = False) -> None:
        """Ends the work: the bar's last state stays on screen with a newline; log mode
        writes its "done in" line (unless `failed`). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for handler in self._guarded:
                handler.removeFilter(self._guard)
            if self.mode == "bar":
                self._draw()
                self.stream.write("\n")
                self.stream.flush()
                self._shown = 0
            elif self.mode == "log" and not failed:
                self._emit(self.line(done=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    # -- text ----------------------------------------------------------------------------

    def line(self, done: bool = False) -> str:
        """The log line: "eval: 1,200/2,860 images (42%), 41.3 images/s, ETA 40 s, loss 0.8"
        ("..., done in 69 s" when `done`; without a total "eval: 1,200 images, ...")."""
        text = self._prefix() + self._counted()
        if self.total is not None:
            text += f" ({self._percent():.0f}%)"
        text += f", {format_rate(self.average_rate if done else self.rate)} {self.unit}/s"
        eta = self.eta
        if done:
            text += f", done in {self.elapsed:.0f} s"
        elif eta is not None:
            text += f", ETA {eta:.0f} s"
        return text + self._postfix()

    def frame(self) -> str:
        """The bar: "eval:  42% [########............] 1,200/2,860 images, 41.3 images/s,
        0:29 elapsed, ETA 0:40, loss 0.8123" (without a total, no percent, bar or ETA)."""
        text = self._prefix()
        if self.total is not None:
            filled = min(BAR_WIDTH, BAR_WIDTH * self.count // self.total) \
                if self.total else BAR_WIDTH
            text += f"{self._percent():3.0f}% [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
        text += f"{self._counted()}, {format_rate(self.rate)} {self.unit}/s, " \
                f"{format_duration(self.elapsed)} elapsed"
        if self.total is not None:
            eta = self.eta
            text += f", ETA {'?' if eta is None else format_duration(eta)}"
        return text + self._postfix()

    def _prefix(self) -> str:
        return f"{self.description}: " if self.description else ""

    def _counted(self) -> str:
        if self.total is None:
            return f"{self.count:,} {self.unit}"
        return f"{self.count:,}/{self.total:,} {self.unit}"

    def _percent(self) -> float:
        return 100.0 * self.count / self.total if self.total else 100.0

    def _postfix(self) -> str:
        return "".join(f", {k} {_value(v)}" for k, v in self.postfix.items())

    # -- output --------------------------------------------------------------------------

    def _emit(self, line: str) -> None:
        self._last_line = self._clock()
        if self._log is not None:
            self._log(line)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _draw(self) -> None:
        text = self.frame()
        if self._columns:
            text = text[:max(self._columns - 1, 1)]
        # Spaces cover what a longer previous frame left on the line.
        self.stream.write("\r" + text + " " * max(self._shown - len(text), 0))
        self.stream.flush()
        self._shown = len(text)
        self._last_draw = self._clock()

    def _erase(self) -> None:
        """Clears the bar's line (a log record is about to be written there)."""
        with self._lock:
            if self._shown:
                self.stream.write("\r" + " " * self._shown + "\r")
                self.stream.flush()
                self._shown = 0
                self._last_draw = -math.inf  # drawn again at the next update

    def _terminal_columns(self) -> int | None:
        if self.mode != "bar":
            return None
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, ValueError, OSError):  # not a terminal (a test's StringIO)
            return None


class _EraseBar(logging.Filter):
    """On the root logger's handlers that share the bar's stream: erases the bar before a
    record is written (a filter runs just before its handler emits)."""

    def __init__(self, progress: Progress):
        super().__init__()
        self._progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self._progress._erase()
        return True
