"""TLSSession against real OpenSSL peers: our own client, Python's ssl, aNULL-only clients."""

from __future__ import annotations

import re
import ssl
import time
from pathlib import Path

import pytest
from OpenSSL import SSL

from postwall.tls import certs, describe, policy
from postwall.tls.client import ClientTLS, ClientTLSSettings
from postwall.tls.engine import TLSError, TLSSession, dump_lines
from postwall.tls.policy import ServerTLS, ServerTLSSettings, TLSConfigError

PEER = "unknown[127.0.0.1]"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = certs.make_ca("Test CA")
    server = certs.make_server_cert(ca, "mx.example.test")
    client = certs.make_client_cert(ca, "Client One")
    rogue = certs.make_self_signed("Rogue Client")
    ec_server = certs.make_server_cert(ca, "mx.example.test", key_type="ecdsa")
    certs.write_pem(ca, d / "ca.pem", d / "ca.key", with_chain=False)
    certs.write_pem(server, d / "server.pem", d / "server.key")
    certs.write_pem(client, d / "client.pem", d / "client.key")
    certs.write_pem(rogue, d / "rogue.pem", d / "rogue.key")
    certs.write_pem(ec_server, d / "ec.pem", d / "ec.key")
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()} | {"dir": d}


def server(pki: dict[str, Path], **kw: object) -> ServerTLS:
    base: dict[str, object] = {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(pki["server_pem"]),
        "smtpd_tls_key_file": str(pki["server_key"]),
        "smtpd_tls_CAfile": str(pki["ca_pem"]),
    }
    base.update(kw)
    return ServerTLS(ServerTLSSettings(**base))  # type: ignore[arg-type]


def client(pki: dict[str, Path], cert: str | None = None, **kw: object) -> ClientTLS:
    base: dict[str, object] = {
        "smtp_tls_security_level": "may",
        "smtp_tls_CAfile": str(pki["ca_pem"]),
    }
    if cert:
        base["smtp_tls_cert_file"] = str(pki[f"{cert}_pem"])
        base["smtp_tls_key_file"] = str(pki[f"{cert}_key"])
    base.update(kw)
    return ClientTLS(ClientTLSSettings(**base))  # type: ignore[arg-type]


def pump(a: TLSSession, b: TLSSession, rounds: int = 10) -> None:
    for _ in range(rounds):
        out = a.data_to_send()
        if out:
            b.receive(out)
        back = b.data_to_send()
        if back:
            a.receive(back)
        if a.handshake_done and b.handshake_done and not out and not back:
            return


def handshake(st: ServerTLS, ct: ClientTLS, **kw: object) -> tuple[TLSSession, TLSSession]:
    srv = st.new_session(PEER)
    cli = ct.new_session("mx.example.test[127.0.0.1]:25", **kw)  # type: ignore[arg-type]
    pump(cli, srv)
    assert srv.handshake_done and cli.handshake_done
    return srv, cli


def test_anonymous_client_and_data_both_ways(pki: dict[str, Path]) -> None:
    srv, cli = handshake(server(pki, smtpd_tls_ask_ccert=True), client(pki))
    assert srv.info.trust == "Anonymous"
    assert srv.info.protocol == "TLSv1.3"
    assert srv.info.kex_name == "X25519"
    assert srv.info.server_sig_name == "RSA-PSS" and srv.info.server_sig_bits == 2048
    cli.send(b"EHLO client\r\n")
    assert srv.receive(cli.data_to_send()) == b"EHLO client\r\n"
    srv.send(b"250 ok\r\n" * 5000)  # larger than one record
    got = b""
    while len(got) < 8 * 5000:
        got += cli.receive(srv.data_to_send())
    assert got == b"250 ok\r\n" * 5000
    # close_notify reaches the peer as a clean close
    cli.shutdown()
    assert srv.receive(cli.data_to_send()) == b""
    assert srv.closed


