"""postwall against real peers: swaks, openssl s_client, Postfix as the sending client,
and pflogsumm reading the log of the run.

These are the how-to's steps, done to postwall with the tools an administrator uses.
"""

from __future__ import annotations

import re
import subprocess

import pytest

import peers

pytestmark = pytest.mark.interop


def _howto_params(certs: peers.TestCerts, **extra: str) -> dict[str, str]:
    """The how-to's TLS server block, pointing at the test certificates."""
    params = {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_auth_only": "yes",
        "smtpd_tls_key_file": str(certs.server_key),
        "smtpd_tls_cert_file": str(certs.server_cert),
        "smtpd_tls_CAfile": str(certs.ca_cert),
        "smtpd_tls_loglevel": "2",
        "smtpd_tls_received_header": "yes",
        "smtpd_tls_session_cache_timeout": "3600s",
        "tls_random_source": "dev:/dev/urandom",
        "smtpd_tls_ask_ccert": "yes",
        "smtpd_tls_req_ccert": "no",
        "smtpd_tls_mandatory_protocols": "!SSLv2",
        "smtpd_tls_mandatory_ciphers": "high",
        "smtpd_tls_mandatory_exclude_ciphers": "aNULL, MD5",
    }
    params.update(extra)
    return params


@pytest.fixture
def howto_server(postwall_factory, certs):
    params = _howto_params(certs)
    params["smtpd_tls_session_cache_database"] = "btree:$data_directory/smtpd_scache"
    params["data_directory"] = "$queue_directory/../data"
    return postwall_factory(params=params)


@pytest.mark.parametrize(
    ("cert", "trust"),
    [("client", "Trusted"), ("selfsigned", "Untrusted"), (None, "Anonymous")],
)
def test_swaks_over_starttls(howto_server, certs, cert, trust):
    args = ["--tls"]
    if cert:
        args += [
            "--tls-cert",
            str(getattr(certs, f"{cert}_cert")),
            "--tls-key",
            str(getattr(certs, f"{cert}_key")),
        ]
    result = peers.swaks(f"127.0.0.1:{howto_server.port}", *args, to="root@localhost")
    assert result.returncode == 0, result.transcript
    assert "<~  250 2.0.0 Ok: queued as " in result.transcript
    howto_server.wait_log(rf"{trust} TLS connection established from \S+\[127\.0\.0\.1\]: TLSv1\.3")
    # Loglevel 2 (the how-to's): the set-up line and the cipher list, worded and computed
    # as the reference Postfix logs them for this configuration (ask_ccert adds !aNULL).
    howto_server.wait_log(
        r"setting up TLS connection from (\S+\[127\.0\.0\.1\])\n.*\]: \1: TLS cipher list "
        r'"aNULL:-aNULL:HIGH:MEDIUM:\+RC4:@STRENGTH:!aNULL"\n'
    )
    [msg] = peers.wait_maildir(howto_server.maildir("root"))
    assert b"with ESMTPS id" in msg
    if cert == "client":
        fingerprint = peers.cert_fingerprint(certs.client_cert)
        howto_server.wait_log(
            rf"\[127\.0\.0\.1\]: subject_CN=client\.postwall\.test, "
            rf"issuer=postwall test CA, fingerprint={fingerprint}"
        )
        assert b'(Client CN "client.postwall.test", Issuer "postwall test CA" (verified OK))' in msg
    elif cert == "selfsigned":
        assert b"(not verified)" in msg
    else:
        assert b"(Client did not present a certificate)" in msg


def test_openssl_s_client_starttls_and_howto_ehlo(howto_server, certs):
    """The how-to's nc/EHLO/STARTTLS check, with openssl s_client doing the TLS."""
    result = peers.openssl_s_client_starttls(
        "127.0.0.1",
        howto_server.port,
        ["-CAfile", str(certs.ca_cert), "-verify_return_error"],
        input=b"EHLO howto.example\r\nQUIT\r\n",
    )
    out = result.transcript
    assert "Verify return code: 0 (ok)" in out, out
    assert re.search(r"subject=CN\s?=\s?localhost", out), out
    # After the handshake the session starts over and STARTTLS is no longer offered.
    assert "250-PIPELINING" in out
    assert "250-STARTTLS" not in out
    assert "221 2.0.0 Bye" in out


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_session_resumption_with_s_client(howto_server, tmp_path, version):
    sess = tmp_path / "sess.pem"
    first = peers.openssl_s_client_starttls(
        "127.0.0.1", howto_server.port, [version, "-sess_out", str(sess)]
    )
    assert "New, TLSv1." in first.transcript, first.transcript
    second = peers.openssl_s_client_starttls(
        "127.0.0.1", howto_server.port, [version, "-sess_in", str(sess)]
    )
    assert "Reused, TLSv1." in second.transcript, second.transcript


