"""Local delivery into Maildir (https://cr.yp.to/proto/maildir.html).

Contract of `deliver`: the message appears in `<maildir>/new/` complete or not
at all. It is written to `tmp/` under a name unique to this process and
delivery, fsync'ed, hard-linked into `new/` under
`<sec>.V<dev>I<inode>M<usec>.<host>` (the inode name Postfix uses), `new/` is
fsync'ed, and the `tmp/` name is removed. Missing `tmp/`, `new/`, `cur/` are
created mode 0700. Prepended, as Postfix's local(8) does: `Return-Path:
<sender>`, `X-Original-To: <original recipient>`, `Delivered-To: <recipient>`.
Content lines are stored LF-terminated (CRLF -> LF) and the file ends with a
newline.

`deliver` never raises for a delivery failure; it returns a `DeliveryResult`
with Postfix's mapping (local/maildir.c, global/mbox_open.c mbox_dsn):
EAGAIN/ESTALE 4.2.0 and ENOSPC 4.3.0 defer; EDQUOT/EFBIG 5.2.2 and anything
else 5.2.0 (5.3.0 for write errors) bounce, with text `maildir delivery
failed: ...`. Success is `sent 2.0.0 delivered to maildir`; an unknown user is
`bounced 5.1.1 unknown user: "name"` (local/unknown.c).

`deliver_local` maps a recipient to a maildir like Postfix: the local part is
unquoted, lowercased and stripped of a `recipient_delimiter` extension;
`home_mailbox` ending in `/` means the Maildir `~user/<home_mailbox>`, without the
slash the mailbox file `~user/<home_mailbox>`; with home_mailbox empty,
`mail_spool_directory` ending in `/` means the Maildir `<spool>/<user>/`, else the
mailbox file `<spool>/<user>` (Debian's /var/mail), written by delivery/mbox.py.
With mailbox_command set, a known user's mail goes to that command instead
(delivery/command.py), run as the user (root's mail as default_privs); `|command` and
`/file` alias targets are delivered as the alias table's owner, or default_privs when
that is root (`deliver_alias_target`; a file in mailbox format through mbox.py, or a
Maildir when the name ends in `/`).  .forward files are not consulted.  Running as root,
the delivery is done by a forked child that switched to the user's uid/gid (Postfix
uses set_eugid; a threaded process cannot), so files and quota belong to the user;
otherwise we deliver as ourselves.

After the privilege drop (master, started as root) the process that talks to the
network runs as mail_owner and cannot become a user any more.  Local delivery then
goes through a `DeliveryHelper`: a small process started as root before the drop,
which runs no asyncio, no TLS and no SMTP.  For each delivery the unprivileged side
sends it one end of a fresh socketpair (SCM_RIGHTS); the helper forks a child for it,
which reads a small JSON header (recipient, original recipient, sender, file name),
resolves the mailbox itself from the home_mailbox / mail_spool_directory /
recipient_delimiter it was started with (the request names a recipient, never a
path), switches to that user, and only then reads the content and writes the Maildir
file.  What a compromised mail_owner process can make it do is therefore what it can
do anyway by accepting mail: put a message into a local user's Maildir.  The helper
keeps the settings it was started with: a change of those three parameters needs a
restart.

Commands and files follow the same rule: the helper runs only what root configured.  It reads
main.cf itself when it starts (mailbox_command and the command_* settings; never from a
request), and for an alias command the request names only the alias key and the command
(or file) it expects: the helper looks the key up in its own reading of alias_maps and
refuses (deferred, nothing run or written) unless that alias lists exactly that item; it
then delivers with the rights of the table's owner, which it checks itself.

At a reload the helper also opens what mail_owner may not: a root-only TLS key (as
certbot writes them) and a maillog_file that logrotate recreated as root.  `read_file`
and `open_log` try themselves first and ask only on EACCES/EPERM; the helper opens a
path only if the current main.cf or a master.cf override names it in an
`smtp(d)_tls_*file(s)` parameter (read-only) or as maillog_file (append-only): it loads
the configuration itself, as root, so the unprivileged side cannot make it open anything
else.  It passes back the descriptor (SCM_RIGHTS).  Postfix gets the same effect by
starting fresh smtpd processes as root after `postfix reload`, and its postlogd runs
as root.

Blocking (file I/O, fsync, maybe fork): the queue manager runs it in a thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import json
import os
import pwd
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from postwall import fsutil
from postwall.config import load as load_config
from postwall.config.tables import (
    Table,
    lookup_maps,
    open_maps,
    open_table,
    split_list,
    table_files,
)
from postwall.delivery import DeliveryResult, copy_head, lf_lines
from postwall.delivery.command import (
    CommandSettings,
    CommandTarget,
    alias_items,
    message_stream,
    run_command,
    split_recipient,
    table_owner,
)
from postwall.delivery.mbox import MboxSettings, deliver_mbox, mbox_dsn, spool_identity

__all__ = [
    "LocalDeliveryNotSupported",
    "Mailbox",
    "MessageSource",
    "deliver",
    "deliver_alias_target",
    "deliver_local",
    "resolve_mailbox",
]

SENT = DeliveryResult("sent", "2.0.0", "delivered to maildir")

# next() on itertools.count is atomic under the GIL; no lock, so a fork() while
# another thread delivers cannot inherit a held lock.
_counter = itertools.count()


class LocalDeliveryNotSupported(Exception):
    """A local delivery method postwall does not implement (mbox files, ...)."""


class _Envelope(Protocol):
    sender: str


class MessageSource(Protocol):
    """What delivery needs from a queued message (queue.store.QueuedMessage fits)."""

    @property
    def envelope(self) -> _Envelope: ...

    def iter_content(self, chunk_size: int = ...) -> Iterator[bytes]: ...


@dataclass(frozen=True)
class Mailbox:
    """Where and as whom to deliver: a Maildir, or a mailbox file (`mbox`), which in
    the mail spool (`spool`) may be created with the spool's group or by root."""

    user: str
    path: Path
    uid: int
    gid: int
    mbox: bool = False
    spool: str | None = None


