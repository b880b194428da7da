"""The commit graph of a campaign, from its history alone.

Every commit was made by a client of the campaign, which recorded its parents with the push, so
ancestry needs no repository: not even one that lost the commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from chaos.history import Kind, Op


class Graph:
    """Every commit the clients made, with its parents."""

    def __init__(self, ops: Iterable[Op], made: Mapping[str, tuple[str, ...]] | None = None) -> None:
        """``made``: commits known before their push ended (during a campaign, pushes still in flight)."""
        self.parents: dict[str, tuple[str, ...]] = dict(made or {})
        for op in ops:
            if op.kind is Kind.PUSH and op.sha:
                self.parents.setdefault(op.sha, op.parents)
        self._depth: dict[str, int] = {}

    def known(self, commit: str) -> bool:
        return commit in self.parents

    def depth(self, commit: str) -> int | None:
        """The length of the longest path from ``commit`` to a root (None: not a commit of ours)."""
        if commit not in self.parents:
            return None
        stack = [commit]
        while stack:
            c = stack[-1]
            if c in self._depth:
                stack.pop()
                continue
            todo = [p for p in self.parents.get(c, ()) if p in self.parents and p not in self._depth]
            if todo:
                stack.extend(todo)
                continue
            known = [self._depth[p] for p in self.parents.get(c, ()) if p in self.parents]
            self._depth[c] = 1 + max(known, default=-1)
            stack.pop()
        return self._depth[commit]

    def contains(self, tip: str, commit: str) -> bool:
        """Whether ``commit`` is ``tip`` or one of its ancestors."""
        if tip == commit:
            return True
        target = self.depth(commit)
        if target is None or self.depth(tip) is None:
            return False
        stack, seen = [tip], set()
        while stack:
            c = stack.pop()
            if c == commit:
                return True
            if c in seen:
                continue
            seen.add(c)
            depth = self.depth(c)
            if depth is not None and depth > target:  # nothing below the commit's own depth can be it
                stack.extend(self.parents.get(c, ()))
        return False

    def ancestry(self, tip: str) -> set[str]:
        out, stack = set(), [tip]
        while stack:
            c = stack.pop()
            if c not in out:
                out.add(c)
                stack.extend(self.parents.get(c, ()))
        return out
