"""What a computation read from the etcd store, so a result can be kept while that is unchanged."""

from __future__ import annotations


class ReadLog:
    """The keys a computation read and the revision each was last written at (0: absent).

    ``usable`` turns false when the computation did anything a set of keys cannot describe
    (a prefix read, a write): its result then cannot be checked with :meth:`EtcdStore.unchanged`.
    """

    def __init__(self) -> None:
        self.reads: dict[str, int] = {}
        self.usable = True