def _hostname() -> str:
    # Maildir spec: replace "/" and ":" so the name stays one path component.
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def _failed(exc: OSError, default_dsn: str, what: str) -> DeliveryResult:
    dsn = mbox_dsn(exc.errno or 0, default_dsn)
    text = f"maildir delivery failed: {what}: {exc.strerror or exc}"
    return DeliveryResult("deferred" if dsn.startswith("4") else "bounced", dsn, text)


def deliver(
    message: MessageSource,
    recipient: str,
    *,
    maildir: Path,
    delivered_to: str | None = None,
    original: str = "",
    stable_name: str | None = None,
) -> DeliveryResult:
    """Deliver one copy into `maildir` (with trailing-slash semantics: a directory).

    `stable_name`, when given, is the file's name in new/ and must be the same on every
    attempt for this message and recipient: a retry after a crash that happened between
    the link into new/ and the queue manager's record of it then finds the file there and
    does not deliver a second copy (Postfix would)."""
    maildir = Path(maildir)
    tmpdir, newdir = maildir / "tmp", maildir / "new"
    now = time.time()
    sec, usec = int(now), int((now - int(now)) * 1_000_000)
    host = _hostname()
    count = next(_counter)
    tmpfile = tmpdir / f"{sec}.P{os.getpid()}Q{count}.{host}"
    try:
        for d in (maildir, tmpdir, newdir, maildir / "cur"):
            fsutil.ensure_dir(d, 0o700)
        fd = fsutil.create_exclusive(tmpfile, 0o600)
    except OSError as exc:
        return _failed(exc, "5.2.0", f"create maildir file {tmpfile}")
    sender = message.envelope.sender
    head = copy_head(sender, original or recipient, delivered_to or recipient)
    try:
        try:
            fsutil.write_all(fd, head)
            for piece in lf_lines(message.iter_content()):
                fsutil.write_all(fd, piece)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _unlink_quietly(tmpfile)
        return _failed(exc, "5.3.0", "error writing message")
    newfile = newdir / (stable_name or f"{sec}.V{st.st_dev:x}I{st.st_ino:x}M{usec}.{host}")
    try:
        try:
            os.link(tmpfile, newfile)
        except FileExistsError:
            if stable_name is None:
                raise
        fsutil.fsync_dir(newdir)
    except OSError as exc:
        _unlink_quietly(tmpfile)
        return _failed(exc, "5.2.0", f"create maildir file {newfile}")
    _unlink_quietly(tmpfile)
    return SENT


