"""Helpers for monitoring tests: scraping /metrics, headless Chromium, access log lines, tools."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bulwark.monitoring.facts import NodeFacts
from bulwark.monitoring.system import SystemSample
from bulwark.roles import NodeRole

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"

# Thresholds no machine reaches, so a check's level depends only on what a test sets up.
CALM = ["--disk-warning", "100", "--disk-critical", "100", "--memory-warning", "100", "--memory-critical", "100",
        "--load-warning", "1000", "--load-critical", "1000"]
# The same as settings, for nodes whose own pages and metrics a test judges (a busy CI machine's load
# must not turn a healthy cluster CRITICAL).
CALM_ENV = {f"BULWARK_ALERT_{CALM[i][2:].replace('-', '_').upper()}": CALM[i + 1] for i in range(0, len(CALM), 2)}


def ensure_tool(command: str, package: str) -> str:
    """The path of ``command``, installing its Debian package if missing; skip the test if it cannot be."""
    found = shutil.which(command)
    if found is None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([str(ROOT / "scripts" / "system-deps.sh"), package], capture_output=True, timeout=600)
        found = shutil.which(command)
    if found is None:
        pytest.skip(f"{command} is not installed and could not be installed (Debian package {package}: "
                    f"run scripts/system-deps.sh {package} as root)")
    return found


# -- facts made by hand, for the pure functions --------------------------------------------------------

GIB = 1024**3


def machine(disk: float = 0.5, memory: float = 0.3, load15: float = 0.5, cpus: int = 2) -> SystemSample:
    """A machine with the given shares in use (disk of 100 GiB, memory of 10 GiB)."""
    return SystemSample(int(disk * 100 * GIB), int((1 - disk) * 100 * GIB), 10 * GIB, int((1 - memory) * 10 * GIB),
                        (load15, load15, load15), cpus)


def facts(role: NodeRole = NodeRole.STANDALONE, **changes: Any) -> NodeFacts:
    base: dict[str, Any] = dict(name="n1", url="http://127.0.0.1:8080", role=role, serving=True, reason="serving",
                                maintenance=None, fenced=None, system=machine())
    base.update(changes)
    return NodeFacts(**base)


REPLICA_REPORT: dict[str, Any] = {
    "role": "ha-replica", "level": "WARNING", "primary_url": "http://p:8080", "replicating": True,
    "lag_seconds": 42.0, "lag_changes": 3,
    "streams": [{"name": "metadata", "level": "WARNING", "detail": "42.0s and 3 changes behind the primary"},
                {"name": "repositories", "level": "OK", "detail": "5/5 in sync, 0 pending, 0 faulty"}],
    "repositories": {"total": 5, "in_sync": 5, "pending": 2, "faulty": 1, "faulty_ids": ["x"]},
}


# -- /metrics ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def names(self) -> set[str]:
        return {n for n, _ in self.samples}


def parse_metrics(text: str) -> Scrape:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return Scrape(text, samples)


def scrape(base_url: str, token: str | None = None, **headers: str) -> Scrape:
    if token:
        headers["Authorization"] = f"token {token}"
    r = httpx.get(f"{base_url}/metrics", headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return parse_metrics(r.text)


def overview(base_url: str, token: str, scope: str = "all") -> dict[str, Any]:
    r = httpx.get(f"{base_url}/manage/v1/monitoring/overview", params={"scope": scope},
                  headers={"Authorization": f"token {token}"}, timeout=15)
    assert r.status_code == 200, r.text
    return dict(r.json())


def node_in(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [n for n in doc["nodes"] if n["name"] == name]
    assert found, f"no node {name} in {[n['name'] for n in doc['nodes']]}"
    return dict(found[0])


# -- logs -------------------------------------------------------------------------------------------


def access_lines(log: Path) -> list[dict[str, Any]]:
    """The access log lines (JSON) of a node's log file."""
    lines = []
    for raw in log.read_text(errors="replace").splitlines():
        if '"bulwark.access"' not in raw:
            continue
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))
    return lines


# -- headless Chromium ------------------------------------------------------------------------------


class Browser:
    """Headless Chromium, one process (and a fresh temporary profile) per page load, killed if it hangs."""

    def __init__(self, workdir: Path) -> None:
        self.binary = ensure_tool("chromium", "chromium")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)

    def _run(self, url: str, *args: str, timeout: float = 45) -> str:
        profile = tempfile.mkdtemp(prefix="chromium-", dir=self.workdir)
        argv = [self.binary, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--hide-scrollbars", "--mute-audio", *args, url]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            raise AssertionError(f"chromium did not finish loading {url} within {timeout}s") from None
        finally:
            self._kill(proc)  # its helper processes, should any outlive it
            shutil.rmtree(profile, ignore_errors=True)
        assert proc.returncode == 0, f"chromium exited with {proc.returncode} loading {url}"
        return out.decode("utf-8", "replace")

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        # The process group is the one we made for this chromium (start_new_session): its id is our child's pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def dump_dom(self, url: str, budget_ms: int = 3000) -> str:
        return self._run(url, f"--virtual-time-budget={budget_ms}", "--dump-dom")

    def screenshot(self, url: str, path: Path, *, size: tuple[int, int] = (1280, 900), budget_ms: int = 3000) -> Path:
        """Save a screenshot to ``path`` and keep a copy in test-artifacts/ at the repository's root."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._run(url, f"--virtual-time-budget={budget_ms}", f"--window-size={size[0]},{size[1]}",
                  f"--screenshot={path}")
        assert path.is_file() and path.stat().st_size > 1000, f"no screenshot written to {path}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(path, ARTIFACTS / path.name)
        return path


def login_url(base_url: str, token: str) -> str:
    return f"{base_url}/manage/status?token={token}"
