"""certs.py: generated PKI checked with OpenSSL's own tools; key files born 0600."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from postwall.tls import certs


def _openssl(*args: str) -> str:
    return subprocess.run(
        ["openssl", *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


@pytest.fixture(scope="module")
def ca() -> certs.Issued:
    return certs.make_ca("Unit CA")


def test_server_cert_verifies_with_openssl(ca: certs.Issued, tmp_path: Path) -> None:
    srv = certs.make_server_cert(ca, "mail.example.org")
    certs.write_pem(ca, tmp_path / "ca.pem", tmp_path / "ca.key", with_chain=False)
    certs.write_pem(srv, tmp_path / "srv.pem", tmp_path / "srv.key", with_chain=False)
    out = _openssl(
        "verify", "-CAfile", str(tmp_path / "ca.pem"), "-purpose", "sslserver",
        "-verify_hostname", "mail.example.org", str(tmp_path / "srv.pem"),
    )  # fmt: skip
    assert out.strip().endswith(": OK")
    san = srv.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["mail.example.org"]


def test_client_cert_purpose(ca: certs.Issued, tmp_path: Path) -> None:
    cli = certs.make_client_cert(ca, "Julien Vehent", key_type="ecdsa")
    certs.write_pem(ca, tmp_path / "ca.pem", tmp_path / "ca.key", with_chain=False)
    certs.write_pem(cli, tmp_path / "c.pem", tmp_path / "c.key", with_chain=False)
    out = _openssl(
        "verify", "-CAfile", str(tmp_path / "ca.pem"), "-purpose", "sslclient",
        str(tmp_path / "c.pem"),
    )  # fmt: skip
    assert out.strip().endswith(": OK")
    bad = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), "-purpose", "sslserver",
         str(tmp_path / "c.pem")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode != 0


def test_key_file_created_0600_even_with_open_umask(ca: certs.Issued, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        certs.write_pem(certs.make_client_cert(ca, "u"), tmp_path / "u.pem", tmp_path / "u.key")
        certs.write_pem(certs.make_client_cert(ca, "v"), tmp_path / "v.pem")  # key + chain
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "u.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "u.pem").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "v.pem").st_mode) == 0o600
    certs_in, keys_in = certs.read_pem_file(tmp_path / "v.pem")
    assert len(keys_in) == 1 and len(certs_in) == 2  # leaf + CA
    assert not list(tmp_path.glob(".*.tmp"))


def test_inspect_matches_openssl_fingerprints(ca: certs.Issued, tmp_path: Path) -> None:
    srv = certs.make_server_cert(ca, "mx.example.net")
    certs.write_pem(ca, tmp_path / "ca.pem", tmp_path / "ca.key", with_chain=False)
    certs.write_pem(srv, tmp_path / "s.pem", tmp_path / "s.key")
    rep = certs.inspect(tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem")
    sha256 = _openssl("x509", "-in", str(tmp_path / "s.pem"), "-noout", "-fingerprint", "-sha256")
    sha1 = _openssl("x509", "-in", str(tmp_path / "s.pem"), "-noout", "-fingerprint", "-sha1")
    assert sha256.strip().split("=", 1)[1] == rep.sha256
    assert sha1.strip().split("=", 1)[1] == rep.sha1
    assert (rep.subject_cn, rep.issuer_cn) == ("mx.example.net", "Unit CA")
    assert rep.key_matches is True and rep.chain_verifies is True and rep.problems == ()
    assert rep.san == ("mx.example.net",)
    assert rep.chain_length == 2


def test_inspect_reports_problems(ca: certs.Issued, tmp_path: Path) -> None:
    rogue = certs.make_self_signed("rogue")
    other = certs.make_client_cert(ca, "other")
    certs.write_pem(ca, tmp_path / "ca.pem", tmp_path / "ca.key", with_chain=False)
    certs.write_pem(rogue, tmp_path / "r.pem", tmp_path / "r.key")
    certs.write_pem(other, tmp_path / "o.pem", tmp_path / "o.key")
    rep = certs.inspect(tmp_path / "r.pem", tmp_path / "o.key", tmp_path / "ca.pem")
    assert rep.key_matches is False and rep.chain_verifies is False
    assert "private key does not match the certificate" in rep.problems
    with pytest.raises(certs.CertError, match="no certificate found"):
        certs.inspect(tmp_path / "o.key")
    with pytest.raises(certs.CertError, match="cannot read"):
        certs.inspect(tmp_path / "absent.pem")


def test_pkcs12_export_loads_back(ca: certs.Issued, tmp_path: Path) -> None:
    cli = certs.make_client_cert(ca, "Mail User")
    certs.export_pkcs12(cli, tmp_path / "u.p12", b"s3cret")
    assert stat.S_IMODE(os.stat(tmp_path / "u.p12").st_mode) == 0o600
    key, cert, extra = pkcs12.load_key_and_certificates(
        (tmp_path / "u.p12").read_bytes(), b"s3cret"
    )
    assert cert == cli.cert and extra == [ca.cert]
    assert key is not None and certs.public_key_matches(cli.cert, key)
    out = _openssl(
        "pkcs12", "-in", str(tmp_path / "u.p12"), "-passin", "pass:s3cret", "-nokeys", "-clcerts"
    )
    assert "subject=CN = Mail User" in out


def test_unsupported_key_type() -> None:
    with pytest.raises(certs.CertError, match="not supported"):
        certs.make_ca("x", key_type="dsa")
