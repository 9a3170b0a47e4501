"""The records job's local worker process: Beam's SDK harness, with our logging set up first.

    python beam_jobs/worker.py [--beam_log_level=ERROR]

make_records.py runs its default local pipeline on worker processes started with this
command instead of Beam's `python -m apache_beam.runners.worker.sdk_worker_main`. That module
logs from its first import on (see beam_jobs/logs.py), before any pipeline option such as
--default_sdk_harness_log_level is read, and every worker shares the driver's stderr. Here
logs.setup() runs first; then the stock harness runs unchanged (it still sends every record
to the runner too, whose copies the driver filters alike).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Started by file name, so that it runs whatever the working directory: the checkout goes
    # first on the path, for this package and for the DoFns the harness unpickles.
    import os as _os

    sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
    from beam_jobs import worker

    sys.exit(worker.main(sys.argv))

from beam_jobs import logs

PATH = __file__


def main(argv: list[str]) -> int:
    logs.setup(logs.level_from_argv(argv))
    # Deferred: importing Beam logs, so it must come after logs.setup().
    from apache_beam.runners.worker import sdk_worker_main

    sdk_worker_main.main(argv)
    return 0
