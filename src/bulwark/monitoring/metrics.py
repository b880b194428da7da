"""The node's metrics in the Prometheus text format, on a registry of its own.

Each app has its own :class:`Metrics` (never the library's global registry), so several apps in
one process stay independent. Request metrics are labelled by route class, never by path: paths
carry repository names, and a private repository's name must not leak into a monitoring system.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bulwark import __version__
from bulwark.cluster.report import RepoState
from bulwark.git.adverts import AdvertisementCache
from bulwark.monitoring.checks import Check, evaluate
from bulwark.monitoring.facts import NodeFacts
from bulwark.roles import NodeRole

if TYPE_CHECKING:
    from bulwark.monitoring.gather import NodeMonitor

log = logging.getLogger("bulwark.monitoring")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GIT_SERVICES = ("upload-pack", "receive-pack")


class Transport(enum.StrEnum):
    """How a git request reached the node."""

    HTTP = "http"
    SSH = "ssh"

# Seconds: from an API call of a few milliseconds to a clone of a large repository.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class RouteClass(enum.StrEnum):
    GIT = "git"
    API = "api"
    MANAGE = "manage"
    INTERNAL = "internal"
    STATUS = "status"
    OTHER = "other"


class GitResult(enum.StrEnum):
    OK = "ok"  # git exited 0
    FAILED = "failed"  # git exited otherwise (bad request, refused push, killed)
    CANCELLED = "cancelled"  # the client went away (or stalled) and git was stopped


class Refusal(enum.StrEnum):
    """Why a git request was refused in git's words rather than served."""

    BUSY = "busy"  # no git process slot in time
    TOO_LARGE = "too_large"  # over max_push_bytes
    REPLICAS = "replicas"  # a cluster push without a majority, a busy lock, or voted down
    NOT_ACKNOWLEDGED = "not_acknowledged"  # committed here but not recorded on a majority
    UNAVAILABLE = "unavailable"  # maintenance, an HA replica, a fenced or cut-off node


_GIT_PATH = re.compile(r"/[^/]+/[^/]+/(?:info/refs|git-upload-pack|git-receive-pack)")


def route_class(path: str) -> RouteClass:
    """The class of a request path, for labels that never name a repository."""
    if path.startswith("/internal/"):
        return RouteClass.INTERNAL
    if path == "/api/v3" or path.startswith("/api/"):
        return RouteClass.API
    if path == "/manage" or path.startswith("/manage/"):
        return RouteClass.MANAGE
    if path in ("/status", "/metrics") or path.startswith("/status/"):
        return RouteClass.STATUS
    if _GIT_PATH.fullmatch(path):
        return RouteClass.GIT
    return RouteClass.OTHER


