"""A webhook receiver in its own process, as a CI system would run one: it checks each
delivery's signature and writes what came to a JSON-lines file the tests read.

Run as ``python webhook_receiver.py PORT LOG SECRET [DELAY]``; ``Receiver`` does that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx


def _serve(port: int, log: Path, secret: str, delay: float) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            if self.headers.get("Content-Type") == "application/x-www-form-urlencoded":
                payload = json.loads(parse_qs(body.decode())["payload"][0])
            else:
                payload = json.loads(body)
            record = {
                "event": self.headers.get("X-GitHub-Event"),
                "guid": self.headers.get("X-GitHub-Delivery"),
                "hook_id": self.headers.get("X-GitHub-Hook-ID"),
                "user_agent": self.headers.get("User-Agent"),
                "content_type": self.headers.get("Content-Type"),
                "signed": hmac.compare_digest(self.headers.get("X-Hub-Signature-256", ""), expected),
                "payload": payload,
            }
            if delay:
                time.sleep(delay)
            with log.open("a") as out:
                out.write(json.dumps(record) + "\n")
            try:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:
                pass  # the sender gave up (or died): it will send this delivery again

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class Receiver:
    def __init__(self, port: int, log: Path, secret: str, delay: float = 0.0) -> None:
        self.port, self.log, self.secret, self.delay = port, log, secret, delay
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.port), str(self.log), self.secret,
                                      str(self.delay)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the webhook receiver did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in lines if event is None or r["event"] == event]

    def wait_for(self, count: int, event: str | None = None, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.records(event)
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{len(self.records(event))} {event or 'any'} deliveries arrived, not {count}")


if __name__ == "__main__":
    _serve(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
