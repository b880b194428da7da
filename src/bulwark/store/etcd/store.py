"""The etcd store: each domain's mixin over the shared base, as one :class:`Store`."""

from __future__ import annotations

from bulwark.store.base import Store
from bulwark.store.etcd.accounts import _Accounts
from bulwark.store.etcd.repos import _Repos
from bulwark.store.etcd.settings import _NodeSettings
from bulwark.store.etcd.ssh import _SshKeys
from bulwark.store.etcd.tokens import _Tokens


# Each method is defined in exactly one of these bases, so their order decides nothing.
class EtcdStore(_Accounts, _Tokens, _Repos, _SshKeys, _NodeSettings, Store):
    """Bulwark metadata in etcd, shared by every node of a cluster.

    The caller owns ``etcd``: :meth:`close` leaves it open.
    """
