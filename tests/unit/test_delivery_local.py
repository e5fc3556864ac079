"""Local Maildir delivery end to end from a real queue file, and the discard agent."""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwall.delivery import DeliveryResult, discard, lf_lines, local
from postwall.delivery.mbox import mbox_dsn
from postwall.queue import Envelope, QueuedMessage, QueueStore, Recipient

CONTENT = b"Received: from x\r\nSubject: test\r\n\r\nline one\r\nline two\r\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    s = QueueStore(tmp_path / "queue")
    yield s
    s.close()


def queued(
    store: QueueStore, content: bytes = CONTENT, sender: str = "alice@example.org"
) -> QueuedMessage:
    env = Envelope(
        sender=sender, recipients=[Recipient("bob@example.com")], arrival_time=time.time()
    )
    return store.load_sync(store.commit_sync(env, content))


def only_file(directory: Path) -> Path:
    files = list(directory.iterdir())
    assert len(files) == 1, files
    return files[0]


def test_deliver_into_new_maildir(store: QueueStore, tmp_path: Path) -> None:
    maildir = tmp_path / "home" / "Maildir"
    with queued(store) as msg:
        result = local.deliver(msg, "bob@example.com", maildir=maildir, original="Bob@Example.COM")
    assert result == DeliveryResult("sent", "2.0.0", "delivered to maildir")
    for sub in ("cur", "new", "tmp"):
        assert stat.S_IMODE((maildir / sub).stat().st_mode) == 0o700
    assert list((maildir / "tmp").iterdir()) == []  # atomically moved out of tmp/
    assert list((maildir / "cur").iterdir()) == []
    delivered = only_file(maildir / "new")
    host = socket.gethostname()
    assert re.fullmatch(rf"\d+\.V[0-9a-f]+I[0-9a-f]+M\d+\.{re.escape(host)}", delivered.name)
    assert delivered.read_bytes() == (
        b"Return-Path: <alice@example.org>\n"
        b"X-Original-To: Bob@Example.COM\n"
        b"Delivered-To: bob@example.com\n"
        b"Received: from x\nSubject: test\n\nline one\nline two\n"
    )
    assert stat.S_IMODE(delivered.stat().st_mode) == 0o600


def test_null_sender_and_missing_final_newline(store: QueueStore, tmp_path: Path) -> None:
    with queued(store, b"Subject: x\r\n\r\nno newline", sender="") as msg:
        assert local.deliver(msg, "bob@x", maildir=tmp_path / "md").status == "sent"
    data = only_file(tmp_path / "md" / "new").read_bytes()
    assert data.startswith(b"Return-Path: <>\nX-Original-To: bob@x\nDelivered-To: bob@x\n")
    assert data.endswith(b"\n\nno newline\n")


def test_two_deliveries_get_two_files(store: QueueStore, tmp_path: Path) -> None:
    with queued(store) as msg:
        for _ in range(2):
            assert local.deliver(msg, "bob@x", maildir=tmp_path / "md").status == "sent"
    assert len(list((tmp_path / "md" / "new").iterdir())) == 2


def test_crlf_split_across_chunks() -> None:
    out = b"".join(lf_lines(iter([b"a\r", b"\nb\r", b"\r\n", b"c\rd"])))
    assert out == b"a\nb\r\nc\rd\n"  # only CRLF pairs change; bare CR stays
    assert b"".join(lf_lines(iter([b"x\r"]))) == b"x\r\n"
    assert b"".join(lf_lines(iter([]))) == b""


def test_large_message_streams_correctly(store: QueueStore, tmp_path: Path) -> None:
    body = b"".join(b"line %d of a big message\r\n" % i for i in range(200_000))
    with queued(store, body) as msg:
        assert local.deliver(msg, "bob@x", maildir=tmp_path / "md").status == "sent"
    data = only_file(tmp_path / "md" / "new").read_bytes()
    assert data.split(b"\n", 3)[3] == body.replace(b"\r\n", b"\n")


def test_unwritable_maildir_bounces_like_postfix(store: QueueStore, tmp_path: Path) -> None:
    (tmp_path / "plainfile").write_bytes(b"")
    with queued(store) as msg:
        result = local.deliver(msg, "bob@x", maildir=tmp_path / "plainfile" / "Maildir")
    assert result.status == "bounced"
    assert result.dsn == "5.2.0"
    assert result.text.startswith("maildir delivery failed: create maildir file ")
    assert result.text.endswith(": Not a directory")


