"""The Open Images class hierarchy.

The official JSON is a tree of nodes `{"LabelName": MID, "Subcategory": [...],
"Part": [...]}` under the virtual root `/m/0bl9f` ("Entity"). A class may occur
under several parents, with its subtree repeated at each place (a DAG in
effect).

Two relations are kept apart:
  * `Subcategory` ("is a kind of"): the only edges that `ancestors` and
    `descendants` follow. The challenge metric expands ground truth along them
    and a submission copies boxes to these ancestors.
  * `Part` ("is a part of"): a human face is part of a person, but a face box
    is no person box, so parts are never ancestors. They are kept as their own
    relation (`parts`, `wholes`).
The root is not a class: it is nobody's ancestor and not in `classes`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from oid import ROOT_MID, fileio
from oid.errors import InputFileError

_KNOWN_KEYS = frozenset({"LabelName", "Subcategory", "Part"})


class UnknownClassError(KeyError):
    """A MID that the hierarchy does not contain."""

    def __str__(self) -> str:  # KeyError quotes its argument; show the message as is.
        return str(self.args[0])


class Hierarchy:
    """Subcategory and Part relations over the classes of one hierarchy file.

    Construct with `Hierarchy.from_json(obj)` or `load_hierarchy(path)`.
    All relation queries return frozensets of MIDs and raise UnknownClassError
    for a MID that is not in the hierarchy.
    """

    def __init__(
        self,
        parents: Mapping[str, Iterable[str]],
        wholes: Mapping[str, Iterable[str]],
        root: str = ROOT_MID,
        source: str = "<hierarchy>",
    ):
        """Builds the closures.

        Args:
          parents: class MID -> its direct Subcategory parents (root excluded);
            every class must be a key (with an empty list for top-level ones).
          wholes: class MID -> the classes it is a direct Part of.
          root: the virtual root MID, never a class.
          source: file name for error messages.
        """
        self.root = root
        self.source = source
        self._parents = {c: frozenset(p) for c, p in parents.items()}
        self._wholes = {c: frozenset(w) for c, w in wholes.items()}
        for c in self._wholes:
            self._parents.setdefault(c, frozenset())
        self._children: dict[str, set[str]] = {c: set() for c in self._parents}
        self._parts: dict[str, set[str]] = {c: set() for c in self._parents}
        for c, ps in self._parents.items():
            for p in ps:
                self._children[p].add(c)
        for c, ws in self._wholes.items():
            for w in ws:
                self._parts[w].add(c)
        self._ancestors: dict[str, frozenset[str]] = {}
        for c in self._parents:
            self._ancestors_of(c, ())
        self._descendants: dict[str, set[str]] = {c: set() for c in self._parents}
        for c, ancs in self._ancestors.items():
            for a in ancs:
                self._descendants[a].add(c)

    def _ancestors_of(self, mid: str, path: tuple[str, ...]) -> frozenset[str]:
        done = self._ancestors.get(mid)
        if done is not None:
            return done
        if mid in path:
            cycle = " -> ".join(path[path.index(mid):] + (mid,))
            raise InputFileError(self.source, None, f"the hierarchy has a cycle: {cycle}")
        result: set[str] = set()
        for p in self._parents[mid]:
            result.add(p)
            result |= self._ancestors_of(p, path + (mid,))
        frozen = frozenset(result)
        self._ancestors[mid] = frozen
        return frozen

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: Mapping, source: str = "<hierarchy>") -> Hierarchy:
        """Parses the nested-node JSON object (already decoded)."""
        if not isinstance(obj, Mapping) or "LabelName" not in obj:
            raise InputFileError(source, None, "the top node has no 'LabelName'")
        root = obj["LabelName"]
        parents: dict[str, set[str]] = {}
        wholes: dict[str, set[str]] = {}

        def visit(node: Mapping, where: str) -> str:
            if not isinstance(node, Mapping) or not isinstance(node.get("LabelName"), str):
                raise InputFileError(source, None, f"node at {where} has no string 'LabelName'")
            mid = node["LabelName"]
            unknown = set(node) - _KNOWN_KEYS
            if unknown:
                raise InputFileError(
                    source, None,
                    f"node {mid} at {where} has unknown keys {sorted(unknown)}; "
                    f"expected only {sorted(_KNOWN_KEYS)}")
            if mid != root:
                parents.setdefault(mid, set())
            for key, relation in (("Subcategory", parents), ("Part", wholes)):
                children = node.get(key, [])
                if not isinstance(children, list):
                    raise InputFileError(source, None, f"'{key}' of {mid} is not a list")
                for i, child in enumerate(children):
                    child_mid = visit(child, f"{where}/{key}[{i}]")
                    if child_mid == root:
                        raise InputFileError(source, None, f"the root {root} appears under {mid}")
                    if mid != root:
                        relation.setdefault(child_mid, set()).add(mid)
            return mid

        visit(obj, root)
        return cls(parents, wholes, root=root, source=source)

    def to_json(self) -> dict:
        """The nested-node form, with subtrees repeated under each parent like the official files."""

        def node(mid: str) -> dict:
            out: dict = {"LabelName": mid}
            subs = sorted(self._children[mid])
            parts = sorted(self._parts[mid])
            if subs:
                out["Subcategory"] = [node(c) for c in subs]
            if parts:
                out["Part"] = [{"LabelName": p} for p in parts]
            return out

        top = sorted(c for c, ps in self._parents.items() if not ps)
        return {"LabelName": self.root, "Subcategory": [node(c) for c in top]}

    # -- queries -----------------------------------------------------------------------

    @property
    def classes(self) -> frozenset[str]:
        """Every class MID in the file (root excluded), Part-only nodes included."""
        return frozenset(self._parents)

    def __contains__(self, mid: object) -> bool:
        return mid in self._parents

    def __len__(self) -> int:
        return len(self._parents)

    def _check(self, mid: str) -> None:
        if mid not in self._parents:
            what = "the virtual root, not a class" if mid == self.root else "not in the hierarchy"
            raise UnknownClassError(f"class {mid!r} is {what} ({self.source})")

    def parents(self, mid: str) -> frozenset[str]:
        """Direct Subcategory parents (empty for a top-level class)."""
        self._check(mid)
        return self._parents[mid]

    def children(self, mid: str) -> frozenset[str]:
        """Direct Subcategory children."""
        self._check(mid)
        return frozenset(self._children[mid])

    def ancestors(self, mid: str) -> frozenset[str]:
        """All classes above `mid` along Subcategory edges, each once; root and `mid` excluded."""
        self._check(mid)
        return self._ancestors[mid]

    def descendants(self, mid: str) -> frozenset[str]:
        """All classes below `mid` along Subcategory edges, each once; `mid` excluded."""
        self._check(mid)
        return frozenset(self._descendants[mid])

    def parts(self, mid: str) -> frozenset[str]:
        """Classes listed as direct Parts of `mid` (not its subcategories)."""
        self._check(mid)
        return frozenset(self._parts[mid])

    def wholes(self, mid: str) -> frozenset[str]:
        """Classes that list `mid` as a direct Part."""
        self._check(mid)
        return self._wholes.get(mid, frozenset())

    def is_leaf(self, mid: str) -> bool:
        """True when `mid` has no Subcategory children."""
        self._check(mid)
        return not self._children[mid]

    def depth(self, mid: str) -> int:
        """Longest Subcategory path from the root: a top-level class has depth 1."""
        self._check(mid)
        return 1 + max((self.depth(p) for p in self._parents[mid]), default=0)

    def ancestors_map(self) -> dict[str, tuple[str, ...]]:
        """MID -> sorted tuple of ancestors, for vectorized expansion."""
        return {c: tuple(sorted(a)) for c, a in self._ancestors.items()}

    def descendants_map(self) -> dict[str, tuple[str, ...]]:
        """MID -> sorted tuple of descendants."""
        return {c: tuple(sorted(d)) for c, d in self._descendants.items()}


def load_hierarchy(path: str) -> Hierarchy:
    """Reads an official hierarchy JSON file (local or remote path)."""
    text = fileio.read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputFileError(path, e.lineno, f"not valid JSON: {e.msg}") from None
    return Hierarchy.from_json(obj, source=str(path))
