"""A real postwall server on 127.0.0.1, driven with smtplib and raw sockets.

Each test starts `python -m postwall start -c DIR` (tests/peers.PostwallServer), talks
SMTP to it and checks the replies, the Maildir and the mail log.
"""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest

import peers


def _client_ctx(certs: peers.TestCerts | None = None, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if certs is not None and cert == "client":
        ctx.load_cert_chain(certs.client_cert, certs.client_key)
    if certs is not None and cert == "selfsigned":
        ctx.load_cert_chain(certs.selfsigned_cert, certs.selfsigned_key)
    return ctx


def _tls_params(certs: peers.TestCerts, **extra: str) -> dict[str, str]:
    params = {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(certs.server_cert),
        "smtpd_tls_key_file": str(certs.server_key),
        "smtpd_tls_CAfile": str(certs.ca_cert),
        "smtpd_tls_ask_ccert": "yes",
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_received_header": "yes",
    }
    params.update(extra)
    return params


class Raw:
    """A line-level SMTP client on a plain socket, for what smtplib will not send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.banner = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

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

    def replies(self, n: int) -> list[str]:
        return [self.reply() for _ in range(n)]

    def close(self) -> None:
        self.sock.close()


def test_mail_over_starttls_lands_in_maildir_with_received_header(postwall_factory, certs):
    server = postwall_factory(params=_tls_params(certs))
    msg = peers.simple_message("tls one", "alice@example.org", "root@localhost")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        code, banner = s.ehlo("client.example")
        assert code == 250
        assert b"STARTTLS" in banner
        s.starttls(context=_client_ctx(certs, "client"))
        code, features = s.ehlo("client.example")
        assert b"STARTTLS" not in features  # RFC 3207 4.2: not offered again
        refused = s.sendmail("alice@example.org", ["root@localhost"], msg)
        assert refused == {}
    [delivered] = peers.wait_maildir(server.maildir("root"))
    head = delivered.split(b"\n\n", 1)[0].decode()
    assert head.startswith("Return-Path: <alice@example.org>\n")
    assert "Delivered-To: root@localhost" in head
    assert re.search(
        r"Received: from client\.example \(\S+ \[127\.0\.0\.1\]\)\n"
        r"\t\(using TLSv1\.3 with cipher \S+ \(\d+/\d+ bits\)\n",
        head,
    ), head
    assert '(Client CN "client.postwall.test", Issuer "postwall test CA" (verified OK))' in head
    assert re.search(r"by postwall\.test \(\w+\) with ESMTPS id [0-9A-F]{10,}\n", head), head
    log = server.wait_log(r"\]: [0-9A-F]+: removed$").string
    assert "setting up TLS connection" not in log  # Postfix 3.7 logs it from loglevel 2 on
    qid = re.search(r"\]: ([0-9A-F]+): client=", log).group(1)
    order = [
        r"connect from \S+\[127\.0\.0\.1\]",
        r"Trusted TLS connection established from \S+: TLSv1\.3 with cipher",
        rf"{qid}: client=",
        rf"cleanup\[\d+\]: {qid}: message-id=<tls\.one@postwall\.test>",
        rf"qmgr\[\d+\]: {qid}: from=<alice@example\.org>, size=\d+, nrcpt=1 \(queue active\)",
        rf"local\[\d+\]: {qid}: to=<root@localhost>, relay=local, delay=[\d.]+, "
        r"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn=2\.0\.0, status=sent \(delivered to maildir\)",
        rf"{qid}: removed",
    ]
    pos = 0
    for pattern in order:
        m = re.compile(pattern).search(log, pos)
        assert m, f"/{pattern}/ not found in order in:\n{log}"
        pos = m.end()
    server.wait_log(r"disconnect from \S+ ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7")


def test_untrusted_and_anonymous_clients(postwall_factory, certs):
    server = postwall_factory(params=_tls_params(certs))
    for cert in ("selfsigned", None):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
            s.starttls(context=_client_ctx(certs, cert))
            s.ehlo("x")
            assert s.noop()[0] == 250
    server.wait_log(r"Untrusted TLS connection established from")
    server.wait_log(r"Anonymous TLS connection established from")


def test_relay_denied_outside_mynetworks(postwall_factory):
    # 127.0.0.1 is not in mynetworks here, so it is an outside client.
    server = postwall_factory(params={"mynetworks": "127.0.0.2/32"})
    c = Raw(server.port)
    c.send(b"EHLO outside.example\r\nMAIL FROM:<a@example.org>\r\n")
    c.replies(2)
    c.send(b"RCPT TO:<victim@foreign.example>\r\n")
    assert c.reply() == "454 4.7.1 <victim@foreign.example>: Relay access denied"
    c.send(b"RCPT TO:<root@localhost>\r\n")
    assert c.reply() == "250 2.1.5 Ok"
    # Lookups fold case, as Postfix's tables (dict_unix included) do.
    c.send(b"RCPT TO:<ROOT@LocalHost>\r\n")
    assert c.reply() == "250 2.1.5 Ok"
    c.send(b"RCPT TO:<nosuchuser@localhost>\r\n")
    assert c.reply() == (
        "550 5.1.1 <nosuchuser@localhost>: Recipient address rejected: "
        "User unknown in local recipient table"
    )
    c.send(b"QUIT\r\n")
    assert c.reply() == "221 2.0.0 Bye"
    server.wait_log(
        r"NOQUEUE: reject: RCPT from \S+\[127\.0\.0\.1\]: 454 4\.7\.1 <victim@foreign\.example>: "
        r"Relay access denied; from=<a@example\.org> to=<victim@foreign\.example> "
        r"proto=ESMTP helo=<outside\.example>"
    )


def test_rejects_after_rset_name_no_queue_id(postwall_factory):
    # The id shown at the first accepted RCPT belongs to that transaction only: after RSET
    # Postfix has removed its queue file and logs NOQUEUE (fail2ban and pflogsumm key on it).
    server = postwall_factory(
        params={"smtpd_sender_restrictions": "reject_non_fqdn_sender", "smtpd_delay_reject": "no"}
    )
    c = Raw(server.port)
    c.send(b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\n")
    c.replies(3)
    qid = server.wait_log(r"(\w+): client=").group(1)
    c.send(b"RSET\r\n")
    assert c.reply() == "250 2.0.0 Ok"
    c.send(b"MAIL FROM:<joe>\r\n")
    assert c.reply() == "504 5.5.2 <joe>: Sender address rejected: need fully-qualified address"
    c.send(b"QUIT\r\n")
    assert c.reply() == "221 2.0.0 Bye"
    line = server.wait_log(r"\S+: reject: MAIL from \S+: 504 5\.5\.2 <joe>.*").group(0)
    assert line.startswith("NOQUEUE: reject: MAIL"), (qid, line)


def test_encrypt_level_requires_starttls(postwall_factory, certs):
    server = postwall_factory(params=_tls_params(certs, smtpd_tls_security_level="encrypt"))
    c = Raw(server.port)
    c.send(b"EHLO x\r\n")
    assert "250-STARTTLS" in c.reply()
    c.send(b"MAIL FROM:<a@example.org>\r\n")
    assert c.reply() == "530 5.7.0 Must issue a STARTTLS command first"


def test_size_limits(postwall_factory):
    server = postwall_factory(params={"message_size_limit": "2000"})
    c = Raw(server.port)
    c.send(b"EHLO x\r\nMAIL FROM:<a@example.org> SIZE=5000\r\n")
    assert "SIZE 2000" in c.reply()
    assert c.reply() == "552 5.3.4 Message size exceeds fixed limit"
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
    assert c.replies(3)[2].startswith("354 ")
    c.send(b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" * 1 + (b"y" * 78 + b"\r\n") * 60)
    c.send(b".\r\nNOOP\r\n")
    assert c.reply() == "552 5.3.4 Error: message file too big"
    assert c.reply() == "250 2.0.0 Ok"  # the dialogue stays in step
    c.close()
    time.sleep(0.5)
    assert not list((server.config_dir / "queue" / "incoming").iterdir())
    assert not (server.maildir("root") / "new").exists()


def test_starttls_discards_injected_plaintext(postwall_factory, certs):
    """CVE-2011-0411: commands sent with STARTTLS in one packet must not run after TLS."""
    server = postwall_factory(params=_tls_params(certs))
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"EHLO x\r\n")
    while f.readline()[3:4] == b"-":
        pass
    sock.sendall(b"STARTTLS\r\nRSET\r\nMAIL FROM:<injected@evil.example>\r\n")
    assert f.readline() == b"220 2.0.0 Ready to start TLS\r\n"
    tls = _client_ctx().wrap_socket(sock)
    tls.sendall(b"NOOP\r\n")
    # Had the injected commands run, their replies would come first.
    assert tls.recv(1024) == b"250 2.0.0 Ok\r\n"
    tls.close()
    server.wait_log(r"disconnect from \S+ ehlo=1 starttls=1 noop=1 commands=3")


@pytest.mark.parametrize(
    "smuggle",
    [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\n.\r"],
    ids=["LF.LF", "LF.CRLF", "CR.CR", "CRLF.LF", "LF.CR"],
)
def test_smuggled_end_of_data_is_content(postwall_factory, smuggle):
    server = postwall_factory()
    c = Raw(server.port)
    c.send(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
    c.replies(4)
    c.send(
        b"Subject: outer\r\n\r\nbody"
        + smuggle
        + b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
    )
    first = c.reply()
    assert first.startswith("250 2.0.0 Ok: queued as "), first
    c.send(b"QUIT\r\n")
    # Whatever follows the real end of data is read as commands; nothing else is queued.
    tail = c.reply()
    assert tail.startswith("221") or tail.startswith("5"), tail
    msgs = peers.wait_maildir(server.maildir("root"), 1)
    time.sleep(1)
    assert len(peers.maildir_messages(server.maildir("root"))) == 1
    assert b"Subject: smuggled" in msgs[0]  # the would-be second message is body text


def test_pipelined_session_in_one_write(postwall_factory):
    server = postwall_factory()
    c = Raw(server.port)
    c.send(
        b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\n"
        b"RCPT TO:<nosuch@localhost>\r\nDATA\r\nSubject: p\r\n\r\nhi\r\n.\r\n"
        b"MAIL FROM:<b@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n"
        b"Subject: q\r\n\r\nho\r\n.\r\nQUIT\r\n"
    )
    got = c.replies(11)
    assert got[0].startswith("250-")
    assert got[1:5] == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        got[3],
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    assert got[3].startswith("550 5.1.1 ")
    assert got[5].startswith("250 2.0.0 Ok: queued as ")
    assert got[6:9] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    assert got[9].startswith("250 2.0.0 Ok: queued as ")
    assert got[10] == "221 2.0.0 Bye"
    assert len(peers.wait_maildir(server.maildir("root"), 2)) == 2


def test_bdat_chunking(postwall_factory):
    server = postwall_factory()
    c = Raw(server.port)
    c.send(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\n")
    c.replies(3)
    c.send(b"BDAT 20\r\nSubject: chunk\r\n\r\nab")
    assert c.reply() == "250 2.0.0 Ok: 20 bytes"
    c.send(b"BDAT 4 LAST\r\ncd\r\n")
    assert c.reply().startswith("250 2.0.0 Ok: 24 bytes queued as ")
    [msg] = peers.wait_maildir(server.maildir("root"))
    assert msg.endswith(b"\n\nabcd\n")


@pytest.mark.parametrize(
    "params",
    [{"message_size_limit": str(10**18)}, {"queue_minfree": str(10**18)}],
    ids=["1.5 x message_size_limit", "queue_minfree"],
)
def test_mail_refused_when_the_queue_has_too_little_space(postwall_factory, params):
    # Postfix's smtpd_check_queue(): more than any disk holds is needed, so MAIL gets 452
    # 4.3.1, the reject line and the warning; nothing is queued, the session goes on.
    server = postwall_factory(params=params)
    c = Raw(server.port)
    c.send(b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert c.replies(2)[1] == "452 4.3.1 Insufficient system storage"
    c.send(b"RCPT TO:<root@localhost>\r\n")
    assert c.reply() == "503 5.5.1 Error: need MAIL command"
    c.send(b"QUIT\r\n")
    assert c.reply() == "221 2.0.0 Bye"
    server.wait_log(
        r"NOQUEUE: reject: MAIL from \S+\[127\.0\.0\.1\]: 452 4\.3\.1 Insufficient system "
        r"storage; proto=ESMTP helo=<client\.example>\n"
        r".*warning: not enough free space in mail queue: \d+ bytes < 1\.5\*message size limit"
    )


def test_client_gone_after_starttls_logs_as_postfix_at_loglevel_2(postwall_factory, certs):
    server = postwall_factory(params=_tls_params(certs, smtpd_tls_loglevel="2"))
    c = Raw(server.port)
    c.send(b"EHLO x\r\nSTARTTLS\r\n")
    assert c.replies(2)[1] == "220 2.0.0 Ready to start TLS"
    c.close()
    # The reference Postfix 3.7's lines for this session, in its order.
    server.wait_log(
        r"setting up TLS connection from (\S+\[127\.0\.0\.1\])\n"
        r".*: \1: TLS cipher list \"[^\"]+\"\n"
        r".*: SSL_accept:before SSL initialization\n"
        r".*: SSL_accept:error in before SSL initialization\n"
        r".*: SSL_accept error from \1: lost connection\n"
        r".*: lost connection after STARTTLS from \1\n"
    )


def test_client_sni_is_not_in_the_summary_line(postwall_factory, certs):
    # smtplib sends the host name as SNI. Postfix writes "to NAME" only for a name its
    # tls_server_sni_maps accepted; without SNI maps the summary names the client alone.
    server = postwall_factory(params=_tls_params(certs))
    with smtplib.SMTP("localhost", server.port, timeout=10) as s:
        s.starttls(context=_client_ctx())
        assert s.noop()[0] == 250
    line = server.wait_log(r"Anonymous TLS connection established from [^:]+: TLSv1\.3").group(0)
    assert " to localhost" not in line, line


def test_failed_handshake_and_garbage_leave_server_serving(postwall_factory, certs):
    server = postwall_factory(params=_tls_params(certs))
    c = Raw(server.port)
    c.send(b"EHLO x\r\nSTARTTLS\r\n")
    c.replies(2)
    c.send(b"\x16\x03\x01\x00\x05garbage-that-is-not-tls" * 3)
    c.sock.settimeout(5)
    with pytest.raises((ConnectionError, OSError)):
        c.reply()
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    raw.sendall(bytes(range(256)) * 8)
    raw.close()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        assert s.noop()[0] == 250
    # Postfix's three lines, in its order: the failed accept, OpenSSL's error with its
    # packed code, and the end of the session as a lost connection after STARTTLS.
    server.wait_log(
        r"SSL_accept error from (\S+\[127\.0\.0\.1\]): -1\n"
        r".*warning: TLS library problem: error:[0-9A-F]{8}:SSL routines::[a-z ]+\n"
        r".*: lost connection after STARTTLS from \1\n"
    )
    assert "Traceback" not in server.stderr_text()


def test_client_disconnect_mid_data_queues_nothing(postwall_factory):
    server = postwall_factory()
    c = Raw(server.port)
    c.send(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
    c.replies(4)
    c.send(b"Subject: cut\r\n\r\nhalf a mess")
    c.close()
    server.wait_log(r"lost connection after DATA \(\d+ bytes\) from ")
    assert not list((server.config_dir / "queue" / "incoming").iterdir())


def test_implicit_tls_service(postwall_factory, certs):
    port = peers.free_port()
    server = postwall_factory(
        params=_tls_params(certs),
        extra_services=[f"127.0.0.1:{port} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes"],
    )
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=_client_ctx()) as s:
        code, features = s.ehlo("x")
        assert code == 250
        assert b"STARTTLS" not in features
        s.sendmail("a@example.org", ["root@localhost"], b"Subject: w\r\n\r\nwrapped\r\n")
    [msg] = peers.wait_maildir(server.maildir("root"))
    assert b"with ESMTPS id" in msg
    assert server.port  # the STARTTLS service runs beside it


def test_sighup_reloads_without_dropping_sessions(postwall_factory):
    server = postwall_factory(params={"smtpd_banner": "$myhostname ESMTP first"})
    open_session = Raw(server.port)
    assert open_session.banner == "220 postwall.test ESMTP first"
    open_session.send(b"EHLO x\r\n")
    open_session.reply()
    main_cf = server.config_dir / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("ESMTP first", "ESMTP second"))
    import os

    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"master\[\d+\]: reload")
    assert Raw(server.port).banner == "220 postwall.test ESMTP second"
    open_session.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
    open_session.replies(3)
    open_session.send(b"Subject: across reload\r\n\r\nstill here\r\n.\r\n")
    assert open_session.reply().startswith("250 2.0.0 Ok: queued as")
    peers.wait_maildir(server.maildir("root"))


def test_bad_configuration_names_file_and_line(tmp_path: Path):
    import subprocess
    import sys

    (tmp_path / "main.cf").write_text("myhostname = x.example\nsmtpd_timeout = 5x\n")
    (tmp_path / "master.cf").write_text("127.0.0.1:2 inet n - n - - smtpd\n")
    proc = subprocess.run(
        [sys.executable, "-m", "postwall", "start", "-c", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**__import__("os").environ, "PYTHONPATH": str(peers.SRC)},
    )
    assert proc.returncode != 0
    assert f"{tmp_path}/main.cf:2: smtpd_timeout" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dsn_parameters_are_kept_with_the_message(postwall_factory):
    """RET, ENVID, NOTIFY and ORCPT survive into the queue file (RFC 3461)."""
    from postwall.queue.store import QueueStore

    # Nothing listens at the relay: the message is deferred and stays queued.
    server = postwall_factory(params={"relayhost": f"[127.0.0.1]:{peers.free_port()}"})
    c = Raw(server.port)
    c.send(
        b"EHLO x\r\nMAIL FROM:<a@example.org> RET=HDRS ENVID=QQ+2Bx\r\n"
        b"RCPT TO:<far@remote.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;far+2Bx@remote.example\r\n"
        b"DATA\r\n"
    )
    assert c.replies(4)[3].startswith("354")
    c.send(b"Subject: dsn\r\n\r\nkept\r\n.\r\n")
    qid = c.reply().rsplit(" ", 1)[1]
    server.wait_log(rf"{qid}: to=<far@remote\.example>, relay=none, .*status=deferred")
    store = QueueStore(server.config_dir / "queue")
    with store.load_sync(qid) as msg:
        env = msg.envelope
    assert (env.ret, env.envid) == ("HDRS", "QQ+x")
    [rcpt] = env.recipients
    assert rcpt.notify == frozenset({"SUCCESS", "DELAY"})
    assert rcpt.orcpt == "rfc822;far+x@remote.example"


def test_sighup_reloads_certificates(postwall_factory, certs):
    import os

    server = postwall_factory(params=_tls_params(certs))

    def presented_cn() -> str:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
            s.starttls(context=_client_ctx())
            der = s.sock.getpeercert(binary_form=True)
        from cryptography import x509

        cert = x509.load_der_x509_certificate(der)
        return cert.subject.rfc4514_string()

    assert presented_cn() == "CN=localhost"
    main_cf = server.config_dir / "main.cf"
    text = main_cf.read_text()
    text = text.replace(str(certs.server_cert), str(certs.mx_cert))
    main_cf.write_text(text.replace(str(certs.server_key), str(certs.mx_key)))
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"master\[\d+\]: reload")
    assert presented_cn() == f"CN={certs.MX_NAME}"


def test_aliases_and_vrfy(postwall_factory):
    """postmaster -> root through alias_maps (RFC 5321 4.5.1), VRFY as Postfix answers it."""
    server = postwall_factory(
        params={"alias_maps": "texthash:$config_directory/aliases"}, start=False
    )
    (server.config_dir / "aliases").write_text("postmaster: root\nfwd: a@example.net\n")
    server.start()
    c = Raw(server.port)
    c.send(b"EHLO x\r\nVRFY nosuch@localhost\r\nVRFY root\r\n")
    c.reply()
    assert c.reply() == (
        "550 5.1.1 <nosuch@localhost>: Recipient address rejected: "
        "User unknown in local recipient table"
    )
    assert c.reply() == "252 2.0.0 root"
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<fwd@localhost>\r\n")
    assert c.replies(3)[1:] == ["250 2.1.5 Ok", "250 2.1.5 Ok"]
    c.send(b"DATA\r\n")
    c.reply()
    c.send(b"Subject: to the postmaster\r\n\r\nhello\r\n.\r\n")
    qid = c.reply().rsplit(" ", 1)[1]
    [msg] = peers.wait_maildir(server.maildir("root"))
    assert b"X-Original-To: postmaster@postwall.test\nDelivered-To: root@postwall.test\n" in msg
    # Forwarding is not supported yet: the recipient waits in the queue, with the reason.
    server.wait_log(rf"{qid}: to=<fwd@localhost>, .*status=deferred \(alias fwd: forwarding")


def test_req_ccert_on_an_encrypt_service_from_master_cf(postwall_factory, certs):
    """A second port from master.cf with -o overrides: encrypt + required client cert."""
    port = peers.free_port()
    server = postwall_factory(
        params=_tls_params(certs),
        extra_services=[
            f"127.0.0.1:{port} inet n - n - - smtpd -o smtpd_tls_security_level=encrypt "
            "-o smtpd_tls_req_ccert=yes"
        ],
    )
    # The main port still takes mail without TLS.
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as s:
        assert s.mail("a@example.org")[0] == 250
    for cert, ok in (("client", True), ("selfsigned", False), (None, False)):
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo("x")
            assert s.mail("a@example.org")[0] == 530
            s.rset()
            if ok:
                s.starttls(context=_client_ctx(certs, cert))
                s.ehlo("x")
                assert s.mail("a@example.org")[0] == 250
                continue
            s.starttls(context=_client_ctx(certs, cert))
            code, text = s.ehlo("x")
            assert code == 421 and text.startswith(b"4.7.1 postwall.test Error: "), (code, text)
            with pytest.raises(smtplib.SMTPServerDisconnected):
                s.noop()
    server.wait_log(r"NOQUEUE: abort: TLS from \S+: Client certificate not trusted")
    server.wait_log(r"NOQUEUE: abort: TLS from \S+: No client certificate presented")


def test_commands_pipelined_before_the_greeting_then_eof_are_answered(postwall_factory):
    """A client that writes a whole session and half-closes at once (`printf ... | nc -N`)
    still gets every reply, and its message is queued."""
    server = postwall_factory()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n"
        b"Subject: early\r\n\r\nbefore the banner\r\n.\r\nQUIT\r\n"
    )
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    lines = data.decode().splitlines()
    assert lines[0].startswith("220 ")
    assert "250 2.0.0 Ok: queued as" in data.decode(), lines
    assert lines[-1] == "221 2.0.0 Bye"
    peers.wait_maildir(server.maildir("root"))
    server.wait_log(r"improper command pipelining after CONNECT from ")


def test_idle_client_is_dropped_after_smtpd_timeout(postwall_factory):
    server = postwall_factory(params={"smtpd_timeout": "2s"})
    c = Raw(server.port)
    c.send(b"EHLO x\r\n")
    c.reply()
    c.sock.settimeout(10)
    assert c.reply() == "421 4.4.2 postwall.test Error: timeout exceeded"
    server.wait_log(r"timeout after EHLO from \S+\[127\.0\.0\.1\]")
    server.wait_log(r"disconnect from \S+ ehlo=1 commands=1")
