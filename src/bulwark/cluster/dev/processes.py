"""Child processes: each started in a session of its own, logged to a file, ended by its pid."""

from __future__ import annotations

import enum
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bulwark.cluster.dev.tools import START_TIMEOUT, STOP_GRACE, DevClusterError, component_error, wait_until


class ProcessState(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    EXITED = "exited"  # stopped, killed or crashed


class Managed:
    """One child process: its command, its log file, and its pid once started."""

    def __init__(self, component: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.component = component
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> ProcessState:
        if self.proc is None:
            return ProcessState.NOT_STARTED
        return ProcessState.RUNNING if self.proc.poll() is None else ProcessState.EXITED

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        if self.state is ProcessState.RUNNING:
            raise DevClusterError(f"{self.component} is already running (pid {self.pid})")
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                # A session of its own, so a Ctrl-C meant for the launcher does not reach it: we stop it in order.
                self.proc = subprocess.Popen(
                    self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
            except OSError as exc:
                raise component_error(self.component, f"cannot start {self.argv[0]}: {exc}", None) from None

    def kill(self) -> None:
        """SIGKILL, by pid, and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_GRACE)

    def send_term(self) -> None:
        """SIGTERM, once: a second one makes some servers skip their graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait_or_kill(self, grace: float = STOP_GRACE) -> None:
        """Wait up to ``grace`` seconds for the process to exit, then SIGKILL it."""
        if self.proc is None:
            return
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def terminate(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
        self.send_term()
        self.wait_or_kill(grace)

    def wait_ready(self, ready: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``ready`` until it holds; an exit or the timeout raises with the log's tail."""
        outcome: list[str] = []

        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                outcome.append(f"exited with status {self.proc.returncode} before {what}")
                return True
            return ready()

        if not wait_until(check, timeout):
            raise self.error(f"not {what} within {timeout:g}s")
        if outcome:
            raise self.error(outcome[0])

    def error(self, problem: str) -> DevClusterError:
        return component_error(self.component, problem, self.log_path)


def run_checked(argv: Sequence[str], what: str, timeout: float = 10.0) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DevClusterError(f"{what}: '{' '.join(argv)}' did not finish within {timeout:g}s") from None
    if proc.returncode != 0:
        raise DevClusterError(f"{what}: '{' '.join(argv)}' failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout
