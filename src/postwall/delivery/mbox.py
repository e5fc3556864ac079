"""Local delivery into a UNIX mailbox file, as Postfix's local(8) writes /var/mail/USER.

Used when home_mailbox names a file (no trailing slash) or, with home_mailbox empty, when
mail_spool_directory does not end in a slash: Debian's default, `/var/mail`.

Contract of `deliver_mbox`: the message is appended whole or not at all.  Under the locks
mailbox_delivery_lock names (Debian: `fcntl, dotlock`; also `flock`), it appends, as
Postfix's MAIL_COPY_MBOX does: a `From SENDER  DATE` line (MAILER-DAEMON for the null
sender, asctime format), Return-Path, X-Original-To and Delivered-To, the content with LF
line ends and `>` before every line that begins with `From `, then an empty line; then
fsync.  A failure truncates the file back to its old size.  Locks are retried
deliver_lock_attempts times, deliver_lock_delay apart; a dot-lock file older than
stale_lock_time is removed.  mailbox_size_limit bounds the file.

Outcomes, worded as local(8) (local/mailbox.c, global/mbox_open.c): `delivered to
mailbox`; otherwise `cannot update mailbox PATH for user USER. REASON`, deferred (4.2.0)
for a lock that stays taken or a mailbox not owned by its user (strict_mailbox_ownership),
4.3.0 for a full disk, bounced 5.2.2 over the size limit, 5.2.0 for anything else (a
dot-lock that cannot be created, a mailbox that is not a regular file).

Identity: the caller decides who writes.  `ids`, when given, switches the effective user
between the spool identity (which creates the file and the dot-lock) and the recipient
(who writes, so quotas apply), as Postfix's set_eugid() does; see `spool_identity`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from postwall import fsutil
from postwall.config.params import Params
from postwall.delivery import DeliveryResult, DeliveryStatus, copy_head, lf_lines

_FROM = b"From "


@dataclass(frozen=True)
class MboxSettings:
    """The parameters mailbox delivery obeys (names and defaults as Postfix's)."""

    locks: tuple[str, ...] = ("fcntl", "dotlock")  # mailbox_delivery_lock
    size_limit: int = 51200000  # mailbox_size_limit; 0: none
    lock_attempts: int = 20  # deliver_lock_attempts
    lock_delay: float = 1.0  # deliver_lock_delay
    stale_lock_time: float = 500.0
    strict_owner: bool = True  # strict_mailbox_ownership

    @classmethod
    def from_params(cls, params: Params) -> MboxSettings:
        return cls(
            locks=tuple(w.lower() for w in params.mailbox_delivery_lock if w),
            size_limit=params.mailbox_size_limit,
            lock_attempts=params.deliver_lock_attempts,
            lock_delay=params.deliver_lock_delay,
            stale_lock_time=params.stale_lock_time,
            strict_owner=params.strict_mailbox_ownership,
        )


def spool_identity(spool_dir: str | None, uid: int, gid: int) -> tuple[int, int]:
    """Who creates a mailbox (local/mailbox.c): the recipient in their home or in a
    world-writable spool; the recipient with the spool's group in a group-writable one
    (Debian's /var/mail, 2775 root:mail); else root, which then gives the file away."""
    if spool_dir is None:
        return uid, gid
    try:
        st = os.stat(spool_dir)
    except OSError:
        return uid, gid
    if st.st_mode & stat.S_IWOTH:
        return uid, gid
    if st.st_mode & stat.S_IWGRP:
        return uid, st.st_gid
    return 0, 0


class _Failure(Exception):
    def __init__(self, dsn: str, reason: str) -> None:
        super().__init__(reason)
        self.dsn = dsn


def mbox_dsn(err: int, default: str) -> str:
    """global/mbox_open.c mbox_dsn(), for mailboxes and Maildirs: which errors are
    temporary, which mean "mailbox full"."""
    if err in (errno.EAGAIN, errno.ESTALE):
        return "4.2.0"
    if err == errno.ENOSPC:
        return "4.3.0"
    if err in (errno.EDQUOT, errno.EFBIG):
        return "5.2.2"
    return default


def deliver_mbox(
    chunks: Iterator[bytes],
    *,
    path: Path,
    user: str,
    uid: int,
    gid: int = -1,
    sender: str,
    recipient: str,
    original: str = "",
    settings: MboxSettings | None = None,
    ids: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """Append one message (its content as CRLF or LF chunks) to the mailbox at `path`.
    `ids("spool")` / `ids("user")` switch identities when the caller needs that."""
    cfg = settings or MboxSettings()
    switch = ids or (lambda _who: None)
    dotlock = f"{path}.lock" if "dotlock" in cfg.locks else None
    fd = -1
    have_dotlock = False
    try:
        switch("spool")
        if dotlock is not None:
            _dot_lock(dotlock, cfg, sleep)
            have_dotlock = True
        fd = _open(path)
        st = os.fstat(fd)
        if uid != os.geteuid() and st.st_uid == os.geteuid() and st.st_size == 0:
            os.fchown(fd, uid, gid)  # root made it: it is the recipient's (mbox_open.c)
            st = os.fstat(fd)
        _kernel_lock(fd, cfg, sleep)
        if not stat.S_ISREG(st.st_mode):
            raise _Failure("5.2.0", f"destination {path} is not a regular file")
        if cfg.strict_owner and st.st_uid != uid:
            raise _Failure("4.2.0", f"destination {path} is not owned by recipient")
        switch("user")
        _append(fd, chunks, sender, recipient, original, cfg.size_limit)
        switch("spool")
    except _Failure as exc:
        status: DeliveryStatus = "deferred" if exc.dsn.startswith("4") else "bounced"
        return DeliveryResult(
            status, exc.dsn, f"cannot update mailbox {path} for user {user}. {exc}"
        )
    finally:
        with contextlib.suppress(OSError):
            switch("spool")
        if fd >= 0:
            os.close(fd)  # also releases the fcntl/flock lock
        if have_dotlock and dotlock is not None:
            with contextlib.suppress(OSError):
                os.unlink(dotlock)
    return DeliveryResult("sent", "2.0.0", "delivered to mailbox")


def _open(path: Path) -> int:
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise _Failure(
            mbox_dsn(exc.errno or 0, "5.2.0"), f"cannot open file: {exc.strerror}"
        ) from None


def _dot_lock(lock: str, cfg: MboxSettings, sleep: Callable[[float], None]) -> None:
    """util/dot_lockfile.c: create LOCK exclusively; remove one older than stale_lock_time."""
    err = errno.EEXIST
    for attempt in range(max(cfg.lock_attempts, 1)):
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
            return
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - os.stat(lock).st_mtime > cfg.stale_lock_time:
                    os.unlink(lock)
                    continue
        except OSError as exc:
            err = exc.errno or errno.EACCES
            break
        if attempt + 1 < cfg.lock_attempts:
            sleep(cfg.lock_delay)
    # A lock that stays taken is temporary (mbox_open.c maps EEXIST to EAGAIN).
    dsn = mbox_dsn(errno.EAGAIN if err == errno.EEXIST else err, "5.2.0")
    raise _Failure(dsn, f"unable to create lock file {lock}: {os.strerror(err)}")


def _kernel_lock(fd: int, cfg: MboxSettings, sleep: Callable[[float], None]) -> None:
    for method in ("fcntl", "flock"):
        if method not in cfg.locks:
            continue
        for attempt in range(max(cfg.lock_attempts, 1)):
            try:
                if method == "fcntl":
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise _Failure(
                        mbox_dsn(exc.errno or 0, "5.2.0"),
                        f"unable to lock for exclusive access: {exc.strerror}",
                    ) from None
            if attempt + 1 < cfg.lock_attempts:
                sleep(cfg.lock_delay)
        else:
            raise _Failure(
                "4.2.0",
                f"unable to lock for exclusive access: {os.strerror(errno.EAGAIN)}",
            )


def _append(
    fd: int, chunks: Iterator[bytes], sender: str, recipient: str, original: str, limit: int
) -> None:
    start = os.lseek(fd, 0, os.SEEK_END)
    written = start
    try:
        head = copy_head(sender, original or recipient, recipient, from_line=True)
        for piece in _with_tail(head, quote_from_lines(chunks)):
            written += len(piece)
            if limit and written > limit:  # Postfix: RLIMIT_FSIZE, so EFBIG
                raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
            fsutil.write_all(fd, piece)
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
            os.fsync(fd)
        dsn = mbox_dsn(exc.errno or 0, "5.3.0")
        raise _Failure(dsn, f"error writing message: {exc.strerror or exc}") from None


def _with_tail(head: bytes, body: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from body
    yield b"\n"  # MAIL_COPY_BLANK: the empty line that ends an mbox message


def quote_from_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """LF line ends, a final newline, and `>` before each line starting `From `, across
    any chunk boundaries."""
    held = b""  # a line start that might still become "From "
    at_start = True
    for data in lf_lines(chunks):
        data = held + data
        held = b""
        if at_start and data.startswith(_FROM):
            data = b">" + data
        data = data.replace(b"\n" + _FROM, b"\n>" + _FROM)
        cut = data.rfind(b"\n") + 1
        tail = data[cut:] if cut or at_start else b""
        if tail and len(tail) < len(_FROM) and _FROM.startswith(tail):
            held, data = tail, data[: len(data) - len(tail)]
            at_start = True
        else:
            at_start = data.endswith(b"\n")
        if data:
            yield data
    if held:
        yield held
