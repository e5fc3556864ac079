"""Plays every tests/transcripts/*.txt against the SMTP core.

The core runs with settings that mirror the reference Postfix on this machine
(myhostname vm, Debian banner, STARTTLS offered), so a transcript whose first
line is `# live` also plays, byte for byte, against a live server: the
reference Postfix on 127.0.0.1:25, or POSTWALL_TRANSCRIPT_TARGET=host:port.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
from transcript_runner import CoreDriver, SocketDriver, parse, run

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


HOST, _, PORT = os.environ.get("POSTWALL_TRANSCRIPT_TARGET", "127.0.0.1:25").rpartition(":")


def _target_up() -> bool:
    try:
        socket.create_connection((HOST, int(PORT)), 1).close()
        return True
    except OSError:
        return False


LIVE = [p for p in FILES if p.read_text().startswith("# live")]


@pytest.mark.interop
@pytest.mark.parametrize("path", LIVE, ids=[p.stem for p in LIVE])
def test_transcript_live(path: Path) -> None:
    if not _target_up():
        pytest.skip(f"no SMTP server on {HOST}:{PORT}")
    _, steps = parse(path)
    run(steps, SocketDriver(HOST, int(PORT)), path.name)
