"""Debian's default local delivery, mailbox files in a /var/mail-like spool, postwall
against a private Postfix 3.7 with the same settings: the same message sent to both
lands in byte-identical form (once the lines that name the host, the queue id or the
time are set aside), in a file with the same owner, group and mode."""

from __future__ import annotations

import grp
import os
import re
import shutil
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop

MESSAGE = (
    b"From: alice@example.org\r\nTo: nobody@localhost\r\nSubject: mbox check\r\n"
    b"Message-ID: <mbox-check@example.org>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"\r\nFrom the first line\r\nnot From here\r\n>From already quoted\r\nFromage\r\n"
)


def _spool(path: Path) -> Path:
    """A spool like Debian's /var/mail: 2775 root:mail."""
    path.mkdir(parents=True)
    os.chown(path, 0, grp.getgrnam("mail").gr_gid)
    path.chmod(0o2775)
    return path


@pytest.fixture(scope="module")
def postfix_spool() -> Iterator[tuple[peers.PostfixInstance, Path]]:
    peers.require_root()
    peers.require_tool("postmulti")
    spool = peers.WORK_ROOT / f"pf-spool-{os.getpid()}"
    shutil.rmtree(spool, ignore_errors=True)
    _spool(spool)
    inst = peers.PostfixInstance.create(
        {"mydestination": "localhost", "mail_spool_directory": str(spool), "home_mailbox": ""},
        port=peers.free_port(),
    )
    try:
        yield inst.start(), spool
    finally:
        inst.destroy()
        shutil.rmtree(spool, ignore_errors=True)


def _send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("alice@example.org", ["nobody@localhost"], MESSAGE)


def _comparable(data: bytes) -> list[bytes]:
    """The mailbox minus what differs between two hosts: the From_ line's date and the
    Received header (host names, queue id, time)."""
    lines = data.split(b"\n")
    out, skipping = [], False
    for line in lines:
        if line.startswith(b"Received:"):
            skipping = True
            continue
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = False
        out.append(re.sub(rb"^(From \S+  ).*", rb"\1DATE", line))
    return out


def test_mailbox_file_matches_postfix(
    postfix_spool: tuple[peers.PostfixInstance, Path],
    postwall_factory: Callable[..., peers.PostwallServer],
) -> None:
    postfix, pf_spool = postfix_spool
    pw_spool = _spool(peers.WORK_ROOT / f"pw-spool-{os.getpid()}")
    try:
        postwall = postwall_factory(
            params={
                "mydestination": "localhost",
                "mail_spool_directory": str(pw_spool),
                "home_mailbox": "",
            }
        )
        for port in (postfix.port, postwall.port):
            assert port is not None
            _send(port)
            _send(port)  # a second message: appended after the first's empty line
        theirs, ours = pf_spool / "nobody", pw_spool / "nobody"
        for box in (theirs, ours):
            peers.wait_for(
                lambda b=box: b.exists() and b.read_bytes().count(b"\nFromage\n") == 2,
                30,
                f"two messages in {box}",
            )
        postwall.wait_log(
            r"to=<nobody@localhost>, relay=local, .*status=sent \(delivered to mailbox\)"
        )
        assert _comparable(ours.read_bytes()) == _comparable(theirs.read_bytes())
        st_ours, st_theirs = ours.stat(), theirs.stat()
        assert (st_ours.st_uid, st_ours.st_gid, st_ours.st_mode) == (
            st_theirs.st_uid,
            st_theirs.st_gid,
            st_theirs.st_mode,
        )
        assert st_ours.st_uid == 65534 and not (pw_spool / "nobody.lock").exists()
    finally:
        shutil.rmtree(pw_spool, ignore_errors=True)
