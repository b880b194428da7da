"""Delivering one webhook: a POST to a URL a user gave, kept from reaching inside the network.

A hook URL is untrusted, so a delivery resolves the host once, refuses when any answer is an
internal address (loopback, private, link-local, cloud metadata, ...), and then connects to the
checked address itself rather than letting the client look the name up again, which a DNS
answer with a short TTL could point elsewhere in between. Redirects are never followed, as
they would lead to an unchecked address. The outcome of a delivery is recorded, never raised.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import ssl
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from urllib.parse import urlsplit

import httpx

import bulwark
from bulwark.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _version() -> str:
    version = getattr(bulwark, "__version__", None)
    if isinstance(version, str) and version:
        return version
    try:
        return metadata.version("bulwark")
    except metadata.PackageNotFoundError:
        return "0"


USER_AGENT = "Bulwark-Hookshot/" + _version()

# A receiver's answer is kept for display only; anything past this is dropped, never read.
MAX_STORED_BODY = 64 * 1024

MAX_URL_LENGTH = 2048

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT, inside some provider's network
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def signature(secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 header value GitHub sends: an HMAC-SHA256 of the body."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return "sha256=" + digest


def _own_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` itself (not an IPv4 address it embeds) must not be reached, or None."""
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    # Anything else the registries do not call globally reachable is no place for a webhook either.
    if not ip.is_global:
        return "a non-public address"
    return None


def blocked_address(ip: IPAddress) -> str | None:
    """Why a delivery must not connect to ``ip`` (e.g. "a private address"), or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4-mapped or NAT64 address is the IPv4 address reached another way: judge that one.
        if ip.ipv4_mapped is not None:
            inner = blocked_address(ip.ipv4_mapped)
            return None if inner is None else f"{inner} (IPv4-mapped form of {ip.ipv4_mapped})"
        if ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            inner = blocked_address(embedded)
            return None if inner is None else f"{inner} (NAT64 form of {embedded})"
        # A 6to4 address is an address of its own, but also leads to the IPv4 address inside it.
        if ip.sixtofour is not None:
            inner = blocked_address(ip.sixtofour)
            if inner is not None:
                return f"{inner} (6to4 form of {ip.sixtofour})"
    return _own_reason(ip)


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, field="url")


def check_url(url: str) -> str:
    """A hook URL as a user gave it, checked (without DNS) and normalized; raises InvalidInput."""
    # Checked before parsing too, so a huge value is not parsed at all.
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"The URL must be at most {MAX_URL_LENGTH} characters long.")
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        raise _invalid("The URL must not contain spaces or control characters.")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise _invalid(f"The URL is not valid ({exc}).") from None
    if parsed.scheme not in ("http", "https"):
        raise _invalid("The URL must start with http:// or https://.")
    if not parsed.raw_host:
        raise _invalid("The URL must name a host.")
    if parsed.userinfo:
        raise _invalid("The URL must not contain a user name or password; use the hook's secret instead.")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise _invalid("The URL's port must be between 1 and 65535.")
    # The fragment is never sent; an empty path is sent as "/".
    normalized = parsed.copy_with(fragment=None)
    if not urlsplit(str(normalized)).path:
        normalized = normalized.copy_with(path="/")
    result = str(normalized)
    # Percent-encoding can make the URL longer than what the user typed.
    if len(result) > MAX_URL_LENGTH:
        raise _invalid(f"The URL must be at most {MAX_URL_LENGTH} characters long.")
    return result


@dataclass(frozen=True)
class Outcome:
    """What became of one delivery attempt."""

    status: int | None  # the HTTP status, None when no response came
    duration_ms: int
    response_headers: dict[str, str]
    response_body: str  # at most MAX_STORED_BODY bytes of it, decoded
    error: str  # "" when a response came (unless it was a redirect); else what went wrong

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def system_resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to for a TCP connection, each once, in the resolver's order."""
    found: list[str] = []
    for _family, _type, _proto, _name, sockaddr in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    ):
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