class Metrics:
    """One app's registry: request and git instruments, the process collector, and ``collectors``
    that read the node's state at scrape time."""

    def __init__(self, collectors: Iterable[Any] = ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bulwark_http_requests", "HTTP requests by route class and status code.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("bulwark_http_request_duration_seconds",
                                 "Time from a request's arrival to the end of its response, by route class.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.received = Counter("bulwark_http_received_bytes", "Request body bytes received, by route class.",
                                ["route"], registry=r)
        self.sent = Counter("bulwark_http_sent_bytes", "Response body bytes sent, by route class.",
                            ["route"], registry=r)
        self.git_operations = Counter("bulwark_git_operations",
                                      "Git processes that served a request, by service, transport and result.",
                                      ["service", "transport", "result"], registry=r)
        self.git_duration = Histogram("bulwark_git_operation_duration_seconds",
                                      "How long git processes serving requests ran, by service and transport.",
                                      ["service", "transport"], buckets=LATENCY_BUCKETS, registry=r)
        self.git_processes = Gauge("bulwark_git_processes", "Git processes serving requests right now.",
                                   ["service", "transport"], registry=r)
        self.git_refused = Counter("bulwark_git_refused",
                                   "Git requests refused with a reason git shows its user, by service, transport "
                                   "and reason.", ["service", "transport", "reason"], registry=r)
        # Every series exists from the start, so rates and alerts see zeros rather than nothing.
        for service in GIT_SERVICES:
            for transport in Transport:
                self.git_processes.labels(service, transport.value)
                self.git_duration.labels(service, transport.value)
                for result in GitResult:
                    self.git_operations.labels(service, transport.value, result.value)
                for reason in Refusal:
                    self.git_refused.labels(service, transport.value, reason.value)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        for collector in collectors:
            r.register(collector)

    def observe_request(self, path: str, status: int, seconds: float, received: int, sent: int) -> None:
        route = route_class(path).value
        self.requests.labels(route, str(status) if status else "none").inc()
        self.latency.labels(route).observe(seconds)
        self.received.labels(route).inc(received)
        self.sent.labels(route).inc(sent)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def count_refusal(app: Any, service: str, reason: Refusal) -> None:
    """Count a refusal of a git request over HTTP on ``app``'s metrics, if it has any."""
    count_refused(getattr(getattr(app, "state", None), "metrics", None), service, reason)


def count_refused(metrics: Metrics | None, service: str, reason: Refusal,
                  transport: Transport = Transport.HTTP) -> None:
    if metrics is not None:
        metrics.git_refused.labels(service if service in GIT_SERVICES else "other", transport.value,
                                   reason.value).inc()


class GitObservation:
    """One git process serving a request, from its start to its end (counted once)."""

    def __init__(self, metrics: Metrics | None, service: str, transport: Transport = Transport.HTTP) -> None:
        self.metrics = metrics
        self.service = service if service in GIT_SERVICES else "other"
        self.transport = transport.value
        self.started = time.monotonic()
        self._ended = False
        if metrics is not None:
            metrics.git_processes.labels(self.service, self.transport).inc()

    @classmethod
    def start(cls, app: Any, service: str) -> GitObservation:
        """Observe an HTTP request on ``app``'s metrics, if it has any (``app.state.metrics``)."""
        return cls(getattr(getattr(app, "state", None), "metrics", None), service)

    def end(self, returncode: int | None, *, cancelled: bool = False, failed: bool = False) -> None:
        """``failed``: git succeeded but the request did not (a cluster push not acknowledged)."""
        if self._ended or self.metrics is None:
            return
        self._ended = True
        if cancelled or (returncode is not None and returncode < 0):
            # Killed by a signal: only the server stops git, when its client left or stalled.
            result = GitResult.CANCELLED
        else:
            result = GitResult.OK if returncode == 0 and not failed else GitResult.FAILED
        self.metrics.git_processes.labels(self.service, self.transport).dec()
        self.metrics.git_operations.labels(self.service, self.transport, result.value).inc()
        self.metrics.git_duration.labels(self.service, self.transport).observe(time.monotonic() - self.started)


# -- the node's state, read at scrape time -------------------------------------------------------


class NodeCollector:
    """Reads the node's (cached) facts and checks on every scrape."""

    def __init__(self, monitor: NodeMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        try:
            facts: NodeFacts = self.monitor.facts()
            checks = evaluate(facts, self.monitor.thresholds)
        except Exception:
            # The request metrics must still be served: a failed scrape would read as the node being down.
            log.exception("monitoring: could not read this node's state for /metrics")
            yield _gauge("bulwark_node_state_readable", "1 when the node's state could be read for this scrape.", 0)
            return
        yield _gauge("bulwark_node_state_readable", "1 when the node's state could be read for this scrape.", 1)
        yield from node_metrics(facts, checks)


class RefCacheCollector:
    """The kept ref advertisements (git/adverts.py): how often a fetch needed no git process."""

    def __init__(self, adverts: AdvertisementCache) -> None:
        self.adverts = adverts

    def collect(self) -> Iterator[Metric]:
        stats = self.adverts.stats()
        yield CounterMetricFamily("bulwark_ref_cache_hits", "Advertisement requests answered from the kept "
                                  "answers, without starting git.", value=stats.hits)
        yield CounterMetricFamily("bulwark_ref_cache_misses", "Advertisement requests that started git "
                                  "(first time, refs changed, or nothing kept).", value=stats.misses)
        yield _gauge("bulwark_ref_cache_entries", "Ref advertisements kept in memory.", stats.entries)
        yield _gauge("bulwark_ref_cache_bytes", "Bytes of ref advertisements kept in memory.", stats.bytes)


class LimitsCollector:
    """What the limits on hostile clients turned away: requests over the rate limit, sign-ins the
    throttle refused (and the wrong passwords it counted), and connections the server's guard refused
    or timed out (http/server.py). All are read through callables, so this module needs neither the
    accounts nor the server."""

    def __init__(self, sign_ins: Callable[[], Mapping[str, int]],
                 connections: Callable[[], Mapping[str, int]] | None = None,
                 requests: Callable[[], Mapping[str, int]] | None = None,
                 paced: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.sign_ins = sign_ins
        self.connections = connections
        self.requests = requests
        self.paced = paced

    def collect(self) -> Iterator[Metric]:
        if self.requests is not None:
            yield CounterMetricFamily("bulwark_requests_rate_limited", "API and page requests answered 429: their "
                                      "address went past api_rate (and api_burst).",
                                      value=self.requests().get("refused", 0))
        if self.paced is not None:
            paced = self.paced()
            yield CounterMetricFamily("bulwark_requests_paced", "Requests made to wait their turn: their address "
                                      "drew more than bad_request_burst refusals lately.", value=paced.get("paced", 0))
            yield CounterMetricFamily("bulwark_requests_paced_refused", "Paced requests refused with 429: their "
                                      "turn was too far off.", value=paced.get("refused", 0))
        counts = self.sign_ins()
        yield CounterMetricFamily("bulwark_sign_in_failures", "Sign-ins with a wrong password (HTTP Basic and "
                                  "pages), counted by the throttle.", value=counts.get("failed", 0))
        yield CounterMetricFamily("bulwark_sign_in_throttled", "Sign-ins refused unchecked because their login "
                                  "or address failed too often lately.", value=counts.get("refused", 0))
        if self.connections is None:
            return
        conns = self.connections()
        yield _gauge("bulwark_connections_open", "Client connections open on this node.", conns.get("open", 0))
        yield CounterMetricFamily("bulwark_connections_refused", "Connections closed at once: the node's or "
                                  "one address's connection limit was reached.", value=conns.get("refused", 0))
        yield CounterMetricFamily("bulwark_connections_evicted", "Connections waiting for their request headers "
                                  "closed with 408 to make room: the node held max_connections.",
                                  value=conns.get("evicted", 0))
        yield CounterMetricFamily("bulwark_connections_header_timeouts", "Connections closed with 408: the "
                                  "request's headers did not arrive within header_timeout.",
                                  value=conns.get("timed_out", 0))


def _gauge(name: str, doc: str, value: float | None = None, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels) or None)
    if value is not None:
        family.add_metric([], value)
    return family


def node_metrics(facts: NodeFacts, checks: Iterable[Check]) -> Iterator[Metric]:
    """The node's state as metric families: pure, from the facts and their checks."""
    info = _gauge("bulwark_node_info", "This node: its name, role and version (always 1).",
                  labels=("node", "role", "version"))
    info.add_metric([facts.name, facts.role.value, __version__], 1)
    yield info
    role = _gauge("bulwark_node_role", "1 for this node's role, 0 for the others.", labels=("role",))
    for r in NodeRole:
        role.add_metric([r.value], 1.0 if r is facts.role else 0.0)
    yield role
    yield _gauge("bulwark_node_serving", "1 when /status answers 200 (a load balancer sends traffic here).",
                 float(facts.serving))
    yield _gauge("bulwark_node_maintenance", "1 when this node is in maintenance mode or drained.",
                 float(facts.maintenance is not None))
    yield _gauge("bulwark_node_fenced", "1 when this node refuses writes because it was superseded or cut off.",
                 float(facts.fenced is not None))
    level = _gauge("bulwark_check_level",
                   "This node's checks against its configured thresholds: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
                   labels=("check",))
    for check in checks:
        level.add_metric([check.name.value], int(check.level))
    yield level
    yield from _system_metrics(facts)
    yield from _replication_metrics(facts)
    yield from _cluster_metrics(facts)


def _system_metrics(facts: NodeFacts) -> Iterator[Metric]:
    s = facts.system
    if s.disk_used is not None and s.disk_free is not None and s.disk_ratio is not None:
        yield _gauge("bulwark_data_dir_disk_used_bytes", "Bytes used on the data dir's filesystem.", s.disk_used)
        yield _gauge("bulwark_data_dir_disk_free_bytes", "Bytes of the data dir's filesystem still available.",
                     s.disk_free)
        yield _gauge("bulwark_data_dir_disk_used_ratio",
                     "Share of the data dir's filesystem in use, as df counts it (0-1).", s.disk_ratio)
    if s.memory_total is not None and s.memory_available is not None and s.memory_ratio is not None:
        yield _gauge("bulwark_system_memory_total_bytes", "The machine's memory.", s.memory_total)
        yield _gauge("bulwark_system_memory_available_bytes",
                     "Memory available without swapping (MemAvailable).", s.memory_available)
        yield _gauge("bulwark_system_memory_used_ratio", "Share of the machine's memory in use (0-1).",
                     s.memory_ratio)
    yield _gauge("bulwark_system_cpus", "CPU cores of the machine.", s.cpus)
    if s.load is not None:
        load = _gauge("bulwark_system_load_average", "The machine's load average.", labels=("period",))
        for period, value in zip(("1m", "5m", "15m"), s.load, strict=True):
            load.add_metric([period], value)
        yield load
        yield _gauge("bulwark_system_load15_per_cpu", "The 15-minute load average per CPU core.", s.load[2] / s.cpus)


def _replication_metrics(facts: NodeFacts) -> Iterator[Metric]:
    repl = facts.replication
    if repl is None:
        return
    if facts.role is NodeRole.HA_REPLICA:
        yield _gauge("bulwark_ha_replicating", "1 while this replica replicates (0: stopped).",
                     float(bool(repl.replicating)))
        yield _gauge("bulwark_ha_replication_lag_seconds",
                     "Seconds this replica is behind its primary (+Inf: never in contact).", repl.lag_seconds)
        yield _gauge("bulwark_ha_replication_lag_changes", "Metadata changes this replica has yet to apply.",
                     repl.lag_changes)
        yield _gauge("bulwark_ha_repositories_pending", "Repositories waiting to be fetched from the primary.",
                     repl.pending)
        yield _gauge("bulwark_ha_repositories_faulty", "Repositories that failed to replicate.", repl.faulty)
        if repl.primary is not None:
            yield _gauge("bulwark_ha_primary_up", "1 while this replica's primary answers its /status, 0 once it "
                         "has not for ha_primary_timeout seconds (or nothing asks it).", float(repl.primary.up))
            since = repl.primary.seconds_since_answer
            yield _gauge("bulwark_ha_primary_seconds_since_answer",
                         "Seconds since this replica's primary last answered its /status (+Inf: never).",
                         float("inf") if since is None else since)
        return
    yield _gauge("bulwark_ha_replicas", "Replicas set up on this primary.", len(repl.replicas))
    seen = _gauge("bulwark_ha_replica_seconds_since_seen", "Seconds since each replica last asked for changes.",
                  labels=("replica",))
    behind = _gauge("bulwark_ha_replica_lag_changes", "Changes each replica had yet to read at its last contact.",
                    labels=("replica",))
    reachable = _gauge("bulwark_ha_replica_reachable", "1 when this primary's epoch check reached each replica's "
                       "/status, 0 when it could not (absent: not checked lately).", labels=("replica",))
    for replica in repl.replicas:
        since = replica.seconds_since_seen
        seen.add_metric([replica.node_id], float("inf") if since is None else since)
        behind.add_metric([replica.node_id], replica.lag_changes)
        if replica.reachable is not None:
            reachable.add_metric([replica.node_id], float(replica.reachable))
    yield seen
    yield behind
    yield reachable


def _cluster_metrics(facts: NodeFacts) -> Iterator[Metric]:
    cluster = facts.cluster
    if cluster is None:
        return
    yield _gauge("bulwark_cluster_etcd_session", "1 while this node holds its etcd session (its lease).",
                 float(cluster.session))
    yield _gauge("bulwark_cluster_etcd_up", "1 when this node can read the cluster state from etcd.",
                 float(cluster.etcd_reachable))
    report = cluster.report
    if report is None:
        return
    members = _gauge("bulwark_cluster_etcd_members", "etcd members by health.", labels=("state",))
    healthy = sum(report.etcd.values())
    members.add_metric(["healthy"], healthy)
    members.add_metric(["down"], len(report.etcd) - healthy)
    yield members
    states = {"up": 0, "maintenance": 0, "down": 0}
    up = _gauge("bulwark_cluster_node_up", "1 while a node holds its etcd lease.", labels=("node",))
    held = _gauge("bulwark_cluster_node_replicas", "Repository replicas on each node.", labels=("node",))
    late = _gauge("bulwark_cluster_node_outdated_replicas",
                  "Replicas on each node that are outdated or being built (waiting for repair).", labels=("node",))
    for node in report.nodes:
        state = "down" if not node.alive else "maintenance" if node.maintenance is not None else "up"
        states[state] += 1
        up.add_metric([node.name], float(node.alive))
        held.add_metric([node.name], node.replicas)
        late.add_metric([node.name], node.outdated)
    nodes = _gauge("bulwark_cluster_nodes", "Cluster nodes by state (maintenance: alive but drained).",
                   labels=("state",))
    for state, count in states.items():
        nodes.add_metric([state], count)
    yield from (nodes, up, held, late)
    repos = _gauge("bulwark_cluster_repositories", "Repositories by replication state.", labels=("state",))
    counts = {
        RepoState.HEALTHY: report.fully_replicated,
        RepoState.OUTDATED: report.repositories - report.fully_replicated - report.under_replicated
        - report.unavailable,
        RepoState.UNDER_REPLICATED: report.under_replicated,
        RepoState.UNAVAILABLE: report.unavailable,
    }
    for repo_state, count in counts.items():
        repos.add_metric([repo_state.value], count)
    yield repos
    yield _gauge("bulwark_cluster_outdated_replicas", "Replicas outdated or being built, over all repositories.",
                 report.outdated_replicas)
    yield _gauge("bulwark_cluster_reconciler_elected", "1 when some node is the elected reconciler.",
                 float(report.reconciler is not None))

