"""Fixtures for tests that run postwall as a real process (`python3 -m postwall start`).

Contract: `postwall_tls` is a running postwall whose smtpd offers STARTTLS with the session's
test server certificate and asks for client certificates signed by the test CA; it is
stopped at teardown (tests/conftest.py's postwall_factory).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import peers


@pytest.fixture
def postwall_tls(
    postwall_factory: Callable[..., peers.PostwallServer], certs: peers.TestCerts
) -> peers.PostwallServer:
    return postwall_factory(
        params={
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_CAfile": str(certs.ca_cert),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
            "mydestination": "localhost, postwall.test",
        }
    )
