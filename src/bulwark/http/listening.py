"""A uvicorn server that records where it listens in the node's data dir (see monitoring/running.py).

The record is written once the socket is bound, so it names the real port, and removed only by a clean
shutdown: a crash or SIGKILL leaves it, and its dead process id tells the story.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

import uvicorn

from bulwark.monitoring import running
from bulwark.monitoring.running import Liveness, ServerRecord
from bulwark.node import Node

log = logging.getLogger("bulwark")

# How long a cluster node drains by default: HAProxy's template checks every 0.5 s and takes a
# node out after 2 failures, so 2 s leaves a check to spare.
CLUSTER_DRAIN = 2.0


class Companion(Protocol):
    """Another listener run on the HTTP server's event loop (the SSH server): ``run`` until
    cancelled, then ``stop``."""

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class RecordingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, node: Node, companions: Sequence[Companion] = ()) -> None:
        super().__init__(config)
        self.node = node
        self.companions = list(companions)
        self.companion_tasks: list[asyncio.Task[None]] = []
        self.data_dir = Path(node.settings.data_dir)
        self.record: ServerRecord | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        self.companion_tasks = [asyncio.create_task(c.run()) for c in self.companions]
        bound = [s.getsockname() for server in self.servers for s in (server.sockets or ())]
        inet = [a for a in bound if isinstance(a, tuple)]
        if not inet:
            return  # a Unix socket: nothing another process could be told to dial
        host, port = str(inet[0][0]), int(inet[0][1])
        _note_previous(self.data_dir)
        self.record = running.new_record(host, port)
        if self.node.settings.port == 0:
            # Without a public_url, links name the node by its listen address: the port it got, not 0.
            self.node.settings = self.node.settings.model_copy(update={"listen": self.record.listen})
        try:
            running.write(self.data_dir, self.record)
        except OSError as exc:
            # Serving matters more than being found; the log says why 'bulwark status' will not find it.
            log.error("bulwark listening on %s, but cannot record it in %s (%s): 'bulwark status' will call this "
                      "server not running", self.record.listen, self.data_dir, exc)
            self.record = None
        # Nothing logged when it works: uvicorn has just said where it runs, and its pid.

    @property
    def drain(self) -> float:
        chosen = self.node.settings.shutdown_drain
        if chosen is not None:
            return chosen
        return CLUSTER_DRAIN if self.node.cluster is not None else 0.0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM or SIGINT: first drain (``/status`` answers 503 while every request is still served),
        then stop as uvicorn does: no new connections, the requests under way finish. A second signal
        stops at once. The signal is not raised again afterwards, so ``bulwark serve`` cleans up (a
        cluster node ends its etcd session, and the others see it gone at once) and exits 0."""
        if self.node.stopping or self.should_exit or self.drain <= 0:
            self.node.stopping = True
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            return
        self.node.stopping = True
        log.info("bulwark stopping: draining for %gs (/status answers 503), then finishing the requests under way",
                 self.drain)
        timer = threading.Timer(self.drain, self._drained)
        timer.daemon = True
        timer.start()

    def _drained(self) -> None:
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn shuts down only after its main loop ended normally (a signal, or should_exit), and
        # re-raises the signal afterwards, so this is the last moment a clean stop can be noted.
        for task in self.companion_tasks:
            task.cancel()
        await asyncio.gather(*self.companion_tasks, return_exceptions=True)
        await asyncio.gather(*(c.stop() for c in self.companions), return_exceptions=True)
        await super().shutdown(sockets)
        if self.record is not None:
            try:
                running.remove(self.data_dir, self.record)
            except OSError as exc:
                log.error("cannot remove this server's record from %s: %s", self.data_dir, exc)
            self.record = None


def _note_previous(data_dir: Path) -> None:
    previous = running.read(data_dir)
    if previous is None:
        return
    state = running.liveness(previous)
    if state is Liveness.GONE:
        log.warning("the previous server (pid %d, started %s) did not stop cleanly: it was killed or crashed",
                    previous.pid, previous.started_at)
    elif state is Liveness.RUNNING:
        log.warning("process %d, which recorded itself as this data dir's server at %s, still runs: "
                    "two servers on one data dir do not work together", previous.pid, previous.started_at)
