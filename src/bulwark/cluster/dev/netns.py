"""Network isolation: a network namespace joined to the host by a veth pair that can be cut."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import random
import re
import socket
import subprocess
from collections.abc import Sequence

from bulwark.cluster.dev.processes import run_checked
from bulwark.cluster.dev.tools import DevClusterError, Tool, find_tool, wait_until


class NetnsLink:
    """A network namespace of our own, joined to the host by a veth pair on a /30 of 10.231.0.0/16.

    The host side gets the subnet's first address, the namespace side the second. Besides the
    link's own route we add an ``unreachable`` route for the /30 with a low priority: while the
    link is down it stops traffic for the namespace address from leaving by the default route,
    and adding it fails if another launch holds the same /30, which makes it our claim on it.
    """

    SUPERNET = ipaddress.IPv4Network("10.231.0.0/16")
    FALLBACK_METRIC = "4000"
    _serial = itertools.count(1)

    def __init__(self) -> None:
        self.ns = f"bwk-{os.getpid()}-{next(self._serial)}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.host_if = ""
        self.ns_if = ""
        self._ip = ""
        self._claimed = self._ns_made = self._link_made = False

    @property
    def host_addr(self) -> str:
        assert self.subnet is not None, "create() first"
        return str(self.subnet.network_address + 1)

    @property
    def ns_addr(self) -> str:
        assert self.subnet is not None, "create() first"
        return str(self.subnet.network_address + 2)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it, so the pid stays the program's)."""
        return [self._ip, "netns", "exec", self.ns, *argv]

    def create(self) -> NetnsLink:
        if os.geteuid() != 0:
            raise DevClusterError("isolating a node needs root (it creates a network namespace and a veth pair)")
        self._ip = find_tool(Tool.IP)
        try:
            self._claim_subnet()
            run_checked([self._ip, "netns", "add", self.ns], "network namespace")
            self._ns_made = True
            run_checked([self._ip, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                         "netns", self.ns], "veth pair")
            self._link_made = True
            assert self.subnet is not None
            prefix = f"/{self.subnet.prefixlen}"
            run_checked([self._ip, "addr", "add", self.host_addr + prefix, "dev", self.host_if], "veth address")
            run_checked([self._ip, "-n", self.ns, "addr", "add", self.ns_addr + prefix, "dev", self.ns_if],
                        "veth address")
            run_checked([self._ip, "-n", self.ns, "link", "set", "lo", "up"], "namespace loopback")
            run_checked([self._ip, "-n", self.ns, "link", "set", self.ns_if, "up"], "veth link")
            self.heal()
        except BaseException:
            self.close()
            raise
        return self

    def _claim_subnet(self) -> None:
        used = self._used_networks()
        count = self.SUPERNET.num_addresses // 4
        for _ in range(50):
            index = random.randrange(1, count)
            subnet = ipaddress.IPv4Network((int(self.SUPERNET.network_address) + 4 * index, 30))
            if any(subnet.overlaps(net) for net in used):
                continue
            proc = subprocess.run(
                [self._ip, "route", "add", "unreachable", str(subnet), "metric", self.FALLBACK_METRIC],
                capture_output=True, text=True, timeout=10,
            )
            if proc.returncode == 0:
                self.subnet, self._claimed = subnet, True
                # Interface names follow the subnet, which is ours alone (at most 15 characters).
                self.host_if, self.ns_if = f"bwk{index:04x}h", f"bwk{index:04x}n"
                return
        raise DevClusterError(f"no free /30 in {self.SUPERNET} for the isolated node's link")

    def _used_networks(self) -> list[ipaddress.IPv4Network]:
        out = run_checked([self._ip, "-4", "-o", "addr", "show"], "address list")
        out += run_checked([self._ip, "-4", "route", "show", "table", "all"], "route list")
        used = []
        for match in re.finditer(r"(?<![\d.])(10\.231\.\d+\.\d+(?:/\d+)?)", out):
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(match.group(1), strict=False))
        return used

    def cut(self) -> None:
        """Take the host side of the link down: no traffic either way until :meth:`heal`."""
        run_checked([self._ip, "link", "set", self.host_if, "down"], "cutting the link")

    def heal(self, timeout: float = 10.0) -> None:
        """Bring the link up and wait until it carries traffic."""
        run_checked([self._ip, "link", "set", self.host_if, "up"], "healing the link")
        if not wait_until(self.carries_traffic, timeout, interval=0.05):
            raise DevClusterError(f"the link to namespace {self.ns} carries no traffic {timeout:g}s after coming up")

    def carries_traffic(self) -> bool:
        # A refused connection proves the packets got there and back as well as an accepted one.
        try:
            with socket.create_connection((self.ns_addr, 9), timeout=0.3):
                return True
        except ConnectionRefusedError:
            return True
        except OSError:
            return False

    def close(self) -> None:
        """Delete what :meth:`create` made (only that), in reverse order. Safe to call twice."""
        if self._link_made:
            subprocess.run([self._ip, "link", "del", self.host_if], capture_output=True, timeout=10)
            self._link_made = False
        if self._ns_made:
            subprocess.run([self._ip, "netns", "del", self.ns], capture_output=True, timeout=10)
            self._ns_made = False
        if self._claimed and self.subnet is not None:
            subprocess.run([self._ip, "route", "del", "unreachable", str(self.subnet), "metric",
                            self.FALLBACK_METRIC], capture_output=True, timeout=10)
            self._claimed = False
