"""describe.py against Postfix 3.7.11's own words, observed on the reference instance.

The golden strings below were copied from /var/log/postfix-ref.log and from Received
headers in /root/Maildir/new after sessions with `openssl s_client -starttls smtp` and
swaks (no client cert, the CA-signed client.pem, the self-signed selfsigned.pem, -tls1_2).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postwall.tls import describe
from postwall.tls.client import ClientTLS, ClientTLSSettings
from postwall.tls.engine import PeerCert, TLSInfo, TLSSession
from postwall.tls.policy import ServerTLS, ServerTLSSettings

PEER = "unknown[127.0.0.1]"
REF = Path("/etc/postfix/certs")


def _cert(cn: str, issuer_cn: str, subject: str, issuer: str) -> PeerCert:
    return PeerCert(subject, issuer, cn, issuer_cn, "AA:BB", "CC:DD", (), b"")


def _tls13(**kw: object) -> TLSInfo:
    base: dict[str, object] = {
        "server_side": True,
        "peer": PEER,
        "protocol": "TLSv1.3",
        "cipher_name": "TLS_AES_256_GCM_SHA384",
        "cipher_usebits": 256,
        "cipher_algbits": 256,
        "kex_name": "X25519",
        "server_sig_name": "RSA-PSS",
        "server_sig_bits": 2048,
        "server_sig_digest": "SHA256",
    }
    base.update(kw)
    return TLSInfo(**base)  # type: ignore[arg-type]


TRUSTED = {
    "client_sig_name": "RSA-PSS",
    "client_sig_bits": 2048,
    "client_sig_digest": "SHA256",
    "trust": "Trusted",
    "peer_cert": _cert(
        "Julien Vehent", "Reference CA", "/CN=Julien Vehent", "/C=FR/O=Reference/CN=Reference CA"
    ),
}


def test_summary_lines_match_reference() -> None:
    assert describe.established(_tls13()) == (
        "Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher "
        "TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS "
        "(2048 bits) server-digest SHA256"
    )
    assert describe.established(_tls13(**TRUSTED), "from", PEER) == (
        "Trusted TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher "
        "TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS "
        "(2048 bits) server-digest SHA256 client-signature RSA-PSS (2048 bits) client-digest "
        "SHA256"
    )
    tls12 = TLSInfo(True, PEER, "TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384", 256, 256)
    assert describe.established(tls12) == (
        "Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.2 with cipher "
        "ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)"
    )
    # A resumed TLS 1.3 session: Postfix still says "established", and has no digest.
    resumed = _tls13(server_sig_digest="", reused=True)
    assert describe.established(resumed).endswith("server-signature RSA-PSS (2048 bits)")
    assert describe.established(_tls13(server_side=False), peer="mx[192.0.2.1]:25").startswith(
        "Anonymous TLS connection established to mx[192.0.2.1]:25: TLSv1.3"
    )
    ec = _tls13(
        kex_name="ECDHE", kex_curve="P-256", server_sig_name="ECDSA", server_sig_curve="P-384",
        server_sig_bits=0, server_sig_digest="SHA384",
    )  # fmt: skip
    assert describe.established(ec).endswith(
        "key-exchange ECDHE (P-256) server-signature ECDSA (P-384) server-digest SHA384"
    )
    with pytest.raises(ValueError):
        describe.established(_tls13(), "at")


def test_peer_cert_lines_match_reference() -> None:
    info = _tls13(**TRUSTED)
    assert describe.peer_cert_lines(info) == [
        "subject=/CN=Julien Vehent",
        "issuer=/C=FR/O=Reference/CN=Reference CA",
        "unknown[127.0.0.1]: subject_CN=Julien Vehent, issuer=Reference CA, "
        "fingerprint=AA:BB, pkey_fingerprint=CC:DD",
    ]
    assert describe.peer_cert_lines(info, loglevel=1) == []
    assert describe.peer_cert_lines(_tls13()) == []


def test_received_clauses_match_reference() -> None:
    assert describe.received_clauses(_tls13(), ask_ccert=True) == [
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
        "\t key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256)",
        "\t(Client did not present a certificate)",
    ]
    assert describe.received_clauses(_tls13(**TRUSTED), ask_ccert=True) == [
        "\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
        "\t key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256",
        "\t client-signature RSA-PSS (2048 bits) client-digest SHA256)",
        '\t(Client CN "Julien Vehent", Issuer "Reference CA" (verified OK))',
    ]
    untrusted = {
        **TRUSTED,
        "trust": "Untrusted",
        "peer_cert": _cert("Untrusted Client", "Untrusted Client", "/CN=U", "/CN=U"),
    }
    assert describe.received_clauses(_tls13(**untrusted), ask_ccert=True)[-1] == (
        '\t(Client CN "Untrusted Client", Issuer "Untrusted Client" (not verified))'
    )
    tls12 = TLSInfo(True, PEER, "TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384", 256, 256)
    assert describe.received_clauses(tls12, ask_ccert=True) == [
        "\t(using TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits))",
        "\t(Client did not present a certificate)",
    ]
    assert describe.received_clauses(tls12, ask_ccert=False)[-1] == (
        "\t(No client certificate requested)"
    )


def test_after_handshake_order() -> None:
    info = _tls13(**TRUSTED, reused=True)
    lines = describe.after_handshake(info, 2)
    assert lines[0] == "unknown[127.0.0.1]: Reusing old session (RFC 5077 session ticket)"
    assert lines[1:4] == describe.peer_cert_lines(info)
    assert lines[4] == describe.established(info)
    assert describe.after_handshake(info, 1) == [describe.established(info)]
    assert describe.after_handshake(info, 0) == []


def test_misc_lines() -> None:
    assert describe.cipher_list_line(PEER, "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH:!aNULL") == (
        'unknown[127.0.0.1]: TLS cipher list "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH:!aNULL"'
    )
    assert describe.setting_up(PEER) == "setting up TLS connection from unknown[127.0.0.1]"
    assert describe.reuse_line(_tls13()) is None


# -- the reference's own certificates through our engine give the reference's lines --

needs_ref = pytest.mark.skipif(
    not all(os.access(REF / f, os.R_OK) for f in ("smtp.key", "client.key", "selfsigned.key")),
    reason="reference certificates in /etc/postfix/certs not readable",
)


def _ref_session(client_cert: str | None) -> tuple[TLSSession, list[str]]:
    st = ServerTLS(
        ServerTLSSettings(
            smtpd_tls_security_level="may",
            smtpd_tls_cert_file=str(REF / "smtp.pem"),
            smtpd_tls_key_file=str(REF / "smtp.key"),
            smtpd_tls_CAfile=str(REF / "ca.crt"),
            smtpd_tls_ask_ccert=True,
            smtpd_tls_loglevel=2,
        )
    )
    ct = ClientTLS(
        ClientTLSSettings(
            smtp_tls_security_level="may",
            smtp_tls_cert_file=str(REF / f"{client_cert}.pem") if client_cert else "",
            smtp_tls_key_file=str(REF / f"{client_cert}.key") if client_cert else "",
        )
    )
    lines: list[str] = []
    srv = st.new_session(PEER, log=lines.append)
    cli = ct.new_session("vm[127.0.0.1]:25")
    for _ in range(6):
        srv.receive(cli.data_to_send())
        cli.receive(srv.data_to_send())
    assert srv.handshake_done
    return srv, lines + describe.peer_cert_lines(srv.info) + [describe.established(srv.info)]


@needs_ref
def test_reference_certificates_trusted() -> None:
    _, lines = _ref_session("client")
    assert lines[-4:] == [
        "subject=/CN=Julien Vehent",
        "issuer=/C=FR/O=Reference/CN=Reference CA",
        "unknown[127.0.0.1]: subject_CN=Julien Vehent, issuer=Reference CA, fingerprint="
        "DB:56:B9:6F:AB:07:69:94:EF:10:C3:1A:18:78:67:34:8E:8D:47:19:3B:CE:F3:0B:F6:47:3B:F3:F3:"
        "D7:51:9C, pkey_fingerprint=EC:32:D8:2E:48:EF:47:FA:21:CE:36:2E:F5:24:3F:39:3D:CA:AB:A5:"
        "0E:ED:F6:C4:EF:9A:CE:84:DF:79:27:72",
        "Trusted TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher "
        "TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS "
        "(2048 bits) server-digest SHA256 client-signature RSA-PSS (2048 bits) client-digest "
        "SHA256",
    ]
    assert "unknown[127.0.0.1]: depth=1 verify=1 subject=/C=FR/O=Reference/CN=Reference CA" in lines
    assert "unknown[127.0.0.1]: depth=0 verify=1 subject=/CN=Julien Vehent" in lines


@needs_ref
def test_reference_certificates_untrusted_and_anonymous() -> None:
    srv, lines = _ref_session("selfsigned")
    assert lines[-1].startswith("Untrusted TLS connection established from unknown[127.0.0.1]")
    assert lines[-2].startswith(
        "unknown[127.0.0.1]: subject_CN=Untrusted Client, issuer=Untrusted Client, "
        "fingerprint=B6:10:48:F1:A2:9B:1D:D8:8E:3D:40:AE:18:25:72:4E:C5:E9:4E:37:10:34:A5:23:"
    )
    depth_lines = [ln for ln in lines if "depth=" in ln]
    assert depth_lines == [
        "unknown[127.0.0.1]: depth=0 verify=0 subject=/CN=Untrusted Client",
        "unknown[127.0.0.1]: depth=0 verify=1 subject=/CN=Untrusted Client",
    ]
    assert describe.received_clauses(srv.info, True)[-1] == (
        '\t(Client CN "Untrusted Client", Issuer "Untrusted Client" (not verified))'
    )
    srv, lines = _ref_session(None)
    assert lines[-1] == (
        "Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher "
        "TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS "
        "(2048 bits) server-digest SHA256"
    )
    # the handshake progress the reference logs at smtpd_tls_loglevel = 2
    assert lines[:4] == [
        "SSL_accept:before SSL initialization",
        "SSL_accept:before SSL initialization",
        "SSL_accept:SSLv3/TLS read client hello",
        "SSL_accept:SSLv3/TLS write server hello",
    ]