def test_disk_full_defers(
    store: QueueStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for sub in ("cur", "new", "tmp"):
        (tmp_path / "md" / sub).mkdir(parents=True)
    with queued(store) as msg:
        monkeypatch.setattr(os, "fsync", full)  # error injection only
        result = local.deliver(msg, "bob@x", maildir=tmp_path / "md")
    assert result == DeliveryResult(
        "deferred",
        "4.3.0",
        "maildir delivery failed: error writing message: No space left on device",
    )
    assert list((tmp_path / "md" / "new").iterdir()) == []
    assert list((tmp_path / "md" / "tmp").iterdir()) == []


def test_errno_to_dsn_mapping() -> None:
    assert mbox_dsn(errno.EAGAIN, "5.2.0") == "4.2.0"
    assert mbox_dsn(errno.ENOSPC, "5.2.0") == "4.3.0"
    assert mbox_dsn(errno.EDQUOT, "5.2.0") == "5.2.2"
    assert mbox_dsn(errno.EACCES, "5.2.0") == "5.2.0"


def test_resolve_unknown_user() -> None:
    r = local.resolve_mailbox(
        "No.Such.User+tag@example.com",
        home_mailbox="Maildir/",
        mail_spool_directory="/var/mail",
        recipient_delimiter="+",
    )
    assert r == DeliveryResult("bounced", "5.1.1", 'unknown user: "no.such.user"')


def test_resolve_home_mailbox_and_extension() -> None:
    r = local.resolve_mailbox(
        "Daemon+lists@vm",
        home_mailbox="Maildir/",
        mail_spool_directory="",
        recipient_delimiter="+-",
    )
    assert isinstance(r, local.Mailbox)
    assert (r.user, r.path, r.uid, r.mbox) == ("daemon", Path("/usr/sbin/Maildir"), 1, False)


def test_resolve_quoted_local_part() -> None:
    r = local.resolve_mailbox('"Daemon"@vm', home_mailbox="Maildir/", mail_spool_directory="")
    assert isinstance(r, local.Mailbox) and r.user == "daemon"
    r = local.resolve_mailbox('"no\\ body"@vm', home_mailbox="Maildir/", mail_spool_directory="")
    assert r == DeliveryResult("bounced", "5.1.1", 'unknown user: "no body"')


def test_resolve_spool_and_home_maildirs_and_mailbox_files() -> None:
    r = local.resolve_mailbox("daemon", home_mailbox="", mail_spool_directory="/var/mail/")
    assert isinstance(r, local.Mailbox) and (r.path, r.mbox) == (Path("/var/mail/daemon"), False)
    r = local.resolve_mailbox("daemon", home_mailbox="Mailbox", mail_spool_directory="")
    assert isinstance(r, local.Mailbox)
    assert (r.path, r.mbox, r.spool) == (Path("/usr/sbin/Mailbox"), True, None)
    # Debian's default: no home_mailbox, the /var/mail spool without a trailing slash.
    r = local.resolve_mailbox("daemon", home_mailbox="", mail_spool_directory="/var/mail")
    assert isinstance(r, local.Mailbox)
    assert (r.path, r.mbox, r.spool) == (Path("/var/mail/daemon"), True, "/var/mail")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to deliver as another user")
def test_deliver_local_as_the_user_when_root(store: QueueStore) -> None:
    spool = Path(tempfile.mkdtemp(prefix="postwall-spool-"))
    try:
        os.chmod(spool, 0o1777)  # like a world-writable spool, so the user can mkdir
        with queued(store) as msg:
            result = local.deliver_local(
                msg,
                "nobody+ext@localhost",
                home_mailbox="",
                mail_spool_directory=f"{spool}/",
                recipient_delimiter="+",
            )
        assert result.status == "sent", result
        maildir = spool / "nobody"
        delivered = only_file(maildir / "new")
        assert delivered.stat().st_uid == 65534
        assert maildir.stat().st_uid == 65534
        assert b"Delivered-To: nobody+ext@localhost\n" in delivered.read_bytes()
    finally:
        for path in sorted(spool.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        spool.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to deliver as another user")
def test_deliver_local_permission_problem_as_user(store: QueueStore, tmp_path: Path) -> None:
    # tmp_path is root-only: nobody cannot create its maildir there (Postfix bounces).
    with queued(store) as msg:
        result = local.deliver_local(
            msg, "nobody@localhost", home_mailbox="", mail_spool_directory=f"{tmp_path}/"
        )
    assert result.status == "bounced"
    assert result.dsn == "5.2.0"
    assert result.text.endswith("Permission denied")


def test_discard_texts() -> None:
    assert discard.deliver("example.com") == DeliveryResult("sent", "2.0.0", "example.com")
    assert discard.deliver("2.1.5 dropped by policy") == DeliveryResult(
        "sent", "2.1.5", "dropped by policy"
    )
    assert discard.deliver("5.7.1 spam") == DeliveryResult("sent", "2.7.1", "spam")
