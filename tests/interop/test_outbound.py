"""Outbound delivery (delivery/smtp.py) to real servers: Postfix from Debian and smtp-sink.

postwall accepts a message on its smtpd and relays it (relayhost or transport_maps) to a
private Postfix instance; each test checks where the message landed, postwall's log lines
(TLS summary, status=, delays) and, where it matters, Postfix's own log of the session.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop

STATUS_RE = (
    r"postfix-postwall/smtp\[\d+\]: {qid}: to=<{rcpt}>, relay={relay}, "
    r"delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn={dsn}, status={status} \((?P<text>.*)\)"
)


def _relay_params(receiver: peers.PostfixInstance, **extra: str) -> dict[str, str]:
    params = {
        "relayhost": f"[127.0.0.1]:{receiver.port}",
        "smtp_tls_loglevel": "1",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "queue_run_delay": "1s",
    }
    params.update(extra)
    return params


def _send(server: peers.PostwallServer, subject: str, rcpt: str = "bob@example.test") -> str:
    """Submit over SMTP; returns postwall's queue id."""
    peers.smtp_send(
        "127.0.0.1",
        server.port,
        "alice@localhost",
        [rcpt],
        peers.simple_message(subject, "alice@localhost", rcpt),
    )
    m = server.wait_log(rf"postfix-postwall/cleanup\[\d+\]: (\w+): message-id=<{subject}@")
    return m.group(1)


def _find(receiver: peers.PostfixInstance, user: str, subject: str) -> bytes:
    def found() -> bytes | None:
        for msg in peers.maildir_messages(receiver.maildir(user)):
            if f"Subject: {subject}\r\n".encode() in msg or f"Subject: {subject}\n".encode() in msg:
                return msg
        return None

    return peers.wait_for(found, 30, f"{subject} at the receiver", detail=receiver._log_tail)


def test_may_delivers_over_starttls_to_postfix(
    postwall_factory: Callable[..., peers.PostwallServer],
    shared_postfix_receiver: peers.PostfixInstance,
) -> None:
    rx = shared_postfix_receiver
    server = postwall_factory(params=_relay_params(rx, smtp_tls_security_level="may"))
    qid = _send(server, "out.may")
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{rx.port}"
    line = server.wait_log(
        STATUS_RE.format(qid=qid, rcpt="bob@example.test", relay=relay, dsn="2.0.0", status="sent")
    )
    assert re.match(r"250 2\.0\.0 Ok: queued as \w+", line.group("text"))
    server.wait_log(
        rf"smtp\[\d+\]: Untrusted TLS connection established to {relay}: TLSv1\.3 with cipher"
    )
    server.wait_log(rf"qmgr\[\d+\]: {qid}: removed")
    msg = _find(rx, "bob", "out.may")
    # postwall's own Received header travels unchanged; Postfix adds its own on top.
    assert re.search(rb"Received: from client\.postwall\.test \(localhost \[127\.0\.0\.1\]\)", msg)
    rx.wait_log(r"Anonymous TLS connection established from localhost\[127\.0\.0\.1\]")


def test_encrypt_to_a_server_without_starttls_defers_then_may_sends_plaintext(
    postwall_factory: Callable[..., peers.PostwallServer],
    smtp_sink_factory: Callable[..., peers.SmtpSink],
) -> None:
    sink = smtp_sink_factory()  # smtp-sink never offers STARTTLS
    params = {
        "relayhost": f"[127.0.0.1]:{sink.port}",
        "smtp_tls_security_level": "encrypt",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "1s",
        "queue_run_delay": "1s",
    }
    server = postwall_factory(params=params)
    qid = _send(server, "out.encrypt", "someone@remote.test")
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}"
    line = server.wait_log(
        STATUS_RE.format(
            qid=qid, rcpt="someone@remote.test", relay=relay, dsn="4.7.4", status="deferred"
        )
    )
    assert line.group("text") == (
        "TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]"
    )
    assert sink.messages() == []
    # The same message goes out in plaintext once the policy allows it (the how-to's relay).
    server.params["smtp_tls_security_level"] = "may"
    server.params["smtp_tls_note_starttls_offer"] = "yes"
    server.write_config()
    server.reload()
    peers.run_postwall("postqueue", "-c", str(server.config_dir), "-f")
    server.wait_log(
        STATUS_RE.format(
            qid=qid, rcpt="someone@remote.test", relay=relay, dsn="2.0.0", status="sent"
        )
    )
    peers.wait_for(lambda: sink.messages(), 10, "the message at smtp-sink")
    assert b"Subject: out.encrypt" in sink.messages()[0]


