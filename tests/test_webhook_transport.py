"""Webhook delivery against a real HTTP(S) server on the loopback interface."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bulwark.errors import InvalidInput
from bulwark.webhooks.schedule import RETRY_WINDOW, next_attempt
from bulwark.webhooks.transport import (
    MAX_STORED_BODY,
    USER_AGENT,
    Sender,
    blocked_address,
    check_url,
    signature,
)

HOOK_HOST = "hooks.example.test"
LARGE_BODY = b"x" * (1024 * 1024)


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver(ThreadingHTTPServer):
    """A webhook receiver that records every request and answers by path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[Seen] = []
        self.sni: list[str | None] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends the slow answer early when the test is done

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        # The sender stops reading a large body early.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.answer()

    def answer(self) -> None:
        if self.path == "/slow":
            self.server.release.wait(5)
            self.reply(200, b"late")
        elif self.path == "/fail":
            self.reply(500, b"broken")
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://elsewhere.example/next")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/large":
            self.send_response(200)
            self.send_header("Content-Length", str(len(LARGE_BODY)))
            self.end_headers()
            for start in range(0, len(LARGE_BODY), 64 * 1024):
                self.wfile.write(LARGE_BODY[start : start + 64 * 1024])
        else:
            self.reply(200, b"thanks", {"X-Receiver": "yes"})

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(server: Receiver) -> Iterator[Receiver]:
    # A short poll interval keeps shutdown() from waiting half a second per test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(Receiver())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for HOOK_HOST: no public CA vouches for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOOK_HOST)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOOK_HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls_receiver(certificate: tuple[Path, Path]) -> Iterator[Receiver]:
    server = Receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)

    def note_sni(_sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        with server.lock:
            server.sni.append(name)

    context.sni_callback = note_sni
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from _serve(server)


def pinned(mapping: dict[str, list[str]]) -> Sender:
    """A sender that may reach the loopback interface and resolves names from ``mapping``."""
    return Sender(allow_private=True, resolve=lambda host, port: mapping[host])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# signature


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"zen": "Keep it logically awesome."}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature("s3cret", body) == "sha256=" + expected
    assert signature("other", body) != signature("s3cret", body)


# blocked_address


@pytest.mark.parametrize(
    ("address", "word"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fec0::1", "site-local"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.5", "IPv4-mapped"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", ""),
        ("2002:7f00:1::", "6to4"),
        ("2002:a00:5::", "private"),
        ("64:ff9b::7f00:1", "NAT64"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("::127.0.0.1", ""),
    ],
)
def test_blocked_addresses(address: str, word: str) -> None:
    reason = blocked_address(ipaddress.ip_address(address))
    assert reason is not None
    assert word in reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2001:4860::8888", "::ffff:8.8.8.8", "2002:808:808::", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert blocked_address(ipaddress.ip_address(address)) is None


# check_url


def test_check_url_normalizes() -> None:
    assert check_url("HTTPS://Hooks.Example.COM:443/in?x=1#frag") == "https://hooks.example.com/in?x=1"
    assert check_url("http://example.com") == "http://example.com/"
    assert check_url("http://[2001:db8::1]:8080/hook") == "http://[2001:db8::1]:8080/hook"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("http:///hook", "host"),
        ("http://user:pass@example.com/hook", "user name or password"),
        ("http://token@example.com/hook", "user name or password"),
        ("http://example.com/a hook", "spaces"),
        (" http://example.com/hook", "spaces"),
        ("http://example.com/\x7f", "control"),
        ("http://example.com:70000/", "port"),
        ("http://example.com:port/", "not valid"),
        ("http://example.com/" + "a" * 2048, "2048"),
    ],
)
def test_check_url_rejects(url: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_url(url)
    assert caught.value.field == "url"
    assert words in caught.value.message
    assert caught.value.message.endswith(".")


# Sender: the address guard


def test_refuses_loopback_literal(receiver: Receiver) -> None:
    outcome = Sender().send(receiver.url("/ok"), b"{}", {})
    assert outcome.status is None
    assert not outcome.ok
    assert outcome.error == "refused: 127.0.0.1 is a loopback address"
    assert receiver.requests() == []


def test_refuses_when_any_answer_is_private(receiver: Receiver) -> None:
    sender = Sender(resolve=lambda host, port: ["8.8.8.8", "127.0.0.1"])
    outcome = sender.send(receiver.url("/ok", host=HOOK_HOST), b"{}", {})
    assert outcome.status is None
    assert outcome.error == f"refused: {HOOK_HOST} resolves to 127.0.0.1, a loopback address"
    assert receiver.requests() == []


def test_refuses_mapped_form_from_resolver(receiver: Receiver) -> None:
    sender = Sender(resolve=lambda host, port: ["::ffff:10.0.0.5"])
    outcome = sender.send(receiver.url("/ok", host="example.internal"), b"{}", {})
    assert outcome.error.startswith("refused: example.internal resolves to ::ffff:")
    assert outcome.error.endswith(", a private address (IPv4-mapped form of 10.0.0.5)")


def test_resolver_failure_is_an_outcome() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    outcome = Sender(resolve=fail).send("https://nowhere.example.test/hook", b"{}", {})
    assert outcome.status is None
    assert outcome.error == "could not resolve host nowhere.example.test: name or service not known"


def test_invalid_url_is_an_outcome() -> None:
    outcome = Sender().send("ftp://example.com/", b"{}", {})
    assert outcome.status is None
    assert outcome.error.startswith("invalid URL: ")


# Sender: delivery


def test_delivers_to_the_checked_address_with_the_original_host(receiver: Receiver) -> None:
    sender = pinned({HOOK_HOST: ["127.0.0.1"]})
    body = b'{"action": "opened"}'
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature("k", body)}
    outcome = sender.send(receiver.url("/ok", host=HOOK_HOST), body, headers)
    assert outcome.ok
    assert outcome.status == 200
    assert outcome.error == ""
    assert outcome.response_body == "thanks"
    assert outcome.response_headers["x-receiver"] == "yes"
    assert outcome.duration_ms >= 0
    [seen] = receiver.requests()
    assert seen.path == "/ok"
    assert seen.body == body
    assert seen.headers["host"] == f"{HOOK_HOST}:{receiver.port}"
    assert seen.headers["user-agent"] == USER_AGENT
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["x-hub-signature-256"] == signature("k", body)


