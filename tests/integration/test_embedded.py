"""The embedded default: `postwall start -c DIR` on a directory without main.cf."""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

import peers
from postwall import embedded
from postwall.config import load
from postwall.tls import certs as pki


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_initialise_writes_a_loadable_configuration_and_private_keys(tmp_path: Path):
    layout = embedded.layout_for(tmp_path / "etc")
    created = embedded.initialise(layout, hostname="mx.example.test")
    assert str(layout.main_cf) in created
    cfg = load(layout.config_dir)
    p = cfg.params
    assert p.myhostname == "mx.example.test"
    assert p.smtpd_tls_security_level == "may"
    assert p.mail_spool_directory == f"{layout.data_dir}/mail/"
    assert [s.listen for s in cfg.services] == [
        ("127.0.0.1", 2525),
        ("127.0.0.1", 2465),
        ("127.0.0.1", 2587),
    ]
    assert cfg.services[1].params.smtpd_tls_wrappermode
    submission = cfg.services[2].params
    assert submission.smtpd_sasl_auth_enable and not p.smtpd_sasl_auth_enable
    assert submission.smtpd_tls_security_level == "encrypt"
    assert submission.smtpd_client_restrictions == ("permit_sasl_authenticated", "reject")
    for key in ("ca.key", "smtp.key", "client.key"):
        mode = stat.S_IMODE(os.stat(layout.certs_dir / key).st_mode)
        assert mode == 0o600, (key, oct(mode))
    server = x509.load_pem_x509_certificate((layout.certs_dir / "smtp.pem").read_bytes())
    assert _cn(server.subject) == "mx.example.test"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.test"]
    report = pki.inspect(
        layout.certs_dir / "client.pem",
        layout.certs_dir / "client.key",
        layout.certs_dir / "ca.crt",
    )
    assert report.key_matches and report.chain_verifies
    # A second run changes nothing.
    before = layout.main_cf.read_text()
    assert embedded.initialise(layout, hostname="other.example") == []
    assert layout.main_cf.read_text() == before


def test_start_on_a_new_directory_serves_the_embedded_default(tmp_path: Path):
    if any(peers.port_open("127.0.0.1", port) for port in (2525, 2465, 2587)):
        pytest.skip("127.0.0.1:2525, :2465 or :2587 is taken by another server on this machine")
    directory = tmp_path / "fresh"
    env = {**os.environ, "PYTHONPATH": str(peers.SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "postwall", "start", "-c", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        peers.wait_for(lambda: peers.port_open("127.0.0.1", 2525), 30, "the embedded default")
        ctx = ssl.create_default_context(cafile=str(directory / "certs" / "ca.crt"))
        ctx.check_hostname = False
        ctx.load_cert_chain(directory / "certs" / "client.pem", directory / "certs" / "client.key")
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as s:
            s.starttls(context=ctx)
            s.sendmail("me@example.org", ["root@localhost"], b"Subject: hi\r\n\r\nhello\r\n")
        peers.wait_maildir(directory / "data" / "mail" / "root")
        # Submission: no AUTH, no mail; a user added with saslpasswd gets in.
        with smtplib.SMTP("127.0.0.1", 2587, timeout=10) as s:
            s.starttls(context=ctx)
            s.mail("me@example.org")
            assert s.rcpt("someone@example.com")[0] == 554
        added = peers.run_postwall(
            "saslpasswd", "-c", str(directory), "add", "me", stdin="pass word\n"
        )
        assert added.returncode == 0, added.stderr
        with smtplib.SMTP("127.0.0.1", 2587, timeout=10) as s:
            s.starttls(context=ctx)
            s.login("me", "pass word")
            s.sendmail("me@example.org", ["root@localhost"], b"Subject: sub\r\n\r\nhi\r\n")
        peers.wait_maildir(directory / "data" / "mail" / "root", 2)
        log = directory / "data" / "maillog"
        peers.wait_for(
            lambda: "Trusted TLS connection established" in log.read_text(), 10, "the TLS line"
        )
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, out
    assert "Try it: swaks --server 127.0.0.1:2525" in out
    assert f"mail log: {directory / 'data' / 'maillog'}" in out
    assert "Traceback" not in out
