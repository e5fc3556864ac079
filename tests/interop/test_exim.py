"""Exim 4.96 (Debian's binary) against postwall, in both directions.

Exim is the other widespread Unix MTA, and a different implementation of everything
postwall meets from Postfix: GnuTLS instead of OpenSSL, and a client that sends messages
with BDAT (CHUNKING, RFC 3030) pipelined after MAIL and RCPT whenever the server offers
it, where Postfix's smtp client always uses DATA.

- Exim as the client: STARTTLS required, a client certificate from the test CA, the
  server certificate verified; what postwall logs and delivers, byte for byte.
- Exim as the server: postwall's smtp client relays to it with TLS required.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

import peers

pytestmark = pytest.mark.interop


@pytest.fixture
def exim(certs: peers.TestCerts) -> Iterator[peers.Exim]:
    made = peers.Exim(certs)
    try:
        yield made
    finally:
        made.stop()


def _body(lines: int) -> bytes:
    """Lines that would need dot-stuffing in DATA, 8-bit text, and enough bytes that Exim
    sends more than one BDAT chunk."""
    head = [
        b"From: alice@exim-client.postwall.test",
        b"To: root@postwall.test",
        b"Subject: exim chunks",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
    ]
    body = []
    for n in range(lines):
        if n % 500 == 0:
            body.append(b".")  # alone on its line: the end of a DATA message
        elif n % 7 == 0:
            body.append(b".leading dot %d" % n)
        else:
            body.append(b"line %d: caf\xc3\xa9 " % n + b"x" * 60)
    return b"\n".join([*head, b"", *body]) + b"\n"


def test_exim_sends_to_postwall_with_chunking_and_a_client_certificate(
    postwall_tls: peers.PostwallServer,
    exim: peers.Exim,
) -> None:
    server = postwall_tls
    message = _body(4000)  # ~300 KB
    line = exim.send("alice@exim-client.postwall.test", "root@postwall.test", message, server.port)
    # Exim: TLS with verified server certificate (CV=yes), CHUNKING used (K), our 250.
    assert " X=TLS1.3:" in line and " CV=yes" in line, line
    assert re.search(r" K C=\"250 2\.0\.0 Ok: \d+ bytes queued as (\w+)\"", line), line
    qid = re.search(r"queued as (\w+)", line).group(1)  # type: ignore[union-attr]
    server.wait_log(
        r"smtpd\[\d+\]: Trusted TLS connection established from localhost\[127\.0\.0\.1\]: "
        r"TLSv1\.3 with cipher \S+ \(\d+/\d+ bits\)"
    )
    disconnect = server.wait_log(r"disconnect from localhost\[127\.0\.0\.1\] (.*)").group(1)
    assert re.fullmatch(
        r"ehlo=2 starttls=1 mail=1 rcpt=1 bdat=(\d+) quit=1 commands=\d+", disconnect
    )
    assert int(re.search(r"bdat=(\d+)", disconnect).group(1)) > 1, disconnect  # type: ignore[union-attr]
    server.wait_log(rf"{qid}: to=<root@postwall\.test>, .*status=sent")
    (delivered,) = peers.wait_maildir(server.maildir("root"), 1)
    head, _, body = delivered.partition(b"\n\n")
    assert re.search(
        rb"Received: from exim-client\.postwall\.test \(localhost \[127\.0\.0\.1\]\)\n"
        rb"\t\(using TLSv1\.3 with cipher \S+ \(\d+/\d+ bits\)\n"
        rb"(\t.*\n)*"
        rb"\t\(Client CN \"client\.postwall\.test\", Issuer \"postwall test CA\""
        rb" \(verified OK\)\)\n"
        rb"\tby postwall\.test \(postwall\) with ESMTPS id " + qid.encode(),
        head,
    ), head[:800]
    # BDAT carries the content unstuffed: every line arrives as Exim read it.
    assert body == message.partition(b"\n\n")[2]


def _relay_to(
    exim: peers.Exim,
    factory: Callable[..., peers.PostwallServer],
    certs: peers.TestCerts,
    subject: str,
    **extra: str,
) -> peers.PostwallServer:
    """A postwall relaying to Exim at `encrypt`, and one message sent through it."""
    params = {
        "relayhost": f"[127.0.0.1]:{exim.port}",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_loglevel": "1",
        "smtp_tls_CAfile": str(certs.ca_cert),
        **extra,
    }
    server = factory(params=params)
    message = peers.simple_message(subject, "alice@postwall.test", "bob@exim.test")
    peers.smtp_send("127.0.0.1", server.port, "alice@postwall.test", ["bob@exim.test"], message)
    return server


def test_postwall_relays_to_exim_over_required_tls(
    postwall_factory: Callable[..., peers.PostwallServer],
    certs: peers.TestCerts,
    exim: peers.Exim,
) -> None:
    exim.serve("exim.test")
    server = _relay_to(exim, postwall_factory, certs, "to.exim")
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{exim.port}"
    sent = server.wait_log(
        rf"smtp\[\d+\]: (\w+): to=<bob@exim\.test>, relay={relay}, "
        r"delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2\.0\.0, status=sent "
        r"\(250 OK id=([\w-]+)\)",
        timeout=30,
    )
    server.wait_log(
        rf"smtp\[\d+\]: Trusted TLS connection established to {relay}: "
        r"TLSv1\.3 with cipher"
    )
    exim_id = sent.group(2)
    exim.wait_log(
        rf"{exim_id} <= alice@postwall\.test H=\(postwall\.test\) \[127\.0\.0\.1\] "
        r"P=esmtps X=TLS1\.3:"
    )
    exim.wait_log(rf"{exim_id} => bob <bob@exim\.test> R=local T=to_maildir")
    (delivered,) = peers.wait_maildir(exim.maildir, 1)
    assert b"Subject: to.exim" in delivered
    assert b"Return-path: <alice@postwall.test>" in delivered
    assert b"by postwall.test (postwall) with ESMTP id " + sent.group(1).encode() in delivered


def test_postwall_relays_to_exim_over_implicit_tls(
    postwall_factory: Callable[..., peers.PostwallServer],
    certs: peers.TestCerts,
    exim: peers.Exim,
) -> None:
    """smtp_tls_wrappermode against Exim's tls_on_connect_ports (SMTPS, RFC 8314)."""
    exim.serve("exim.test", implicit_tls=True)
    server = _relay_to(exim, postwall_factory, certs, "to.exim.smtps", smtp_tls_wrappermode="yes")
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{exim.port}"
    sent = server.wait_log(
        rf"smtp\[\d+\]: \w+: to=<bob@exim\.test>, relay={relay}, .*status=sent "
        r"\(250 OK id=([\w-]+)\)",
        timeout=30,
    )
    server.wait_log(rf"Trusted TLS connection established to {relay}: TLSv1\.3")
    exim.wait_log(rf"{sent.group(1)} <= alice@postwall\.test .* P=esmtps X=TLS1\.3:")
    (delivered,) = peers.wait_maildir(exim.maildir, 1)
    assert b"Subject: to.exim.smtps" in delivered
