"""One error type for bad input files, so every message names file, line and fix."""

from __future__ import annotations


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
