"""A developer's OpenSSH set-up for tests: an identity and a known_hosts file, nothing from the machine."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.helpers import Server, git_env


@dataclass
class Client:
    """One developer's SSH set-up: an identity and a known_hosts file, nothing from the machine."""

    home: Path
    identities: list[Path]

    @classmethod
    def make(cls, root: Path, name: str, count: int = 1) -> Client:
        home = root / name
        home.mkdir(parents=True)
        keys = []
        for i in range(count):
            key = home / f"id_{i}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}-{i}@example.com",
                            "-f", str(key)], check=True)
            keys.append(key)
        (home / "known_hosts").touch()
        return cls(home, keys)

    @property
    def public_key(self) -> str:
        return self.identities[0].with_suffix(".pub").read_text().strip()

    def trust(self, server: Server) -> None:
        """Write known_hosts from the server's published host keys (as a careful developer would)."""
        meta = httpx.get(f"{server.url}/api/v3/meta", timeout=10).json()
        lines = [f"[{server.host}]:{server.ssh_port} {key}\n" for key in meta["ssh_keys"]]
        (self.home / "known_hosts").write_text("".join(lines))

    def ssh_command(self, port: int | None = None) -> list[str]:
        argv = ["ssh", "-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.home / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]
        for key in self.identities:
            argv += ["-i", str(key)]
        if port is not None:
            argv += ["-p", str(port)]
        return argv

    def env(self, port: int | None = None) -> dict[str, str]:
        env = git_env(self.home)
        env["GIT_SSH_COMMAND"] = " ".join(self.ssh_command(port))
        return env

    def ssh(self, server: Server, *command: str, user: str = "git", tty: bool = False,
            input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        argv = [*self.ssh_command(server.ssh_port), *(["-tt"] if tty else ["-T"]), f"{user}@{server.host}",
                *command]
        return subprocess.run(argv, input=input, capture_output=True, timeout=60)


def url(server: Server, full_name: str) -> str:
    return f"ssh://git@{server.host}:{server.ssh_port}/{full_name}.git"


def add_key(server: Server, token: str, client: Client, title: str = "laptop") -> dict[str, object]:
    r = server.api("POST", "/user/keys", token=token, json={"key": client.public_key, "title": title})
    assert r.status_code == 201, r.text
    return dict(r.json())
