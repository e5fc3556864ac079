"""Our client engine against the running reference Postfix, compared with posttls-finger.

posttls-finger shares Postfix's TLS client code, so its log lines for the same server are
what tls_client.c would write; our describe() output must be identical.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from postwall.tls import describe
from postwall.tls.client import ClientTLS, ClientTLSSettings
from postwall.tls.engine import TLSInfo, TLSSession

CA = Path("/etc/postfix/certs/ca.crt")
PEER = "127.0.0.1[127.0.0.1]:25"


def _reference_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 25), timeout=2) as s:
            return s.recv(512).startswith(b"220 ")
    except OSError:
        return False


pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("posttls-finger") is None or not _reference_up(),
        reason="reference Postfix on 127.0.0.1:25 or posttls-finger not available",
    ),
]


def _finger(*args: str) -> list[str]:
    out = subprocess.run(
        ["posttls-finger", "-c", *args, "[127.0.0.1]:25", "vm"],
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


def _starttls(ct: ClientTLS, **kw: object) -> tuple[TLSInfo, list[str]]:
    lines: list[str] = []
    with socket.create_connection(("127.0.0.1", 25), timeout=10) as sock:
        assert _read_reply(sock).startswith(b"220 ")
        sock.sendall(b"EHLO postwall.test\r\n")
        assert b"STARTTLS" in _read_reply(sock)
        sock.sendall(b"STARTTLS\r\n")
        assert _read_reply(sock).startswith(b"220 2.0.0")
        sess: TLSSession = ct.new_session(PEER, log=lines.append, **kw)  # type: ignore[arg-type]
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


def test_opportunistic_client_matches_posttls_finger() -> None:
    ref = _finger("-l", "may", "-L", "2")
    ct = ClientTLS(ClientTLSSettings(smtp_tls_security_level="may", smtp_tls_loglevel=2))
    info, lines = _starttls(ct)
    assert describe.cipher_list_line(PEER, ct.cipher_lists["may"]) in ref
    assert describe.peer_cert_lines(info)[0] in ref  # subject_CN=vm, issuer_CN=..., fingerprints
    assert describe.established(info) in ref  # "Untrusted TLS connection established to ..."
    assert [ln for ln in lines if "depth=" in ln] == [ln for ln in ref if "depth=" in ln]


def test_secure_client_with_ca_matches_posttls_finger() -> None:
    if not CA.exists():
        pytest.skip("reference CA not present")
    ref = _finger("-l", "secure", "-F", str(CA), "-L", "summary")
    settings = ClientTLSSettings(smtp_tls_security_level="secure", smtp_tls_CAfile=str(CA))
    ct = ClientTLS(settings)
    info, _ = _starttls(ct, nexthop="vm", mx_hostname="127.0.0.1")
    assert info.trust == "Verified"
    assert describe.established(info) in ref
    assert ct.cipher_lists["secure"].endswith(":!aNULL")
