"""Local submission by users who may not write the queue: `$queue_directory/public/pickup`.

Postfix lets any local user submit through the setgid `postdrop` program, which drops a
file into maildrop/ for the pickup daemon.  postwall has no setgid helper: the running
master listens on a UNIX stream socket at `public/pickup` (mode 0666 in a 0711 public/,
so any local user can reach it, as Postfix's default authorized_submit_users =
static:anyone allows), and `postwall sendmail`, run by an unprivileged user, hands the
message over it.  The master takes the user id from the kernel (SO_PEERCRED), never
from the request, logs Postfix's `pickup[pid]: ID: uid=N from=<sender>` line, puts the
message through cleanup (Received `by HOST (postwall, from userid N)`) and answers only
once the queue file is durable.

Wire format (client -> master): a 4-byte big-endian length and a JSON header (sender,
recipients with their original address and NOTIFY, ret, envid, body_type, full_name),
then an 8-byte length and the content (CRLF lines).  Master -> client: one line,
`250 QUEUEID` or an SMTP-style `4xx`/`5xx` code and text, then the master closes.

Bounds: a header over 64 KiB, content over message_size_limit, or a request that does
not arrive within smtpd_timeout is refused (552 or 421 text) and the connection closed;
at most 64 submissions are read at once, a connection beyond that is told 421 at once.
Callers: master.py (`listen`), the sendmail tool (`submit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from dataclasses import dataclass

from postwall import fsutil, logfmt
from postwall.cleanup import Cleanup, Submission
from postwall.config.params import Params
from postwall.log import MailLog
from postwall.queue import wakeup
from postwall.queue.records import Recipient
from postwall.smtp.address import extract_address

PICKUP = "pickup"
_MAX_HEADER = 1 << 16
_MAX_CLIENTS = 64


class PickupError(Exception):
    """The master refused or could not take the message; `temporary` for 4xx."""

    def __init__(self, text: str, temporary: bool = True) -> None:
        super().__init__(text)
        self.temporary = temporary


# -- the client: postwall sendmail run by a user -------------------------------------


@dataclass
class Request:
    sender: str
    recipients: list[Recipient]
    content: bytes
    ret: str | None = None
    envid: str | None = None
    body_type: str | None = None
    full_name: str = ""

    def encode(self) -> bytes:
        header = json.dumps(
            {
                "sender": self.sender,
                "recipients": [[r.address, r.original, sorted(r.notify)] for r in self.recipients],
                "ret": self.ret,
                "envid": self.envid,
                "body_type": self.body_type,
                "full_name": self.full_name,
            }
        ).encode("utf-8", "surrogateescape")
        return (
            struct.pack("!I", len(header))
            + header
            + struct.pack("!Q", len(self.content))
            + self.content
        )


def submit(directory: str | os.PathLike[str], request: Request, timeout: float = 300) -> str:
    """Hand `request` to the running master; the queue id, or PickupError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            with wakeup.short_name(directory, PICKUP) as name:
                sock.connect(name)
        except OSError as exc:
            raise PickupError(
                f"cannot reach the postwall server at {wakeup.socket_path(directory, PICKUP)}: "
                f"{exc.strerror or exc} (is it running?)"
            ) from None
        try:
            sock.sendall(request.encode())
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError as exc:
            raise PickupError(f"submission to the postwall server failed: {exc}") from None
    line = answer.decode("utf-8", "replace").strip()
    code, _, text = line.partition(" ")
    if code == "250" and text:
        return text
    if not code.isdigit():
        raise PickupError("the postwall server closed the connection without an answer")
    raise PickupError(text or line, temporary=not code.startswith("5"))


# -- the master side -------------------------------------------------------------------


