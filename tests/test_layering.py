"""The package layering of docs/architecture.md, checked on every module's imports.

    oid/        imports nothing of ours            (no TensorFlow either)
    boxes/      imports nothing of ours
    tfrecords/  boxes/
    model/      boxes/
    beam_jobs/  oid/, tfrecords/
    engine/     oid/, boxes/, tfrecords/, model/
    entry points (train.py, eval.py, predict.py, tools/, benchmarks/): anything; no library
    imports them.

An import of one of our packages inside a function would hide a cycle from this test, so
libraries import ours at module level only; a third-party import inside a function (an
optional heavy dependency) carries a comment saying why.
"""

from __future__ import annotations

import ast
import io
import pathlib
import tokenize

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ALLOWED = {
    "oid": {"oid"},
    "boxes": {"boxes"},
    "tfrecords": {"tfrecords", "boxes"},
    "model": {"model", "boxes"},
    "beam_jobs": {"beam_jobs", "oid", "tfrecords"},
    "engine": {"engine", "oid", "boxes", "tfrecords", "model"},
}
ENTRY_POINTS = {"train", "eval", "predict", "tools", "benchmarks", "tests"}
OURS = set(ALLOWED) | ENTRY_POINTS
NO_TENSORFLOW = {"oid"}


def _modules(package: str) -> list[pathlib.Path]:
    return sorted((REPO / package).rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[ast.AST, str, bool]]:
    """(node, top-level module name, inside a function) of every import in `tree`."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((child, alias.name.split(".")[0], in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child, child.module.split(".")[0], in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def _comment_lines(source: str) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.start[0] for t in tokens if t.type == tokenize.COMMENT}


def layering_violations(package: str, path: pathlib.Path) -> list[str]:
    """Messages "FILE:LINE: ..." for every import of `path` the rules above refuse."""
    source = path.read_text()
    comments = _comment_lines(source)
    rel = path.relative_to(REPO)
    out = []
    for node, name, in_function in _imports(ast.parse(source, str(path))):
        where = f"{rel}:{node.lineno}"
        if name in OURS and name not in ALLOWED[package]:
            out.append(f"{where}: {package}/ may not import {name} "
                       f"(allowed: {', '.join(sorted(ALLOWED[package]))})")
        elif name in OURS and in_function:
            out.append(f"{where}: import of {name} inside a function; import it at module "
                       "level (a function-level import hides a cycle from this test)")
        elif in_function and not comments & {node.lineno - 1, node.lineno}:
            out.append(f"{where}: import of {name} inside a function without a comment "
                       "saying why it is deferred")
        if package in NO_TENSORFLOW and name in ("tensorflow", "keras") and not in_function:
            out.append(f"{where}: {package}/ must not need TensorFlow (a remote path may, "
                       "inside the function that opens it)")
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_the_layering(package):
    problems = [p for path in _modules(package) for p in layering_violations(package, path)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_forbidden_and_a_hidden_import(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    (tmp_path / "model").mkdir()
    bad = tmp_path / "model" / "bad.py"
    bad.write_text("import numpy\nfrom engine.trainer import Trainer\n\n\n"
                   "def f():\n    from boxes import ops\n    import PIL\n    return ops, PIL\n")
    problems = layering_violations("model", bad)
    assert problems == [
        "model/bad.py:2: model/ may not import engine (allowed: boxes, model)",
        "model/bad.py:6: import of boxes inside a function; import it at module level (a "
        "function-level import hides a cycle from this test)",
        "model/bad.py:7: import of PIL inside a function without a comment saying why it is "
        "deferred"]


def test_every_package_is_listed():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == set(ALLOWED), "a new package needs its row in ALLOWED and in the docs"
