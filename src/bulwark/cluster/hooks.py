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

_SCRIPT = '''#!{python}
"""Bulwark: report a ref transaction to this node, which replicates it (generated; do not edit)."""
import json
import os
import sys
import urllib.request

txn = os.environ.get("BULWARK_TXN")
if not txn or len(sys.argv) < 2:
    sys.exit(0)
lines = [line.split(" ", 2) for line in sys.stdin.read().splitlines() if line.strip()]
request = urllib.request.Request(
    os.environ["BULWARK_HOOK_URL"],
    data=json.dumps({{"txn": txn, "state": sys.argv[1], "lines": lines}}).encode(),
    headers={{"Authorization": "Bearer " + os.environ["BULWARK_HOOK_SECRET"], "Content-Type": "application/json"}},
)
try:
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.load(response)
except Exception as exc:
    print("bulwark: could not replicate the ref update: %s" % exc, file=sys.stderr)
    sys.exit(1)
if not answer.get("ok"):
    print("bulwark: " + str(answer.get("message", "the replicas refused the ref update")), file=sys.stderr)
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
    return {
        "BULWARK_TXN": txn,
        "BULWARK_HOOK_URL": f"http://{host}:{settings.port}/internal/cluster/hook",
        "BULWARK_HOOK_SECRET": secret,
    }