def test_encrypt_with_a_client_certificate_is_trusted_by_postfix(
    postwall_factory: Callable[..., peers.PostwallServer],
    shared_postfix_receiver: peers.PostfixInstance,
    certs: peers.TestCerts,
) -> None:
    rx = shared_postfix_receiver
    params = _relay_params(
        rx,
        smtp_tls_security_level="encrypt",
        smtp_tls_cert_file=str(certs.client_cert),
        smtp_tls_key_file=str(certs.client_key),
    )
    server = postwall_factory(params=params)
    qid = _send(server, "out.encrypt.cert")
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{rx.port}"
    server.wait_log(
        STATUS_RE.format(qid=qid, rcpt="bob@example.test", relay=relay, dsn="2.0.0", status="sent")
    )
    _find(rx, "bob", "out.encrypt.cert")
    # Postfix verified our client certificate against the test CA.
    rx.wait_log(r"Trusted TLS connection established from localhost\[127\.0\.0\.1\]")


def test_verify_checks_the_server_name(
    postwall_factory: Callable[..., peers.PostwallServer],
    shared_postfix_receiver: peers.PostfixInstance,
    certs: peers.TestCerts,
) -> None:
    """The receiver's certificate names localhost: [localhost] verifies, [127.0.0.1] not."""
    rx = shared_postfix_receiver
    good = postwall_factory(
        params=_relay_params(
            rx,
            relayhost=f"[localhost]:{rx.port}",
            smtp_host_lookup="native",
            smtp_tls_security_level="verify",
            smtp_tls_CAfile=str(certs.ca_cert),
        )
    )
    qid = _send(good, "out.verify.good")
    relay = rf"localhost\[127\.0\.0\.1\]:{rx.port}"
    good.wait_log(
        STATUS_RE.format(qid=qid, rcpt="bob@example.test", relay=relay, dsn="2.0.0", status="sent")
    )
    good.wait_log(rf"Verified TLS connection established to {relay}: TLSv1\.3")
    _find(rx, "bob", "out.verify.good")

    bad = postwall_factory(
        params=_relay_params(
            rx, smtp_tls_security_level="verify", smtp_tls_CAfile=str(certs.ca_cert)
        )
    )
    qid = _send(bad, "out.verify.bad")
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{rx.port}"
    line = bad.wait_log(
        STATUS_RE.format(
            qid=qid, rcpt="bob@example.test", relay=relay, dsn="4.7.5", status="deferred"
        )
    )
    assert line.group("text") == "Server certificate not verified"


def test_mx_lookup_and_secure_level_through_a_real_name_server(
    postwall_factory: Callable[..., peers.PostwallServer],
    postfix_factory: Callable[..., peers.PostfixInstance],
    certs: peers.TestCerts,
    tmp_path: Path,
) -> None:
    """MX records from unbound on loopback, the MX's certificate (mx.postwall.test)
    checked at `secure` against nexthop/dot-nexthop, as Postfix's defaults do."""
    (tmp_path / "dns").mkdir()
    dns = peers.Unbound(tmp_path / "dns", {"postwall.test": peers.POSTWALL_TEST_ZONE}).start()
    try:
        rx = postfix_factory(
            "receiver",
            cert=certs.mx_cert,
            key=certs.mx_key,
            domain="postwall.test",
        )
        server = postwall_factory(
            params={
                # The test default myhostname is in postwall.test; here that domain is remote.
                "myhostname": "relay.example.net",
                "transport_maps": f"inline:{{ postwall.test=smtp:postwall.test:{rx.port} }}",
                "postwall_dns_servers": f"127.0.0.1:{dns.port}",
                "smtp_tls_security_level": "secure",
                "smtp_tls_CAfile": str(certs.ca_cert),
                "smtp_tls_loglevel": "1",
            }
        )
        qid = _send(server, "out.mx.secure", "bob@postwall.test")
        relay = rf"mx\.postwall\.test\[127\.0\.0\.1\]:{rx.port}"
        server.wait_log(
            STATUS_RE.format(
                qid=qid, rcpt="bob@postwall.test", relay=relay, dsn="2.0.0", status="sent"
            )
        )
        server.wait_log(rf"Verified TLS connection established to {relay}")
        _find(rx, "bob", "out.mx.secure")
    finally:
        dns.stop()


