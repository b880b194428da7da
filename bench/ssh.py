"""Git over SSH: Bulwark's listener against OpenSSH's ``sshd`` running ``git-shell``, side by side.

The reference is Debian's ``openssh-server``, started here on a free loopback port with a config,
host key and ``authorized_keys`` of its own (a forced ``git-shell`` for one key, as a small site
would set it up), serving copies of the same repositories. Each git command opens its own SSH
connection on both sides, as a developer's does without connection sharing.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import compare
from bench.common import alternate, run_git, timed
from bench.compare import BULWARK, REFERENCE, Budget, Sides, comparison
from bench.fixtures import LARGE, OWNER
from bench.memory import RssSampler
from bench.reference import find_program

SSHD_CONFIG = """# Generated for one benchmark run; removed with its directory.
ListenAddress 127.0.0.1
Port {port}
HostKey {workdir}/host_ed25519
PidFile {workdir}/sshd.pid
AuthorizedKeysFile {workdir}/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AcceptEnv GIT_PROTOCOL
MaxStartups 200
MaxSessions 100
LogLevel ERROR
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpenSsh:
    """sshd serving ``project_root`` through git-shell for one public key, as the running user."""

    def __init__(self, project_root: Path, workdir: Path, public_key: str) -> None:
        self.project_root = project_root
        self.workdir = workdir
        self.public_key = public_key
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def remote(self, owner: str, repo: str) -> str:
        user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        return f"ssh://{user}@127.0.0.1:{self.port}{self.project_root}/{owner}/{repo}.git"

    def start(self) -> OpenSsh:
        sshd = find_program("sshd", "openssh-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.workdir / "host_ed25519")],
                       check=True)
        (self.workdir / "authorized_keys").write_text(
            f'restrict,command="exec git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"" {self.public_key}\n')
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
        self.port = _free_port()
        config = self.workdir / "sshd_config"
        config.write_text(SSHD_CONFIG.format(port=self.port, workdir=self.workdir))
        log = self.workdir / "sshd.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not come up: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # sshd's per-connection children have ended with their clients; the listener by its pid.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class SshSides:
    sides: Sides
    reference: OpenSsh
    env: dict[str, str]  # the git client's, with GIT_SSH_COMMAND naming the identity

    def url(self, side: str, repo: str) -> str:
        if side == BULWARK:
            server = self.sides.bulwark
            return f"ssh://git@{server.host}:{server.ssh_port}/{OWNER}/{repo}.git"
        return self.reference.remote(OWNER, repo)


def prepare(sides: Sides, workdir: Path) -> SshSides:
    """An identity registered on both sides, and sshd started over the reference's repositories."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)], check=True)
    public = key.with_suffix(".pub").read_text().strip()
    r = sides.bulwark.api("POST", f"/admin/users/{OWNER}/keys", json={"key": public, "title": "bench"})
    if r.status_code != 201:
        raise RuntimeError(f"registering the bench key: {r.status_code} {r.text}")
    reference = OpenSsh(sides.reference.project_root, workdir / "sshd", public).start()
    env = dict(sides.env)
    env["GIT_SSH_COMMAND"] = (f"ssh -F /dev/null -i {key} -o IdentitiesOnly=yes -o BatchMode=yes "
                              f"-o UserKnownHostsFile={workdir / 'known_hosts'} -o StrictHostKeyChecking=accept-new")
    return SshSides(sides, reference, env)


def measure_connect(ssh: SshSides, calls: int) -> dict[str, Any]:
    """``git ls-remote`` of the large repository: the SSH handshake, the login and the advertisement."""
    def ls_remote(side: str) -> Callable[[], float]:
        return lambda: timed(lambda: run_git(["ls-remote", ssh.url(side, LARGE)], ssh.env))

    times = alternate(calls, {BULWARK: ls_remote(BULWARK), REFERENCE: ls_remote(REFERENCE)})
    return comparison(times[BULWARK], times[REFERENCE], "s", higher_is_better=False)


def measure_clone(ssh: SshSides, budget: Budget, sampler: RssSampler) -> dict[str, Any]:
    urls = {side: ssh.url(side, LARGE) for side in (BULWARK, REFERENCE)}
    return compare.measure_clone(ssh.sides, budget, sampler, urls=urls, env=ssh.env, phase="ssh_clone")


def measure_push(ssh: SshSides, budget: Budget, sampler: RssSampler) -> dict[str, Any]:
    urls: dict[str, Callable[[str], str]] = {side: functools.partial(ssh.url, side) for side in (BULWARK, REFERENCE)}
    return compare.measure_push(ssh.sides, budget, sampler, urls=urls, env=ssh.env, phase="ssh_push")


def measure_noop_fetch(ssh: SshSides, budget: Budget) -> dict[str, Any]:
    """``clients`` loops of ``git fetch`` into clones that have everything already: fetches per second."""
    urls = {side: ssh.url(side, LARGE) for side in (BULWARK, REFERENCE)}
    return compare.measure_noop_fetch(ssh.sides, budget, urls=urls, env=ssh.env)[0]


def run(sides: Sides, budget: Budget, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    assert sides.bulwark.proc is not None
    ssh = prepare(sides, workdir)
    sampler = RssSampler(sides.bulwark.proc.pid).start()
    try:
        results: dict[str, Any] = {}
        log("ssh: ls-remote (connection set-up and advertisement)")
        results["connect"] = measure_connect(ssh, budget.ls_remote_calls)
        log("ssh: clone of the large repository")
        results["clone"] = measure_clone(ssh, budget, sampler)
        log("ssh: push of the large repository into an empty one")
        results["push"] = measure_push(ssh, budget, sampler)
        log(f"ssh: no-op fetch, {budget.clients} clients")
        results["noop_fetch"] = measure_noop_fetch(ssh, budget)
    finally:
        sampler.stop()
        ssh.reference.stop()
    memory: dict[str, Any] = {}
    for phase in ("ssh_clone", "ssh_push"):
        rss = sampler.rss_of(phase)
        if rss:
            memory[phase] = {"peak_rss_mib": max(rss) / 2**20, "low_rss_mib": min(rss) / 2**20,
                             "samples": len(rss)}
    results["memory"] = memory
    return results
