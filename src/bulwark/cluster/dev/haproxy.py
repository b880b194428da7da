"""HAProxy: the one configuration template, for the dev cluster and for deploy/haproxy/cluster.cfg."""

from __future__ import annotations

from collections.abc import Sequence


def render_haproxy_config(bind: str, servers: Sequence[tuple[str, str]], *, stats_bind: str | None,
                          header: Sequence[str], ssh_bind: str | None = None,
                          ssh_servers: Sequence[tuple[str, str]] = ()) -> str:
    """HAProxy in front of every node of a cluster; the one template for the generated and the example config.

    ``bind`` and the server addresses are written inside double quotes, so they may be literal
    (``127.0.0.1:8080``) or HAProxy environment references (``${BULWARK_NODE1}``).
    """
    lines = ([f"# {h}".rstrip() for h in header] + [""]) if header else []
    lines += [
        "global",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    # Inactivity limits, not totals: a large push may leave the server silent while it indexes.",
        "    timeout client 10m",
        "    timeout server 10m",
        "    timeout http-request 30s",
        "    timeout queue 30s",
        "    # A connection refused by a node that just died goes to another node, the client sees nothing;",
        "    # so does a read (a clone or fetch) whose node died before it answered (see the backends).",
        "    retry-on conn-failure empty-response",
        "    retries 3",
        "    option redispatch",
        "",
        "frontend bulwark",
        f'    bind "{bind}"',
        "    # Names the client to the nodes (their trusted_proxies setting lists this balancer).",
        "    option forwardfor",
        "    # While etcd elects a leader every node's lease renewal is late at once and every /status",
        "    # fails; then the nodes that have not lost their session serve rather than none.",
        "    use_backend bulwark_fallback if { nbsrv(bulwark_nodes) eq 0 }",
        "    default_backend bulwark_nodes",
        "",
        "backend bulwark_nodes",
        "    # Every node serves every request (it routes to the repository's replicas itself).",
        "    balance roundrobin",
        "    # Only a read is sent again: a push or an API write the dead node may have applied is not.",
        "    http-request disable-l7-retry if !METH_GET !{ path_end /git-upload-pack }",
        "    # /status answers 200 while the node takes traffic; anything else, or no answer, takes it out.",
        "    option httpchk GET /status",
        "    http-check expect status 200",
        "    # Check twice a second; two failures take a node out, two successes bring it back.",
        "    timeout check 1s",
        "    default-server inter 500ms fall 2 rise 2",
    ]
    lines += [f'    server {name} "{address}" check' for name, address in servers]
    lines += [
        "",
        "backend bulwark_fallback",
        "    # The same nodes, used only when none passes /status: /status/fallback overlooks a late",
        "    # renewal, not a lost session, maintenance or a drain.",
        "    balance roundrobin",
        "    http-request disable-l7-retry if !METH_GET !{ path_end /git-upload-pack }",
        "    option httpchk GET /status/fallback",
        "    http-check expect status 200",
        "    timeout check 1s",
        "    default-server inter 500ms fall 2 rise 1",
    ]
    lines += [f'    server {name} "{address}" check' for name, address in servers]
    if ssh_bind is not None:
        lines += [
            "",
            "frontend bulwark_ssh",
            "    mode tcp",
            f'    bind "{ssh_bind}"',
            "    default_backend bulwark_ssh_nodes",
            "",
            "backend bulwark_ssh_nodes",
            "    # Git over SSH: every node serves every session (it relays it to a replica itself).",
            "    mode tcp",
            "    balance leastconn",
            "    # Up exactly while the node's /status is 200, as the HTTP backend checks it.",
        ]
        lines += [f'    server {name} "{address}" track bulwark_nodes/{name}' for name, address in ssh_servers]
    if stats_bind is not None:
        lines += [
            "",
            "# Which nodes HAProxy sends traffic to, as a web page.",
            "listen stats",
            f'    bind "{stats_bind}"',
            "    stats enable",
            "    stats uri /",
            "    stats refresh 2s",
        ]
    return "\n".join(lines) + "\n"


def haproxy_example_config(nodes: int = 3) -> str:
    """The text of ``deploy/haproxy/cluster.cfg``: the generated config, with addresses from the environment."""
    env_list = " ".join(f"BULWARK_NODE{i}=10.0.0.{i}:8080" for i in range(1, nodes + 1))
    header = [
        f"HAProxy in front of a {nodes}-node Bulwark cluster.",
        "",
        "Every node takes traffic while its /status answers 200; a node that stops answering 200 is",
        "out within a second or two, and a connection that found a node dead is retried on another.",
        "`bulwark cluster dev` writes this same configuration with the addresses filled in.",
        "",
        "Addresses come from the environment so the same file serves every deployment:",
        f"  BULWARK_LB_BIND=0.0.0.0:80 {env_list} \\",
        "    haproxy -f deploy/haproxy/cluster.cfg",
        "Git over SSH: BULWARK_LB_SSH_BIND=0.0.0.0:22 and each node's SSH address,",
        f"  {' '.join(f'BULWARK_NODE{i}_SSH=10.0.0.{i}:2222' for i in range(1, nodes + 1))}",
        "(every node serves the same host keys, so clients see no changed key whichever they reach).",
        "The statistics page listens on BULWARK_LB_STATS_BIND (default 127.0.0.1:8404).",
        "Add a `server nodeN` line per further node, in each backend.",
    ]
    servers = [(f"node{i}", f"${{BULWARK_NODE{i}}}") for i in range(1, nodes + 1)]
    ssh_servers = [(f"node{i}", f"${{BULWARK_NODE{i}_SSH}}") for i in range(1, nodes + 1)]
    return render_haproxy_config("${BULWARK_LB_BIND}", servers, stats_bind="${BULWARK_LB_STATS_BIND-127.0.0.1:8404}",
                                 header=header, ssh_bind="${BULWARK_LB_SSH_BIND}", ssh_servers=ssh_servers)
