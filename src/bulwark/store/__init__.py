"""Metadata stores: the :class:`Store` interface and its backends."""

from bulwark.store.base import Store

__all__ = ["Store"]