def test_trusted_client_certificate(pki: dict[str, Path]) -> None:
    srv, cli = handshake(server(pki, smtpd_tls_ask_ccert=True), client(pki, "client"))
    info = srv.info
    assert info.trust == "Trusted"
    assert info.peer_cert is not None
    assert info.peer_cert.subject_cn == "Client One"
    assert info.peer_cert.issuer_cn == "Test CA"
    report = certs.inspect(pki["client_pem"])
    assert info.peer_cert.fingerprint == report.sha256
    assert info.peer_cert.pkey_fingerprint == report.pkey_sha256
    assert info.client_sig_name == "RSA-PSS"
    assert cli.info.trust == "Trusted"


def test_untrusted_self_signed_client_goes_on(pki: dict[str, Path]) -> None:
    lines: list[str] = []
    st = server(pki, smtpd_tls_ask_ccert=True, smtpd_tls_loglevel=2)
    srv = st.new_session(PEER, log=lines.append)
    cli = client(pki, "rogue").new_session("mx[127.0.0.1]:25")
    pump(cli, srv)
    assert srv.info.trust == "Untrusted"
    assert srv.info.verify_error == 18  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    # Postfix 3.7 logs the failing and then the accepted pass over the same leaf
    assert f"{PEER}: depth=0 verify=0 subject=/CN=Rogue Client" in lines
    assert f"{PEER}: depth=0 verify=1 subject=/CN=Rogue Client" in lines
    assert "SSL_accept:SSLv3/TLS read client certificate" in lines
    cli.send(b"data")
    assert srv.receive(cli.data_to_send()) == b"data"


def test_certificate_not_requested_without_ask_ccert(pki: dict[str, Path]) -> None:
    srv, _ = handshake(server(pki), client(pki, "client"))
    assert srv.info.trust == "Anonymous"
    assert srv.info.client_sig_name == ""
    assert describe.received_clauses(srv.info, ask_ccert=False)[-1] == (
        "\t(No client certificate requested)"
    )


