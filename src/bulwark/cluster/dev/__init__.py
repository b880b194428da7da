"""A whole cluster on one machine: etcd members, Bulwark nodes and HAProxy, as child processes.

``bulwark cluster dev`` runs one for people trying Bulwark, and the cluster tests run one per test.
Every process is ours: we start it, remember its pid and end it by that pid, never by name.

With ``isolate="node3"`` (root only), node3 and its etcd member run in a network namespace of
their own, joined to the host by a veth pair; :meth:`DevCluster.cut` and :meth:`DevCluster.heal`
take that link down and up, which partitions the node from everything else.

Modules: ``tools``, ``processes``, ``netns``, ``etcd``, ``haproxy`` and ``cluster`` (:class:`DevCluster`).
"""

from bulwark.cluster.dev.cluster import LOCK_FILE, DevCluster, DevNode, leftover_processes
from bulwark.cluster.dev.etcd import EtcdCluster, EtcdMember, InitialState, Placement
from bulwark.cluster.dev.haproxy import haproxy_example_config, render_haproxy_config
from bulwark.cluster.dev.netns import NetnsLink
from bulwark.cluster.dev.processes import Managed, ProcessState, run_checked
from bulwark.cluster.dev.tools import (
    START_TIMEOUT,
    STOP_GRACE,
    DevClusterError,
    PortPicker,
    Tool,
    component_error,
    find_tool,
    hostport,
    log_tail,
    tcp_answers,
    wait_until,
)

__all__ = [
    "LOCK_FILE",
    "START_TIMEOUT",
    "STOP_GRACE",
    "DevCluster",
    "DevClusterError",
    "DevNode",
    "EtcdCluster",
    "EtcdMember",
    "InitialState",
    "Managed",
    "NetnsLink",
    "Placement",
    "PortPicker",
    "ProcessState",
    "Tool",
    "component_error",
    "find_tool",
    "haproxy_example_config",
    "hostport",
    "leftover_processes",
    "log_tail",
    "render_haproxy_config",
    "run_checked",
    "tcp_answers",
    "wait_until",
]