def test_resumption_expires_after_cache_timeout(postwall_factory, certs, tmp_path):
    import time

    server = postwall_factory(params=_howto_params(certs, smtpd_tls_session_cache_timeout="2s"))
    sess = tmp_path / "sess.pem"
    peers.openssl_s_client_starttls("127.0.0.1", server.port, ["-tls1_2", "-sess_out", str(sess)])
    time.sleep(3.5)
    late = peers.openssl_s_client_starttls(
        "127.0.0.1", server.port, ["-tls1_2", "-sess_in", str(sess)]
    )
    assert "New, TLSv1.2" in late.transcript, late.transcript


def test_postfix_relays_into_postwall_with_client_certificate(postwall_factory, certs):
    """Debian's Postfix as the client: it relays over TLS, presenting a CA-signed cert."""
    peers.require_root()
    server = postwall_factory(params=_howto_params(certs, mynetworks="127.0.0.2/32"))
    postfix = peers.PostfixInstance.relay_client(
        server.port,
        tls_level="encrypt",
        ca_file=certs.ca_cert,
        client_cert=(certs.client_cert, certs.client_key),
        extra={"smtp_tls_loglevel": "1"},
    )
    try:
        postfix.start()
        body = peers.simple_message("via postfix", "alice@example.org", "root@localhost")
        postfix.sendmail("alice@example.org", ["root@localhost"], body)
        [msg] = peers.wait_maildir(server.maildir("root"), timeout=60)
        postfix.wait_log(
            r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: TLSv1\.3"
        )
        postfix.wait_log(r"status=sent \(250 2\.0\.0 Ok: queued as [0-9A-F]+\)")
    finally:
        postfix.destroy()
    server.wait_log(r"Trusted TLS connection established from \S+\[127\.0\.0\.1\]")
    assert b'(Client CN "client.postwall.test", Issuer "postwall test CA" (verified OK))' in msg
    assert b"Subject: via postfix" in msg
    # Postfix's own Received header rides along below postwall's.
    assert msg.count(b"\nReceived: ") >= 2


def test_pflogsumm_counts_a_real_run(postwall_factory, certs):
    peers.require_tool("pflogsumm")
    server = postwall_factory(params=_howto_params(certs, mynetworks="127.0.0.2/32"))
    for i in range(3):
        peers.smtp_send(
            "127.0.0.1",
            server.port,
            f"sender{i}@example.org",
            ["root@localhost"],
            peers.simple_message(f"m{i}", f"sender{i}@example.org", "root@localhost"),
            starttls=i % 2 == 0,
        )
    result = peers.swaks(f"127.0.0.1:{server.port}", to="nobody@foreign.example")
    assert result.returncode != 0  # relay denied
    peers.wait_maildir(server.maildir("root"), 3)
    server.wait_log(r"(?s)(removed.*){3}")
    syslog_name = re.search(r"\d\d:\d\d:\d\d \S+ ([\w-]+)/smtpd\[", server.log_text()).group(1)
    out = subprocess.run(
        ["pflogsumm", f"--syslog-name={syslog_name}", str(server.maillog_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = dict(
        (m.group(2), int(m.group(1)))
        for m in re.finditer(r"^\s+(\d+)\s+(received|delivered|rejected)\b", out, re.M)
    )
    assert counts == {"received": 3, "delivered": 3, "rejected": 1}, out


def test_sslscan_at_the_howto_settings(howto_server):
    """No SSLv2/SSLv3 and no NULL, anonymous, EXPORT, RC4 or MD5 suite, seen from outside."""
    result = peers.run_tool(
        ["sslscan", "--no-colour", "--starttls-smtp", f"127.0.0.1:{howto_server.port}"],
        timeout=120,
    )
    out = result.stdout
    assert re.search(r"^SSLv2\s+disabled", out, re.M), out
    assert re.search(r"^SSLv3\s+disabled", out, re.M), out
    assert re.search(r"^TLSv1\.3\s+enabled", out, re.M), out
    accepted = re.findall(r"^(?:Preferred|Accepted)\s+\S+\s+\S+ bits\s+(\S+)", out, re.M)
    assert accepted, out
    weak = [c for c in accepted if re.search(r"NULL|EXP|RC4|MD5|ADH|AECDH|anon", c)]
    assert not weak, weak