class PyPeer:
    """Python's ssl module over memory BIOs, as an independent TLS implementation user."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=False)
        self.done = False

    def step(self, srv: TLSSession) -> None:
        if not self.done:
            try:
                self.obj.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
        data = self.out.read()
        if data:
            srv.receive(data)
        back = srv.data_to_send()
        if back:
            self.inc.write(back)


def _py_ctx(max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = max_version
    return ctx


def test_python_ssl_client_with_certificate(pki: dict[str, Path]) -> None:
    ctx = _py_ctx()
    ctx.load_cert_chain(pki["client_pem"], pki["client_key"])
    ctx.load_verify_locations(pki["ca_pem"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    peer = PyPeer(ctx)
    srv = server(pki, smtpd_tls_ask_ccert=True).new_session(PEER)
    for _ in range(6):
        peer.step(srv)
    assert peer.done and srv.handshake_done
    assert srv.info.trust == "Trusted"
    assert srv.info.cipher_name == peer.obj.cipher()[0]
    peer.obj.write(b"QUIT\r\n")
    assert srv.receive(peer.out.read()) == b"QUIT\r\n"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls11_client_refused_at_tls12_minimum(pki: dict[str, Path]) -> None:
    st = server(pki, smtpd_tls_security_level="encrypt", smtpd_tls_mandatory_protocols=">=TLSv1.2")
    srv = st.new_session(PEER)
    peer = PyPeer(_py_ctx(ssl.TLSVersion.TLSv1_1))
    with pytest.raises(TLSError) as exc:
        for _ in range(4):
            peer.step(srv)
    assert str(exc.value) == f"SSL_accept error from {PEER}: -1"
    assert any("unsupported protocol" in d for d in exc.value.details)
    # the protocol_version alert still goes out to the client
    assert srv.data_to_send()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_howto_not_sslv2_keeps_modern_tls(pki: dict[str, Path]) -> None:
    """TLS 1.1 too, as Debian's Postfix 3.7 accepts it with these settings (OpenSSL
    would refuse it at its default security level)."""
    st = server(pki, smtpd_tls_security_level="encrypt", smtpd_tls_mandatory_protocols="!SSLv2")
    assert st.protocols == ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
    for version, expected in (
        (None, "TLSv1.3"),
        (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
        (ssl.TLSVersion.TLSv1_1, "TLSv1.1"),
    ):
        srv = st.new_session(PEER)
        peer = PyPeer(_py_ctx(version))
        for _ in range(6):
            peer.step(srv)
        assert srv.info.protocol == expected


def _anull_client() -> TLSSession:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_cipher_list(b"aNULL:@SECLEVEL=0")
    return TLSSession(ctx, server_side=False, peer="x[127.0.0.1]:25")


# OpenSSL's default security level already refuses aNULL; lowering it shows that the
# exclusions, not the library default, are what keeps aNULL out.
LOW_SECLEVEL_HIGH = "aNULL:-aNULL:HIGH:@STRENGTH:@SECLEVEL=0"


def test_anull_negotiable_without_exclusion(pki: dict[str, Path]) -> None:
    # Postfix's grade lists start "aNULL:-aNULL:" which keeps aNULL suites (last).
    st = server(
        pki,
        smtpd_tls_security_level="encrypt",
        smtpd_tls_mandatory_ciphers="high",
        tls_high_cipherlist=LOW_SECLEVEL_HIGH,
    )
    srv, cli = st.new_session(PEER), _anull_client()
    pump(cli, srv)
    assert "ADH" in srv.info.cipher_name or "AECDH" in srv.info.cipher_name
    assert cli.info.trust == "Anonymous"


@pytest.mark.parametrize(
    "settings",
    [
        {"smtpd_tls_mandatory_exclude_ciphers": ("aNULL", "MD5")},
        {"smtpd_tls_exclude_ciphers": ("aNULL",)},
        {"smtpd_tls_ask_ccert": True},  # Postfix adds !aNULL when asking for a cert
    ],
)
def test_anull_excluded(pki: dict[str, Path], settings: dict[str, object]) -> None:
    st = server(
        pki,
        smtpd_tls_security_level="encrypt",
        smtpd_tls_mandatory_ciphers="high",
        tls_high_cipherlist=LOW_SECLEVEL_HIGH,
        **settings,
    )
    assert st.cipher_list.endswith(":!aNULL") or ":!aNULL:" in st.cipher_list
    srv, cli = st.new_session(PEER), _anull_client()
    with pytest.raises(TLSError, match=r"^SSL_accept error from unknown\[127.0.0.1\]: -1$"):
        pump(cli, srv)


def _py_peer(ciphers: str) -> PyPeer:
    """A TLS 1.2 client on the system's OpenSSL (as sslscan and most MTAs are)."""
    ctx = _py_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(ciphers + ":@SECLEVEL=0")
    return PyPeer(ctx)


def _handshake(peer: PyPeer, srv: TLSSession) -> None:
    for _ in range(6):
        peer.step(srv)


def test_default_suites_match_the_reference_postfix(pki: dict[str, Path]) -> None:
    """What sslscan found on Debian's Postfix 3.7 with its defaults, and postwall now
    gives too: DHE suites (2048-bit group), anonymous suites unless a client
    certificate is asked for; never IDEA or SEED."""
    st = server(pki)
    srv, peer = st.new_session(PEER), _py_peer("DHE-RSA-AES256-GCM-SHA384")
    _handshake(peer, srv)
    assert peer.done and srv.info.cipher_name == "DHE-RSA-AES256-GCM-SHA384"
    srv, cli = st.new_session(PEER), _anull_client()
    pump(cli, srv)
    assert cli.info.trust == "Anonymous"
    srv, cli = server(pki, smtpd_tls_ask_ccert=True).new_session(PEER), _anull_client()
    with pytest.raises(TLSError):
        pump(cli, srv)
    assert "IDEA" not in ":".join(srv._conn.get_cipher_list())
    assert "SEED" not in ":".join(srv._conn.get_cipher_list())


