"""Outbound failure paths against scripted peers (tests/peers.py ScriptedPeer): what a real
server does only on a bad day, and what a hostile one does on purpose.

Every test relays through `relayhost = [127.0.0.1]:PORT` with short retry times, and checks
postwall's log line (Postfix's status= and reason), what the peer received, and where the
message ended up (delivered, deferred and retried, or bounced to the sender's Maildir).
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peers
from peers import ScriptedConnection, ScriptedPeer
from postwall.queue.records import Envelope, Recipient
from postwall.queue.store import QueueStore

STATUS = (
    r"postfix-postwall/smtp\[\d+\]: {qid}: to=<{rcpt}>, relay={relay}, "
    r"(?:conn_use=\d+, )?delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, "
    r"dsn={dsn}, status={status} \((?P<text>.*)\)"
)


@pytest.fixture
def scripted() -> Iterator[Callable[[Callable[[ScriptedConnection, int], None]], ScriptedPeer]]:
    made: list[ScriptedPeer] = []

    def make(script: Callable[[ScriptedConnection, int], None]) -> ScriptedPeer:
        peer = ScriptedPeer(script).start()
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.stop()
    for peer in made:
        assert peer.errors == [], peer.errors


def _server(
    factory: Callable[..., peers.PostwallServer], peer: ScriptedPeer, **extra: str
) -> peers.PostwallServer:
    params = {
        "relayhost": f"[127.0.0.1]:{peer.port}",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "1s",
        "queue_run_delay": "1s",
        "smtp_tls_security_level": "none",
    }
    params.update(extra)
    return factory(params=params)


def _send(server: peers.PostwallServer, subject: str, rcpt: str = "bob@remote.test") -> str:
    peers.smtp_send(
        "127.0.0.1",
        server.port,
        "root@localhost",
        [rcpt],
        peers.simple_message(subject, "root@localhost", rcpt),
    )
    m = server.wait_log(rf"cleanup\[\d+\]: (\w+): message-id=<{re.escape(subject)}@")
    return m.group(1)


def _relay(peer: ScriptedPeer) -> str:
    return rf"127\.0\.0\.1\[127\.0\.0\.1\]:{peer.port}"


def test_4xx_then_success_on_retry(
    postwall_factory: Callable[..., peers.PostwallServer], scripted: Callable[..., ScriptedPeer]
) -> None:
    def script(c: ScriptedConnection, n: int) -> None:
        c.reply("220 scripted.test ESMTP")
        c.ehlo("PIPELINING", "8BITMIME")
        if n == 0:
            assert c.read_line().startswith(b"MAIL FROM:<root@localhost>")
            assert c.read_line() == b"RCPT TO:<bob@remote.test>"
            assert c.read_line() == b"DATA"
            c.reply(
                "250 2.1.0 Ok",
                "450 4.2.0 <bob@remote.test>: Recipient address rejected: Greylisted",
                "554 5.5.1 Error: no valid recipients",
            )
            assert c.read_line() == b"RSET"
            c.reply("250 2.0.0 Ok")
        # The retry may come on this connection (cached after RSET) or a new one.
        c.accept_mail()

    peer = scripted(script)
    server = _server(postwall_factory, peer)
    qid = _send(server, "retry.me")
    line = server.wait_log(
        STATUS.format(
            qid=qid, rcpt="bob@remote.test", relay=_relay(peer), dsn="4.2.0", status="deferred"
        )
    )
    assert line.group("text") == (
        "host 127.0.0.1[127.0.0.1] said: 450 4.2.0 <bob@remote.test>: Recipient address "
        "rejected: Greylisted (in reply to RCPT TO command)"
    )
    server.wait_log(
        STATUS.format(
            qid=qid, rcpt="bob@remote.test", relay=_relay(peer), dsn="2.0.0", status="sent"
        )
    )
    server.wait_log(rf"qmgr\[\d+\]: {qid}: removed")
    bodies = [d for c in peer.connections for d in c.data]
    assert len(bodies) == 1 and b"Subject: retry.me" in bodies[0]


def test_5xx_bounces_to_the_sender_maildir(
    postwall_factory: Callable[..., peers.PostwallServer], scripted: Callable[..., ScriptedPeer]
) -> None:
    def script(c: ScriptedConnection, n: int) -> None:
        c.reply("220 scripted.test ESMTP")
        c.ehlo("8BITMIME")
        assert c.read_line().startswith(b"MAIL FROM:")
        c.reply("250 2.1.0 Ok")
        assert c.read_line().startswith(b"RCPT TO:")
        c.reply("550 5.1.1 <bob@remote.test>: Recipient address rejected: User unknown")
        assert c.read_line() == b"RSET"
        c.reply("250 2.0.0 Ok")
        assert c.read_line() == b"QUIT"

    peer = scripted(script)
    server = _server(postwall_factory, peer)
    qid = _send(server, "bounce.me")
    server.wait_log(
        STATUS.format(
            qid=qid, rcpt="bob@remote.test", relay=_relay(peer), dsn="5.1.1", status="bounced"
        )
    )
    notice = server.wait_log(rf"bounce\[\d+\]: {qid}: sender non-delivery notification: (\w+)")
    server.wait_log(rf"qmgr\[\d+\]: {qid}: removed")
    raw = peers.wait_maildir(server.maildir("root"), 1, detail=server.log_text)[0]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["To"] == "root@localhost"
    assert msg.get_content_type() == "multipart/report"
    status = raw.decode()
    assert "Final-Recipient: rfc822; bob@remote.test" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.test>: Recipient address" in status
    assert "Subject: bounce.me" in status  # the original message comes back (no RET)
    # The notice itself has the null sender: it can never bounce back.
    server.wait_log(rf"qmgr\[\d+\]: {notice.group(1)}: from=<>, size=\d+, nrcpt=1")


def test_connection_dropped_mid_data_is_deferred_and_retried(
    postwall_factory: Callable[..., peers.PostwallServer], scripted: Callable[..., ScriptedPeer]
) -> None:
    def script(c: ScriptedConnection, n: int) -> None:
        c.reply("220 scripted.test ESMTP")
        c.ehlo("8BITMIME")
        if n == 0:
            for expect in (b"MAIL", b"RCPT", b"DATA"):
                assert c.read_line().startswith(expect)
                c.reply("354 go" if expect == b"DATA" else "250 Ok")
            c.sock.recv(10)  # some of the content, then hang up
            return
        c.accept_mail()

    peer = scripted(script)
    server = _server(postwall_factory, peer)
    qid = _send(server, "drop.me")
    line = server.wait_log(
        STATUS.format(
            qid=qid, rcpt="bob@remote.test", relay=_relay(peer), dsn="4.4.2", status="deferred"
        )
    )
    assert line.group("text").startswith("lost connection with 127.0.0.1[127.0.0.1] while ")
    server.wait_log(
        STATUS.format(
            qid=qid, rcpt="bob@remote.test", relay=_relay(peer), dsn="2.0.0", status="sent"
        )
    )
    assert b"Subject: drop.me" in peer.connections[-1].data[0]


def test_peer_that_never_answers_times_out(
    postwall_factory: Callable[..., peers.PostwallServer], scripted: Callable[..., ScriptedPeer]
) -> None:
    def script(c: ScriptedConnection, n: int) -> None:
        time.sleep(6)  # no greeting at all

    peer = scripted(script)
    server = _server(postwall_factory, peer, smtp_helo_timeout="2s")
    qid = _send(server, "silent.peer")
    line = server.wait_log(
        STATUS.format(
            qid=qid, rcpt="bob@remote.test", relay=_relay(peer), dsn="4.4.2", status="deferred"
        )
    )
    assert line.group("text") == (
        "conversation with 127.0.0.1[127.0.0.1] timed out while receiving the initial "
        "server greeting"
    )


def test_starttls_response_injection_is_discarded(
    postwall_factory: Callable[..., peers.PostwallServer],
    scripted: Callable[..., ScriptedPeer],
    certs: peers.TestCerts,
) -> None:
    """CVE-2021-38371 style: plaintext after the 220 to STARTTLS must never be read as the
    reply to the encrypted EHLO, nor reach the TLS layer as a reply."""

    def script(c: ScriptedConnection, n: int) -> None:
        c.reply("220 scripted.test ESMTP")
        c.ehlo("STARTTLS", "8BITMIME")
        assert c.read_line() == b"STARTTLS"
        # The injected replies travel in the same segment as the 220.
        c.send(b"220 2.0.0 Ready to start TLS\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        c.starttls(certs.server_cert, certs.server_key)
        c.ehlo("8BITMIME")
        c.accept_mail()

    peer = scripted(script)
    server = _server(postwall_factory, peer, smtp_tls_security_level="may", smtp_tls_loglevel="1")
    qid = _send(server, "inject.tls")
    server.wait_log(
        STATUS.format(
            qid=qid, rcpt="bob@remote.test", relay=_relay(peer), dsn="2.0.0", status="sent"
        )
    )
    server.wait_log(rf"Untrusted TLS connection established to {_relay(peer)}")
    conn = peer.connections[0]
    assert conn.lines[:3] == [b"EHLO " + conn.lines[0][5:], b"STARTTLS", conn.lines[0]]


def test_454_to_starttls_at_encrypt_defers_without_plaintext(
    postwall_factory: Callable[..., peers.PostwallServer], scripted: Callable[..., ScriptedPeer]
) -> None:
    def script(c: ScriptedConnection, n: int) -> None:
        c.reply("220 scripted.test ESMTP")
        c.ehlo("STARTTLS", "8BITMIME")
        assert c.read_line() == b"STARTTLS"
        c.reply("454 4.7.0 TLS not available due to local problem")
        line = c.read_line()
        assert line == b"QUIT", line  # never MAIL FROM in plaintext

    peer = scripted(script)
    server = _server(postwall_factory, peer, smtp_tls_security_level="encrypt")
    qid = _send(server, "no.tls")
    line = server.wait_log(
        STATUS.format(
            qid=qid, rcpt="bob@remote.test", relay=_relay(peer), dsn="4.7.0", status="deferred"
        )
    )
    assert line.group("text") == (
        "TLS is required, but host 127.0.0.1[127.0.0.1] refused to start TLS: "
        "454 4.7.0 TLS not available due to local problem"
    )


def _deferred_then_sent(
    server: peers.PostwallServer, peer: ScriptedPeer, qid: str, dsn: str
) -> str:
    """Wait for a first attempt deferred with `dsn`, then for delivery, both through
    `peer`; the deferral's reason."""
    relay = _relay(peer)
    first = server.wait_log(
        STATUS.format(qid=qid, rcpt="bob@remote.test", relay=relay, dsn=dsn, status="deferred")
    )
    server.wait_log(
        STATUS.format(qid=qid, rcpt="bob@remote.test", relay=relay, dsn="2.0.0", status="sent")
    )
    return first.group("text")