def test_client_tls_session_is_resumed_on_the_next_connection(
    postwall_factory: Callable[..., peers.PostwallServer],
    shared_postfix_receiver: peers.PostfixInstance,
) -> None:
    """smtp_tls_session_cache_database set: the second connection resumes the first
    one's session (TLS 1.3 ticket from Postfix), as Postfix's client does."""
    rx = shared_postfix_receiver
    server = postwall_factory(
        params=_relay_params(
            rx,
            smtp_tls_security_level="may",
            smtp_tls_loglevel="2",
            smtp_connection_cache_on_demand="no",
            smtp_tls_session_cache_database="btree:${data_directory}/smtp_scache",
        )
    )
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{rx.port}"
    for n in (1, 2):
        qid = _send(server, f"out.resume.{n}")
        server.wait_log(
            STATUS_RE.format(
                qid=qid, rcpt="bob@example.test", relay=relay, dsn="2.0.0", status="sent"
            )
        )
    log, peer = server.log_text(), f"127.0.0.1[127.0.0.1]:{rx.port}"
    assert log.count(f"{peer}: Reusing old session") == 1
    # Loglevel 2 also names the set-up and the cipher list, per connection.
    assert log.count(f"setting up TLS connection to {peer}") == 2
    assert len(re.findall(rf"\]: {relay}: TLS cipher list \"[A-Za-z0-9:+!@-]+\"", log)) == 2


def test_none_notes_the_starttls_offer_as_postfix(
    postwall_factory: Callable[..., peers.PostwallServer],
    shared_postfix_receiver: peers.PostfixInstance,
) -> None:
    """smtp_tls_note_starttls_offer logs the offers TLS level none leaves unused."""
    rx = shared_postfix_receiver
    server = postwall_factory(
        params=_relay_params(rx, smtp_tls_security_level="none", smtp_tls_note_starttls_offer="yes")
    )
    qid = _send(server, "out.none.offer")
    relay = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{rx.port}"
    server.wait_log(
        STATUS_RE.format(qid=qid, rcpt="bob@example.test", relay=relay, dsn="2.0.0", status="sent")
    )
    assert "postfix-postwall/smtp" in server.wait_log(
        r".*: Host offered STARTTLS: \[127\.0\.0\.1\]$"
    ).group(0)
    assert "TLS connection established to" not in server.log_text()
    msg = _find(rx, "bob", "out.none.offer")
    assert b"(using TLS" not in msg.split(b"\r\n\r\n", 1)[0].split(b"Received:")[1]


def test_a_refusing_primary_mx_is_logged_and_the_backup_takes_the_mail(
    postwall_factory: Callable[..., peers.PostwallServer], tmp_path: Path
) -> None:
    """smtp_bulk_fail's rule: a soft failure at a server that is not the last one to try
    is logged as `QID: reason` (not as a deferral) and the next MX gets the mail; the
    status line names the server that took it."""

    def refuse(c: peers.ScriptedConnection, n: int) -> None:
        c.reply("421 4.3.2 mx1.two.test busy")

    def accept(c: peers.ScriptedConnection, n: int) -> None:
        c.reply("220 mx2.two.test ESMTP")
        c.ehlo("8BITMIME")
        c.accept_mail("250 2.0.0 Ok: queued as BACKUP")

    primary = peers.ScriptedPeer(refuse).start()
    backup = peers.ScriptedPeer(accept, host="127.0.0.2", port=primary.port).start()
    zone = (
        "$ORIGIN two.test.\n$TTL 300\n"
        "@ IN SOA ns.two.test. hostmaster.two.test. 1 3600 600 86400 300\n"
        "@ IN NS ns.two.test.\nns IN A 127.0.0.1\n"
        "@ IN MX 10 mx1.two.test.\n@ IN MX 20 mx2.two.test.\n"
        "mx1 IN A 127.0.0.1\nmx2 IN A 127.0.0.2\n"
    )
    (tmp_path / "dns").mkdir()
    dns = peers.Unbound(tmp_path / "dns", {"two.test": zone}).start()
    try:
        server = postwall_factory(
            params={
                "relayhost": f"two.test:{primary.port}",  # MX lookup, every MX on this port
                "postwall_dns_servers": f"127.0.0.1:{dns.port}",
                "smtp_tls_security_level": "none",
            }
        )
        qid = _send(server, "mx.fallback", "bob@two.test")
        line = server.wait_log(
            STATUS_RE.format(
                qid=qid,
                rcpt="bob@two.test",
                relay=rf"mx2\.two\.test\[127\.0\.0\.2\]:{primary.port}",
                dsn="2.0.0",
                status="sent",
            )
        )
        assert line.group("text") == "250 2.0.0 Ok: queued as BACKUP"
        server.wait_log(
            rf"smtp\[\d+\]: {qid}: host mx1\.two\.test\[127\.0\.0\.1\] refused to talk to me: "
            r"421 4\.3\.2 mx1\.two\.test busy\n"
        )
        assert "status=deferred" not in server.log_text()
        assert backup.connections[0].data, "the backup MX got no message"
    finally:
        dns.stop()
        primary.stop()
        backup.stop()
    assert primary.errors == [] and backup.errors == []
