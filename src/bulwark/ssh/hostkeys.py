"""The server's SSH host keys: made once for the whole instance, kept in its metadata store.

An HA replica receives them with the rest of the metadata and a cluster's nodes read them from
etcd, so a promotion or a load balancer never shows a client a changed host key. The first node
to start makes them; another starting at the same moment takes the stored ones (the store keeps
the first writer's).
"""

from __future__ import annotations

import logging
import warnings

from bulwark.errors import Unavailable
from bulwark.store import Store

with warnings.catch_warnings():  # asyncssh still imports cryptography's deprecated DSA support
    warnings.simplefilter("ignore")
    import asyncssh

log = logging.getLogger("bulwark.ssh")

# What a new instance makes, as OpenSSH's ssh-keygen -A would (without DSA).
ALGORITHMS = {"ssh-ed25519": 0, "ecdsa-sha2-nistp256": 0, "ssh-rsa": 3072}  # and the RSA key's size


def load(store: Store, *, create: bool) -> list[asyncssh.SSHKey]:
    """The instance's host keys, made first if ``create`` (a node whose store takes writes) and
    some are missing. A node that may not write and finds none (a replica before its first copy)
    raises ``Unavailable``: it must not invent keys of its own."""
    stored = {k.algorithm: k for k in store.get_ssh_host_keys()}
    if create:
        for algorithm, size in ALGORITHMS.items():
            if algorithm not in stored:
                made = asyncssh.generate_private_key(algorithm, key_size=size) if size else \
                    asyncssh.generate_private_key(algorithm)
                text = made.export_private_key("openssh").decode()
                stored[algorithm] = store.add_ssh_host_key(algorithm, text)
                log.info("made the SSH host key %s %s", algorithm, made.get_fingerprint("sha256"))
    if not stored:
        raise Unavailable("this node has no SSH host keys yet: they come from the primary")
    return [_parsed(k.private_key) for k in sorted(stored.values(), key=lambda k: k.algorithm)]


_keys: dict[str, asyncssh.SSHKey] = {}  # private key text -> key: the store is read every second


def _parsed(text: str) -> asyncssh.SSHKey:
    if text not in _keys:
        _keys[text] = asyncssh.import_private_key(text)
    return _keys[text]


def fingerprints(keys: list[asyncssh.SSHKey]) -> list[str]:
    return [f"{k.get_algorithm()} {k.get_fingerprint('sha256')}" for k in keys]


_public: dict[str, tuple[str, str]] = {}  # private key text -> (public line, fingerprint), parsing RSA is slow


def published(store: Store) -> list[tuple[str, str]]:
    """The host keys' public halves ("ssh-ed25519 AAAA...") and SHA256 fingerprints, for
    ``known_hosts`` files; none until a node has made them."""
    found = []
    for stored in store.get_ssh_host_keys():
        if stored.private_key not in _public:
            key = _parsed(stored.private_key)
            kind, data = key.export_public_key("openssh").decode().split()[:2]  # without a comment
            _public[stored.private_key] = (f"{kind} {data}", key.get_fingerprint("sha256"))
        found.append(_public[stored.private_key])
    return found