def _broken_starttls(c: ScriptedConnection, *extensions: str) -> None:
    """Offer STARTTLS, accept it, then answer the ClientHello with bytes that are not TLS."""
    c.reply("220 scripted.test ESMTP")
    c.ehlo("STARTTLS", *extensions, "8BITMIME")
    assert c.read_line() == b"STARTTLS"
    c.reply("220 2.0.0 Ready to start TLS")
    c.sock.recv(4096)
    c.send(b"this is not TLS\r\n")


def test_a_failed_handshake_at_may_defers_fresh_mail_then_retries_in_plaintext(
    postwall_factory: Callable[..., peers.PostwallServer], scripted: Callable[..., ScriptedPeer]
) -> None:
    """Postfix's rule (PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE): a message that has
    not yet waited minimal_backoff_time is deferred, not sent in plaintext, so a man in
    the middle who breaks handshakes does not get fresh mail in clear; a later attempt
    goes to the same server without STARTTLS. Lines as Postfix 3.7 logs them
    (tests/golden/report/postfix-outbound-handshake-fallback.txt)."""

    def script(c: ScriptedConnection, n: int) -> None:
        if n < 2:
            _broken_starttls(c)
            return
        c.reply("220 scripted.test ESMTP")
        c.ehlo("STARTTLS", "8BITMIME")
        c.accept_mail()

    peer = scripted(script)
    server = _server(postwall_factory, peer, smtp_tls_security_level="may")
    qid = _send(server, "broken.tls")
    relay = _relay(peer)
    assert _deferred_then_sent(server, peer, qid, "4.7.5") == "Cannot start TLS: handshake failure"
    log = server.log_text()
    assert len(re.findall(rf"smtp\[\d+\]: SSL_connect error to {relay}: -1\n", log)) == 2
    assert re.search(r"smtp\[\d+\]: warning: TLS library problem: error:", log)
    assert re.search(rf"smtp\[\d+\]: {qid}: Cannot start TLS: handshake failure\n", log)
    assert "TLS handshake with" not in log
    assert len(peer.connections) == 3
    assert peer.connections[2].lines[1].startswith(b"MAIL FROM:<root@localhost>")


