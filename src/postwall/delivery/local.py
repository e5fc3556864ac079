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
.forward files are not consulted. Running as root, the delivery is done by a forked child that
switched to the user's uid/gid (Postfix uses set_eugid; a threaded process
cannot), so files and quota belong to the user; otherwise we deliver as
ourselves.

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
import errno
import itertools
import json
import os
import pwd
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from postwall import fsutil
from postwall.config import load as load_config
from postwall.delivery import DeliveryResult, lf_lines
from postwall.delivery.mbox import MboxSettings, deliver_mbox, mbox_dsn, spool_identity

__all__ = [
    "LocalDeliveryNotSupported",
    "Mailbox",
    "MessageSource",
    "deliver",
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
    head = f"Return-Path: <{sender}>\n"
    if original or recipient:
        head += f"X-Original-To: {original or recipient}\n"
    head += f"Delivered-To: {delivered_to or recipient}\n"
    try:
        try:
            fsutil.write_all(fd, head.encode("utf-8", "surrogateescape"))
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
) -> DeliveryResult:
    """Resolve `recipient` and deliver it, as the user when we are root."""
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
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only os-level work, then _exit without cleanup handlers
        code = 1
        try:
            os.close(rfd)
            r = _deliver_as_user(target, message, recipient, original, stable_name, settings)
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
            "deferred", "4.3.0", f"maildir delivery failed: delivery process for {target.user} died"
        )
    return DeliveryResult(parts[0], parts[1], parts[2])  # type: ignore[arg-type]


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
        mbox: MboxSettings | None = None,
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
                (mbox or MboxSettings()).as_list(),
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
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(self._control, [b"D"], [theirs.fileno()])
            theirs.close()
            header = json.dumps(
                {
                    "recipient": recipient,
                    "original": original,
                    "sender": message.envelope.sender,
                    "stable_name": stable_name,
                }
            ).encode("utf-8", "surrogateescape")
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
    def __init__(self, sender: str) -> None:
        self.sender = sender


class _StreamedMessage:
    """MessageSource over the framed content of one helper request."""

    def __init__(self, sock: socket.socket, sender: str) -> None:
        self.envelope = _Sender(sender)
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
    home_mailbox, spool, delimiter, config_dir, mbox = json.loads(sys.argv[2])
    mbox_settings = MboxSettings.from_list(mbox)
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
                control.close()
                sock = socket.socket(fileno=fds[0])
                _serve_one(sock, home_mailbox, spool, delimiter, mbox_settings)
                code = 0
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


_TLS_FILE = re.compile(r"(smtpd?|lmtp)_tls_\w*(file|files)")


def helper_files(config_dir: str) -> tuple[set[str], str]:
    """What the root helper may open for the unprivileged side: every file an
    `smtp(d)_tls_*file(s)` parameter names in main.cf or a master.cf override, and
    maillog_file."""
    config = load_config(Path(config_dir))
    names: set[str] = set()
    for params in (config.params, *(svc.params for svc in config.services)):
        for name, value in vars(params).items():
            if _TLS_FILE.fullmatch(name):
                values = value if isinstance(value, tuple) else (value,)
                names.update(os.path.abspath(v) for v in values if isinstance(v, str) and v)
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
    sock: socket.socket, home_mailbox: str, spool: str, delimiter: str, mbox: MboxSettings
) -> None:
    (size,) = struct.unpack("!I", _recv_exact(sock, 4))
    if size > _HEADER_MAX:
        return
    req = json.loads(_recv_exact(sock, size).decode("utf-8", "surrogateescape"))
    recipient, original = str(req["recipient"]), str(req["original"])
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
    message = _StreamedMessage(sock, str(req["sender"]))
    if isinstance(target, DeliveryResult):
        result = target
    elif target.uid == 0:  # root's own mail is written as root, as before the drop
        os.umask(0o077)
        result = _deliver_to(target, message, recipient, original, stable, mbox)
    else:
        result = _deliver_as_user(target, message, recipient, original, stable, mbox)
    fsutil.write_all(
        sock.fileno(), f"{result.status}\0{result.dsn}\0{result.text}".encode("utf-8", "replace")
    )
    sock.shutdown(socket.SHUT_WR)
