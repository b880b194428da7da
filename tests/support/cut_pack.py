"""A git smart-HTTP server (git's own ``http-backend``) that cuts each fetch's pack off after
``cut`` bytes and closes the connection: what a client sees when the server dies mid-fetch.

It serves one bare repository under any URL path (``<url>/<anything>/info/refs`` and so on), so
it stands in for a Bulwark node's replication URL, whatever its shape."""

from __future__ import annotations

import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

SERVICES = ("/info/refs", "/git-upload-pack")


class CutPackServer:
    def __init__(self, repo: Path, *, cut: int) -> None:
        self.repo = repo
        self.cut = cut
        self.cuts = 0  # how many responses were cut off
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.answer(self, b"")

            def do_POST(self) -> None:
                server.answer(self, self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CutPackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        path, _, query = handler.path.partition("?")
        service = next((s for s in SERVICES if path.endswith(s)), "/unknown")
        env = {
            **os.environ, "GIT_PROJECT_ROOT": str(self.repo.parent), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{self.repo.name}{service}", "QUERY_STRING": query, "REQUEST_METHOD": handler.command,
            "CONTENT_TYPE": handler.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": handler.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": handler.headers.get("Content-Encoding", ""),
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [line.split(b":", 1) for line in head.split(b"\r\n") if b":" in line]
        status = next((int(v.split()[0]) for k, v in headers if k.lower() == b"status"), 200)
        handler.send_response(status)
        for key, value in headers:
            if key.lower() != b"status":
                handler.send_header(key.decode(), value.strip().decode())
        handler.send_header("Connection", "close")
        handler.end_headers()
        if service == "/git-upload-pack" and len(payload) > self.cut:
            payload = payload[: self.cut]
            self.cuts += 1
        handler.wfile.write(payload)


def big_repository(path: Path) -> Path:
    """A bare repository at ``path`` with one commit of a 3 MB blob that does not compress."""
    work = path.with_name(path.name + ".work")
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "blob").write_bytes(os.urandom(3_000_000))
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "blob"], check=True)
    subprocess.run([*git, "commit", "-qm", "blob"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(path)], check=True)
    return path
