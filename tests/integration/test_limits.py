"""Per-client limits (anvil) against a real postwall and, with the same settings, a real
Postfix 3.7: the same replies and the same warning lines.

Each scenario runs twice: `postwall` (python -m postwall start) and `postfix` (a private
postmulti instance, marked interop).  Replies and log lines are compared after replacing
each server's own host name and service name, which differ by construction.
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import peers

TARGETS = ["postwall", pytest.param("postfix", marks=pytest.mark.interop)]


@dataclass
class Target:
    port: int
    hostname: str
    log_text: object  # () -> str

    @property
    def service(self) -> str:
        return f"127.0.0.1:{self.port}"

    def norm(self, text: str) -> str:
        return text.replace(self.hostname, "HOST").replace(self.service, "SERVICE")

    def wait_warning(self, text: str, timeout: float = 20) -> None:
        """Wait for `warning: TEXT` (TEXT in normalised form) in the server's log."""
        want = f"warning: {text}"
        peers.wait_for(
            lambda: any(self.norm(line).endswith(want) for line in self.log_text().splitlines()),  # type: ignore[operator]
            timeout,
            f"{want!r} in the log",
            detail=lambda: peers.tail(self.log_text()),  # type: ignore[operator]
        )


@pytest.fixture
def target(request, tmp_path: Path, certs: peers.TestCerts) -> Iterator[object]:
    """make(params) -> Target: a started server of the parametrised kind with `params`."""
    made: list[object] = []

    def make(params: dict[str, str]) -> Target:
        tls = {
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
        }
        if request.param == "postwall":
            server = peers.PostwallServer(config_dir=tmp_path / "pw", params={**tls, **params})
            made.append(server)
            server.start()
            return Target(server.port, server.params["myhostname"], server.log_text)
        peers.require_root()
        peers.require_tool("postmulti")
        inst = peers.PostfixInstance.receiver(
            cert=certs.server_cert, key=certs.server_key, extra=params
        )
        made.append(inst)
        inst.start()
        assert inst.port is not None
        host = peers.read_text(inst.config_dir / "main.cf")
        m = re.search(r"^myhostname = (\S+)", host, re.M)
        assert m
        return Target(inst.port, m.group(1), inst.log_text)

    yield make
    for thing in made:
        if isinstance(thing, peers.PostwallServer):
            thing.cleanup()
        else:
            thing.destroy()  # type: ignore[attr-defined]


class Client:
    def __init__(self, port: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=15
        )
        self.buf = b""
        self.banner = self.reply()

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def reply(self) -> str:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def starttls(self) -> str:
        reply = self.cmd("STARTTLS")
        if reply.startswith("220"):
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.sock = ctx.wrap_socket(self.sock)
        return reply

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