def test_a_tls_session_that_breaks_after_the_handshake_is_retried_in_plaintext_later(
    postwall_factory: Callable[..., peers.PostwallServer],
    scripted: Callable[..., ScriptedPeer],
    certs: peers.TestCerts,
) -> None:
    """Postfix's PLAINTEXT_FALLBACK_OK_AFTER_TLS_SESSION_FAILURE: the handshake works,
    then the server hangs up (a broken TLS middlebox); fresh mail is deferred, mail that
    waited minimal_backoff_time goes to the same server without STARTTLS."""

    def script(c: ScriptedConnection, n: int) -> None:
        c.reply("220 scripted.test ESMTP")
        c.ehlo("STARTTLS", "8BITMIME")
        if n < 2:
            assert c.read_line() == b"STARTTLS"
            c.reply("220 2.0.0 Ready to start TLS")
            c.starttls(certs.server_cert, certs.server_key)
            return  # hang up before the EHLO that follows the handshake
        c.accept_mail()

    peer = scripted(script)
    server = _server(postwall_factory, peer, smtp_tls_security_level="may")
    qid = _send(server, "broken.session")
    assert _deferred_then_sent(server, peer, qid, "4.4.2") == (
        "lost connection with 127.0.0.1[127.0.0.1] while performing the EHLO handshake"
    )
    assert re.search(
        rf"smtp\[\d+\]: {qid}: lost connection with 127\.0\.0\.1\[127\.0\.0\.1\] while "
        r"performing the EHLO handshake\n",
        server.log_text(),
    )
    assert len(peer.connections) == 3
    assert peer.connections[2].lines[1].startswith(b"MAIL FROM:<root@localhost>")


