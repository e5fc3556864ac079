"""Shared fixtures and the CI strictness rule for the whole suite.

Contract: under CI (the CI environment variable set, as `.ci/run` does) a test marked
`interop` that skips is reported as a failure, because a missing peer in CI means the peer
installation broke, not that the test does not apply (`require_tool` in tests/peers.py fails
directly too). Fixtures here start real programs and always stop them at teardown.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and peers.in_ci()
        and item.get_closest_marker("interop") is not None
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"interop test skipped under CI, which must run every peer: {reason}"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> peers.TestCerts:
    """CA, server (localhost, mx.postwall.test), CA-signed client and self-signed client."""
    return peers.make_test_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def postwall_factory(tmp_path: Path) -> Iterator[Callable[..., peers.PostwallServer]]:
    """make(params=..., smtpd_options=..., start=True) -> PostwallServer; all stopped at
    teardown."""
    servers: list[peers.PostwallServer] = []

    def make(
        params: dict[str, str] | None = None,
        smtpd_options: dict[str, str] | None = None,
        start: bool = True,
        **kw: object,
    ) -> peers.PostwallServer:
        server = peers.PostwallServer(
            config_dir=tmp_path / f"postwall{len(servers) + 1}",
            params=dict(params or {}),
            smtpd_options=dict(smtpd_options or {}),
            **kw,  # type: ignore[arg-type]
        )
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.cleanup()


@pytest.fixture
def postwall_tls(
    postwall_factory: Callable[..., peers.PostwallServer], certs: peers.TestCerts
) -> peers.PostwallServer:
    """A running postwall whose smtpd offers STARTTLS with the test server certificate on
    `port` and implicit TLS (as on 465) on `smtps_port`, and asks for client certificates
    signed by the test CA (Received header and TLS log lines on); mail for localhost and
    postwall.test goes to Maildirs."""
    smtps_port = peers.free_port()
    made = postwall_factory(
        params={
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_CAfile": str(certs.ca_cert),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
            "mydestination": "localhost, postwall.test",
        },
        extra_services=[
            f"127.0.0.1:{smtps_port} inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes"
        ],
    )
    made.smtps_port = smtps_port  # type: ignore[attr-defined]
    return made


@pytest.fixture
def sasl_receiver(
    postwall_factory: Callable[..., peers.PostwallServer], certs: peers.TestCerts, tmp_path: Path
) -> peers.PostwallServer:
    """A postwall that takes mail for root@b.test from authenticated clients only (user
    alice, peers.SASL_PASSWORD; PLAIN, LOGIN and SCRAM-SHA-256): STARTTLS offered on
    `port`, implicit TLS (as on 465) on `smtps_port`."""
    pwfile = tmp_path / "sasl_passwd"
    res = peers.run_postwall(
        "saslpasswd", "-f", str(pwfile), "add", "alice", stdin=peers.SASL_PASSWORD
    )
    assert res.returncode == 0, res.stderr
    smtps_port = peers.free_port()
    made = postwall_factory(
        params={
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_security_level": "may",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "postwall",
            "smtpd_sasl_path": str(pwfile),
            "mynetworks": "192.0.2.0/24",  # loopback is not trusted: only AUTH gets in
            "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
            "mydestination": "localhost, b.test",
            "smtpd_error_sleep_time": "0",
        },
        extra_services=[
            f"127.0.0.1:{smtps_port} inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes"
        ],
    )
    made.smtps_port = smtps_port  # type: ignore[attr-defined]
    return made


@pytest.fixture(scope="session")
def reference_postfix(certs: peers.TestCerts) -> Iterator[peers.PostfixInstance]:
    """A private copy of the dev machine's reference Postfix (PostfixInstance.reference) on a
    free port, for the whole session; use it instead of 127.0.0.1:25, which CI lacks."""
    peers.require_root()
    peers.require_tool("postmulti")
    inst = peers.PostfixInstance.reference(certs.server_cert, certs.server_key, certs.ca_cert)
    try:
        yield inst.start()
    finally:
        inst.destroy()