NO_EXCEPTIONS = {"smtpd_client_event_limit_exceptions": ""}


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_connection_count_limit(target):
    t = target({**NO_EXCEPTIONS, "smtpd_client_connection_count_limit": "2"})
    first, second = Client(t.port), Client(t.port)
    assert first.banner.startswith("220 ") and second.banner.startswith("220 ")
    third = Client(t.port)
    assert t.norm(third.banner) == "421 4.7.0 HOST Error: too many connections from 127.0.0.1"
    assert third.closed()
    t.wait_warning(
        "Connection concurrency limit exceeded: 3 from localhost[127.0.0.1] for service SERVICE"
    )
    assert first.cmd("QUIT").startswith("221")
    assert first.closed()
    first.close()
    # A session that ended frees its place.
    peers.wait_for(lambda: Client(t.port).banner.startswith("220 "), 10, "a free place")
    second.close()


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_connection_rate_limit(target):
    t = target({**NO_EXCEPTIONS, "smtpd_client_connection_rate_limit": "2"})
    for _ in range(2):
        c = Client(t.port)
        assert c.banner.startswith("220 ")
        assert c.cmd("QUIT").startswith("221")
        c.close()
    c = Client(t.port)
    assert t.norm(c.banner) == "421 4.7.0 HOST Error: too many connections from 127.0.0.1"
    t.wait_warning(
        "Connection rate limit exceeded: 3 from localhost[127.0.0.1] for service SERVICE"
    )


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_message_rate_limit(target):
    t = target({**NO_EXCEPTIONS, "smtpd_client_message_rate_limit": "1"})
    c = Client(t.port)
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok"
    assert c.cmd("RSET").startswith("250")
    assert c.cmd("MAIL FROM:<a@example.org>") == "450 4.7.1 Error: too much mail from 127.0.0.1"
    t.wait_warning(
        "Message delivery request rate limit exceeded: 2 from localhost[127.0.0.1]"
        " for service SERVICE"
    )
    # The session goes on: only the MAIL was refused.
    assert c.cmd("NOOP").startswith("250")
    c.cmd("QUIT")


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_recipient_rate_limit(target):
    t = target({**NO_EXCEPTIONS, "smtpd_client_recipient_rate_limit": "2"})
    c = Client(t.port)
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<a@example.org>") == "250 2.1.0 Ok"
    for _ in range(2):
        c.cmd("RCPT TO:<bob@example.test>")
    assert (
        c.cmd("RCPT TO:<bob@example.test>") == "450 4.7.1 Error: too many recipients from 127.0.0.1"
    )
    t.wait_warning(
        "Recipient address rate limit exceeded: 3 from localhost[127.0.0.1] for service SERVICE"
    )
    c.cmd("QUIT")


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_new_tls_session_rate_limit(target):
    t = target({**NO_EXCEPTIONS, "smtpd_client_new_tls_session_rate_limit": "1"})
    c = Client(t.port)
    c.cmd("EHLO client.example")
    assert c.starttls().startswith("220")
    assert c.cmd("EHLO client.example").startswith("250")
    c.cmd("QUIT")
    # The second new session is counted once its handshake is done, and ended.
    c = Client(t.port)
    c.cmd("EHLO client.example")
    assert c.starttls().startswith("220")
    assert t.norm(c.reply()) == (
        "421 4.7.0 HOST Error: too many new TLS sessions from localhost[127.0.0.1]"
    )
    t.wait_warning(
        "New TLS session rate limit exceeded: 2 from localhost[127.0.0.1] for service SERVICE"
    )
    # From then on STARTTLS is refused before any handshake.
    c = Client(t.port)
    c.cmd("EHLO client.example")
    assert c.starttls() == "454 4.7.0 Error: too many new TLS sessions from localhost[127.0.0.1]"
    t.wait_warning("Refusing STARTTLS request from localhost[127.0.0.1] for service SERVICE")
    assert c.cmd("QUIT").startswith("221")


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_mynetworks_are_exempt_by_default(target):
    t = target({"smtpd_client_connection_count_limit": "1", "mynetworks": "127.0.0.0/8"})
    clients = [Client(t.port) for _ in range(3)]
    assert all(c.banner.startswith("220 ") for c in clients)
    for c in clients:
        c.close()


@pytest.mark.parametrize("target", TARGETS, indirect=True)
def test_connection_count_limit_with_implicit_tls(target):
    """With wrappermode the handshake comes first, then the 421, over TLS (Postfix order)."""
    t = target(
        {
            **NO_EXCEPTIONS,
            "smtpd_client_connection_count_limit": "1",
            "smtpd_tls_wrappermode": "yes",
        }
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    first = ctx.wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=15))
    assert first.recv(4096).startswith(b"220 ")
    second = ctx.wrap_socket(socket.create_connection(("127.0.0.1", t.port), timeout=15))
    reply = second.recv(4096).decode()
    assert t.norm(reply) == "421 4.7.0 HOST Error: too many connections from 127.0.0.1\r\n"
    t.wait_warning(
        "Connection concurrency limit exceeded: 2 from localhost[127.0.0.1] for service SERVICE"
    )
    first.close()
    second.close()


def test_sessions_past_maxproc_with_implicit_tls_are_closed_unanswered(postwall_factory, certs):
    server = postwall_factory(
        params={
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_wrappermode": "yes",
            "default_process_limit": "1",
        }
    )
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    first = ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=15))
    assert first.recv(4096).startswith(b"220 ")
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    assert raw.recv(4096) == b""  # no plaintext a TLS client would choke on
    server.wait_log(r"NOQUEUE: reject: CONNECT from \[127\.0\.0\.1\]:\d+: all server ports busy")
    first.close()
    plain = postwall_factory(params={"default_process_limit": "1"})
    c1 = Client(plain.port)
    with socket.create_connection(("127.0.0.1", plain.port), timeout=15) as c2:
        assert c2.recv(4096) == b"421 4.3.2 All server ports are busy\r\n"
    c1.close()