def test_no_plaintext_fallback_when_the_server_has_sasl_credentials(
    postwall_factory: Callable[..., peers.PostwallServer], scripted: Callable[..., ScriptedPeer]
) -> None:
    """With a password for the server, a broken handshake never turns into a plaintext
    session (the password would travel in clear): deferred on every attempt."""

    def script(c: ScriptedConnection, n: int) -> None:
        _broken_starttls(c, "AUTH PLAIN LOGIN")

    peer = scripted(script)
    server = _server(
        postwall_factory,
        peer,
        smtp_tls_security_level="may",
        smtp_sasl_auth_enable="yes",
        smtp_sasl_password_maps="static:alice:secret",
        smtp_sasl_security_options="noanonymous",
    )
    qid = _send(server, "broken.tls.sasl")
    deferred = STATUS.format(
        qid=qid, rcpt="bob@remote.test", relay=_relay(peer), dsn="4.7.5", status="deferred"
    )
    server.wait_log(deferred)
    deadline = time.monotonic() + 30
    while len(re.findall(deferred, server.log_text())) < 3:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.2)
    assert all(c.lines[1:2] == [b"STARTTLS"] for c in peer.connections)
    assert f"{qid}: Cannot start TLS" not in server.log_text()


def test_bare_newlines_in_a_queued_message_never_reach_the_wire(
    postwall_factory: Callable[..., peers.PostwallServer],
    scripted: Callable[..., ScriptedPeer],
    tmp_path: Path,
) -> None:
    """A queue file with bare LF and CR (as a buggy injector could leave) goes out with
    CRLF only, so no receiver can be made to see `<LF>.<LF>` as the end of data."""

    def script(c: ScriptedConnection, n: int) -> None:
        c.reply("220 scripted.test ESMTP")
        c.ehlo("8BITMIME")
        c.accept_mail()

    peer = scripted(script)
    server = _server(postwall_factory, peer, queue_run_delay="1s")
    server.stop()
    store = QueueStore(server.queue_dir)
    env = Envelope(
        queue_id=store.new_queue_id(),
        sender="root@localhost",
        recipients=[Recipient("bob@remote.test")],
        arrival_time=time.time(),
        client_name="localhost",
        client_addr="127.0.0.1",
    )
    content = (
        b"Subject: smuggle\r\n\r\nline\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\n"
        b"more\r.\rend\r\n"
    )
    store.commit_sync(env, content)
    store.close()
    server.start()
    server.wait_log(
        STATUS.format(
            qid=env.queue_id, rcpt="bob@remote.test", relay=_relay(peer), dsn="2.0.0", status="sent"
        )
    )
    body = peer.connections[0].data[0]
    assert re.search(rb"[^\r]\n", body) is None and re.search(rb"\r[^\n]", body) is None
    assert body.count(b"\r\n.\r\n") == 1 and body.endswith(b"\r\n.\r\n")


