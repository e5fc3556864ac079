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
