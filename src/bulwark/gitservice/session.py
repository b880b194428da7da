"""One git process serving one request, whatever the transport: its input, output and end.

The transports (smart HTTP, SSH) frame the bytes; this is where git is fed with bounded
memory, where its answer is read, and where it is stopped, so that however a request ends
(bad input, a client gone, an error) git cleans up its lock files and quarantined objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import anyio

from bulwark.errors import ClientGone
from bulwark.git.runner import GitRunner
from bulwark.gitservice.slots import Slot
from bulwark.monitoring.metrics import GitObservation, Metrics, Transport
from bulwark.services.repositories import RepoAccess

log = logging.getLogger("bulwark.git")

UPLOAD_PACK = "upload-pack"
RECEIVE_PACK = "receive-pack"
UPLOAD_ARCHIVE = "upload-archive"
# The first section of a request (up to its first flush) is buffered and checked before git
# starts, over either transport. A mirror clone may want hundreds of thousands of refs; a push's
# commands are fewer. In bytes, and in packets, which cost far more to parse than their bytes
# suggest (an empty one is 4 bytes).
SECTION_LIMITS = {UPLOAD_PACK: 16 * 1024**2, RECEIVE_PACK: 1024**2}
SECTION_PACKETS = {UPLOAD_PACK: 400_000, RECEIVE_PACK: 20_000}

CHUNK = 64 * 1024
# A client gone mid-push: how long git may take to finish the ref updates it has started.
FINISH_TIMEOUT = 600.0
# How long git gets to exit by itself (at the end of its input, or after SIGTERM, which
# lets it remove lock files and quarantined objects) before the next, harsher step.
TERM_GRACE = 5.0
STDERR_TAIL = 8192


class GitSession:
    """One git process serving one request: its input, its output and its end.

    ``close`` ends the process and releases its pipes whatever happened (bad input,
    a client gone, an error); the response calls it, or the handler if no response
    is sent.
    """

    def __init__(self, proc: asyncio.subprocess.Process, git: GitRunner, access: RepoAccess, service: str, *,
                 metrics: Metrics | None, client_gone: Callable[[], Awaitable[bool]] | None = None,
                 slot: Slot | None = None, transport: Transport = Transport.HTTP) -> None:
        self.proc = proc
        self.slot = slot  # released when the process has ended
        self.not_acknowledged = False
        self.service = service
        self.on_success: Callable[[], Awaitable[None]] | None = None
        # A cluster push holds back git's answer until the replicas' votes are recorded,
        # and may replace it; ``on_close`` then runs however the session ends.
        self.hold_output: Callable[[bytes], Awaitable[bytes]] | None = None
        self.on_close: Callable[[], Awaitable[None]] | None = None
        self.client_gone = False
        # Returns True once the client has gone (False: it cannot tell); the transport supplies it.
        self._gone = client_gone
        self.metrics = metrics  # which count what becomes of the request
        self._repo_path = str(git.path(access.repo.storage_id))
        # A push changes refs: kept advertisements of the repository go stale when it starts and ends.
        self._adverts = git.adverts if service == RECEIVE_PACK else None
        self._refs_changed()
        self._full_name = access.full_name
        # A push whose body arrived in full and whose answer has started is let finish
        # even if its client goes away, so its ref updates are never cut off half-way.
        self._finish_when_gone = service == RECEIVE_PACK
        self._body_complete = False
        self._responding = False
        self._finished = False
        self._closed = False
        self._stderr = bytearray()
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        self._writer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.transport = transport
        self._observed = GitObservation(metrics, service, transport)  # metrics: running git processes

    # -- input ---------------------------------------------------------------------------

    def no_input(self) -> None:
        self._close_stdin()
        self._body_complete = True
        self._watch()

    def send_input(self, prelude: bytes, body: AsyncGenerator[bytes, None]) -> None:
        """Write ``prelude`` and then the rest of ``body`` to git's stdin, concurrently with its output."""
        self._writer = asyncio.create_task(self._write(prelude, body))

    async def _write(self, prelude: bytes, body: AsyncGenerator[bytes, None]) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(prelude)
            await stdin.drain()
            async for chunk in body:
                stdin.write(chunk)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return  # git stopped reading: it had what it needed, or it failed and says why on stderr
        except BaseException:
            # A partial request: the end of input makes git fail and clean up (its quarantined
            # objects, its lock files) by itself. A signal is only the fallback.
            self._deadline = asyncio.get_running_loop().call_later(TERM_GRACE, self._terminate)
            raise
        finally:
            self._close_stdin()
            with contextlib.suppress(RuntimeError):
                await body.aclose()
        self._body_complete = True
        if not self._finish_when_gone:
            self._watch()

    async def input_done(self) -> None:
        if self._writer is not None:
            await asyncio.wait({self._writer})

    def _close_stdin(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    # -- a client that goes away before the response starts -------------------------------

    def _watch(self) -> None:
        if not self._responding and self._gone is not None:
            self._watcher = asyncio.create_task(self._watch_disconnect())

    async def _watch_disconnect(self) -> None:
        assert self._gone is not None
        if await self._gone():
            self.client_gone = True
            self._terminate()

    async def stop_watching(self) -> None:
        """Hand disconnect detection to the response, which listens for it itself."""
        self._responding = True
        await cancel(self._watcher)

    # -- output --------------------------------------------------------------------------

    async def first_output(self) -> bytes:
        """Git's first bytes of output; ``b""`` if it exited without any."""
        stdout = self.proc.stdout
        assert stdout is not None
        data = await stdout.read(CHUNK)
        error = self._input_error()
        if error is not None:
            # The body was bad: that is the answer, whatever git made of the part it got.
            await self._discard_stdout()
            await self.proc.wait()
            raise error
        if data:
            return data
        await self.proc.wait()
        if self.client_gone:
            raise ClientGone("the client disconnected")
        await asyncio.wait({self._stderr_task}, timeout=TERM_GRACE)  # so last_error() has git's last words
        return b""

    async def read_more(self, first: bytes, limit: int) -> tuple[bytes, bool]:
        """``first`` and what follows, up to about ``limit`` bytes; whether that is all git said."""
        stdout = self.proc.stdout
        assert stdout is not None
        data = bytearray(first)
        while len(data) <= limit:
            chunk = await stdout.read(CHUNK)
            if not chunk:
                return bytes(data), True
            data += chunk
        return bytes(data), False

    def _input_error(self) -> BaseException | None:
        writer = self._writer
        return writer.exception() if writer is not None and writer.done() and not writer.cancelled() else None

    async def stream(self, first: bytes) -> AsyncIterator[bytes]:
        stdout = self.proc.stdout
        assert stdout is not None
        if self.hold_output is not None:
            held = bytearray(first)
            while chunk := await stdout.read(CHUNK):
                held += chunk
            await self.finish()
            yield await self.hold_output(bytes(held))
            return
        if self.on_success is not None:
            # A push: the last bytes (the end of git's report) wait until it is recorded, so a
            # push the client saw succeed has its record and webhook deliveries, even if the
            # node dies the next moment.
            last = first
            while chunk := await stdout.read(CHUNK):
                if last:
                    yield last
                last = chunk
            await self.finish()
            if last:
                yield last
            return
        if first:
            yield first
        while chunk := await stdout.read(CHUNK):
            yield chunk
        await self.finish()

    async def finish(self) -> int:
        """Wait for git to exit; the first time, run ``on_success`` if it succeeded or log why not."""
        returncode = await self.proc.wait()
        if self._finished:
            return returncode
        self._finished = True
        self._refs_changed()
        if returncode == 0 and self.on_success is not None:
            await self.on_success()
        elif returncode != 0:
            log.warning(
                "git-%s for %s exited with %s: %s", self.service, self._full_name, returncode, self.last_error()
            )
        return returncode

    def _refs_changed(self) -> None:
        if self._adverts is not None:
            self._adverts.invalidate(self._repo_path)

    def last_error(self) -> str:
        """Git's last line on stderr, without the server's paths."""
        lines = self._stderr_lines()
        return lines[-1] if lines else f"git exited with status {self.proc.returncode}"

    def complained(self) -> bool:
        return any(line.startswith(("fatal:", "error:")) for line in self._stderr_lines())

    def _stderr_lines(self) -> list[str]:
        text = self._stderr.decode("utf-8", "replace").replace(self._repo_path, self._full_name)
        return [line.strip() for line in text.splitlines() if line.strip()]

    async def _drain_stderr(self) -> None:
        # Always read stderr: a full pipe would block git.
        stderr = self.proc.stderr
        assert stderr is not None
        while chunk := await stderr.read(4096):
            self._stderr += chunk
            del self._stderr[:-STDERR_TAIL]

    async def _discard_stdout(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        while await stdout.read(CHUNK):
            pass

    # -- the end -------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await cancel(self._watcher)
        if self._finish_when_gone and self._body_complete and self._responding:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finish_unread(), FINISH_TIMEOUT)
        await cancel(self._writer)
        self._close_stdin()
        discard = asyncio.create_task(self._discard_stdout())
        await self._stop()
        self._refs_changed()
        # metrics: git operations (a cluster push not acknowledged failed, whatever git said)
        self._observed.end(self.proc.returncode, cancelled=self.client_gone, failed=self.not_acknowledged)
        if self.slot is not None:
            self.slot.release()
        if self._deadline is not None:
            self._deadline.cancel()
        await asyncio.wait({discard, self._stderr_task}, timeout=TERM_GRACE)
        await cancel(discard)
        await cancel(self._stderr_task)
        # Pipes still open now are held by an orphaned git child: close our ends rather than wait.
        transport = getattr(self.proc, "_transport", None)
        if transport is not None:
            transport.close()
        if self.on_close is not None:
            await self.on_close()

    async def _finish_unread(self) -> None:
        await self._discard_stdout()
        await self.finish()

    def _terminate(self) -> None:
        # SIGTERM, not SIGKILL: git then removes its lock files and quarantined objects.
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()

    async def _stop(self) -> None:
        if self.proc.returncode is not None:
            return
        self._terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), TERM_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # mark it retrieved: it was reported already or no longer matters


@contextlib.asynccontextmanager
async def closed_on_error(session: GitSession) -> AsyncIterator[None]:
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            await session.close()
        raise
