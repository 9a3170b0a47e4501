"""The errors a user can make, and how the commands report them.

Every command of the package refuses a bad start or bad input the same way:
exit status 2, and the last line on stderr is

    error: <culprit>: <what is wrong>; <how to fix>

where the culprit is the flag and its value (UsageError: `--images=-5`) or
the file, with its line where one applies (InputFileError: `boxes.csv:4`). No
Python traceback: these errors are the user's to fix, not the program's.
"""

from __future__ import annotations

import argparse
import shlex
import sys

USAGE_EXIT = 2  # the status of a refused start or bad input (argparse's own)


class InputFileError(ValueError):
    """A problem in an input file.

    Attributes:
      path: the file, as given by the user.
      line: 1-based line number in that file (the header is line 1), or None
        when the problem is not tied to one line (a missing column, say).
      problem: what is wrong, in words.
    """

    def __init__(self, path: str, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}")


class UsageError(ValueError):
    """A command-line flag whose value cannot work.

    str() is `--flag=VALUE: problem` (the value shell-quoted when it needs it).

    Attributes:
      flag: the flag, e.g. "--images".
      value: its value as given (a string, or the parsed value).
      problem: what is wrong and how to fix it ("must be at least 1; ...").
    """

    def __init__(self, flag: str, value: object, problem: str):
        self.flag = flag
        self.value = value
        self.problem = problem
        super().__init__(f"{flag}={shlex.quote(str(value))}: {problem}")


def report(error: BaseException | str, file=None) -> int:
    """Prints `error: <error>` as the last line on stderr; returns USAGE_EXIT."""
    print(f"error: {error}", file=file or sys.stderr)
    return USAGE_EXIT


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" only where there is a default to show.

    argparse's formatter appends "(default: None)" to required flags and to
    flags whose help already says what their absence means.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors end in one `error: ...; see --help` line, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(USAGE_EXIT, f"error: {message}; see {self.prog} --help\n")