def test_delay_warning_then_expiry_returns_the_message(
    postwall_factory: Callable[..., peers.PostwallServer], scripted: Callable[..., ScriptedPeer]
) -> None:
    """delay_warning_time sends one "still being retried" notice; past
    maximal_queue_lifetime the message is returned with the last reason and removed."""

    def script(c: ScriptedConnection, n: int) -> None:
        c.reply("421 4.3.2 scripted.test Service not available, try later")

    peer = scripted(script)
    server = _server(postwall_factory, peer, delay_warning_time="2s", maximal_queue_lifetime="6s")
    qid = _send(server, "late.one")
    server.wait_log(rf"bounce\[\d+\]: {qid}: sender delay notification: \w+")
    server.wait_log(
        rf"qmgr\[\d+\]: {qid}: from=<root@localhost>, status=expired, returned to sender"
    )
    server.wait_log(rf"bounce\[\d+\]: {qid}: sender non-delivery notification: \w+")
    server.wait_log(rf"qmgr\[\d+\]: {qid}: removed")
    notices = peers.wait_maildir(server.maildir("root"), 2, detail=server.log_text)
    parsed = [email.message_from_bytes(n, policy=email.policy.default) for n in notices]
    subjects = sorted(str(m["Subject"]) for m in parsed)
    assert subjects == ["Delayed Mail (still being retried)", "Undelivered Mail Returned to Sender"]
    text = re.sub(r"\r?\n[ \t]+", " ", b"\n".join(notices).decode())  # unfold
    assert "Action: delayed" in text and "Action: failed" in text
    assert "refused to talk to me: 421 4.3.2 scripted.test Service not available" in text
    assert len(re.findall(rf"{qid}: sender delay notification", server.log_text())) == 1


def test_postqueue_s_and_etrn_deliver_one_site_now(
    postwall_factory: Callable[..., peers.PostwallServer], scripted: Callable[..., ScriptedPeer]
) -> None:
    """With an hour of backoff, only `postqueue -s site` or ETRN brings the mail back."""
    refused = {"left": 1}

    def script(c: ScriptedConnection, n: int) -> None:
        if refused["left"] > 0:
            refused["left"] -= 1
            c.reply("421 4.3.2 scripted.test busy")
            return
        c.reply("220 scripted.test ESMTP")
        c.ehlo("8BITMIME")
        c.accept_mail()

    peer = scripted(script)
    server = _server(
        postwall_factory,
        peer,
        minimal_backoff_time="3600s",
        maximal_backoff_time="4000s",
        smtp_connection_cache_on_demand="no",  # each attempt is a new session
        fast_flush_domains="remote.test",  # ETRN is for these sites only
    )
    deferred = STATUS.format(
        qid="{qid}", rcpt="bob@remote.test", relay=_relay(peer), dsn="4.3.2", status="deferred"
    )
    sent = STATUS.format(
        qid="{qid}", rcpt="bob@remote.test", relay=_relay(peer), dsn="2.0.0", status="sent"
    )
    first = _send(server, "site.flush")
    server.wait_log(deferred.format(qid=first))
    res = peers.run_postwall("postqueue", "-c", str(server.config_dir), "-s", "remote.test")
    assert (res.returncode, res.stderr) == (0, "")
    server.wait_log(sent.format(qid=first))

    refused["left"] = 1
    second = _send(server, "etrn.flush")
    server.wait_log(deferred.format(qid=second))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        s.ehlo("client.postwall.test")
        # Postfix's flush service serves fast_flush_domains only ($relay_domains).
        assert s.docmd("ETRN", "@other.test") == (459, b"<other.test>: service unavailable")
        assert s.docmd("ETRN", "remote.test") == (250, b"Queuing started")
    server.wait_log(sent.format(qid=second))
    server.wait_log(
        r"smtpd\[\d+\]: warning: reject: ETRN other\.test\.\.\. from localhost\[127\.0\.0\.1\]"
    )