def test_dh_parameter_file(pki: dict[str, Path], tmp_path: Path) -> None:
    good = tmp_path / "dh.pem"
    good.write_bytes(policy.FFDHE2048)
    srv = server(pki, smtpd_tls_dh1024_param_file=str(good)).new_session(PEER)
    peer = _py_peer("DHE-RSA-AES128-GCM-SHA256")
    _handshake(peer, srv)
    assert srv.info.cipher_name == "DHE-RSA-AES128-GCM-SHA256"
    bad = tmp_path / "bad.pem"
    bad.write_text("not DH parameters\n")
    with pytest.raises(TLSConfigError, match="smtpd_tls_dh1024_param_file"):
        server(pki, smtpd_tls_dh1024_param_file=str(bad))


def test_lost_connection_during_handshake(pki: dict[str, Path]) -> None:
    srv = server(pki).new_session(PEER)
    cli = client(pki).new_session("mx[127.0.0.1]:25")
    srv.receive(cli.data_to_send())
    with pytest.raises(TLSError, match=r"^SSL_accept error from unknown\[127.0.0.1\]: "):
        srv.receive(b"")
    with pytest.raises(TLSError, match="lost connection"):
        server(pki).new_session(PEER).receive(b"")


def test_garbage_instead_of_client_hello(pki: dict[str, Path]) -> None:
    srv = server(pki).new_session(PEER)
    with pytest.raises(TLSError) as exc:
        srv.receive(b"EHLO not-tls\r\n")
    assert exc.value.reason == f"SSL_accept error from {PEER}: -1"
    # OpenSSL 3's wording with the packed code, as Postfix 3.7 logs it (it adds file:line).
    assert exc.value.details == (
        "TLS library problem: error:0A00010B:SSL routines::wrong version number",
    )


def test_handshake_failure_logs_error_in_state_at_loglevel_2(pki: dict[str, Path]) -> None:
    lines: list[str] = []
    srv = server(pki, smtpd_tls_loglevel=2).new_session(PEER, log=lines.append)
    with pytest.raises(TLSError):
        srv.receive(b"\x16\x03\x01\x00\x05hello")  # a record, but no ClientHello
    assert lines[-2:] == ["SSL3 alert write:fatal:unexpected_message", "SSL_accept:error in error"]


@pytest.mark.parametrize("version", ["TLSv1.2", "TLSv1.3"])
def test_resumption_within_and_after_timeout(pki: dict[str, Path], version: str) -> None:
    st = server(pki, smtpd_tls_session_cache_timeout=2)
    ct = client(pki, smtp_tls_protocols=f"<={version}")
    srv, cli = handshake(st, ct)
    assert srv.info.protocol == version and not srv.info.reused
    cli.send(b"x")  # lets the TLS 1.3 client read the server's tickets
    srv.receive(cli.data_to_send())
    cli.receive(srv.data_to_send())
    saved = cli.get_session()

    srv2 = st.new_session(PEER)
    cli2 = TLSSession(ct.context_for("may"), server_side=False, peer="p", session=saved)
    pump(cli2, srv2)
    assert srv2.info.reused and cli2.info.reused
    assert srv2.info.server_sig_digest == ""  # no signature on resumption, as Postfix logs
    assert (
        describe.reuse_line(srv2.info) == f"{PEER}: Reusing old session (RFC 5077 session ticket)"
    )

    time.sleep(2.5)
    srv3 = st.new_session(PEER)
    cli3 = TLSSession(ct.context_for("may"), server_side=False, peer="p", session=saved)
    pump(cli3, srv3)
    assert not srv3.info.reused


def test_zero_timeout_disables_resumption(pki: dict[str, Path]) -> None:
    st = server(pki, smtpd_tls_session_cache_timeout=0)
    ct = client(pki, smtp_tls_protocols="<=TLSv1.2")
    _, cli = handshake(st, ct)
    srv2 = st.new_session(PEER)
    cli2 = TLSSession(ct.context_for("may"), server_side=False, peer="p", session=cli.get_session())
    pump(cli2, srv2)
    assert not srv2.info.reused


