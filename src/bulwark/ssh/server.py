"""The node's SSH listener: who may log in, and what a session may run (git, nothing else).

Only public keys are accepted, each looked up by fingerprint in the metadata store, and looked up
again for every session, so a key deleted or an account suspended counts at once, even on a
connection already open. A connection has ``login_timeout`` seconds and ``max_auth_attempts`` keys to
log in, and at most ``max_unauthenticated`` connections may be logging in at once (an address
opening hundreds of idle connections keeps no one else out for long). A shell or any command but
git's is refused with a sentence on stderr and exit status 1; port, agent and X11 forwarding and
subsystems (sftp) are refused outright. A pty request is granted in name only: no terminal is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bulwark.errors import BulwarkError
from bulwark.gitservice import slots as gitslots
from bulwark.monitoring.metrics import Metrics
from bulwark.node import Node
from bulwark.roles import NodeRole
from bulwark.services.ssh_keys import Holder
from bulwark.ssh import hostkeys
from bulwark.ssh.git import Channel, serve

with warnings.catch_warnings():  # asyncssh still imports cryptography's deprecated DSA support
    warnings.simplefilter("ignore")
    import asyncssh

log = logging.getLogger("bulwark.ssh")
# asyncssh tells every step of every connection at INFO; the node logs one line per session instead.
logging.getLogger("asyncssh").setLevel(logging.WARNING)

USER = "git"
# Seconds between reads of the host keys (and tries to bind the port): a node just made a replica
# serves its primary's host keys within this long.
RETRY = 1.0
CLUSTER_REFRESH = 10.0


@dataclass(frozen=True)
class Limits:
    login_timeout: float = 20.0  # seconds from connecting to being logged in
    max_auth_attempts: int = 6  # distinct keys one connection may offer (OpenSSH's MaxAuthTries)
    max_unauthenticated: int = 100  # connections logging in at once
    idle_timeout: float = 120.0  # seconds a session (or a logged-in connection without one) may sit silent


class Gate:
    """The connections logging in, counted against the limit; and what was refused, for the metrics."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.unauthenticated = 0
        self.refused = 0
        self.auth_failures = 0

    def admit(self) -> bool:
        if self.unauthenticated >= self.limit:
            self.refused += 1
            return False
        self.unauthenticated += 1
        return True

    def logged_in(self) -> None:
        self.unauthenticated -= 1