def _unlink_quietly(path: Path) -> None:
    # A stale tmp/ file is harmless: Maildir readers ignore tmp/.
    with contextlib.suppress(OSError):
        os.unlink(path)


def _unquote_local(local: str) -> str:
    """RFC 5321 quoted local part to Postfix's internal form: `"bob"` -> `bob`."""
    if len(local) < 2 or not (local.startswith('"') and local.endswith('"')):
        return local
    out, escaped = [], False
    for ch in local[1:-1]:
        if escaped or ch != "\\":
            out.append(ch)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def resolve_mailbox(
    address: str,
    *,
    home_mailbox: str,
    mail_spool_directory: str,
    recipient_delimiter: str = "",
) -> Mailbox | DeliveryResult:
    """Map a local recipient to its maildir, or the bounce for an unknown user."""
    local = address.rpartition("@")[0] if "@" in address else address
    local = _unquote_local(local).lower()
    user = local
    if recipient_delimiter:
        # Postfix 2.11+: any one of the delimiter characters starts the extension.
        cut = min((i for i, c in enumerate(local) if c in recipient_delimiter), default=-1)
        if cut > 0:
            user = local[:cut]
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return DeliveryResult("bounced", "5.1.1", f'unknown user: "{user}"')
    if home_mailbox:  # a trailing slash means Maildir, else a mailbox file
        path = Path(pw.pw_dir) / home_mailbox
        return Mailbox(user, path, pw.pw_uid, pw.pw_gid, mbox=not home_mailbox.endswith("/"))
    if not mail_spool_directory:
        raise LocalDeliveryNotSupported("home_mailbox and mail_spool_directory are both empty")
    path = Path(mail_spool_directory) / user
    if mail_spool_directory.endswith("/"):
        return Mailbox(user, path, pw.pw_uid, pw.pw_gid)
    return Mailbox(user, path, pw.pw_uid, pw.pw_gid, mbox=True, spool=mail_spool_directory)


def deliver_local(
    message: MessageSource,
    recipient: str,
    *,
    home_mailbox: str,
    mail_spool_directory: str,
    recipient_delimiter: str = "",
    original: str = "",
    stable_name: str | None = None,
    mbox: MboxSettings | None = None,
    mailbox_command: str = "",
    commands: CommandSettings | None = None,
    command_maps: Sequence[Table] = (),
) -> DeliveryResult:
    """Resolve `recipient` and deliver it, as the user when we are root: to the user's
    command in mailbox_command_maps (`command_maps`), else `mailbox_command`, when set
    (main.cf's, as the recipient), else the mailbox."""
    target = resolve_mailbox(
        recipient,
        home_mailbox=home_mailbox,
        mail_spool_directory=mail_spool_directory,
        recipient_delimiter=recipient_delimiter,
    )
    if isinstance(target, DeliveryResult):
        return target
    if _helper is not None and os.geteuid() != 0:
        return _helper.deliver(message, recipient, original, stable_name)
    if command_maps:
        mailbox_command = lookup_maps(command_maps, target.user) or mailbox_command
    if mailbox_command:
        return _mailbox_command(
            message, target, recipient, original, mailbox_command, commands or CommandSettings()
        )
    if os.geteuid() != 0 or target.uid == 0:
        return _deliver_to(target, message, recipient, original, stable_name, mbox)
    return _deliver_as(target, message, recipient, original, stable_name, mbox)


def _deliver_to(
    target: Mailbox,
    message: MessageSource,
    recipient: str,
    original: str,
    stable_name: str | None,
    settings: MboxSettings | None,
    ids: Callable[[str], None] | None = None,
) -> DeliveryResult:
    if target.mbox:
        return deliver_mbox(
            message.iter_content(),
            path=target.path,
            user=target.user,
            uid=target.uid,
            gid=target.gid,
            sender=message.envelope.sender,
            recipient=recipient,
            original=original,
            settings=settings,
            ids=ids,
        )
    return deliver(
        message, recipient, maildir=target.path, original=original, stable_name=stable_name
    )


