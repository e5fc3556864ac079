"""Plays every tests/transcripts/*.txt against the SMTP core.

The core runs with settings that mirror the reference Postfix on this machine
(myhostname vm, Debian banner, STARTTLS offered), so a transcript whose first
line is `# live` also plays, byte for byte, against a live server: the
reference Postfix on 127.0.0.1:25, or POSTWALL_TRANSCRIPT_TARGET=host:port.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from transcript_runner import CoreDriver, SocketDriver, parse, run

import peers
from postwall.smtp.server import ServerSettings

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("*.txt"))
REFERENCE = ServerSettings(
    myhostname="vm", smtpd_banner="vm ESMTP Postfix (Debian/GNU)", starttls_offered=True
)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript_core(path: Path) -> None:
    overrides, steps = parse(path)
    settings = dataclasses.replace(REFERENCE, **overrides)  # type: ignore[arg-type]
    run(steps, CoreDriver(settings), path.name)


LIVE = [p for p in FILES if p.read_text().startswith("# live")]

# postwall configured as the reference Postfix is, so the same bytes are expected.
AS_REFERENCE = {
    "compatibility_level": "3.6",
    "myhostname": "vm",
    "mydestination": "$myhostname, vm, localhost.localdomain, , localhost",
    "mynetworks": "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128",
    "smtpd_banner": "$myhostname ESMTP Postfix (Debian/GNU)",
    "smtpd_tls_security_level": "may",
    "recipient_delimiter": "+",
    "alias_maps": "",
}


@pytest.fixture(scope="module")
def postwall_as_reference(
    certs: peers.TestCerts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    params = dict(AS_REFERENCE)
    params["smtpd_tls_cert_file"] = str(certs.server_cert)
    params["smtpd_tls_key_file"] = str(certs.server_key)
    server = peers.PostwallServer(config_dir=tmp_path_factory.mktemp("pw"), params=params)
    # PostwallServer's own default hostname must not win over the reference's.
    server.params.update(params)
    server.start()
    try:
        yield ("127.0.0.1", server.port)
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def target(request: pytest.FixtureRequest) -> tuple[str, int]:
    if request.param == "postfix":
        inst = request.getfixturevalue("reference_postfix")
        return ("127.0.0.1", inst.port)
    return request.getfixturevalue("postwall_as_reference")


@pytest.mark.interop
@pytest.mark.parametrize("target", ["postwall", "postfix"], indirect=True)
@pytest.mark.parametrize("path", LIVE, ids=[p.stem for p in LIVE])
def test_transcript_live(path: Path, target: tuple[str, int]) -> None:
    """The same transcript, byte for byte, against postwall and the reference Postfix."""
    _, steps = parse(path)
    run(steps, SocketDriver(*target), path.name)
