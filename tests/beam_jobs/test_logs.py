"""Which log records the records job shows: ours always, Beam's from --beam_log_level up."""

import logging
import os

import apache_beam
import pytest

from beam_jobs import logs

BEAM_FILE = os.path.join(os.path.dirname(apache_beam.__file__), "io", "gcp", "x.py")


def record(name: str, level: int, pathname: str = __file__, msg: str = "m") -> logging.LogRecord:
    return logging.LogRecord(name, level, pathname, 1, msg, None, None)


@pytest.mark.parametrize("rec, shown", [
    (record("apache_beam.runners.worker.sdk_worker", logging.INFO), False),
    (record("apache_beam.options.pipeline_options", logging.WARNING), False),
    (record("apache_beam.runners.portability.fn_api_runner", logging.ERROR), True),
    # Beam's code on the root logger (the import-time apitools warning) and as __main__.
    (record("root", logging.WARNING, BEAM_FILE), False),
    (record("__main__", logging.INFO, BEAM_FILE), False),
    (record("py.warnings", logging.WARNING, logging.__file__, f"{BEAM_FILE}:3: UserWarning: x"),
     False),
    # Ours, whatever the level: progress lines, warnings about skipped inputs.
    (record("root", logging.INFO), True),
    (record("beam_jobs.make_records", logging.WARNING), True),
])
def test_filter_shows_ours_and_beams_errors_only(rec, shown):
    assert logs.BeamFilter(logging.ERROR).filter(rec) is shown


def test_filter_at_info_shows_everything_of_beams():
    assert logs.BeamFilter(logging.INFO).filter(record("root", logging.INFO, BEAM_FILE))


@pytest.mark.parametrize("argv, level", [
    (["job"], "ERROR"),
    (["job", "--beam_log_level=info"], "INFO"),
    (["job", "--beam_log_level", "WARNING", "--level", "1"], "WARNING"),
    (["job", "--beam_log_level=LOUD"], "ERROR"),  # refused later, by flag parsing
])
def test_level_from_argv(argv, level):
    assert logs.level_from_argv(argv) == level
