"""Mailbox-file delivery (delivery/mbox.py): format, quoting, locks, limits, refusals."""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from pathlib import Path

import pytest

from postwall.delivery import lf_lines
from postwall.delivery.mbox import MboxSettings, deliver_mbox, quote_from_lines

CONTENT = (
    b"Subject: test\r\nFrom: a@example.org\r\n\r\nFrom the start\r\nnot From here\r\n"
    b">From already quoted\r\nFrom\r\nFromage\r\n"
)


def _deliver(path: Path, content: bytes = CONTENT, **kw: object) -> object:
    args: dict[str, object] = {
        "path": path,
        "user": "someone",
        "uid": os.geteuid(),
        "sender": "a@example.org",
        "recipient": "someone@localhost",
        "settings": MboxSettings(lock_attempts=2),
        "sleep": lambda _s: None,
    }
    args.update(kw)
    return deliver_mbox(iter([content]), **args)  # type: ignore[arg-type]


def test_appends_in_postfix_mailbox_format(tmp_path: Path) -> None:
    box = tmp_path / "someone"
    assert _deliver(box, original="Someone@localhost").text == "delivered to mailbox"  # type: ignore[attr-defined]
    assert _deliver(box, sender="").status == "sent"  # type: ignore[attr-defined]
    text = box.read_bytes()
    messages = text.split(b"\n\nFrom ")
    assert len(messages) == 2
    first = text[: len(messages[0]) + 2]
    assert re.match(rb"From a@example\.org  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n", first)
    assert first.split(b"\n")[1:4] == [
        b"Return-Path: <a@example.org>",
        b"X-Original-To: Someone@localhost",
        b"Delivered-To: someone@localhost",
    ]
    body = first.split(b"\n\n", 1)[1]
    assert body == (b">From the start\nnot From here\n>From already quoted\nFrom\nFromage\n\n")
    assert messages[1].startswith(b"MAILER-DAEMON  ")  # the null sender
    assert b"Return-Path: <>\n" in messages[1]
    assert text.endswith(b"Fromage\n\n")
    assert stat.S_IMODE(box.stat().st_mode) == 0o600
    assert not (tmp_path / "someone.lock").exists()


def test_from_quoting_is_the_same_however_the_content_is_cut() -> None:
    whole = CONTENT + b"From x\r\nFro\r\nFrom "
    expected = b"".join(quote_from_lines(iter([whole])))
    reference = b"".join(
        b">" + line if line.startswith(b"From ") else line
        for line in b"".join(lf_lines(iter([whole]))).splitlines(keepends=True)
    )
    assert expected == reference
    for size in range(1, 12):
        pieces = [whole[i : i + size] for i in range(0, len(whole), size)]
        assert b"".join(quote_from_lines(iter(pieces))) == reference, size


def test_a_fresh_dot_lock_defers_and_a_stale_one_is_removed(tmp_path: Path) -> None:
    box = tmp_path / "someone"
    lock = tmp_path / "someone.lock"
    lock.write_bytes(b"")
    r = _deliver(box)
    assert (r.status, r.dsn) == ("deferred", "4.2.0")  # type: ignore[attr-defined]
    assert r.text == (  # type: ignore[attr-defined]
        f"cannot update mailbox {box} for user someone. "
        f"unable to create lock file {lock}: File exists"
    )
    assert lock.exists() and not box.exists()
    old = time.time() - 600
    os.utime(lock, (old, old))
    assert _deliver(box).status == "sent"  # type: ignore[attr-defined]
    assert not lock.exists()


def test_a_kernel_lock_held_elsewhere_defers(tmp_path: Path) -> None:
    box = tmp_path / "someone"
    box.write_bytes(b"")
    box.chmod(0o600)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # another process (a mail reader) holds the fcntl lock
        fd = os.open(box, os.O_WRONLY)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.write(ready_w, b"x")
        os.read(done_r, 1)
        os._exit(0)
    os.read(ready_r, 1)
    try:
        r = _deliver(box)
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
    assert (r.status, r.dsn) == ("deferred", "4.2.0")  # type: ignore[attr-defined]
    assert r.text.endswith("unable to lock for exclusive access: Resource temporarily unavailable")  # type: ignore[attr-defined]
    assert box.read_bytes() == b""
    assert _deliver(box).status == "sent"  # type: ignore[attr-defined]


def test_size_limit_bounces_and_leaves_the_mailbox_as_it_was(tmp_path: Path) -> None:
    box = tmp_path / "someone"
    box.write_bytes(b"x" * 900)
    box.chmod(0o600)
    r = _deliver(box, settings=MboxSettings(size_limit=1000))
    assert (r.status, r.dsn) == ("bounced", "5.2.2")  # type: ignore[attr-defined]
    assert r.text.endswith("error writing message: File too large")  # type: ignore[attr-defined]
    assert box.read_bytes() == b"x" * 900


def test_symlinks_directories_and_foreign_mailboxes_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    link = tmp_path / "linked"
    link.symlink_to(target)
    r = _deliver(link)
    assert (r.status, r.dsn) == ("bounced", "5.2.0")  # type: ignore[attr-defined]
    assert "cannot open file: Too many levels of symbolic links" in r.text  # type: ignore[attr-defined]
    assert target.read_bytes() == b""
    (tmp_path / "adir").mkdir()
    assert "cannot open file: Is a directory" in _deliver(tmp_path / "adir").text  # type: ignore[attr-defined]
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.write_bytes(b"")
        os.chown(foreign, 65534, -1)
        r = _deliver(foreign)
        assert (r.status, r.dsn) == ("deferred", "4.2.0")  # type: ignore[attr-defined]
        assert r.text.endswith(f"destination {foreign} is not owned by recipient")  # type: ignore[attr-defined]
        no_strict = MboxSettings(strict_owner=False, lock_attempts=2)
        assert _deliver(foreign, settings=no_strict).status == "sent"  # type: ignore[attr-defined]


@pytest.mark.parametrize("locks", [("fcntl",), ("flock",), ("dotlock",), ("fcntl", "dotlock")])
def test_each_lock_method_delivers(tmp_path: Path, locks: tuple[str, ...]) -> None:
    box = tmp_path / "someone"
    assert _deliver(box, settings=MboxSettings(locks=locks)).status == "sent"  # type: ignore[attr-defined]
    assert box.read_bytes().count(b"\nDelivered-To: someone@localhost\n") == 1