def test_keeps_a_given_user_agent(receiver: Receiver) -> None:
    pinned({HOOK_HOST: ["127.0.0.1"]}).send(receiver.url("/ok", host=HOOK_HOST), b"", {"user-agent": "Mine/1"})
    [seen] = receiver.requests()
    assert seen.headers["user-agent"] == "Mine/1"


def test_tries_the_next_address_when_one_refuses(receiver: Receiver) -> None:
    # Only 127.0.0.1 listens; 127.0.0.2 (also loopback) refuses the same port.
    sender = pinned({HOOK_HOST: ["127.0.0.2", "127.0.0.1"]})
    outcome = sender.send(receiver.url("/ok", host=HOOK_HOST), b"{}", {})
    assert outcome.ok
    assert len(receiver.requests()) == 1


def test_server_error_is_not_ok(receiver: Receiver) -> None:
    outcome = pinned({}).send(receiver.url("/fail"), b"{}", {})
    assert outcome.status == 500
    assert not outcome.ok
    assert outcome.error == ""
    assert outcome.response_body == "broken"


def test_redirect_is_not_followed(receiver: Receiver) -> None:
    outcome = pinned({}).send(receiver.url("/redirect"), b"{}", {})
    assert outcome.status == 302
    assert not outcome.ok
    assert outcome.error == "redirect to http://elsewhere.example/next not followed"
    assert len(receiver.requests()) == 1


def test_slow_receiver_times_out(receiver: Receiver) -> None:
    sender = Sender(allow_private=True, timeout=0.5)
    started = time.monotonic()
    outcome = sender.send(receiver.url("/slow"), b"{}", {})
    assert time.monotonic() - started < 2
    assert outcome.status is None
    assert outcome.error == "timed out after 0.5 s"
    assert len(receiver.requests()) == 1


def test_large_body_is_truncated(receiver: Receiver) -> None:
    outcome = pinned({}).send(receiver.url("/large"), b"{}", {})
    assert outcome.ok
    assert len(outcome.response_body) == MAX_STORED_BODY
    assert outcome.response_body == "x" * MAX_STORED_BODY


def test_connection_refused() -> None:
    port = closed_port()
    outcome = pinned({}).send(f"http://127.0.0.1:{port}/hook", b"{}", {})
    assert outcome.status is None
    assert not outcome.ok
    assert outcome.error == f"could not connect to 127.0.0.1:{port}: connection refused"


# Sender: TLS to the checked address


def test_tls_uses_the_host_name_for_sni(tls_receiver: Receiver) -> None:
    sender = pinned({HOOK_HOST: ["127.0.0.1"]})
    outcome = sender.send(tls_receiver.url("/ok", host=HOOK_HOST, scheme="https"), b"{}", {}, insecure_ssl=True)
    assert outcome.ok, outcome.error
    assert tls_receiver.sni == [HOOK_HOST]
    [seen] = tls_receiver.requests()
    assert seen.headers["host"] == f"{HOOK_HOST}:{tls_receiver.port}"


def test_tls_verifies_the_certificate(tls_receiver: Receiver) -> None:
    sender = pinned({HOOK_HOST: ["127.0.0.1"]})
    outcome = sender.send(tls_receiver.url("/ok", host=HOOK_HOST, scheme="https"), b"{}", {})
    assert outcome.status is None
    assert "certificate verification failed" in outcome.error
    assert tls_receiver.sni == [HOOK_HOST]
    assert tls_receiver.requests() == []


# next_attempt

FIRST = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [
        (1, dt.timedelta(seconds=10)),
        (2, dt.timedelta(seconds=30)),
        (3, dt.timedelta(minutes=1)),
        (4, dt.timedelta(minutes=2)),
        (5, dt.timedelta(minutes=5)),
        (6, dt.timedelta(minutes=10)),
        (7, dt.timedelta(minutes=30)),
        (8, dt.timedelta(hours=1)),
        (20, dt.timedelta(hours=1)),
    ],
)
def test_next_attempt_backs_off(attempts: int, delay: dt.timedelta) -> None:
    now = FIRST + dt.timedelta(minutes=5)
    assert next_attempt(attempts, FIRST, now) == now + delay


def test_next_attempt_gives_up_after_the_window() -> None:
    last_chance = FIRST + RETRY_WINDOW - dt.timedelta(hours=1)
    assert next_attempt(30, FIRST, last_chance) == FIRST + RETRY_WINDOW
    assert next_attempt(30, FIRST, last_chance + dt.timedelta(seconds=1)) is None
    assert next_attempt(1, FIRST, FIRST + RETRY_WINDOW) is None


def test_next_attempt_needs_a_failed_attempt() -> None:
    with pytest.raises(ValueError):
        next_attempt(0, FIRST, FIRST)


def test_whole_schedule_fits_in_the_window() -> None:
    now, attempts = FIRST, 1
    while (due := next_attempt(attempts, FIRST, now)) is not None:
        now, attempts = due, attempts + 1
    assert FIRST + RETRY_WINDOW - dt.timedelta(hours=1) < now <= FIRST + RETRY_WINDOW
    assert attempts == 31
