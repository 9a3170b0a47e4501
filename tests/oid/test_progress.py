"""oid.progress: exact bars and log lines on a StringIO with a fake clock.

Golden lines are worked out by hand in the comments: rate = units counted after the first
update that counted any / seconds since it (with one such update only: (count - initial) /
elapsed), ETA = (total - count) / rate, the done line's rate = (count - initial) / elapsed,
bar cells = 20 * count // total.
"""

import io
import logging

import pytest

from oid import progress
from oid.progress import Progress


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_log_lines_every_n_seconds_with_rate_eta_and_the_done_line():
    clock, out = Clock(), io.StringIO()
    with Progress(total=100, unit="images", description="eval", mode="log", stream=out,
                  log_every_seconds=10, clock=clock) as bar:
        clock.now = 4
        bar.update(20)  # the first units, 4 s after the start: no line yet
        clock.now = 10
        bar.update(20)  # (40 - 20) / (10 - 4) s = 3.33/s; 60 left / 3.33 = 18 s
        clock.now = 12
        bar.update(10)  # 2 s since the last line
        clock.now = 25
        bar.update(50, loss=0.5)  # (100 - 20) / (25 - 4) s = 3.81/s, nothing left
    assert out.getvalue() == (
        "eval: 40/100 images (40%), 3.3 images/s, ETA 18 s\n"
        "eval: 100/100 images (100%), 3.8 images/s, ETA 0 s, loss 0.5\n"
        # The whole run: 100 in 25 s.
        "eval: 100/100 images (100%), 4.0 images/s, done in 25 s, loss 0.5\n")


def test_log_lines_every_n_units_with_an_unknown_total():
    clock, out = Clock(), io.StringIO()
    bar = Progress(unit="steps", description="train", mode="log", stream=out, log_every=50,
                   log_every_seconds=None, clock=clock)
    for now, n in ((2, 30), (4, 30), (5, 39), (6, 1)):
        clock.now = now
        bar.update(n)
    clock.now = 8
    bar.close()
    bar.close()  # idempotent
    # First units: 30 at 2 s. 60 passes 50 at 4 s: 30 / 2 s = 15.0/s; 100 at 6 s: 70 / 4 s =
    # 17.5/s; done at 8 s: 100 / 8 = 12.5/s.
    assert out.getvalue() == ("train: 60 steps, 15.0 steps/s\n"
                              "train: 100 steps, 17.5 steps/s\n"
                              "train: 100 steps, 12.5 steps/s, done in 8 s\n")


def test_log_lines_go_to_the_log_callable_when_given():
    clock, out, lines = Clock(), io.StringIO(), []
    with Progress(total=4, unit="shards", mode="log", stream=out, log=lines.append,
                  log_every_seconds=0, clock=clock) as bar:
        clock.now = 2
        bar.update(1)  # one update only: 1 in 2 s = 0.5/s (three decimals below 1/s); 3 left
        # / 0.5 = 6 s
    assert out.getvalue() == ""
    assert lines == ["1/4 shards (25%), 0.500 shards/s, ETA 6 s",
                     "1/4 shards (25%), 0.500 shards/s, done in 2 s"]


def test_resumed_count_rates_only_the_new_units():
    clock, out = Clock(), io.StringIO()
    with Progress(total=100, unit="steps", description="train", mode="log", stream=out,
                  initial=40, log_every_seconds=0, clock=clock) as bar:
        clock.now = 10
        bar.update(10)  # (50 - 40) / 10 s = 1.0/s; 50 left: 50 s
    assert out.getvalue().splitlines()[0] == "train: 50/100 steps (50%), 1.0 steps/s, ETA 50 s"


def test_bar_redraws_at_most_every_min_interval_and_pads_a_shorter_frame():
    clock, out = Clock(), io.StringIO()
    with Progress(total=200, unit="images", description="eval", mode="bar", stream=out,
                  min_interval=0.25, clock=clock) as bar:
        clock.now = 0.1
        bar.update(10)  # the first units, 0.1 s after the first frame: not drawn
        clock.now = 5
        bar.update(40, loss=0.123456)  # 40 / 4.9 s = 8.16/s; 150 left: 18 s; 20*50//200 = 5
        clock.now = 80
        bar.update(150, loss=2)  # 190 / 79.9 s = 2.38/s; full
        clock.now = 90  # no more units: the rate stays
    first = "eval:   0% [....................] 0/200 images, 0.0 images/s, 0:00 elapsed, ETA ?"
    second = ("eval:  25% [#####...............] 50/200 images, 8.2 images/s, 0:05 elapsed, "
              "ETA 0:18, loss 0.1235")
    # One character more in the count ("200/200") and five fewer in the loss ("2"): four
    # spaces cover the end of the previous frame.
    third = ("eval: 100% [####################] 200/200 images, 2.4 images/s, 1:20 elapsed, "
             "ETA 0:00, loss 2")
    last = third.replace("1:20 elapsed", "1:30 elapsed")
    assert out.getvalue() == ("\r" + first + "\r" + second + "\r" + third + " " * 4
                              + "\r" + last + "\n")


