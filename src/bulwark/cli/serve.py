"""``bulwark serve``: run a node."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from starlette.applications import Starlette

from bulwark.assembly import open_node
from bulwark.assembly.app import create_app
from bulwark.assembly.cluster import Loop, cluster_loops_for
from bulwark.assembly.ha import ha_loop_for
from bulwark.assembly.webhooks import deliverer_for
from bulwark.cli.common import ConfigOption, DataDirOption, errors_as_messages, settings_for
from bulwark.ha.loop import PrimaryDuties
from bulwark.http.listening import RecordingServer
from bulwark.http.server import Guard, connection_budget, guarded_protocol, raise_file_limit
from bulwark.logs import configure_logging
from bulwark.node import Node
from bulwark.roles import NodeRole
from bulwark.ssh.server import Limits, SshCollector, SshListener


def ssh_for(node: Node, app: Starlette) -> list[SshListener]:
    """The SSH listener to run beside the HTTP server, if SSH is on."""
    settings = node.settings
    if not settings.ssh_listen:
        return []
    host, _, port = settings.ssh_listen.rpartition(":")
    limits = Limits(login_timeout=settings.ssh_login_timeout, idle_timeout=settings.ssh_idle_timeout,
                    max_unauthenticated=settings.ssh_max_unauthenticated)
    listener = SshListener(node, host=host.strip("[]"), port=int(port), limits=limits, metrics=app.state.metrics,
                           slots=app.state.git_slots)
    app.state.metrics.registry.register(SshCollector(listener))
    return [listener]


def serve(
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    listen: Annotated[
        str | None, typer.Option("--listen", "-l", help="HOST:PORT to listen on (default 127.0.0.1:8080).")
    ] = None,
    public_url: Annotated[
        str | None, typer.Option("--public-url", help="The URL clients use to reach this node.")
    ] = None,
    ssh_listen: Annotated[
        str | None, typer.Option("--ssh-listen", help="HOST:PORT to serve git over SSH on (default "
                                 "127.0.0.1:2222; \"\" turns SSH off).")
    ] = None,
) -> None:
    """Start a Bulwark node on DATA_DIR, creating it (and the site admin) on first start."""
    settings = settings_for(data_dir, config, listen=listen, public_url=public_url, ssh_listen=ssh_listen)
    configure_logging(settings.log_format)
    log = logging.getLogger("bulwark")
    with errors_as_messages():
        node = open_node(settings, starting=True)
        preset = os.environ.get("BULWARK_ADMIN_TOKEN") or None
        secret = node.accounts.bootstrap_admin(preset)
    if secret is not None:
        if preset:
            message = "Created the site administrator 'admin' with the token from BULWARK_ADMIN_TOKEN."
        else:
            message = f"Created the site administrator 'admin'. Its token, shown once: {secret}"
        print(message, file=sys.stderr, flush=True)
    log.info(
        "bulwark starting %s on http://%s (data dir %s)",
        node.role.value,
        settings.listen,
        Path(settings.data_dir).resolve(),
    )
    guard = Guard(
        header_timeout=settings.header_timeout,
        max_connections=connection_budget(raise_file_limit(), settings.max_connections),
        max_per_address=settings.max_connections_per_address,
        trusted=settings.trusted_proxies,
    )
    app = create_app(node, guard)
    config_ = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        # The C parser (about a quarter more small requests per second than the pure-Python one),
        # with a header timeout and connection limits. The standard asyncio loop: uvloop starts
        # git processes more slowly.
        http=guarded_protocol(guard),
        loop="asyncio",
        timeout_keep_alive=30,
        server_header=False,
    )
    if node.cluster is not None:
        loop: Loop = cluster_loops_for(node)
    else:
        # A primary that was superseded while it was down must learn it before taking a write.
        ha = node.ha()
        if ha.role == NodeRole.HA_PRIMARY and not ha.fenced:
            log.info("ha: %s", PrimaryDuties(node.store, node.replication_log(), node.clock).check_epochs(ha))
            node.forget_cached_state()
        loop = ha_loop_for(node)
    deliverer = deliverer_for(node)
    loop.start()
    if deliverer is not None:
        deliverer.start()
    try:
        RecordingServer(config_, node, ssh_for(node, app)).run()
    finally:
        if deliverer is not None:
            deliverer.stop()
        loop.stop()
        node.close()