class _Connection(asyncssh.SSHServer):
    """One client connection: its login, then the sessions it opens."""

    def __init__(self, listener: SshListener) -> None:
        self.listener = listener
        self.conn: asyncssh.SSHServerConnection | None = None
        self.username = ""
        self.fingerprint: str | None = None  # of the key that logged in
        self.tried: dict[str, bool] = {}
        self.counted = False  # among the connections logging in
        self.sessions = 0
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        if not self.listener.gate.admit():
            log.warning("ssh: refused a connection from %s: %d connections are logging in already",
                        _peer(conn), self.listener.gate.limit)
            conn.disconnect(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections are logging in; try again")
            return
        self.counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.counted = False
            self.listener.gate.logged_in()
        if self.idle is not None:
            self.idle.cancel()
        self.listener.connections.discard(self)

    def begin_auth(self, username: str) -> bool:
        self.username = username
        return True  # a key is always asked for

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fingerprint = key.get_fingerprint("sha256")
        if fingerprint not in self.tried:
            if len(self.tried) >= self.listener.limits.max_auth_attempts:
                self.listener.gate.auth_failures += 1
                if self.conn is not None:
                    self.conn.disconnect(asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                                         "too many authentication attempts")
                return False
            holder = await asyncio.to_thread(self.listener.node.keys.holder, fingerprint)
            self.tried[fingerprint] = holder is not None
            if holder is None:
                self.listener.gate.auth_failures += 1
        if self.tried[fingerprint]:
            # Asked once without a signature and once with it; the last key accepted is the one in use.
            self.fingerprint = fingerprint
        return self.tried[fingerprint]

    def auth_completed(self) -> None:
        if self.counted:
            self.counted = False
            self.listener.gate.logged_in()
        self.listener.connections.add(self)
        self._watch()

    # -- sessions ----------------------------------------------------------------------

    def session_opened(self) -> None:
        self.sessions += 1
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    def session_closed(self) -> None:
        self.sessions -= 1
        self._watch()

    def _watch(self) -> None:
        # A logged-in connection with no session open (an idle multiplexing master, a client that
        # logged in and went quiet) is closed after the idle timeout.
        if self.sessions == 0 and self.conn is not None:
            self.idle = asyncio.get_running_loop().call_later(self.listener.limits.idle_timeout, self._close_idle)

    def _close_idle(self) -> None:
        if self.sessions == 0 and self.conn is not None:
            self.conn.close()


class SshListener:
    """The SSH server of one node, started and stopped with its HTTP server."""

    def __init__(self, node: Node, *, host: str, port: int, limits: Limits, metrics: Metrics | None = None,
                 slots: gitslots.GitSlots | None = None) -> None:
        self.node = node
        self.host, self.port = host, port
        self.limits = limits
        self.metrics = metrics
        self.slots = slots
        self.gate = Gate(limits.max_unauthenticated)
        self.connections: set[_Connection] = set()
        self.server: asyncssh.SSHAcceptor | None = None
        # A cluster node relays sessions to its own smart HTTP (ssh/relay.py); no read timeout, as
        # a clone streams for as long as it takes (the session's idle timeout bounds a stall).
        # Its connections stay below the node's per-address limit (they all come from this node);
        # more sessions at once wait for one (git's own process slots are fewer anyway).
        self.relay_client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0), trust_env=False,
                                              limits=httpx.Limits(max_connections=200, max_keepalive_connections=20)) \
            if node.cluster is not None else None

    async def run(self) -> None:
        """Serve until cancelled. Host keys are read from the store every second: a replica starts
        serving once its first copy brought them (and serves its primary's from then on), and a
        listener whose port was taken binds once it is free, with no restart."""
        serving: list[str] = []
        failed = ""
        while True:
            try:
                keys = await asyncio.to_thread(self._host_keys)
                prints = hostkeys.fingerprints(keys)
                if self.server is None:
                    await self._listen(keys)
                    log.info("bulwark serving git over SSH on %s:%d (host keys %s)", self.host, self.port,
                             ", ".join(prints))
                elif prints != serving:
                    self.server.update(server_host_keys=keys)
                    log.info("ssh: host keys now %s", ", ".join(prints))
                serving, failed = prints, ""
            except (OSError, BulwarkError) as exc:
                if str(exc) != failed:  # said once, not every second
                    log.error("ssh: not serving git over SSH on %s:%d: %s; trying again every %gs",
                              self.host, self.port, exc, RETRY)
                failed = str(exc)
            # etcd is asked less often than SQLite: a cluster's host keys change only when first made.
            await asyncio.sleep(CLUSTER_REFRESH if self.node.cluster is not None and self.server else RETRY)

    def _host_keys(self) -> list[asyncssh.SSHKey]:
        # Made by a node whose store takes writes; a replica waits for the primary's.
        return hostkeys.load(self.node.store, create=self.node.role is not NodeRole.HA_REPLICA)

    async def _listen(self, host_keys: list[asyncssh.SSHKey]) -> None:
        self.server = await asyncssh.listen(
            self.host, self.port,
            server_factory=lambda: _Connection(self),
            server_host_keys=host_keys,
            process_factory=self._session,
            encoding=None,
            line_editor=False,
            # A pty is granted in name only (no terminal is made), so 'ssh git@host' from a shell
            # reads its greeting rather than a failed request.
            allow_pty=True,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            login_timeout=self.limits.login_timeout,
            # A client whose machine vanished (a cut network) is noticed within a minute and a half.
            keepalive_interval=30,
            keepalive_count_max=3,
            server_version="Bulwark",
        )
        if self.port == 0:
            self.port = self.server.get_port()

    async def stop(self) -> None:
        """Stop taking connections and end the ones open (their git processes are stopped)."""
        for connection in list(self.connections):
            if connection.conn is not None:
                connection.conn.close()
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)
            self.server = None
        if self.relay_client is not None:
            await self.relay_client.aclose()

    async def _session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        conn = process.get_extra_info("connection")
        connection: _Connection = conn.get_owner()
        connection.session_opened()
        started = time.monotonic()
        try:
            status = await self._run(connection, process)
        except Exception:
            log.exception("ssh: a session of %s failed", _peer(conn))
            _say(process, "ERROR: the server failed to serve this request; it has been logged")
            status = 1
        finally:
            connection.session_closed()
        log.info("ssh %s@%s key %s %r exit %d in %.3fs", connection.username, _peer(conn),
                 connection.fingerprint or "-", process.command or "(shell)", status, time.monotonic() - started)
        with contextlib.suppress(OSError, asyncssh.Error):  # the client may have gone already
            process.exit(status)

    async def _run(self, connection: _Connection, process: asyncssh.SSHServerProcess[bytes]) -> int:
        def say(sentence: str) -> int:
            _say(process, sentence)
            return 1

        fingerprint = connection.fingerprint
        holder: Holder | None = None
        if fingerprint is not None:
            holder = await asyncio.to_thread(self.node.keys.holder, fingerprint)
        if holder is None:
            return say("ERROR: this key is no longer registered with Bulwark")
        if connection.username != USER:
            return say(f"ERROR: Bulwark serves git as the user {USER!r}, not {connection.username!r}: "
                       f"use {USER}@host:owner/repository.git")
        if holder.user is not None and holder.user.suspended:
            return say(f"ERROR: the account {holder.user.login!r} is suspended")
        command = process.command
        if not command or process.subsystem:
            return say(f"Hi {holder.name}! You've successfully authenticated, but Bulwark does not provide "
                       "shell access.")
        channel = Channel(process.stdin, process.stdout, process.stderr, dict(process.env))
        try:
            return await serve(self.node, holder, command, channel, metrics=self.metrics, slots=self.slots,
                               idle_timeout=self.limits.idle_timeout, relay_client=self.relay_client)
        except (BulwarkError, TimeoutError) as exc:
            # Refused, Busy, Forbidden (no push access), InvalidInput (not a git command), an idle client
            return say(f"ERROR: {exc}")
        except (ConnectionError, asyncssh.Error, BrokenPipeError):
            return 1  # the client went away mid-session