def test_bar_with_an_unknown_total_has_no_percent_bar_or_eta():
    clock, out = Clock(), io.StringIO()
    with Progress(unit="steps", mode="bar", stream=out, clock=clock) as bar:
        clock.now = 3
        bar.update(6)  # 2.0/s
    assert out.getvalue() == ("\r0 steps, 0.0 steps/s, 0:00 elapsed"
                              "\r6 steps, 2.0 steps/s, 0:03 elapsed"
                              "\r6 steps, 2.0 steps/s, 0:03 elapsed\n")


def test_bar_is_cut_to_the_terminal_width():
    out = io.StringIO()
    Progress(total=10, unit="images", description="eval", mode="bar", stream=out, columns=21,
             clock=Clock()).close()
    assert out.getvalue() == "\reval:   0% [........" * 2 + "\n"  # 12 + 8 = 20 characters


def test_a_log_record_erases_the_bar_which_is_drawn_again_at_the_next_update():
    clock, out = Clock(), FakeTerminal()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with Progress(total=4, unit="steps", mode="auto", stream=out, min_interval=10,
                      columns=0, clock=clock) as bar:
            assert bar.mode == "bar"
            logging.getLogger("tests.progress").warning("checkpoint written")
            clock.now = 1
            bar.update(1)  # within min_interval, but the bar was erased: drawn now
        logging.getLogger("tests.progress").warning("after")
    finally:
        root.removeHandler(handler)
    first = "0/4 steps, 0.0 steps/s, 0:00 elapsed, ETA ?"
    second = "1/4 steps, 1.0 steps/s, 0:01 elapsed, ETA 0:03"  # 3 left at 1/s
    assert out.getvalue() == ("  0% [....................] ".join(["\r", first]) +
                              "\r" + " " * (len(first) + 28) + "\r" +
                              "WARNING checkpoint written\n" +
                              "\r 25% [#####...............] " + second +
                              "\r 25% [#####...............] " + second + "\n" +
                              "WARNING after\n")  # the filter is gone with the bar
    assert handler.filters == []


def test_none_mode_prints_nothing():
    clock, out, lines = Clock(), FakeTerminal(), []
    with Progress(total=10, mode="none", stream=out, log=lines.append, log_every=1,
                  log_every_seconds=0, clock=clock) as bar:
        clock.now = 1
        bar.update(5, loss=1.0)
    assert out.getvalue() == "" and lines == []


def test_auto_is_log_on_a_stream_that_is_not_a_terminal_and_bar_on_one():
    assert progress.resolve("auto", io.StringIO()) == "log"
    assert progress.resolve("auto", FakeTerminal()) == "bar"
    assert progress.resolve("auto", object()) == "log"  # no isatty() at all
    closed = io.StringIO()
    closed.close()
    assert progress.resolve("auto", closed) == "log"
    assert Progress(mode="auto", stream=io.StringIO()).mode == "log"
    for mode in ("bar", "log", "none"):
        assert progress.resolve(mode, FakeTerminal()) == mode


def test_failed_work_gets_no_done_line_and_the_bar_ends_its_line():
    clock, out = Clock(), io.StringIO()
    with pytest.raises(KeyError):
        with Progress(total=3, unit="images", mode="log", stream=out, clock=clock,
                      log_every_seconds=None) as bar:
            bar.update(1)
            raise KeyError("boom")
    assert out.getvalue() == ""
    terminal = io.StringIO()
    with pytest.raises(KeyError):
        with Progress(unit="images", mode="bar", stream=terminal, clock=clock):
            raise KeyError("boom")
    assert terminal.getvalue().endswith("0:00 elapsed\n")


def test_updates_after_close_are_ignored():
    clock, out = Clock(), io.StringIO()
    bar = Progress(total=2, mode="log", stream=out, log_every_seconds=0, clock=clock)
    bar.close()
    bar.update(1)
    assert bar.count == 0 and out.getvalue() == "0/2 items (0%), 0.0 items/s, done in 0 s\n"


def test_zero_total_is_complete_and_postfix_values_are_formatted_by_type():
    clock, out = Clock(), io.StringIO()
    bar = Progress(total=0, unit="shards", mode="bar", stream=out, clock=clock)
    bar.update(0, images=12345, rate=2345.6, loss=0.000123456, note="ok", flag=True)
    assert bar.frame() == ("100% [####################] 0/0 shards, 0.0 shards/s, 0:00 elapsed, "
                           "ETA ?, images 12,345, rate 2,346, loss 0.0001235, note ok, flag True")


def test_durations_rates_and_bad_arguments():
    assert [progress.format_duration(s) for s in (0, 59.4, 59.5, 754, 3723)] == \
        ["0:00", "0:59", "1:00", "12:34", "1:02:03"]
    assert [progress.format_rate(r) for r in (0, 0.05, 0.9996, 1, 41.26)] == \
        ["0.0", "0.050", "1.000", "1.0", "41.3"]
    with pytest.raises(ValueError, match="one of auto, bar, log, none"):
        progress.resolve("fancy", io.StringIO())
    with pytest.raises(ValueError, match="total must be 0 or more"):
        Progress(total=-1, mode="none")
    with pytest.raises(ValueError, match="log_every must be at least 1"):
        Progress(log_every=0, mode="none")
