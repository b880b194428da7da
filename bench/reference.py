"""The reference smart-HTTP server: nginx in front of fcgiwrap running ``git http-backend``.

Debian's packages, configured into a directory of our own, listening on loopback only. Reads are
anonymous; pushes are open to everyone (``http.receivepack``), as the reference has no accounts.
We start fcgiwrap and nginx, remember their pids and stop them by those pids.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
CGIT = "/usr/lib/cgit/cgit.cgi"  # Debian's cgit
CGIT_STATIC = "/usr/share/cgit/"  # its stylesheet and logo


def find_program(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin") if (p := Path(d) / name).is_file()), None)
    if found is None:
        raise RuntimeError(f"{name} is not installed (apt-get install {package}; `make bench` does it)")
    return found


def cgit_locations(cgitrc: Path, socket_path: Path) -> str:
    """cgit's pages under ``/cgit/`` through the same fcgiwrap, its static files from nginx itself."""
    return f"""
        location /cgit-static/ {{
            alias {CGIT_STATIC};
        }}

        location ~ ^/cgit(/.*)?$ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME {CGIT};
            fastcgi_param CGIT_CONFIG {cgitrc};
            fastcgi_param PATH_INFO $1;
            fastcgi_param QUERY_STRING $args;
            fastcgi_pass unix:{socket_path};
        }}
"""


def nginx_config(workdir: Path, port: int, project_root: Path, socket_path: Path, as_root: bool,
                 cgitrc: Path | None = None) -> str:
    """``cgitrc``: also serve cgit with that configuration (see ``cgit_locations``)."""
    temp = workdir / "tmp"
    cgit = cgit_locations(cgitrc, socket_path) if cgitrc is not None else ""
    return f"""# Generated for one benchmark run; removed with its directory.
{"user root root;" if as_root else ""}
worker_processes auto;
daemon off;
master_process on;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log {workdir}/nginx-access.log;
    client_body_temp_path {temp}/client_body;
    fastcgi_temp_path {temp}/fastcgi;
    proxy_temp_path {temp}/proxy;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
{cgit}
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME {HTTP_BACKEND};
            fastcgi_param GIT_PROJECT_ROOT {project_root};
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param GIT_CONFIG_NOSYSTEM 1;
            fastcgi_param PATH_INFO $uri;
            # Pushes without accounts: http.receivepack=true, given to git through the environment.
            fastcgi_param GIT_CONFIG_COUNT 1;
            fastcgi_param GIT_CONFIG_KEY_0 http.receivepack;
            fastcgi_param GIT_CONFIG_VALUE_0 true;
            fastcgi_pass unix:{socket_path};
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path,
          timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout}s: {log.read_text(errors='replace')[-2000:]}")


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


class ReferenceServer:
    """nginx + fcgiwrap + git http-backend serving every repository under ``project_root``.

    ``cgitrc``: cgit's configuration, to serve its pages under ``/cgit/`` beside git as well.
    """

    def __init__(self, project_root: Path, workdir: Path, children: int = 8, cgitrc: Path | None = None) -> None:
        self.project_root = project_root
        self.workdir = workdir
        self.children = children
        self.cgitrc = cgitrc
        self.port = 0
        self.nginx: subprocess.Popen[bytes] | None = None
        self.fcgiwrap: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def remote(self, owner: str, repo: str) -> str:
        return f"{self.url}/{owner}/{repo}.git"

    def start(self) -> ReferenceServer:
        nginx = find_program("nginx", "nginx")
        fcgiwrap = find_program("fcgiwrap", "fcgiwrap")
        if not Path(HTTP_BACKEND).is_file():
            raise RuntimeError(f"{HTTP_BACKEND} is missing (apt-get install git)")
        if self.cgitrc is not None and not Path(CGIT).is_file():
            raise RuntimeError(f"{CGIT} is missing (apt-get install cgit; `make bench` does it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tmp").mkdir(exist_ok=True)
        sock = self.workdir / "fcgiwrap.sock"
        sock.unlink(missing_ok=True)  # left by an earlier run in the same directory
        self.port = _free_port()
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        log = self.workdir / "fcgiwrap.log"
        with open(log, "ab") as out:
            self.fcgiwrap = subprocess.Popen([fcgiwrap, "-c", str(self.children), "-s", f"unix:{sock}"], env=env,
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        _wait(lambda: _accepts(sock), "fcgiwrap", self.fcgiwrap, log)
        config = self.workdir / "nginx.conf"
        config.write_text(nginx_config(self.workdir, self.port, self.project_root, sock, os.geteuid() == 0,
                                       self.cgitrc))
        log = self.workdir / "nginx.log"
        with open(log, "ab") as out:
            self.nginx = subprocess.Popen([nginx, "-c", str(config), "-p", str(self.workdir), "-e",
                                           str(self.workdir / "nginx-error.log")], env=env,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        _wait(self._listening, "nginx", self.nginx, log)
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def pids(self) -> list[int]:
        """nginx's master and workers, fcgiwrap and its children: every process of this server."""
        pids = []
        for proc in (self.nginx, self.fcgiwrap):
            if proc is not None and proc.poll() is None:
                pids.append(proc.pid)
                with contextlib.suppress(psutil.NoSuchProcess):
                    pids += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        return pids

    def stop(self) -> None:
        for proc in (self.nginx, self.fcgiwrap):
            if proc is None or proc.poll() is not None:
                continue
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                children = []
            proc.send_signal(signal.SIGTERM if proc is self.fcgiwrap else signal.SIGQUIT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            # fcgiwrap's forked workers, by their pids, should any outlive the parent.
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
