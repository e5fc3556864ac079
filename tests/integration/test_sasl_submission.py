"""SMTP AUTH against a running postwall with its password file (smtpd_sasl_type = postwall).

Real clients: swaks (AUTH PLAIN and LOGIN over STARTTLS), Python's smtplib (login()), and a
SCRAM-SHA-256 client written here with hashlib/hmac (RFC 5802), which also checks the
server's signature.  Users are added with `postwall saslpasswd`, the password on stdin.
The submission policy is Postfix's usual one: relay only for authenticated clients.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

PASSWORD = "c0rrect horse"


def _ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
def submission(
    postwall_factory: Callable[..., peers.PostwallServer], certs: peers.TestCerts, tmp_path: Path
) -> peers.PostwallServer:
    pwfile = tmp_path / "sasl_passwd"
    for user in ("bob", "amy@postwall.test"):
        res = peers.run_postwall("saslpasswd", "-f", str(pwfile), "add", user, stdin=PASSWORD)
        assert res.returncode == 0, res.stderr
    return postwall_factory(
        params={
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_auth_only": "yes",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "postwall",
            "smtpd_sasl_path": str(pwfile),
            "smtpd_sasl_authenticated_header": "yes",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "mynetworks": "192.0.2.0/24",  # loopback clients are not trusted: AUTH decides
            "mydestination": "localhost, postwall.test",
            "smtpd_error_sleep_time": "0",
        }
    )


def test_swaks_auth_plain_and_login(submission: peers.PostwallServer) -> None:
    server = f"127.0.0.1:{submission.port}"
    for mech in ("PLAIN", "LOGIN"):
        res = peers.swaks(
            server, "--tls", "--auth", mech, "--auth-user", "bob", "--auth-password", PASSWORD,
            to="someone@example.com", sender="bob@postwall.test",
        )  # fmt: skip
        assert res.returncode == 0, res.transcript
        assert "<~  235 2.7.0 Authentication successful" in res.transcript
        assert re.search(r"<~  250 2\.0\.0 Ok: queued as [0-9A-F]+", res.transcript)
        submission.wait_log(
            rf": client=localhost\[127\.0\.0\.1\], sasl_method={mech}, sasl_username=bob$"
        )
    # Without AUTH the same relay is refused.
    res = peers.swaks(server, "--tls", to="someone@example.com")
    assert "554 5.7.1 <someone@example.com>: Relay access denied" in res.transcript


def test_swaks_wrong_password_is_refused_and_logged(submission: peers.PostwallServer) -> None:
    res = peers.swaks(
        f"127.0.0.1:{submission.port}", "--tls", "--auth", "LOGIN",
        "--auth-user", "bob", "--auth-password", "nope",
    )  # fmt: skip
    assert res.returncode != 0
    assert "<~* 535 5.7.8 Error: authentication failed: authentication failure" in res.transcript
    submission.wait_log(
        r"warning: localhost\[127\.0\.0\.1\]: SASL LOGIN authentication failed: "
        r"authentication failure, sasl_username=bob$"
    )
    submission.wait_log(r"disconnect from localhost\[127\.0\.0\.1\] .*auth=0/1")


def test_auth_refused_before_starttls(submission: peers.PostwallServer) -> None:
    # smtpd_tls_auth_only = yes: not announced and refused, as Postfix 3.7.11 does (it
    # answers 503 5.5.1, not RFC 4954's 538; see docs/status.md).
    with smtplib.SMTP("127.0.0.1", submission.port, timeout=30) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        assert s.docmd("AUTH PLAIN", base64.b64encode(b"\0bob\0" + PASSWORD.encode()).decode()) == (
            503,
            b"5.5.1 Error: authentication not enabled",
        )
        s.starttls(context=_ctx())
        s.ehlo("client.test")
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]


def test_smtplib_login_and_received_header(submission: peers.PostwallServer) -> None:
    with smtplib.SMTP("127.0.0.1", submission.port, timeout=30) as s:
        s.starttls(context=_ctx())
        s.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("amy@postwall.test", "wrong")
        assert s.login("amy@postwall.test", PASSWORD)[0] == 235
        # smtplib takes "503 5.5.1 Error: already authenticated" as success.
        assert s.login("amy@postwall.test", PASSWORD) == (
            503,
            b"5.5.1 Error: already authenticated",
        )
        s.sendmail(
            "amy@postwall.test", ["root@localhost"], peers.simple_message("auth", "amy", "root")
        )
    [msg] = peers.wait_maildir(submission.maildir("root"))
    head = msg.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
    assert re.match(
        r"Return-Path: <amy@postwall.test>\n.*"
        r"Received: from client\.test \(localhost \[127\.0\.0\.1\]\)\n"
        r"\t\(Authenticated sender: amy@postwall\.test\)\n"
        r"\tby postwall\.test \(postwall\) with ESMTPSA id [0-9A-F]+\n",
        head,
        re.S,
    ), head


def test_scram_sha_256(submission: peers.PostwallServer) -> None:
    with smtplib.SMTP("127.0.0.1", submission.port, timeout=30) as s:
        s.starttls(context=_ctx())
        s.ehlo("client.test")
        wrong = peers.ScramClient("bob", "not it")
        code, challenge = s.docmd("AUTH SCRAM-SHA-256", wrong.first())
        assert code == 334
        code, text = s.docmd(wrong.final(challenge.decode()))
        assert (code, text) == (535, b"5.7.8 Error: authentication failed: authentication failure")
        client = peers.ScramClient("bob", PASSWORD)
        code, challenge = s.docmd("AUTH SCRAM-SHA-256", client.first())
        code, server_final = s.docmd(client.final(challenge.decode()))
        assert code == 334 and client.check_server(server_final.decode())
        assert s.docmd("") == (235, b"2.7.0 Authentication successful")
    submission.wait_log(r"SASL SCRAM-SHA-256 authentication failed: authentication failure")


def test_protocol_errors_get_postfix_replies(submission: peers.PostwallServer) -> None:
    with smtplib.SMTP("127.0.0.1", submission.port, timeout=30) as s:
        s.starttls(context=_ctx())
        s.ehlo("client.test")
        fail = b"5.7.8 Error: authentication failed: "
        assert s.docmd("AUTH CRAM-MD5") == (535, fail + b"Invalid authentication mechanism")
        assert s.docmd("AUTH PLAIN !!!") == (535, fail + b"Invalid base64 data in initial response")
        assert s.docmd("AUTH LOGIN") == (334, b"VXNlcm5hbWU6")
        assert s.docmd("not base64") == (535, fail + b"Invalid base64 data in continued response")
        assert s.docmd("AUTH LOGIN") == (334, b"VXNlcm5hbWU6")
        assert s.docmd("*") == (501, b"5.7.0 Authentication aborted")
        assert s.docmd("AUTH PLAIN =") == (535, fail + b"authentication failure")
        assert s.docmd("AUTH") == (501, b"5.5.4 Syntax: AUTH mechanism")
        assert s.docmd("NOOP") == (250, b"2.0.0 Ok")
    submission.wait_log(r"warning: localhost\[127\.0\.0\.1\]: SASL LOGIN authentication aborted$")


def test_failures_are_delayed_per_client(
    postwall_factory: Callable[..., peers.PostwallServer], certs: peers.TestCerts, tmp_path: Path
) -> None:
    import time

    pwfile = tmp_path / "pw"
    assert (
        peers.run_postwall("saslpasswd", "-f", str(pwfile), "add", "bob", stdin="x").returncode == 0
    )
    server = postwall_factory(
        params={
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "postwall",
            "smtpd_sasl_path": str(pwfile),
            "smtpd_error_sleep_time": "1s",
        }
    )
    bad = base64.b64encode(b"\0bob\0wrong").decode()
    took = []
    for _ in range(3):  # a new session each time: the delay follows the client address
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            s.ehlo("x")
            start = time.monotonic()
            assert s.docmd("AUTH PLAIN", bad)[0] == 535
            took.append(time.monotonic() - start)
    assert 0.9 < took[0] < took[1] < took[2] and took[2] > 2.9, took
    # A good login is answered at once and clears the slate.
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.ehlo("x")
        start = time.monotonic()
        assert s.login("bob", "x")[0] == 235
        assert time.monotonic() - start < 1.5


def test_saslpasswd_cli(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text(
        f"config_directory = {conf}\nsmtpd_sasl_type = postwall\nsmtpd_sasl_path = users\n"
    )
    (conf / "master.cf").write_text("127.0.0.1:2999 inet n - n - - smtpd\n")
    add = peers.run_postwall("saslpasswd", "-c", str(conf), "add", "bob", stdin="pw1\n")
    assert add.returncode == 0 and f"added bob in {conf}/users" in add.stderr, add.stderr
    again = peers.run_postwall("saslpasswd", "-c", str(conf), "add", "bob", stdin="pw2\n")
    assert "changed the password of bob" in again.stderr
    peers.run_postwall("saslpasswd", "-c", str(conf), "add", "amy", "--no-scram", stdin="pw3")
    listing = peers.run_postwall("saslpasswd", "-c", str(conf), "list")
    assert listing.stdout.split() == ["amy", "bob"]
    text = (conf / "users").read_text()
    assert "pw1" not in text and "pw2" not in text and (conf / "users").stat().st_mode & 0o077 == 0
    assert re.search(r"^amy:\$scrypt\$ln=15,r=8,p=1\$[^:]+:$", text, re.M)
    assert peers.run_postwall("saslpasswd", "-c", str(conf), "delete", "bob").returncode == 0
    gone = peers.run_postwall("saslpasswd", "-c", str(conf), "delete", "bob")
    assert gone.returncode == 1 and "no user bob" in gone.stderr
    bad = peers.run_postwall("saslpasswd", "-c", str(conf), "add", "a:b", stdin="x")
    assert bad.returncode == 1 and "invalid user name" in bad.stderr
    # The password never travels on the command line: there is no option for it.
    assert peers.run_postwall("saslpasswd", "-c", str(conf), "add", "x", "pw").returncode == 2


def test_cyrus_is_refused_at_start(
    postwall_factory: Callable[..., peers.PostwallServer],
) -> None:
    server = postwall_factory(params={"smtpd_sasl_auth_enable": "yes"}, start=False)
    with pytest.raises(peers.PeerError, match="smtpd_sasl_type = cyrus: not supported"):
        server.start()


def test_unknown_security_option_is_refused_at_start(
    postwall_factory: Callable[..., peers.PostwallServer], tmp_path: Path
) -> None:
    server = postwall_factory(
        params={
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "postwall",
            "smtpd_sasl_path": str(tmp_path / "none"),
            "smtpd_sasl_security_options": "noanonymous, nosuchthing",
        },
        start=False,
    )
    with pytest.raises(peers.PeerError, match='unknown SASL security option "nosuchthing"'):
        server.start()


def test_garbage_during_auth_never_kills_the_server(
    postwall_factory: Callable[..., peers.PostwallServer], tmp_path: Path
) -> None:
    submission = postwall_factory(
        params={
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "postwall",
            "smtpd_sasl_path": str(tmp_path / "empty"),
            "smtpd_error_sleep_time": "0",
        }
    )
    for junk in (b"\xff\xfe\r\n", b"=" * 20000 + b"\r\n", b"\x00\r\n", b"AUTH\r\n" * 3):
        with socket.create_connection(("127.0.0.1", submission.port), timeout=10) as sock:
            sock.recv(1024)
            sock.sendall(b"EHLO x\r\nAUTH PLAIN\r\n" + junk)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
    assert "internal error" not in submission.log_text()
    with smtplib.SMTP("127.0.0.1", submission.port, timeout=30) as s:
        assert s.noop()[0] == 250


@pytest.mark.parametrize(
    ("exceptions", "announced"),
    [("", True), ("localhost", False), ("!127.0.0.1, 127.0.0.0/8", True), ("127.0.0.0/8", False)],
)
def test_sasl_exceptions_networks_hide_auth_from_ehlo(  # type: ignore[no-untyped-def]
    postwall_factory, tmp_path, exceptions, announced
):
    pwfile = tmp_path / "sasl_passwd"
    res = peers.run_postwall("saslpasswd", "-f", str(pwfile), "add", "bob", stdin=PASSWORD)
    assert res.returncode == 0, res.stderr
    server = postwall_factory(
        params={
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "postwall",
            "smtpd_sasl_path": str(pwfile),
            "smtpd_sasl_exceptions_networks": exceptions,
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "mynetworks": "192.0.2.0/24",
        }
    )
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.has_extn("auth") is announced
        # As in Postfix, the exception only hides the keyword: AUTH itself still works.
        token = base64.b64encode(f"\0bob\0{PASSWORD}".encode()).decode()
        assert smtp.docmd("AUTH", f"PLAIN {token}")[0] == 235
