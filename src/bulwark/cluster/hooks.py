"""Git's ``reference-transaction`` hook on a cluster node.

``git receive-pack`` of a push this node leads runs with ``core.hooksPath`` pointing
here. The hook sends each transaction's state and ``<old> <new> <ref>`` lines to the
node, which gathers the other replicas' votes; in the ``prepared`` state a refusal
makes git abort the ref update. The hook is inert without ``BULWARK_TXN``, so no other
git command on the node ever votes.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from bulwark.config import Settings

_SCRIPT = '''#!{python} -IS
# Bulwark: report a ref transaction to this node, which replicates it (generated; do not edit).
# Only the socket module: this runs twice per push, so it must start fast.
import os
import socket
import sys

txn = os.environ.get("BULWARK_TXN")
if not txn or len(sys.argv) < 2:
    sys.stdin.read()
    sys.exit(0)
body = ("%s\\n%s\\n" % (txn, sys.argv[1]) + sys.stdin.read()).encode()
host, port = os.environ["BULWARK_HOOK_ADDR"].rsplit(":", 1)
request = (
    "POST /internal/cluster/hook HTTP/1.1\\r\\nHost: %s\\r\\nAuthorization: Bearer %s\\r\\n"
    "Content-Type: text/plain\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n"
    % (host, os.environ["BULWARK_HOOK_SECRET"], len(body))
).encode() + body
try:
    with socket.create_connection((host.strip("[]"), int(port)), timeout=300) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
except OSError as exc:
    print("bulwark: could not replicate the ref update: %s" % exc, file=sys.stderr)
    sys.exit(1)
head, _, text = answer.partition(b"\\r\\n\\r\\n")
if not head.startswith(b"HTTP/1.1 200"):
    print("bulwark: " + (text.decode(errors="replace").strip() or "the replicas refused the ref update"),
          file=sys.stderr)
    sys.exit(1)
'''


def hooks_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve() / "cluster-hooks"


def install(data_dir: Path) -> Path:
    """Write the hook (again) with this interpreter; return the hooks folder."""
    folder = hooks_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reference-transaction"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(_SCRIPT.format(python=sys.executable))
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP)
    os.replace(tmp, path)
    return folder


def hook_env(txn: str, settings: Settings, secret: str) -> dict[str, str]:
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return {"BULWARK_TXN": txn, "BULWARK_HOOK_ADDR": f"{host}:{settings.port}", "BULWARK_HOOK_SECRET": secret}