def _say(process: asyncssh.SSHServerProcess[bytes], sentence: str) -> None:
    # A terminal (ssh from a shell asks for one) wants carriage returns.
    end = b"\r\n" if process.get_terminal_type() else b"\n"
    with contextlib.suppress(OSError, asyncssh.Error):  # the client may have gone already
        process.stderr.write(sentence.encode() + end)


def _peer(conn: Any) -> str:
    peer = conn.get_extra_info("peername") if conn is not None else None
    return f"{peer[0]}:{peer[1]}" if peer else "a client"


class SshCollector:
    """The listener's connections and refusals, read at scrape time."""

    def __init__(self, listener: SshListener) -> None:
        self.listener = listener

    def collect(self) -> Iterator[Metric]:
        gate = self.listener.gate
        open_ = GaugeMetricFamily("bulwark_ssh_connections", "SSH connections open, by state.", labels=["state"])
        open_.add_metric(["logging_in"], gate.unauthenticated)
        open_.add_metric(["logged_in"], len(self.listener.connections))
        yield open_
        yield CounterMetricFamily("bulwark_ssh_connections_refused", "SSH connections refused because too many "
                                  "were logging in already.", value=gate.refused)
        yield CounterMetricFamily("bulwark_ssh_auth_failures", "SSH keys offered that are not registered (or one "
                                  "too many on a connection).", value=gate.auth_failures)