def _deliver_as_user(
    target: Mailbox,
    message: MessageSource,
    recipient: str,
    original: str,
    stable_name: str | None,
    settings: MboxSettings | None,
) -> DeliveryResult:
    """In a child of a root process: become the recipient (for good for a Maildir; for a
    mailbox file, the spool identity creates and locks it and the recipient writes, as
    Postfix's set_eugid() switches), then deliver."""
    os.umask(0o077)
    if not target.mbox:
        os.setgroups([target.gid])
        os.setgid(target.gid)
        os.setuid(target.uid)
        return _deliver_to(target, message, recipient, original, stable_name, settings)
    spool_uid, spool_gid = spool_identity(target.spool, target.uid, target.gid)

    def switch(who: str) -> None:
        uid, gid = (spool_uid, spool_gid) if who == "spool" else (target.uid, target.gid)
        os.seteuid(0)
        os.setgroups([gid])
        os.setegid(gid)
        os.seteuid(uid)

    return _deliver_to(target, message, recipient, original, stable_name, settings, switch)


def _deliver_as(
    target: Mailbox,
    message: MessageSource,
    recipient: str,
    original: str,
    stable_name: str | None,
    settings: MboxSettings | None,
) -> DeliveryResult:
    """Fork, become the user, deliver, report the result through a pipe."""
    return _in_child(
        lambda: _deliver_as_user(target, message, recipient, original, stable_name, settings),
        target.user,
    )


def _in_child(work: Callable[[], DeliveryResult], user: str) -> DeliveryResult:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only os-level work, then _exit without cleanup handlers
        code = 1
        try:
            os.close(rfd)
            r = work()
            fsutil.write_all(wfd, f"{r.status}\0{r.dsn}\0{r.text}".encode("utf-8", "replace"))
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    try:
        while chunk := os.read(rfd, 65536):
            chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    parts = b"".join(chunks).decode("utf-8", "replace").split("\0")
    if len(parts) != 3 or parts[0] not in ("sent", "deferred", "bounced"):
        return DeliveryResult(
            "deferred", "4.3.0", f"maildir delivery failed: delivery process for {user} died"
        )
    return DeliveryResult(parts[0], parts[1], parts[2])  # type: ignore[arg-type]


def _client(message: MessageSource) -> tuple[tuple[str, str], ...]:
    env = message.envelope
    return tuple(
        (name, str(getattr(env, attr, "") or ""))
        for name, attr in (
            ("CLIENT_HOSTNAME", "client_name"),
            ("CLIENT_ADDRESS", "client_addr"),
            ("CLIENT_HELO", "helo"),
            ("CLIENT_PROTOCOL", "protocol"),
            ("SASL_USERNAME", "sasl_username"),
        )
    )


def _default_privs(name: str) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise LocalDeliveryNotSupported(f"default_privs: unknown user: {name}") from None
    if pw.pw_uid == 0 or pw.pw_gid == 0:  # Postfix panics: "privileged default user id"
        raise LocalDeliveryNotSupported(f"default_privs: {name} is privileged")
    return pw.pw_uid, pw.pw_gid


def _mailbox_command(
    message: MessageSource,
    target: Mailbox,
    recipient: str,
    original: str,
    command: str,
    settings: CommandSettings,
) -> DeliveryResult:
    """mailbox_command as the recipient (root's mail as default_privs, as local(8))."""
    pw = pwd.getpwnam(target.user)
    uid, gid = pw.pw_uid, pw.pw_gid
    if uid == 0 or gid == 0:
        duid, dgid = _default_privs(settings.default_privs)
        uid, gid = uid or duid, gid or dgid
    job = CommandTarget(
        command=command,
        uid=uid,
        gid=gid,
        user=target.user,
        recipient=recipient,
        sender=message.envelope.sender,
        original=original,
        delivered=recipient,
        home=pw.pw_dir,
        shell=pw.pw_shell,
        client=_client(message),
    )
    return _run_in_child(job, settings, message)


