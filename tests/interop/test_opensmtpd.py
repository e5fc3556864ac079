"""OpenSMTPD 6.8 (Debian 12's binary) against postwall, in both directions.

OpenSMTPD is the third Unix MTA family (OpenBSD's), with its own SMTP client and
server: it relays to postwall with mandatory STARTTLS and over implicit TLS, and
postwall relays to it.

Debian 12's OpenSMTPD cannot complete a TLS handshake as a server: its
privilege-separated RSA/ECDSA key engine fails under OpenSSL 3 ("EVP lib", "missing
private key" in its log), after it has offered STARTTLS. That is what a postwall on the
Internet meets at such a site, and it is where Postfix's rule for opportunistic TLS
matters: fresh mail is deferred, mail that has waited minimal_backoff_time goes in
plaintext to the same server.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop


@pytest.fixture
def opensmtpd(tmp_path: Path) -> Iterator[peers.OpenSMTPD]:
    made = peers.OpenSMTPD(tmp_path / "opensmtpd")
    try:
        yield made
    finally:
        made.stop()


# Lines that need dot-stuffing, a lone dot, 8-bit text: what a relay must carry intact.
BODY = b"first\r\n.leading dot\r\n.\r\n..two dots\r\ncaf\xc3\xa9 cr\xc3\xa8me\r\nlast\r\n"


def _message(subject: str, to: str) -> bytes:
    head = (
        f"From: alice@opensmtpd.test\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return head.encode() + BODY


def _through_opensmtpd(
    opensmtpd: peers.OpenSMTPD, receiver: peers.PostwallServer, subject: str
) -> tuple[str, bytes]:
    """Submit to OpenSMTPD, which relays to `receiver`; the queue id postwall gave it and
    the delivered message."""
    peers.smtp_send(
        "127.0.0.1",
        opensmtpd.port,
        "alice@opensmtpd.test",
        ["root@postwall.test"],
        _message(subject, "root@postwall.test"),
    )
    done = opensmtpd.wait_log(
        r"mta delivery evpid=\w+ from=<alice@opensmtpd\.test> to=<root@postwall\.test> .*"
        r'result="Ok" stat="250 2\.0\.0 Ok: queued as (\w+)"'
    )
    qid = done.group(1)
    receiver.wait_log(rf"{qid}: to=<root@postwall\.test>, relay=local, .*status=sent")
    (delivered,) = peers.wait_maildir(receiver.maildir("root"), 1)
    return qid, delivered


def _assert_intact(delivered: bytes) -> None:
    head, _, body = delivered.partition(b"\n\n")
    assert body == BODY.replace(b"\r\n", b"\n"), body
    assert b"Subject: " in head


def test_opensmtpd_relays_to_postwall_with_mandatory_starttls(
    opensmtpd: peers.OpenSMTPD, postwall_tls: peers.PostwallServer
) -> None:
    receiver = postwall_tls
    opensmtpd.relay_to(receiver.port, "smtp")
    qid, delivered = _through_opensmtpd(opensmtpd, receiver, "opensmtpd.starttls")
    opensmtpd.wait_log(r"mta tls ciphers=TLSv1\.3:")
    receiver.wait_log(
        r"smtpd\[\d+\]: Anonymous TLS connection established from localhost\[127\.0\.0\.1\]: "
        r"TLSv1\.3 with cipher \S+ \(\d+/\d+ bits\)"
    )
    disconnect = receiver.wait_log(r"disconnect from localhost\[127\.0\.0\.1\] (.*)").group(1)
    assert re.fullmatch(r"ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7", disconnect)
    assert re.search(
        rb"Received: from \S+ \(localhost \[127\.0\.0\.1\]\)\n"  # its EHLO: the host name
        rb"\t\(using TLSv1\.3 with cipher \S+ \(\d+/\d+ bits\)\n"
        rb"(\t.*\n)*"
        rb"\t\(Client did not present a certificate\)\n"
        rb"\tby postwall\.test \(postwall\) with ESMTPS id " + qid.encode(),
        delivered,
    ), delivered[:800]
    assert b"by opensmtpd.test (OpenSMTPD) with ESMTP id" in delivered
    _assert_intact(delivered)


def test_opensmtpd_relays_to_postwall_over_implicit_tls(
    opensmtpd: peers.OpenSMTPD, postwall_tls: peers.PostwallServer
) -> None:
    receiver = postwall_tls
    opensmtpd.relay_to(receiver.smtps_port, "smtps")  # type: ignore[attr-defined]
    qid, delivered = _through_opensmtpd(opensmtpd, receiver, "opensmtpd.smtps")
    receiver.wait_log(
        r"Anonymous TLS connection established from localhost\[127\.0\.0\.1\]: TLSv1\.3"
    )
    disconnect = receiver.wait_log(r"disconnect from localhost\[127\.0\.0\.1\] (.*)").group(1)
    assert re.fullmatch(r"ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5", disconnect)
    assert b"with ESMTPS id " + qid.encode() in delivered
    _assert_intact(delivered)


def test_postwall_relays_through_an_opensmtpd_whose_starttls_is_broken(
    postwall_factory: Callable[..., peers.PostwallServer],
    certs: peers.TestCerts,
    opensmtpd: peers.OpenSMTPD,
) -> None:
    """postwall (may) -> OpenSMTPD (STARTTLS offered) -> a second postwall. With Debian
    12's broken OpenSMTPD TLS: deferred first, then sent in plaintext to the same host,
    as Postfix 3.7 does; with a working one, TLS."""
    final = postwall_factory(params={"mydestination": "localhost, remote.test"})
    opensmtpd.serve(certs.server_cert, certs.server_key, final.port)
    sender = postwall_factory(
        params={
            "relayhost": f"[127.0.0.1]:{opensmtpd.port}",
            "smtp_tls_security_level": "may",
            "smtp_tls_loglevel": "1",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "1s",
            "queue_run_delay": "1s",
        }
    )
    message = _message("through.opensmtpd", "root@remote.test")
    peers.smtp_send("127.0.0.1", sender.port, "alice@postwall.test", ["root@remote.test"], message)
    qid = sender.wait_log(r"cleanup\[\d+\]: (\w+): message-id=").group(1)
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{opensmtpd.port}"
    sent = sender.wait_log(
        rf"smtp\[\d+\]: {qid}: to=<root@remote\.test>, relay={relay}, .*dsn=2\.0\.0, "
        r"status=sent \(250 2\.0\.0 (\w+) Message accepted for delivery\)"
    )
    log = sender.log_text()
    if "SSL_connect error to" in log:
        opensmtpd.wait_log(r"smtp disconnected reason=\"io-error: .*SSL routines")
        assert re.search(
            rf"{qid}: to=<root@remote\.test>, relay={relay}, .*dsn=4\.7\.5, status=deferred "
            r"\(Cannot start TLS: handshake failure\)",
            log,
        ), log
        assert re.search(rf"smtp\[\d+\]: {qid}: Cannot start TLS: handshake failure\n", log)
        assert f"TLS connection established to 127.0.0.1[127.0.0.1]:{opensmtpd.port}" not in log
    else:
        assert re.search(rf"TLS connection established to {relay}: TLSv1\.3", log), log
    opensmtpd.wait_log(rf"smtp message msgid={sent.group(1)} size=\d+ nrcpt=1 proto=ESMTP")
    final.wait_log(r"to=<root@remote\.test>, relay=local, .*status=sent")
    (delivered,) = peers.wait_maildir(final.maildir("root"), 1)
    assert b"by opensmtpd.test (OpenSMTPD) with ESMTP id " + sent.group(1).encode() in delivered
    assert b"(postwall) with ESMTP id " + qid.encode() in delivered
    _assert_intact(delivered)