class PickupServer:
    """Serves public/pickup for one master; `close()` at stop."""

    def __init__(self, params: Params, cleanup: Cleanup, log: MailLog) -> None:
        self.params = params
        self.cleanup = cleanup
        self.log = log
        self.server: asyncio.AbstractServer | None = None
        self._active = 0

    async def listen(self, directory: str | os.PathLike[str]) -> None:
        path = wakeup.socket_path(directory, PICKUP)
        # Any local user may submit, as with Postfix's postdrop: let them reach public/.
        os.chmod(directory, 0o711)
        fsutil.ensure_dir(path.parent, 0o711)
        os.chmod(path.parent, 0o711)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale from a crash
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with wakeup.short_name(directory, PICKUP) as name:
                sock.bind(name)
            os.chmod(path, 0o666)
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.server = await asyncio.start_unix_server(self._serve, sock=sock)

    def close(self, directory: str | os.PathLike[str]) -> None:
        if self.server is not None:
            self.server.close()
        with contextlib.suppress(OSError):
            os.unlink(wakeup.socket_path(directory, PICKUP))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= _MAX_CLIENTS:
            # A local user holding connections open must not use up the descriptors the
            # SMTP service needs: the excess is told at once, as maxproc's 421 does.
            reply = "421 4.3.2 Error: too many local submissions at once, try again later"
        else:
            self._active += 1
            try:
                reply = await self._take(reader, writer)
            except Exception as exc:  # never a traceback to the user, never a dead master
                self.log.warning(PICKUP, f"local submission failed: {exc!r}")
                reply = "451 4.3.0 Error: internal error"
            finally:
                self._active -= 1
        with contextlib.suppress(OSError):
            writer.write(reply.encode("utf-8", "replace") + b"\n")
            await writer.drain()
        writer.close()

    async def _take(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        uid = _peer_uid(writer)
        limit = self.params.message_size_limit
        try:
            async with asyncio.timeout(self.params.smtpd_timeout):
                (size,) = struct.unpack("!I", await reader.readexactly(4))
                if size > _MAX_HEADER:
                    return "552 5.3.4 Error: request header too large"
                header = json.loads((await reader.readexactly(size)).decode("utf-8"))
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
                if limit and length > limit:
                    self.log.warning("postdrop", f"uid={uid}: File too large")
                    return "552 5.3.4 Error: message file too big"
                content = await reader.readexactly(length)
        except TimeoutError:
            return "421 4.4.2 Error: timeout reading the submission"
        except (asyncio.IncompleteReadError, ValueError, UnicodeDecodeError):
            return "501 5.5.4 Error: malformed submission"
        try:
            sub = _submission(header, content, uid)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return f"501 5.5.4 Error: malformed submission: {exc}"
        sub.queue_id = self.cleanup.new_queue_id()
        self.log.info(PICKUP, logfmt.pickup(sub.queue_id, uid, sub.sender))
        failure = await self.cleanup.submit(sub)
        if failure is not None:
            return f"{failure.code} {failure.status} {failure.text}".replace("\n", " ")
        return f"250 {sub.queue_id}"


def _peer_uid(writer: asyncio.StreamWriter) -> int:
    sock = writer.get_extra_info("socket")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def _address(address: str) -> str:
    """The address if it is one SMTP could carry (it may go out in MAIL or RCPT: no line
    breaks or control characters, RFC 5321 syntax), else ValueError."""
    if address and extract_address(f"<{address}>") != address:
        raise ValueError(f"bad address syntax: {address!r}")
    return address


def _submission(header: dict[str, object], content: bytes, uid: int) -> Submission:
    def text(name: str) -> str | None:
        value = header.get(name)
        return value if isinstance(value, str) else None

    recipients = []
    for item in header.get("recipients") or []:  # type: ignore[attr-defined]
        address, original, notify = item
        recipients.append(
            Recipient(
                address=_address(str(address)),
                original=_address(str(original)),
                notify=frozenset(str(n) for n in notify),
            )
        )
    if not recipients:
        raise ValueError("no recipients")
    sender = _address(text("sender") or "")
    return Submission.local(
        sender,
        recipients,
        content,
        uid=uid,  # the kernel's word, not the request's
        full_name=text("full_name") or "",
        ret=text("ret"),
        envid=text("envid"),
        body_type=text("body_type"),
    )
