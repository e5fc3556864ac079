"""Mail clients administrators' users run, against postwall: curl (libcurl's SMTP, the
transport of many scripts and monitoring probes) and msmtp (the sendmail replacement of
desktops and containers), each over STARTTLS, implicit TLS and AUTH.

Each test checks what the client reports (its exit status, its protocol trace) and what
the server did with the message (the Maildir, the Received header, the log).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop

PASSWORD = "correct horse"
MESSAGE = b"From: alice@postwall.test\r\nTo: root@localhost\r\nSubject: %s\r\n\r\nhello\r\n"


@pytest.fixture
def server(
    postwall_factory: Callable[..., peers.PostwallServer], certs: peers.TestCerts, tmp_path: Path
) -> peers.PostwallServer:
    """STARTTLS on the main port, implicit TLS on a second one, AUTH after TLS only."""
    pwfile = tmp_path / "sasl_passwd"
    res = peers.run_postwall("saslpasswd", "-f", str(pwfile), "add", "alice", stdin=PASSWORD)
    assert res.returncode == 0, res.stderr
    smtps_port = peers.free_port()
    made = postwall_factory(
        params={
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_CAfile": str(certs.ca_cert),
            "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_auth_only": "yes",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "postwall",
            "smtpd_sasl_path": str(pwfile),
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "mynetworks": "192.0.2.0/24",  # loopback is not trusted: only AUTH relays
            "mydestination": "localhost, postwall.test",
            "smtpd_error_sleep_time": "0",
        },
        extra_services=[
            f"127.0.0.1:{smtps_port} inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes"
        ],
    )
    made.smtps_port = smtps_port  # type: ignore[attr-defined]
    return made


def _curl(url: str, *args: str, message: bytes) -> subprocess.CompletedProcess[str]:
    """curl to `url` ("smtp://localhost:PORT"), localhost pinned to 127.0.0.1: the test
    certificate is for localhost, and postwall listens on IPv4 loopback only."""
    peers.require_tool("curl")
    port = url.rsplit(":", 1)[1]
    return subprocess.run(
        [
            "curl",
            "-sS",
            "-v",
            "--max-time",
            "30",
            "--resolve",
            f"localhost:{port}:127.0.0.1",
            url,
            *args,
            "-T",
            "-",
        ],
        input=message.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _delivered(server: peers.PostwallServer, subject: bytes) -> bytes:
    def find() -> bytes | None:
        for msg in peers.maildir_messages(server.maildir("root")):
            if b"Subject: " + subject in msg:
                return msg
        return None

    return peers.wait_for(find, 20, f"{subject.decode()} in root's Maildir")


def test_curl_starttls_required(server: peers.PostwallServer, certs: peers.TestCerts) -> None:
    res = _curl(
        f"smtp://localhost:{server.port}",
        "--ssl-reqd",
        "--cacert",
        str(certs.ca_cert),
        "--mail-from",
        "alice@postwall.test",
        "--mail-rcpt",
        "root@localhost",
        message=MESSAGE % b"curl starttls",
    )
    assert res.returncode == 0, res.stderr
    assert "< 220 2.0.0 Ready to start TLS" in res.stderr
    msg = _delivered(server, b"curl starttls")
    assert b"with ESMTPS id" in msg and b"(Client did not present a certificate)" in msg


def test_curl_implicit_tls_with_a_client_certificate(
    server: peers.PostwallServer, certs: peers.TestCerts
) -> None:
    res = _curl(
        f"smtps://localhost:{server.smtps_port}",  # type: ignore[attr-defined]
        "--cacert",
        str(certs.ca_cert),
        "--cert",
        str(certs.client_cert),
        "--key",
        str(certs.client_key),
        "--mail-from",
        "alice@postwall.test",
        "--mail-rcpt",
        "root@localhost",
        message=MESSAGE % b"curl smtps",
    )
    assert res.returncode == 0, res.stderr
    msg = _delivered(server, b"curl smtps")
    assert b"(verified OK)" in msg
    server.wait_log(r"Trusted TLS connection established from \S+\[127\.0\.0\.1\]")


def test_curl_auth_relays_and_a_wrong_password_does_not(
    server: peers.PostwallServer, certs: peers.TestCerts
) -> None:
    common = ["--ssl-reqd", "--cacert", str(certs.ca_cert)]
    common += ["--mail-from", "alice@postwall.test", "--mail-rcpt", "someone@example.com"]
    bad = _curl(
        f"smtp://localhost:{server.port}",
        "--user",
        "alice:wrong",
        *common,
        message=MESSAGE % b"curl bad auth",
    )
    assert bad.returncode == 67, bad.stderr  # CURLE_LOGIN_DENIED
    assert "< 535 5.7.8 Error: authentication failed" in bad.stderr
    ok = _curl(
        f"smtp://localhost:{server.port}",
        "--user",
        f"alice:{PASSWORD}",
        *common,
        message=MESSAGE % b"curl auth",
    )
    assert ok.returncode == 0, ok.stderr
    server.wait_log(r"client=\S+\[127\.0\.0\.1\], sasl_method=\S+, sasl_username=alice")
    server.wait_log(r"from=<alice@postwall\.test>, size=\d+, nrcpt=1 \(queue active\)")


def _msmtp(config: Path, *args: str, message: bytes) -> subprocess.CompletedProcess[str]:
    peers.require_tool("msmtp")
    return subprocess.run(
        ["msmtp", "-C", str(config), "-v", *args],
        input=message.decode().replace("\r\n", "\n"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_msmtp_starttls_auth(
    server: peers.PostwallServer, certs: peers.TestCerts, tmp_path: Path
) -> None:
    config = tmp_path / "msmtprc"
    config.write_text(
        "account postwall\n"
        "host 127.0.0.1\n"
        f"port {server.port}\n"
        "tls on\ntls_starttls on\n"
        f"tls_trust_file {certs.ca_cert}\n"
        "tls_certcheck on\ntls_host_override localhost\n"
        "auth on\nuser alice\n"
        f"password {PASSWORD}\n"
        "from alice@postwall.test\n"
        "account default : postwall\n"
    )
    config.chmod(0o600)
    res = _msmtp(config, "root@localhost", message=MESSAGE % b"msmtp auth")
    assert res.returncode == 0, res.stderr
    assert "<-- 235 2.7.0 Authentication successful" in res.stdout  # -v traces to stdout
    msg = _delivered(server, b"msmtp auth")
    assert b"with ESMTPSA id" in msg


def test_msmtp_refuses_auth_without_tls_as_postwall_does_not_offer_it(
    server: peers.PostwallServer, tmp_path: Path
) -> None:
    config = tmp_path / "msmtprc"
    config.write_text(
        f"host 127.0.0.1\nport {server.port}\ntls off\nauth on\nuser alice\n"
        f"password {PASSWORD}\nfrom alice@postwall.test\n"
    )
    config.chmod(0o600)
    res = _msmtp(config, "someone@example.com", message=MESSAGE % b"msmtp plain")
    assert res.returncode != 0
    assert "does not support authentication" in res.stdout + res.stderr