def alias_target(
    message: MessageSource,
    *,
    alias_maps: tuple[str, ...],
    config_directory: str,
    key: str,
    item: str,
    address: str,
    original: str,
    settings: CommandSettings,
) -> CommandTarget | DeliveryResult:
    """A `|command` or `/file` alias target as local(8) delivers it, looked up again in
    alias_maps: `item` must be listed under `key` there (so nobody can name another), and
    runs as the owner of the table that lists it, or default_privs when that is root (or
    the table is not a file).  For a file, `command` is its path."""
    for ref in split_list(" ".join(alias_maps)):
        value = open_table(ref, Path(config_directory), aliases=True).lookup(key)
        if value is None:
            continue
        if item not in alias_items(value):
            break
        owner = table_owner(ref, Path(config_directory))
        user = split_recipient(address, settings.recipient_delimiter)[2]
        base = dict(
            command=item[1:] if item.startswith("|") else item,
            user=user,
            recipient=address,
            sender=message.envelope.sender,
            original=original,
            delivered=address,
            client=_client(message),
        )
        if owner:
            try:
                pw = pwd.getpwuid(owner)
            except KeyError:
                return DeliveryResult(
                    "deferred", "4.3.0", f"cannot find alias database owner for {ref}"
                )
            gid = pw.pw_gid or _default_privs(settings.default_privs)[1]
            return CommandTarget(uid=owner, gid=gid, home=pw.pw_dir, shell=pw.pw_shell, **base)  # type: ignore[arg-type]
        uid, gid = _default_privs(settings.default_privs)
        return CommandTarget(uid=uid, gid=gid, **base)  # type: ignore[arg-type]
    what = "command" if item.startswith("|") else "file"
    return DeliveryResult(
        "deferred", "4.3.0", f"alias {key}: {what} not listed in alias_maps: {item.lstrip('|')}"
    )


def deliver_alias_target(
    message: MessageSource,
    *,
    alias_maps: tuple[str, ...],
    config_directory: str,
    key: str,
    item: str,
    address: str,
    original: str,
    settings: CommandSettings,
    mbox: MboxSettings | None = None,
) -> DeliveryResult:
    """Deliver to a `|command` or `/file` target of alias `key` (see alias_target);
    after the privilege drop the root helper looks it up and delivers."""
    if _helper is not None and os.geteuid() != 0:
        return _helper.deliver_alias(message, key, item, address, original)
    job = alias_target(
        message,
        alias_maps=alias_maps,
        config_directory=config_directory,
        key=key,
        item=item,
        address=address,
        original=original,
        settings=settings,
    )
    if isinstance(job, DeliveryResult):
        return job
    if item.startswith("|"):
        return _run_in_child(job, settings, message)
    return _in_child(lambda: _deliver_file(job, message, mbox or MboxSettings()), job.user)


def _deliver_file(job: CommandTarget, message: MessageSource, mbox: MboxSettings) -> DeliveryResult:
    """local(8)'s file delivery, in a child: become the identity for good, then append in
    mailbox format (a path ending in / is a Maildir).  Not a regular file (/dev/null):
    written without locks, quoting or the final empty line, as Postfix does.  A dot-lock
    is not attempted (Postfix tries one and goes on when it cannot be made)."""
    os.umask(0o077)
    if os.geteuid() == 0:
        os.setgroups([job.gid])
        os.setgid(job.gid)
        os.setuid(job.uid)
    path = job.command
    if path.endswith("/"):
        return deliver(message, job.recipient, maildir=Path(path), original=job.original)
    prefix = f"cannot append message to destination file {path}: "
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        dsn = mbox_dsn(exc.errno or 0, "5.2.0")
        return DeliveryResult(
            "deferred" if dsn.startswith("4") else "bounced", dsn, prefix + str(exc.strerror)
        )
    if st is not None and st.st_mode & 0o111 and stat.S_ISREG(st.st_mode):
        return DeliveryResult("bounced", "5.2.0", prefix + "destination file is executable")
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                for piece in message_stream(
                    message.iter_content(), job.sender, job.original, job.delivered
                ):
                    fsutil.write_all(fd, piece)
            finally:
                os.close(fd)
        except OSError as exc:
            dsn = mbox_dsn(exc.errno or 0, "5.2.0")
            status = "deferred" if dsn.startswith("4") else "bounced"
            return DeliveryResult(status, dsn, prefix + str(exc.strerror))  # type: ignore[arg-type]
    else:
        locks = tuple(lock for lock in mbox.locks if lock != "dotlock")
        result = deliver_mbox(
            message.iter_content(),
            path=Path(path),
            user=job.user,
            uid=job.uid,
            gid=job.gid,
            sender=job.sender,
            recipient=job.delivered,
            original=job.original,
            settings=dataclasses.replace(mbox, locks=locks, strict_owner=False),
        )
        if result.status != "sent":
            why = result.text.removeprefix(f"cannot update mailbox {path} for user {job.user}. ")
            return DeliveryResult(result.status, result.dsn, prefix + why)
    return DeliveryResult("sent", "2.0.0", f"delivered to file: {path}")


