"""The cluster file: which nodes make up the cluster, and where etcd is.

    [cluster]
    name = "prod"
    replication_factor = 3
    etcd = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]

    [[node]]
    name = "git-1"
    url = "http://10.0.0.1:8080"
    roles = ["frontend", "storage"]

``bulwark cluster init`` and ``bulwark cluster config-apply`` validate it and store it in
etcd, where every node reads it; the file itself is only the administrator's copy.
"""

from __future__ import annotations

import enum
import json
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bulwark.errors import InvalidInput

_NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class NodeRoleInCluster(enum.StrEnum):
    FRONTEND = "frontend"  # answers clients (Git, API) and routes to the replicas
    STORAGE = "storage"  # holds repository replicas


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    url: str
    roles: tuple[NodeRoleInCluster, ...] = (NodeRoleInCluster.FRONTEND, NodeRoleInCluster.STORAGE)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NODE_NAME.fullmatch(value):
            raise ValueError("node names are lowercase letters, digits and '-', at most 63 characters")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^/\s]+", value.rstrip("/")):
            raise ValueError("must be http(s)://HOST:PORT with no path")
        return value.rstrip("/")

    @property
    def stores_repositories(self) -> bool:
        return NodeRoleInCluster.STORAGE in self.roles


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "bulwark"
    replication_factor: int = Field(default=3, ge=1, le=7)
    etcd: tuple[str, ...]
    nodes: tuple[NodeSpec, ...]

    @model_validator(mode="after")
    def _consistent(self) -> ClusterConfig:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {', '.join(sorted(names))}")
        urls = [n.url for n in self.nodes]
        if len(set(urls)) != len(urls):
            raise ValueError("node URLs must be unique")
        if not self.etcd:
            raise ValueError("at least one etcd endpoint is needed")
        storage = [n for n in self.nodes if n.stores_repositories]
        if not storage:
            raise ValueError("at least one node must have the 'storage' role")
        return self

    def node(self, name: str) -> NodeSpec | None:
        return next((n for n in self.nodes if n.name == name), None)

    @property
    def storage_nodes(self) -> list[NodeSpec]:
        return [n for n in self.nodes if n.stores_repositories]

    def effective_rf(self, wanted: int | None = None) -> int:
        """The replication factor for a repository: ``wanted`` or the default, never more than the nodes."""
        return max(1, min(wanted or self.replication_factor, len(self.storage_nodes)))

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ClusterConfig:
        return cls.model_validate(json.loads(text))


def parse_cluster_file(path: Path) -> ClusterConfig:
    """Read and validate a cluster file; ``InvalidInput`` says what is wrong."""
    try:
        raw: dict[str, Any] = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidInput(f"cluster file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"cluster file {path} is not valid TOML: {exc}") from None
    section = raw.get("cluster", {})
    unknown = set(raw) - {"cluster", "node"}
    if unknown:
        raise InvalidInput(f"cluster file {path}: unknown sections {', '.join(sorted(unknown))}")
    try:
        return ClusterConfig(**section, nodes=raw.get("node", []))
    except (ValidationError, TypeError) as exc:
        if isinstance(exc, ValidationError):
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        else:
            problems = str(exc)
        raise InvalidInput(f"cluster file {path} is not valid: {problems}") from None


def render_cluster_file(config: ClusterConfig) -> str:
    """The TOML text of ``config`` (what ``cluster dev`` writes, and what an administrator edits)."""
    lines = [
        "[cluster]",
        f'name = "{config.name}"',
        f"replication_factor = {config.replication_factor}",
        "etcd = [" + ", ".join(f'"{e}"' for e in config.etcd) + "]",
    ]
    for node in config.nodes:
        roles = ", ".join(f'"{r.value}"' for r in node.roles)
        lines += ["", "[[node]]", f'name = "{node.name}"', f'url = "{node.url}"', f"roles = [{roles}]"]
    return "\n".join(lines) + "\n"