def _describe(exc: BaseException) -> str:
    """A short lower-case phrase for what an exception means ("connection refused")."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    for cause in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate verification failed: {cause.verify_message or cause.reason}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake failed: {cause.reason or cause}"
    for cause in seen:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
    text = str(exc).strip().rstrip(".")
    return text[:1].lower() + text[1:] if text else type(exc).__name__


def _host_port(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class _ConnectFailed(Exception):
    """No connection could be made to one address: the next one is tried."""


class Sender:
    """Posts webhook deliveries, one blocking call each (it is used from worker threads).

    ``timeout`` bounds a delivery from its start: each connect or read waits at most what is left
    of it when the attempt on an address begins, and the body is read no further than the deadline.
    Name resolution is the system's and is not bounded by it.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        allow_private: bool = False,
        resolve: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self._resolve = resolve or system_resolve
        # Loading the CA bundle takes tens of milliseconds, so it is done once, not per delivery.
        self._verifying_tls = httpx.create_ssl_context()

    def send(self, url: str, body: bytes, headers: Mapping[str, str], *, insecure_ssl: bool = False) -> Outcome:
        """POST ``body`` to ``url``; whatever happens comes back as an Outcome, never as an exception."""
        started = time.monotonic()
        try:
            return self._send(url, body, headers, insecure_ssl, started)
        except Exception as exc:  # a failed delivery is recorded and retried, it must not kill the worker
            return self._failure(started, f"delivery failed: {_describe(exc)}")

    def _failure(self, started: float, error: str) -> Outcome:
        return Outcome(None, _elapsed_ms(started), {}, "", error)

    def _timed_out(self) -> str:
        return f"timed out after {self.timeout:g} s"

    def _send(self, url: str, body: bytes, headers: Mapping[str, str], insecure_ssl: bool, started: float) -> Outcome:
        try:
            target = httpx.URL(check_url(url))
        except InvalidInput as exc:
            return self._failure(started, f"invalid URL: {exc.message}")
        host = target.raw_host.decode("ascii")
        port = target.port or (443 if target.scheme == "https" else 80)

        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            try:
                addresses = [ipaddress.ip_address(answer) for answer in self._resolve(host, port)]
            except (OSError, UnicodeError, ValueError) as exc:
                return self._failure(started, f"could not resolve host {host}: {_describe(exc)}")
            if not addresses:
                return self._failure(started, f"could not resolve host {host}: no addresses")

        if not self.allow_private:
            # One internal answer is enough to refuse: the others may be bait.
            for ip in addresses:
                reason = blocked_address(ip)
                if reason is None:
                    continue
                if literal is not None:
                    return self._failure(started, f"refused: {host} is {reason}")
                return self._failure(started, f"refused: {host} resolves to {ip}, {reason}")

        outgoing = httpx.Headers(headers)
        if "user-agent" not in outgoing:
            outgoing["User-Agent"] = USER_AGENT
        # The URL carries the checked address; the receiver still sees the name the user gave.
        outgoing["Host"] = target.netloc.decode("ascii")
        # The body is stored as it came, so ask for it uncompressed (and never inflate a bomb).
        outgoing["Accept-Encoding"] = "identity"
        extensions = {"sni_hostname": host} if target.scheme == "https" else {}
        verify: ssl.SSLContext | bool = False if insecure_ssl else self._verifying_tls

        deadline = started + self.timeout
        failures: list[str] = []
        for ip in addresses:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failures.append(self._timed_out())
                break
            pinned = target.copy_with(host=str(ip))
            try:
                return self._post(pinned, body, outgoing, extensions, verify, remaining, deadline, started)
            except _ConnectFailed as exc:
                failures.append(f"could not connect to {_host_port(ip, port)}: {exc}")
        return self._failure(started, "; ".join(failures))

    def _post(
        self,
        url: httpx.URL,
        body: bytes,
        headers: httpx.Headers,
        extensions: dict[str, str],
        verify: ssl.SSLContext | bool,
        remaining: float,
        deadline: float,
        started: float,
    ) -> Outcome:
        # A client per delivery: a pooled connection, keyed by address, could be reused for another
        # host name on the same address, whose certificate was never checked.
        with httpx.Client(
            verify=verify, timeout=httpx.Timeout(remaining), follow_redirects=False, trust_env=False
        ) as client:
            request = client.build_request("POST", url, content=body, headers=headers, extensions=extensions)
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectTimeout:
                raise _ConnectFailed("timed out") from None
            except httpx.ConnectError as exc:
                raise _ConnectFailed(_describe(exc)) from None
            except httpx.TimeoutException:
                return self._failure(started, self._timed_out())
            except httpx.TransportError as exc:
                return self._failure(started, f"no response from {url.netloc.decode('ascii')}: {_describe(exc)}")
            try:
                kept = _read_capped(response, deadline)
            finally:
                response.close()

        status = response.status_code
        error = ""
        if 300 <= status < 400:
            location = response.headers.get("location", "")[:MAX_URL_LENGTH]
            error = f"redirect to {location} not followed" if location else "redirect not followed"
        return Outcome(
            status=status,
            duration_ms=_elapsed_ms(started),
            response_headers=dict(response.headers.items()),
            response_body=kept.decode("utf-8", errors="replace"),
            error=error,
        )


def _read_capped(response: httpx.Response, deadline: float) -> bytes:
    """At most MAX_STORED_BODY bytes of the body, read only until the deadline."""
    kept = bytearray()
    try:
        for chunk in response.iter_raw():
            kept += chunk
            # Reading one byte past the limit is enough to know the rest is dropped.
            if len(kept) > MAX_STORED_BODY or time.monotonic() > deadline:
                break
    except httpx.TransportError:
        pass  # the status already came; a body cut short is kept as far as it got
    return bytes(kept[:MAX_STORED_BODY])


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
