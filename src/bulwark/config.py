"""Configuration: defaults, then a TOML file, then ``BULWARK_*`` variables, then flags.

The file is ``--config PATH`` or, when not given, ``<data-dir>/bulwark.toml`` if it
exists. Every key of :class:`Settings` may appear in the file (``listen = "..."``)
and in the environment (``BULWARK_LISTEN``).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from bulwark.errors import InvalidInput

ENV_PREFIX = "BULWARK_"
DEFAULT_DATA_DIR = Path("./bulwark-data")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = DEFAULT_DATA_DIR
    listen: str = "127.0.0.1:8080"
    # The URL clients use to reach this node (shown in API responses and clone URLs).
    public_url: str | None = None
    # Where git over SSH is served ("" turns it off), and the URL clients use for it: clone URLs
    # read ssh://git@host:port/owner/repo.git, or git@host:owner/repo.git on port 22.
    ssh_listen: str = "127.0.0.1:2222"
    ssh_public_url: str | None = None
    # Seconds an SSH client has to log in, and a session may sit silent both ways; connections
    # logging in at once (beyond them, new ones are refused).
    ssh_login_timeout: float = Field(default=20.0, gt=0)
    ssh_idle_timeout: float = Field(default=120.0, gt=0)
    ssh_max_unauthenticated: int = Field(default=100, gt=0)
    # Largest push body accepted, in bytes (after gzip decoding).
    max_push_bytes: int = Field(default=4 * 1024**3, gt=0)
    # Seconds a client may stay silent while sending a request body.
    body_idle_timeout: float = Field(default=120.0, gt=0)
    # Addresses (or networks) of load balancers whose X-Forwarded-For names the real client, for
    # the per-client limits; empty: the connection's own address is the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # API and page requests one client address may make: api_burst at once, refilled at api_rate
    # a second (0: no limit). Git, health checks, metrics and node-to-node calls are not counted.
    api_rate: float = Field(default=100.0, ge=0)
    api_burst: int = Field(default=1000, gt=0)
    # Refusals for abuse (bad git bodies, lockouts, rate limits) an address may draw before its
    # requests are paced to bad_request_rate a second, regaining one strike a 1/rate s (0: never).
    bad_request_burst: int = Field(default=30, ge=0)
    bad_request_rate: float = Field(default=1.0, gt=0)
    # Seconds a client has to send a request's headers; connections a node holds in all and
    # from one address (trusted proxies excepted).
    header_timeout: float = Field(default=20.0, gt=0)
    # Seconds a node asked to stop (SIGTERM) goes on serving with /status answering 503, so the
    # load balancer takes it out before it closes connections; None: 2 in cluster mode, else 0.
    shutdown_drain: float | None = Field(default=None, ge=0, le=300)
    max_connections: int = Field(default=4096, gt=0)
    max_connections_per_address: int = Field(default=256, gt=0)
    # Git processes serving requests at once on this node, and for one client (its login, or
    # its address if anonymous); a request waits up to git_slot_wait seconds for a free one.
    max_git_processes: int = Field(default=64, gt=0)
    max_git_per_client: int = Field(default=16, gt=0)
    git_slot_wait: float = Field(default=10.0, ge=0)
    # Seconds between full checksum reconciliations of an HA replica's repositories.
    ha_reconcile_interval: float = Field(default=60.0, gt=0)
    # Seconds an HA replica's primary may leave its /status unanswered before the replica reports it
    # down (in 'repl status', bulwark_ha_primary_up and its alert); the replica asks five times as often.
    ha_primary_timeout: float = Field(default=10.0, ge=1)
    # Memory for answers to fetches that find nothing new (ref advertisements), served
    # without starting git; 0 turns the cache off.
    ref_cache_mb: int = Field(default=64, ge=0)
    # Webhooks: whether deliveries may go to loopback, private and link-local addresses (off, so a
    # hook cannot reach the node's own network), seconds a receiver has to answer, and deliveries
    # in flight at once (one per hook and repository).
    webhook_allow_private: bool = False
    webhook_timeout: float = Field(default=10.0, gt=0, le=60)
    webhook_workers: int = Field(default=8, gt=0, le=64)
    log_format: str = "json"
    access_log: bool = True
    git: str = "git"
    # Cluster mode: this node's name in the cluster file and the etcd endpoints to reach it by.
    cluster_node: str | None = None
    etcd: list[str] = Field(default_factory=list)
    # Seconds a cluster node stays "alive" in etcd without renewing its lease.
    lease_ttl: int = Field(default=3, ge=2, le=60)
    # Seconds between the cluster reconciler's cycles, between its checksum verifications of
    # every replica, and before a dead node's replicas are rebuilt on other nodes.
    cluster_reconcile_interval: float = Field(default=5.0, gt=0)
    cluster_verify_interval: float = Field(default=300.0, gt=0)
    # Seconds of those comparisons per reconciler cycle: a pass is spread over as many cycles as it needs.
    cluster_verify_budget: float = Field(default=2.0, ge=0)
    cluster_replace_after: float = Field(default=60.0, ge=0)
    # Monitoring: where `bulwark status`, the status page and bulwark_check_level turn WARNING and
    # CRITICAL: percent of the data dir's filesystem and of memory in use, 15-minute load per core.
    alert_disk_warning: float = Field(default=70.0, gt=0, le=100)
    alert_disk_critical: float = Field(default=85.0, gt=0, le=100, validate_default=True)
    alert_memory_warning: float = Field(default=50.0, gt=0, le=100)
    alert_memory_critical: float = Field(default=70.0, gt=0, le=100, validate_default=True)
    alert_load_warning: float = Field(default=1.0, gt=0)
    alert_load_critical: float = Field(default=2.0, gt=0, validate_default=True)

    @field_validator("etcd", "trusted_proxies", mode="before")
    @classmethod
    def _endpoint_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # BULWARK_ETCD=http://a:2379,http://b:2379
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (like 10.0.0.5 or 10.0.0.0/24)") from None
        return value

    @field_validator("alert_disk_critical", "alert_memory_critical", "alert_load_critical")
    @classmethod
    def _critical_not_below_warning(cls, value: float, info: ValidationInfo) -> float:
        warning_key = (info.field_name or "").replace("_critical", "_warning")
        warning = info.data.get(warning_key)
        if warning is not None and value < warning:
            raise ValueError(f"must not be below {warning_key} ({warning:g})")
        return value

    @field_validator("listen", "ssh_listen")
    @classmethod
    def _listen_has_port(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "ssh_listen" and value == "":
            return value
        host, sep, port = value.rpartition(":")
        # Port 0: any free port; the server records the one it got in its data dir once bound.
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be HOST:PORT, for example 127.0.0.1:8080")
        return value

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in ("json", "text"):
            raise ValueError("must be 'json' or 'text'")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.listen}").rstrip("/")

    @property
    def ssh_url(self) -> str | None:
        """ssh://git@host:port, as clones name it; None with SSH off."""
        if self.ssh_public_url:
            return self.ssh_public_url.rstrip("/")
        if not self.ssh_listen:
            return None
        host, _, port = self.ssh_listen.rpartition(":")
        named = urlsplit(self.public_url).hostname if self.public_url else None
        if named:
            host = named  # the name clients know this server by, with the SSH port
        elif host in ("0.0.0.0", "::", "[::]"):
            host = self.host if self.host not in ("0.0.0.0", "::", "[::]") else "localhost"
        return f"ssh://git@{host}:{port}"

    def ssh_clone_url(self, full_name: str) -> str | None:
        url = self.ssh_url
        if url is None:
            return None
        # GitHub's scp form where the port allows it (22); otherwise the ssh:// form with its port.
        host_port = url.removeprefix("ssh://")
        if host_port.endswith(":22"):
            return f"{host_port.removesuffix(':22')}:{full_name}.git"
        return f"{url}/{full_name}.git"

    @property
    def repositories_dir(self) -> Path:
        return self.data_dir / "repositories"

    @property
    def metadata_path(self) -> Path:
        return self.data_dir / "metadata.db"


def load_settings(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the sources in order of precedence; raise ``InvalidInput`` on a bad value."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    from_env = {
        key.removeprefix(ENV_PREFIX).lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and key.removeprefix(ENV_PREFIX).lower() in Settings.model_fields
    }
    data_dir = Path(flags.get("data_dir") or from_env.get("data_dir") or DEFAULT_DATA_DIR)
    if config_file is None and (data_dir / "bulwark.toml").is_file():
        config_file = data_dir / "bulwark.toml"
    from_file: dict[str, Any] = {}
    if config_file is not None:
        try:
            from_file = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise InvalidInput(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"config file {config_file} is not valid TOML: {exc}") from None
    try:
        return Settings(**{**from_file, **from_env, **flags})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"bad configuration: {problems}") from None