def test_reload_keeps_running_session(pki: dict[str, Path], tmp_path: Path) -> None:
    cert, key = tmp_path / "s.pem", tmp_path / "s.key"
    ca = certs.make_ca("Reload CA")
    certs.write_pem(certs.make_server_cert(ca, "old.example"), cert, key)
    st = server(pki, smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key))
    srv, cli = handshake(st, client(pki))
    certs.write_pem(certs.make_server_cert(ca, "new.example"), cert, key)
    st.reload()
    cli.send(b"still here")
    assert srv.receive(cli.data_to_send()) == b"still here"
    _, cli2 = handshake(st, client(pki))
    assert cli2.info.peer_cert is not None
    assert cli2.info.peer_cert.subject_cn == "new.example"
    assert cli.info.peer_cert is not None and cli.info.peer_cert.subject_cn == "old.example"


def test_failed_reload_keeps_old_context(pki: dict[str, Path], tmp_path: Path) -> None:
    cert, key = tmp_path / "s.pem", tmp_path / "s.key"
    ca = certs.make_ca("Reload CA")
    certs.write_pem(certs.make_server_cert(ca, "old.example"), cert, key)
    st = server(pki, smtpd_tls_cert_file=str(cert), smtpd_tls_key_file=str(key))
    other = certs.make_server_cert(ca, "new.example")
    certs.write_pem(other, cert, tmp_path / "unused.key")  # cert no longer matches key
    with pytest.raises(TLSConfigError) as exc:
        st.reload()
    assert exc.value.parameter == "smtpd_tls_key_file"
    _, cli = handshake(st, client(pki))
    assert cli.info.peer_cert is not None and cli.info.peer_cert.subject_cn == "old.example"


def test_ecdsa_server_certificate(pki: dict[str, Path]) -> None:
    st = server(pki, smtpd_tls_cert_file=str(pki["ec_pem"]), smtpd_tls_key_file=str(pki["ec_key"]))
    srv, _ = handshake(st, client(pki))
    assert (srv.info.server_sig_name, srv.info.server_sig_curve) == ("ECDSA", "P-256")
    assert "server-signature ECDSA (P-256) server-digest SHA256" in describe.established(srv.info)


def test_client_verify_and_secure_levels(pki: dict[str, Path]) -> None:
    st = server(pki)
    ok = client(pki, smtp_tls_security_level="verify")
    _, cli = handshake(st, ok, nexthop="example.test", mx_hostname="mx.example.test")
    assert cli.info.trust == "Verified" and cli.info.matched
    _, cli = handshake(st, ok, nexthop="example.test", mx_hostname="other.example.test")
    # A trusted chain with the wrong name fails OpenSSL's verification in Postfix 3.7.
    assert cli.info.trust == "Untrusted" and not cli.info.matched
    sec = client(pki, smtp_tls_security_level="secure")
    _, cli = handshake(st, sec, nexthop="example.test", mx_hostname="whatever")
    assert cli.info.trust == "Verified"  # dot-nexthop: mx.example.test under example.test
    no_ca = client(pki, smtp_tls_security_level="verify", smtp_tls_CAfile="")
    _, cli = handshake(st, no_ca, nexthop="example.test", mx_hostname="mx.example.test")
    assert cli.info.trust == "Untrusted"
    assert cli.info.verify_message.startswith(
        "certificate verification failed for mx.example.test[127.0.0.1]:25: untrusted issuer"
    )


def test_name_mismatch_outranks_untrusted_issuer(pki: dict[str, Path]) -> None:
    # Postfix keeps the verification error at the lowest depth (seen with posttls-finger):
    # the leaf's name mismatch, not the untrusted CA above it.
    st = server(pki)
    no_ca = client(pki, smtp_tls_security_level="verify", smtp_tls_CAfile="")
    _, cli = handshake(st, no_ca, nexthop="example.test", mx_hostname="other.example.test")
    assert cli.info.trust == "Untrusted"
    assert cli.info.verify_message.endswith(": num=62:hostname mismatch")
    ok = client(pki, smtp_tls_security_level="verify")
    _, cli = handshake(st, ok, nexthop="127.0.0.1", mx_hostname="127.0.0.1")
    assert cli.info.trust == "Untrusted"
    assert cli.info.verify_message.endswith(": num=64:IP address mismatch")