def _run_in_child(
    job: CommandTarget, settings: CommandSettings, message: MessageSource
) -> DeliveryResult:
    """Fork (RLIMIT_FSIZE and the identity change stay in the child), run, report."""
    return _in_child(lambda: run_command(job, settings, message.iter_content()), job.user)


# -- the privileged delivery helper ----------------------------------------------------

_HEADER_MAX = 64 * 1024
_helper: DeliveryHelper | None = None


class DeliveryHelper:
    """The unprivileged side: a socket to the root helper process (see the module
    docstring).  Thread-safe: each delivery has its own socketpair."""

    def __init__(self, control: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        self._control = control
        self._proc = proc
        self._lock = threading.Lock()

    @classmethod
    def start(
        cls,
        *,
        home_mailbox: str,
        mail_spool_directory: str,
        recipient_delimiter: str,
        config_dir: str = "",
    ) -> DeliveryHelper:
        """Start the helper (we must still be root) and route deliver_local() through it;
        `config_dir` is where it finds the TLS files it may read for us."""
        global _helper
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        settings = json.dumps(
            [
                home_mailbox,
                mail_spool_directory,
                recipient_delimiter,
                config_dir,
            ]
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from postwall.delivery.local import helper_main; helper_main()",
                str(theirs.fileno()),
                settings,
            ],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            start_new_session=False,
        )
        theirs.close()
        _helper = cls(ours, proc)
        return _helper

    def stop(self) -> None:
        global _helper
        _helper = None
        self._control.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def read_file(self, path: str) -> bytes:
        """A TLS file's bytes: read directly, else (EACCES, EPERM) through a descriptor
        the root helper opened; it refuses any file the configuration does not name.
        Raises OSError."""
        try:
            with open(path, "rb") as f:
                return f.read()
        except PermissionError:
            pass
        with open(self._ask(b"F", path), "rb") as f:
            return f.read()

    def open_log(self, path: str) -> int:
        """An O_APPEND descriptor for maillog_file (logrotate made a new, root-owned one):
        opened directly, else by the root helper, which opens only maillog_file."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o644)
        except PermissionError:
            return self._ask(b"L", path)

    def _ask(self, kind: bytes, path: str) -> int:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(self._control, [kind], [theirs.fileno()])
            theirs.close()
            request = os.fsencode(path)
            mine.sendall(struct.pack("!I", len(request)) + request)
            mine.settimeout(10)
            msg, fds, _flags, _addr = socket.recv_fds(mine, 5, 1)
        finally:
            mine.close()
            theirs.close()
        if msg[:1] == b"\0" and fds:
            return fds[0]
        for fd in fds:
            os.close(fd)
        code = int.from_bytes(msg[1:5], "big") if len(msg) >= 5 else errno.EIO
        raise OSError(code, os.strerror(code), path)

    def deliver(
        self, message: MessageSource, recipient: str, original: str, stable_name: str | None
    ) -> DeliveryResult:
        request: dict[str, object] = {
            "recipient": recipient,
            "original": original,
            "stable_name": stable_name,
        }
        return self._request(message, request)

    def deliver_alias(
        self, message: MessageSource, key: str, item: str, address: str, original: str
    ) -> DeliveryResult:
        """Ask for the `|command` or `/file` listed under alias `key`: the helper delivers
        only if its own reading of alias_maps lists that item there."""
        request: dict[str, object] = {
            "alias": key,
            "item": item,
            "recipient": address,
            "original": original,
        }
        return self._request(message, request)

    def _request(self, message: MessageSource, request: dict[str, object]) -> DeliveryResult:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(self._control, [b"D"], [theirs.fileno()])
            theirs.close()
            request["sender"] = message.envelope.sender
            request["client"] = list(_client(message))
            header = json.dumps(request).encode("utf-8", "surrogateescape")
            mine.sendall(struct.pack("!I", len(header)) + header)
            for chunk in message.iter_content():
                if chunk:
                    mine.sendall(struct.pack("!I", len(chunk)) + chunk)
            mine.sendall(struct.pack("!I", 0))
            answer = b""
            while data := mine.recv(65536):
                answer += data
        except OSError as exc:
            return DeliveryResult(
                "deferred", "4.3.0", f"maildir delivery failed: delivery helper: {exc.strerror}"
            )
        finally:
            mine.close()
            theirs.close()
        parts = answer.decode("utf-8", "replace").split("\0")
        if len(parts) != 3 or parts[0] not in ("sent", "deferred", "bounced"):
            return DeliveryResult(
                "deferred", "4.3.0", "maildir delivery failed: delivery helper gave no answer"
            )
        return DeliveryResult(parts[0], parts[1], parts[2])  # type: ignore[arg-type]


class _Sender:
    def __init__(self, sender: str, client: dict[str, str]) -> None:
        self.sender = sender
        self.client_name = client.get("CLIENT_HOSTNAME", "")
        self.client_addr = client.get("CLIENT_ADDRESS", "")
        self.helo = client.get("CLIENT_HELO", "")
        self.protocol = client.get("CLIENT_PROTOCOL", "")
        self.sasl_username = client.get("SASL_USERNAME", "")


class _StreamedMessage:
    """MessageSource over the framed content of one helper request."""

    def __init__(self, sock: socket.socket, sender: str, client: dict[str, str]) -> None:
        self.envelope = _Sender(sender, client)
        self._sock = sock

    def iter_content(self, chunk_size: int = 65536) -> Iterator[bytes]:
        while True:
            (size,) = struct.unpack("!I", _recv_exact(self._sock, 4))
            if size == 0:
                return
            yield _recv_exact(self._sock, size)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(min(n - len(buf), 1 << 20))
        if not data:
            raise EOFError("delivery request cut short")
        buf += data
    return bytes(buf)


def helper_main() -> None:
    """The root helper's loop: one forked child per delivery request, until the
    unprivileged side closes the control socket (it stopped, or died)."""
    control = socket.socket(fileno=int(sys.argv[1]))
    home_mailbox, spool, delimiter, config_dir = json.loads(sys.argv[2])
    commands = _helper_commands(config_dir)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops us
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(control, 1, 1)
        except OSError:
            return
        if not msg:
            return
        if not fds:
            continue
        if msg in (b"F", b"L"):  # a quick open, served in turn: no child needed
            with socket.socket(fileno=fds[0]) as sock, contextlib.suppress(Exception):
                _serve_open(sock, config_dir, log=msg == b"L")
            continue
        if os.fork() == 0:
            code = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its commands
                control.close()
                sock = socket.socket(fileno=fds[0])
                _serve_one(sock, home_mailbox, spool, delimiter, commands)
                code = 0
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


@dataclass(frozen=True)
class _RootCommands:
    """What the helper may run, and how it writes mailboxes, read by the helper itself
    (as root) from main.cf."""

    mailbox_command: str = ""
    command_maps: tuple[Table, ...] = ()
    settings: CommandSettings = field(default_factory=CommandSettings)
    alias_maps: tuple[str, ...] = ()
    error: str = ""
    mbox: MboxSettings = field(default_factory=MboxSettings)


def _helper_commands(config_dir: str) -> _RootCommands:
    if not config_dir:
        return _RootCommands()
    try:
        params = load_config(Path(config_dir)).params
        maps = open_maps(params.mailbox_command_maps, Path(params.config_directory))
    except Exception as exc:  # refuse command deliveries, never fall back to the mailbox
        return _RootCommands(error=f"{config_dir}: {exc}")
    return _RootCommands(
        params.mailbox_command,
        tuple(maps),
        CommandSettings.from_params(params),
        tuple(params.alias_maps),
        "",
        MboxSettings.from_params(params),
    )


_TLS_FILE = re.compile(r"(smtpd?|lmtp)_tls_\w*(file|files)")


def helper_files(config_dir: str) -> tuple[set[str], str]:
    """What the root helper may open for the unprivileged side: every file an
    `smtp(d)_tls_*file(s)` parameter names in main.cf or a master.cf override, the
    smtp_sasl_password_maps files (commonly root-only, like Postfix's), and
    maillog_file."""
    config = load_config(Path(config_dir))
    names: set[str] = set()
    for params in (config.params, *(svc.params for svc in config.services)):
        for name, value in vars(params).items():
            if _TLS_FILE.fullmatch(name):
                values = value if isinstance(value, tuple) else (value,)
                names.update(os.path.abspath(v) for v in values if isinstance(v, str) and v)
    names.update(table_files(config.params.smtp_sasl_password_maps, Path(config_dir)))
    log = config.params.maillog_file
    return names, os.path.abspath(log) if log else ""


def _serve_open(sock: socket.socket, config_dir: str, *, log: bool) -> None:
    (size,) = struct.unpack("!I", _recv_exact(sock, 4))
    if size > 4096:
        return
    path = os.path.abspath(os.fsdecode(_recv_exact(sock, size)))
    try:
        tls_files, maillog = helper_files(config_dir) if config_dir else (set(), "")
        if log and path == maillog:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, 0o644)
        elif not log and path in tls_files:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            raise PermissionError(errno.EACCES, "not a file this configuration names")
    except Exception as exc:  # the configuration may not even load: refuse, never die
        code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EACCES
        sock.sendall(b"E" + code.to_bytes(4, "big"))
        return
    try:
        socket.send_fds(sock, [b"\0"], [fd])
    finally:
        os.close(fd)


def _serve_one(
    sock: socket.socket,
    home_mailbox: str,
    spool: str,
    delimiter: str,
    commands: _RootCommands,
) -> None:
    mbox = commands.mbox
    (size,) = struct.unpack("!I", _recv_exact(sock, 4))
    if size > _HEADER_MAX:
        return
    req = json.loads(_recv_exact(sock, size).decode("utf-8", "surrogateescape"))
    recipient, original = str(req["recipient"]), str(req["original"])
    client = {str(k): str(v) for k, v in req.get("client", [])}
    if "alias" in req:
        result = _serve_alias(sock, req, commands, client)
        fsutil.write_all(
            sock.fileno(),
            f"{result.status}\0{result.dsn}\0{result.text}".encode("utf-8", "replace"),
        )
        sock.shutdown(socket.SHUT_WR)
        return
    stable = req.get("stable_name")
    if stable is not None and (
        not isinstance(stable, str) or "/" in stable or stable in (".", "..")
    ):
        raise ValueError("bad file name")
    try:
        target = resolve_mailbox(
            recipient,
            home_mailbox=home_mailbox,
            mail_spool_directory=spool,
            recipient_delimiter=delimiter,
        )
    except LocalDeliveryNotSupported as exc:
        target = DeliveryResult("deferred", "4.3.0", str(exc))
    message = _StreamedMessage(sock, str(req["sender"]), client)
    if isinstance(target, DeliveryResult):
        result = target
    elif commands.error:
        result = DeliveryResult("deferred", "4.3.5", "mail system configuration error")
    elif command := (lookup_maps(commands.command_maps, target.user) or commands.mailbox_command):
        try:
            result = _mailbox_command(
                message, target, recipient, original, command, commands.settings
            )
        except LocalDeliveryNotSupported as exc:  # default_privs unusable
            result = DeliveryResult("deferred", "4.3.0", str(exc))
    elif target.uid == 0:  # root's own mail is written as root, as before the drop
        os.umask(0o077)
        result = _deliver_to(target, message, recipient, original, stable, mbox)
    else:
        result = _deliver_as_user(target, message, recipient, original, stable, mbox)
    fsutil.write_all(
        sock.fileno(), f"{result.status}\0{result.dsn}\0{result.text}".encode("utf-8", "replace")
    )
    sock.shutdown(socket.SHUT_WR)


def _serve_alias(
    sock: socket.socket,
    req: dict[str, object],
    commands: _RootCommands,
    client: dict[str, str],
) -> DeliveryResult:
    """An alias command request: run it only if the helper's own alias_maps list it."""
    if commands.error:
        return DeliveryResult("deferred", "4.3.5", "mail system configuration error")
    message = _StreamedMessage(sock, str(req["sender"]), client)
    item = str(req["item"])
    try:
        job = alias_target(
            message,
            alias_maps=commands.alias_maps,
            config_directory=commands.settings.config_directory,
            key=str(req["alias"]),
            item=item,
            address=str(req["recipient"]),
            original=str(req["original"]),
            settings=commands.settings,
        )
    except (OSError, ValueError, LocalDeliveryNotSupported) as exc:
        return DeliveryResult("deferred", "4.3.0", f"alias {req['alias']}: {exc}")
    if isinstance(job, DeliveryResult):
        for _chunk in message.iter_content():  # read it all, so the refusal gets through
            pass
        return job
    if item.startswith("|"):
        return run_command(job, commands.settings, message.iter_content())
    return _deliver_file(job, message, commands.mbox)
