"""Our client TLS engine against a private reference Postfix, compared with posttls-finger.

posttls-finger shares Postfix's TLS client code, so its log lines for the same server are
what tls_client.c would write; our describe() output must be identical.
"""

from __future__ import annotations

import socket
import subprocess

import pytest

import peers
from postwall.tls import describe
from postwall.tls.client import ClientTLS, ClientTLSSettings
from postwall.tls.engine import TLSInfo, TLSSession

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def port(reference_postfix: peers.PostfixInstance) -> int:
    peers.require_tool("posttls-finger")
    assert reference_postfix.port is not None
    return reference_postfix.port


def _peer(port: int) -> str:
    return f"127.0.0.1[127.0.0.1]:{port}"


def _finger(port: int, *args: str) -> list[str]:
    out = subprocess.run(
        ["posttls-finger", "-c", *args, f"[127.0.0.1]:{port}", "localhost"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [ln.removeprefix("posttls-finger: ") for ln in (out.stdout + out.stderr).splitlines()]


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("reference closed the connection")
        data += chunk
        last = data.rstrip(b"\r\n").split(b"\r\n")[-1]
        if data.endswith(b"\r\n") and last[3:4] == b" ":
            return data


def _starttls(ct: ClientTLS, port: int, **kw: object) -> tuple[TLSInfo, list[str]]:
    lines: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert _read_reply(sock).startswith(b"220 ")
        sock.sendall(b"EHLO postwall.test\r\n")
        assert b"STARTTLS" in _read_reply(sock)
        sock.sendall(b"STARTTLS\r\n")
        assert _read_reply(sock).startswith(b"220 2.0.0")
        sess: TLSSession = ct.new_session(_peer(port), log=lines.append, **kw)  # type: ignore[arg-type]
        while not sess.handshake_done:
            sock.sendall(sess.data_to_send())
            sess.receive(sock.recv(65536))
        sock.sendall(sess.data_to_send())
        sess.send(b"QUIT\r\n")
        sock.sendall(sess.data_to_send())
        reply = b""
        while b"\r\n" not in reply:
            reply += sess.receive(sock.recv(65536))
        assert reply.startswith(b"221 2.0.0")
        sess.shutdown()
        sock.sendall(sess.data_to_send())
        return sess.info, lines


def test_opportunistic_client_matches_posttls_finger(port: int) -> None:
    ref = _finger(port, "-l", "may", "-L", "2")
    ct = ClientTLS(ClientTLSSettings(smtp_tls_security_level="may", smtp_tls_loglevel=2))
    info, lines = _starttls(ct, port)
    assert describe.cipher_list_line(_peer(port), ct.cipher_lists["may"]) in ref
    assert describe.peer_cert_lines(info)[0] in ref  # subject_CN, issuer_CN, fingerprints
    assert describe.established(info) in ref  # "Untrusted TLS connection established to ..."
    assert [ln for ln in lines if "depth=" in ln] == [ln for ln in ref if "depth=" in ln]


def test_secure_client_with_ca_matches_posttls_finger(port: int, certs: peers.TestCerts) -> None:
    ref = _finger(port, "-l", "secure", "-F", str(certs.ca_cert), "-L", "summary")
    settings = ClientTLSSettings(
        smtp_tls_security_level="secure", smtp_tls_CAfile=str(certs.ca_cert)
    )
    ct = ClientTLS(settings)
    info, _ = _starttls(ct, port, nexthop="localhost", mx_hostname="127.0.0.1")
    assert info.trust == "Verified"
    assert describe.established(info) in ref
    assert ct.cipher_lists["secure"].endswith(":!aNULL")
