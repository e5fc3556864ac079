"""`postwall certs init|show` and `postwall check` as real commands on real files.

Certificates made by `certs init` are checked with the openssl command and then served by a
real postwall whose STARTTLS handshake openssl s_client verifies against the new CA.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import pkcs12

import peers

HOST = "mx.example.test"

postwall = peers.run_postwall


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    (tmp_path / "main.cf").write_text(f"# test\nmyhostname = {HOST}\n")
    res = postwall("certs", "init", "-c", str(tmp_path), "--client", "alice", "--p12", "s3cret")
    assert res.returncode == 0, res.stderr
    assert f"postwall: created {tmp_path}/certs/smtp.key (mode 0600)" in res.stdout
    return tmp_path


def test_certs_init_writes_the_howto_files(initialised: Path) -> None:
    d = initialised / "certs"
    assert {p.name for p in d.iterdir()} == {
        "ca.crt", "ca.key", "smtp.pem", "smtp.key", "alice.pem", "alice.key", "alice.p12"
    }  # fmt: skip
    for key in ("ca.key", "smtp.key", "alice.key", "alice.p12"):
        assert mode(d / key) == 0o600, key
    assert mode(d) == 0o700
    ok = peers.run_tool(["openssl", "verify", "-CAfile", str(d / "ca.crt"), str(d / "smtp.pem")])
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.transcript
    text = peers.run_tool(["openssl", "x509", "-in", str(d / "smtp.pem"), "-noout", "-text"])
    assert f"Subject: CN = {HOST}" in text.stdout and f"DNS:{HOST}" in text.stdout
    key, cert, _ = pkcs12.load_key_and_certificates((d / "alice.p12").read_bytes(), b"s3cret")
    assert cert is not None and key is not None
    assert cert.subject.rfc4514_string() == "CN=alice"
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates((d / "alice.p12").read_bytes(), b"wrong")


def test_certs_init_keeps_existing_files(initialised: Path) -> None:
    before = {p.name: p.read_bytes() for p in (initialised / "certs").iterdir()}
    res = postwall("certs", "init", "-c", str(initialised))
    assert res.returncode == 0
    assert "kept" in res.stdout and "created" not in res.stdout
    assert before == {p.name: p.read_bytes() for p in (initialised / "certs").iterdir()}
    res = postwall("certs", "init", "-c", str(initialised), "--client", "alice")
    assert res.returncode == 1 and res.stderr.startswith("postwall: fatal: ")
    res = postwall("certs", "init", "-c", str(initialised), "--client", "bob")
    assert res.returncode == 0 and "bob.pem" in res.stdout  # signed by the existing CA
    d = initialised / "certs"
    ok = peers.run_tool(["openssl", "verify", "-CAfile", str(d / "ca.crt"), str(d / "bob.pem")])
    assert ok.returncode == 0, ok.transcript


def _tls_main_cf(directory: Path, extra: str = "") -> None:
    d = directory / "certs"
    (directory / "main.cf").write_text(
        f"myhostname = {HOST}\n"
        f"smtpd_tls_cert_file = {d}/smtp.pem\n"
        f"smtpd_tls_key_file = {d}/smtp.key\n"
        f"smtpd_tls_CAfile = {d}/ca.crt\n"
        "smtpd_tls_security_level = may\n" + extra
    )


def test_certs_show_describes_the_configured_files(initialised: Path) -> None:
    _tls_main_cf(initialised)
    res = postwall("certs", "show", "-c", str(initialised))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    out = res.stdout
    assert f"  subject: CN={HOST}\n" in out
    assert f"  issuer: CN=postwall local CA for {HOST}\n" in out
    assert "smtp.key: matches the certificate" in out
    assert "the chain verifies against it" in out
    real = peers.cert_fingerprint(initialised / "certs" / "smtp.pem")
    assert f"  SHA256 fingerprint: {real}\n" in out
    sha1 = peers.cert_fingerprint(initialised / "certs" / "smtp.pem", hashes.SHA1())
    assert f"  SHA1 fingerprint: {sha1}\n" in out
    assert re.search(r"valid until: .* \((824|825) days left\)", out)

    (initialised / "certs" / "smtp.key").chmod(0o644)
    res = postwall("certs", "show", "-c", str(initialised))
    assert res.returncode == 0
    assert "postwall: warning: " in res.stderr and "mode 0644" in res.stderr


def test_certs_show_fails_on_a_key_that_does_not_match(initialised: Path) -> None:
    _tls_main_cf(initialised)
    main = initialised / "main.cf"
    main.write_text(main.read_text().replace("certs/smtp.key", "certs/alice.key"))
    res = postwall("certs", "show", "-c", str(initialised))
    assert res.returncode == 1
    assert "DOES NOT match" in res.stdout
    assert "postwall: error: " in res.stdout
    (initialised / "main.cf").write_text("myhostname = x.test\n")
    res = postwall("certs", "show", "-c", str(initialised))
    assert res.returncode == 1 and res.stderr.count("\n") == 1


def test_initialised_certificates_serve_verified_starttls(
    initialised: Path, postwall_factory: Callable[..., peers.PostwallServer]
) -> None:
    d = initialised / "certs"
    srv = postwall_factory(
        params={
            "myhostname": HOST,
            "smtpd_tls_cert_file": str(d / "smtp.pem"),
            "smtpd_tls_key_file": str(d / "smtp.key"),
            "smtpd_tls_security_level": "may",
            "data_directory": str(initialised / "data"),
        }
    )
    res = peers.openssl_s_client_starttls(
        "127.0.0.1", srv.port, ["-CAfile", str(d / "ca.crt"), "-verify_hostname", HOST]
    )
    assert "Verify return code: 0 (ok)" in res.stdout, res.transcript


def test_check_accepts_a_good_configuration(initialised: Path) -> None:
    _tls_main_cf(initialised, f"queue_directory = {initialised}/queue\n")
    (initialised / "master.cf").write_text("127.0.0.1:2599 inet n - n - - smtpd\n")
    res = postwall("check", "-c", str(initialised))
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


def test_check_reports_every_problem_with_file_and_line(initialised: Path) -> None:
    _tls_main_cf(initialised, "smtpd_tls_loglevel = lots\n")
    main = initialised / "main.cf"
    (initialised / "master.cf").write_text("127.0.0.1:2599 inet n - n - - smtpd\nbroken line\n")
    res = postwall("check", "-c", str(initialised))
    assert res.returncode == 1
    errors = res.stderr.splitlines()
    assert any(e.startswith(f"postwall: error: {main}:6: smtpd_tls_loglevel") for e in errors)
    assert any(f"{initialised}/master.cf:2:" in e for e in errors)

    # A certificate that is not there: named with the main.cf line that points to it.
    _tls_main_cf(initialised)
    main.write_text(main.read_text().replace("smtp.pem", "missing.pem"))
    (initialised / "master.cf").write_text("127.0.0.1:2599 inet n - n - - smtpd\n")
    res = postwall("check", "-c", str(initialised))
    assert res.returncode == 1
    assert re.search(rf"postwall: error: {main}:2: smtpd_tls_cert_file: .*missing\.pem", res.stderr)

    # A lookup table that cannot be opened.
    _tls_main_cf(initialised, "alias_maps = hash:/nonexistent/aliases\n")
    res = postwall("check", "-c", str(initialised))
    assert res.returncode == 1 and "/nonexistent/aliases" in res.stderr, res.stderr

    # What start-up refuses, check refuses too: Debian's stock submission service
    # enables AUTH with Postfix's default smtpd_sasl_type (cyrus); an smtp client option.
    _tls_main_cf(
        initialised,
        "smtp_sasl_auth_enable = yes\nsmtp_sasl_password_maps = inline:{a=b:c}\n"
        "smtp_sasl_auth_cache_name = proxy:btree:/var/lib/postfix/sasl_auth_cache\n",
    )
    (initialised / "master.cf").write_text(
        "127.0.0.1:2599 inet n - n - - smtpd\n"
        "127.0.0.1:2600 inet n - y - - smtpd\n  -o smtpd_sasl_auth_enable=yes\n"
    )
    res = postwall("check", "-c", str(initialised))
    assert res.returncode == 1
    assert re.search(
        rf"{initialised}/master.cf:2: .*smtpd_sasl_type = cyrus: not supported", res.stderr
    )
    assert re.search(rf"{main}:\d+: smtp_sasl_auth_cache_name = .*: .*not supported", res.stderr)
    (initialised / "master.cf").write_text("127.0.0.1:2599 inet n - n - - smtpd\n")

    # Settings postwall knows but does not act on must not be ignored silently: mail
    # would bypass an amavis content filter or a mailbox transport.
    _tls_main_cf(
        initialised,
        "content_filter = smtp-amavis:[127.0.0.1]:10024\nmailbox_transport = lmtp:unix:x\n",
    )
    res = postwall("check", "-c", str(initialised))
    assert res.returncode == 1
    for text in (
        r"content_filter = smtp-amavis:\[127\.0\.0\.1\]:10024: an after-queue content filter",
        r"mailbox_transport = lmtp:unix:x: mailbox delivery through another transport",
    ):
        assert re.search(rf"{main}:\d+: {text} is not supported yet", res.stderr), res.stderr

    # Soft problems are warnings and keep exit 0.
    _tls_main_cf(initialised, f"queue_directory = {initialised}/queue\nmy_unused = 1\n")
    (initialised / "certs" / "smtp.key").chmod(0o640)
    res = postwall("check", "-c", str(initialised))
    assert res.returncode == 0, res.stderr
    assert "postwall: warning: " in res.stderr and "unused parameter" in res.stderr
    assert "0600" in res.stderr


def test_help() -> None:
    for args in (("certs", "init"), ("certs", "show"), ("check",)):
        res = postwall(*args, "--help")
        assert res.returncode == 0 and res.stdout.startswith("usage: postwall " + " ".join(args))
    res = postwall("certs")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
