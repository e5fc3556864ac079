"""Property tests for the TLS engine: whatever bytes a peer sends, the engine answers with
data or a TLSError, never another exception, and its state stays usable for the caller.

The engine drives OpenSSL through its C calls (SSL_do_handshake, SSL_read) to keep the
error codes, so these tests feed it random bytes at every stage a peer can reach: instead
of a ClientHello, after a real ClientHello, and after a completed handshake; at logging
levels 0 to 4 (level 3 and 4 format every byte read). `POSTWALL_FUZZ_SCALE` multiplies
the examples as in test_smtp_fuzz.py.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postwall.tls import certs
from postwall.tls.client import ClientTLS, ClientTLSSettings
from postwall.tls.engine import TLSError, TLSSession
from postwall.tls.policy import ServerTLS, ServerTLSSettings

SCALE = int(os.environ.get("POSTWALL_FUZZ_SCALE", "1"))
PEER = "unknown[192.0.2.1]"
RECORD_TYPES = st.sampled_from([20, 21, 22, 23, 24, 0x80])


@pytest.fixture(scope="module")
def server_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("fuzz-pki")
    pem = certs.make_server_cert(certs.make_ca("Fuzz CA"), "mx.fuzz.test")
    certs.write_pem(pem, d / "server.pem", d / "server.key")
    return d / "server.pem", d / "server.key"


def _server(files: tuple[Path, Path], loglevel: int) -> ServerTLS:
    return ServerTLS(
        ServerTLSSettings(
            smtpd_tls_security_level="may",
            smtpd_tls_cert_file=str(files[0]),
            smtpd_tls_key_file=str(files[1]),
            smtpd_tls_ask_ccert=True,
            smtpd_tls_loglevel=loglevel,
        )
    )


# Random bytes, and random TLS records (a plausible header with a random body), mixed.
records = st.builds(
    lambda kind, version, body: bytes([kind]) + version + len(body).to_bytes(2, "big") + body,
    RECORD_TYPES,
    st.sampled_from([b"\x03\x01", b"\x03\x03", b"\x03\x04", b"\x00\x02"]),
    st.binary(max_size=300),
)
garbage = st.lists(st.one_of(st.binary(min_size=1, max_size=200), records), max_size=6)


def _feed(session: TLSSession, chunks: list[bytes], log: list[str]) -> None:
    for chunk in chunks:
        try:
            session.receive(chunk)
        except TLSError as exc:
            assert exc.reason, "a TLSError always says why"
            assert all(d.startswith("TLS library problem: ") for d in exc.details)
            session.data_to_send()  # an alert may be queued; taking it must not fail
            return
        session.data_to_send()
    assert all(isinstance(line, str) for line in log)


@settings(
    max_examples=60 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(chunks=garbage, loglevel=st.integers(0, 4), stage=st.sampled_from(["hello", "mid", "done"]))
def test_random_bytes_give_data_or_a_tls_error(
    server_files: tuple[Path, Path], chunks: list[bytes], loglevel: int, stage: str
) -> None:
    log: list[str] = []
    srv = _server(server_files, loglevel).new_session(PEER, log=log.append)
    if stage != "hello":
        cli = ClientTLS(ClientTLSSettings(smtp_tls_security_level="may")).new_session(
            "mx.fuzz.test[192.0.2.2]:25"
        )
        srv.receive(cli.data_to_send())  # a real ClientHello: the server is mid-handshake
        if stage == "done":
            cli.receive(srv.data_to_send())
            srv.receive(cli.data_to_send())
            assert srv.handshake_done
    _feed(srv, chunks, log)
    # Whatever happened, the end of the connection is handled without surprises.
    with contextlib.suppress(TLSError):
        srv.receive(b"")
    srv.shutdown()
    srv.data_to_send()