def test_send_before_handshake_is_an_error(pki: dict[str, Path]) -> None:
    srv = server(pki).new_session(PEER)
    with pytest.raises(TLSError):
        srv.send(b"too early")
    with pytest.raises(TLSError):
        _ = srv.info


def test_records_arriving_together_or_in_pieces(pki: dict[str, Path]) -> None:
    srv, cli = handshake(server(pki), client(pki))
    wire = b""
    for line in (b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n"):
        cli.send(line)  # one record each
        wire += cli.data_to_send()
    # Three records in one read, then one record cut in two reads.
    assert srv.receive(wire) == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
    cli.send(b"QUIT\r\n")
    record = cli.data_to_send()
    assert srv.receive(record[:7]) == b""
    assert srv.receive(record[7:]) == b"QUIT\r\n"
    assert srv.data_to_send() == b""


def test_signature_facts_follow_the_certificate_of_each_context(pki: dict[str, Path]) -> None:
    for _ in range(2):  # contexts come and go (reloads); each reports its own key
        srv, _ = handshake(server(pki), client(pki))
        assert (srv.info.server_sig_name, srv.info.server_sig_digest) == ("RSA-PSS", "SHA256")
        ec = server(
            pki, smtpd_tls_cert_file=str(pki["ec_pem"]), smtpd_tls_key_file=str(pki["ec_key"])
        )
        srv, _ = handshake(ec, client(pki))
        assert (srv.info.server_sig_name, srv.info.server_sig_curve) == ("ECDSA", "P-256")


def test_dump_lines_are_postfix_s_tls_dump_buffer() -> None:
    assert dump_lines(b"\x16\x03\x01\x00\x05hello  \x00") == [
        "0000 16 03 01 00 05 68 65 6c|6c 6f " + " " * 18 + " .....hel lo",
        "000a - <SPACES/NULLS>",
    ]
    row = bytes(range(0x41, 0x51))
    assert dump_lines(row) == [
        "0000 41 42 43 44 45 46 47 48|49 4a 4b 4c 4d 4e 4f 50  ABCDEFGH IJKLMNOP"
    ]


@pytest.mark.parametrize("loglevel", [2, 3, 4])
def test_loglevel_3_dumps_the_handshake_and_4_everything(
    pki: dict[str, Path], loglevel: int
) -> None:
    lines: list[str] = []
    srv = server(pki, smtpd_tls_loglevel=loglevel).new_session(PEER, log=lines.append)
    cli = client(pki).new_session("mx.example.test[127.0.0.1]:25")
    pump(cli, srv)
    assert srv.handshake_done and cli.handshake_done
    reads = [x for x in lines if x.startswith("read from ")]
    writes = [x for x in lines if x.startswith("write to ")]
    if loglevel == 2:
        assert not reads and not writes
    else:
        # As OpenSSL reads a socket: the ClientHello's 5-byte header, then its body.
        assert re.fullmatch(
            r"read from [0-9A-F]{8,} \[[0-9A-F]{8,}\] \(5 bytes => 5 \(0x5\)\)", reads[0]
        )
        assert lines[lines.index(reads[0]) + 1].startswith("0000 16 03 01 ")
        # As Postfix's: the first line before any byte arrived, then the reads.
        assert lines[0] == "SSL_accept:before SSL initialization"
        assert lines[1] == reads[0]
        # One write per flush: the server's flight (ServerHello to Finished), the tickets.
        assert len(writes) == 2
    handshake_lines = len(lines)
    cli.send(b"EHLO client\r\n")
    assert srv.receive(cli.data_to_send()) == b"EHLO client\r\n"
    srv.send(b"250 ok\r\n")
    cli.receive(srv.data_to_send())
    after = lines[handshake_lines:]
    if loglevel == 4:
        assert any(x.startswith("read from ") for x in after)
        assert any(x.startswith("write to ") for x in after)
    else:
        assert after == []
