"""A real `openssl s_client` against TLSSession, bridged by a tiny test-only TCP server."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from postwall.tls import certs, describe
from postwall.tls.engine import TLSError, TLSInfo
from postwall.tls.policy import ServerTLS, ServerTLSSettings

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


class EngineServer:
    """Accepts TCP connections and runs one server TLSSession per connection; echoes data."""

    def __init__(self, tls: ServerTLS) -> None:
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.infos: list[TLSInfo] = []
        self.errors: list[TLSError] = []
        self.logs: list[str] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        sess = self.tls.new_session("localhost[127.0.0.1]", log=self.logs.append)
        conn.settimeout(10)
        recorded = False
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                try:
                    plain = sess.receive(data)
                except TLSError as exc:
                    self.errors.append(exc)
                    conn.sendall(sess.data_to_send())  # the alert
                    return
                if sess.handshake_done and not recorded:
                    self.infos.append(sess.info)
                    recorded = True
                if plain:
                    sess.send(b"echo: " + plain)
                out = sess.data_to_send()
                if out:
                    conn.sendall(out)
                if not data or sess.closed:
                    return

    def close(self) -> None:
        self.sock.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sclient")
    ca = certs.make_ca("S_client CA")
    certs.write_pem(ca, d / "ca.pem", d / "ca.key", with_chain=False)
    certs.write_pem(certs.make_server_cert(ca, "localhost"), d / "srv.pem", d / "srv.key")
    certs.write_pem(certs.make_client_cert(ca, "Client Cert"), d / "cli.pem", d / "cli.key")
    certs.write_pem(certs.make_self_signed("Self Signed"), d / "self.pem", d / "self.key")
    return d


def make_server(pki: Path, **kw: object) -> EngineServer:
    settings: dict[str, object] = {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(pki / "srv.pem"),
        "smtpd_tls_key_file": str(pki / "srv.key"),
        "smtpd_tls_CAfile": str(pki / "ca.pem"),
        "smtpd_tls_ask_ccert": True,
        "smtpd_tls_loglevel": 2,
    }
    settings.update(kw)
    return EngineServer(ServerTLS(ServerTLSSettings(**settings)))  # type: ignore[arg-type]


def s_client(port: int, *args: str, expect_echo: bool = True) -> str:
    """Run s_client, send one line, wait for the echo, close stdin; return its output."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = bytearray()

    def read() -> None:
        while chunk := proc.stdout.read1(4096):  # type: ignore[union-attr]
            out.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
    deadline = time.monotonic() + 5
    while expect_echo and b"echo: ping" not in out and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # let the TLS 1.3 tickets be read and written to -sess_out
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    proc.wait(10)
    reader.join(5)
    return out.decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("cert", "trust"),
    [(None, "Anonymous"), ("cli", "Trusted"), ("self", "Untrusted")],
)
def test_sclient_trust(pki: Path, cert: str | None, trust: str) -> None:
    srv = make_server(pki)
    try:
        args = ["-CAfile", str(pki / "ca.pem"), "-verify_return_error"]
        if cert:
            args += ["-cert", str(pki / f"{cert}.pem"), "-key", str(pki / f"{cert}.key")]
        out = s_client(srv.port, *args)
    finally:
        srv.close()
    assert "echo: ping" in out
    assert "Verify return code: 0 (ok)" in out  # s_client trusts our server certificate
    # smtpd_tls_CAfile names the acceptable issuers in the CertificateRequest
    assert "Acceptable client certificate CA names\nCN = S_client CA" in out
    assert len(srv.infos) == 1
    info = srv.infos[0]
    assert info.trust == trust
    line = describe.established(info)
    assert line.startswith(f"{trust} TLS connection established from localhost[127.0.0.1]: TLSv1.3")
    assert f"Cipher is {info.cipher_name}" in out
    if cert:
        assert info.peer_cert is not None
        assert "client-signature RSA-PSS (2048 bits)" in line
        assert (
            f"localhost[127.0.0.1]: subject_CN={info.peer_cert.subject_cn},"
            in (describe.peer_cert_lines(info)[2])
        )


def test_sclient_tls11_refused(pki: Path) -> None:
    srv = make_server(
        pki, smtpd_tls_security_level="encrypt", smtpd_tls_mandatory_protocols=">=TLSv1.2"
    )
    try:
        out = s_client(srv.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", expect_echo=False)
    finally:
        srv.close()
    assert "echo: ping" not in out
    assert srv.infos == []
    assert [str(e) for e in srv.errors] == ["SSL_accept error from localhost[127.0.0.1]: -1"]
    assert "alert protocol version" in out or "protocol version" in out


def test_sclient_howto_protocols(pki: Path) -> None:
    srv = make_server(
        pki, smtpd_tls_security_level="encrypt", smtpd_tls_mandatory_protocols="!SSLv2"
    )
    try:
        out12 = s_client(srv.port, "-tls1_2")
        out13 = s_client(srv.port, "-tls1_3")
    finally:
        srv.close()
    assert "echo: ping" in out12 and "echo: ping" in out13
    assert sorted(i.protocol for i in srv.infos) == ["TLSv1.2", "TLSv1.3"]


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_sclient_resumption_and_timeout(pki: Path, tmp_path: Path, version: str) -> None:
    sess = tmp_path / "sess.pem"
    srv = make_server(pki, smtpd_tls_session_cache_timeout=2)
    try:
        first = s_client(srv.port, version, "-sess_out", str(sess))
        assert "New, TLSv1." in first
        assert sess.exists()
        second = s_client(srv.port, version, "-sess_in", str(sess))
        assert "Reused, TLSv1." in second
        time.sleep(2.5)
        third = s_client(srv.port, version, "-sess_in", str(sess))
        assert "New, TLSv1." in third and "Reused," not in third
    finally:
        srv.close()
    reused = [i.reused for i in srv.infos]
    assert reused == [False, True, False]
    expected = "localhost[127.0.0.1]: Reusing old session (RFC 5077 session ticket)"
    assert describe.reuse_line(srv.infos[1]) == expected


def test_resumption_does_not_survive_restart(pki: Path, tmp_path: Path) -> None:
    # Documented limitation: ticket keys live in the SSL_CTX, pyOpenSSL cannot persist them.
    sess = tmp_path / "sess.pem"
    srv = make_server(pki)
    try:
        s_client(srv.port, "-sess_out", str(sess))
    finally:
        srv.close()
    srv = make_server(pki)
    try:
        out = s_client(srv.port, "-sess_in", str(sess))
    finally:
        srv.close()
    assert "New, TLSv1.3" in out
