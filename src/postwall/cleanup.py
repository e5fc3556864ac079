"""cleanup: turn a received message into a queue file, as Postfix's cleanup(8).

Who calls it: smtpd and `postwall sendmail` with the envelope and the raw content.
What it guarantees: the Received header is prepended (for a local submission,
`uid` set, pickup's `by HOST (MAIL_NAME, from userid N)` form); Message-ID, Date and
From are appended to the header block when missing for clients that qualify
(always_add_missing_headers, local_header_rewrite_clients' default
permit_inet_interfaces: our own addresses, and local submissions), as Postfix 3.7
does (no To: header: undisclosed_recipients_header is empty by default); a
local submission's From carries the sender's full name.  The message is committed
through the queue store and `submit` returns only once the queue file is durable.
On failure it returns a 451 reply and nothing is left in the queue: the client
keeps the message and retries.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from postwall import logfmt
from postwall.config.params import Params
from postwall.log import MailLog
from postwall.queue.records import Envelope, Recipient
from postwall.queue.store import QueueStore
from postwall.smtp.replies import Reply

_MISSING_CHECKED = frozenset({b"message-id", b"date", b"from", b"resent-message-id"})
_HEADER = re.compile(rb"[!-9;-~]+[ \t]*:")
# RFC 5322 specials that make a display name need quotes.
_SPECIALS = frozenset('()<>[]:;@\\,."')


@dataclass(slots=True)
class Submission:
    """Everything smtpd knows about one accepted transaction."""

    queue_id: str
    sender: str
    recipients: list[Recipient]
    content: bytes  # CRLF lines, dot-unstuffed, ending in CRLF
    arrival_time: float
    client_name: str
    client_addr: str
    client_port: int
    helo: str | None
    protocol: str  # SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA
    ret: str | None = None
    envid: str | None = None
    body_type: str | None = None
    smtputf8: bool = False
    sasl_method: str | None = None
    sasl_username: str | None = None
    sasl_header: bool = False  # smtpd_sasl_authenticated_header
    # Received-header lines about TLS, from tls.describe (TAB-led, no line end).
    tls_clauses: list[str] = field(default_factory=list)
    rewrite_headers: bool = False  # add missing headers for this client
    # A local submission (sendmail): the submitting user id and full name.
    uid: int | None = None
    full_name: str = ""
    internal: bool = False  # made by postwall itself (a -bv report): `by HOST (NAME)`
    attributes: dict[str, str] = field(default_factory=dict)
    # Headers from access(5)/policy PREPEND actions, above the Received header (Postfix).
    prepend: list[str] = field(default_factory=list)


class Cleanup:
    def __init__(
        self,
        params: Params,
        store: QueueStore,
        log: MailLog,
        on_commit: Callable[[str, Envelope], None] = lambda qid, envelope: None,
    ) -> None:
        self._hostname = params.myhostname
        self._mail_name = params.mail_name
        self._always_add = params.always_add_missing_headers
        self._store = store
        self._log = log
        self._on_commit = on_commit

    def new_queue_id(self) -> str:
        return self._store.new_queue_id()

    def release_queue_id(self, queue_id: str) -> None:
        self._store.release_queue_id(queue_id)

    async def submit(self, sub: Submission) -> Reply | None:
        """Queue the message durably; None on success, else the reply for the client."""
        received, missing, message_id = self._added_headers(sub)
        prepend = "".join(f"{_one_line(h)}\r\n" for h in sub.prepend).encode(
            "utf-8", "surrogateescape"
        )
        content = prepend + received + _append_headers(sub.content, missing)
        envelope = Envelope(
            queue_id=sub.queue_id,
            sender=sub.sender,
            recipients=sub.recipients,
            ret=sub.ret,
            envid=sub.envid,
            arrival_time=sub.arrival_time,
            client_name=sub.client_name,
            client_addr=sub.client_addr,
            client_port=sub.client_port,
            helo=sub.helo or "",
            protocol=sub.protocol,
            sasl_username=sub.sasl_username or "",
            body_type=sub.body_type or "",
            smtputf8=sub.smtputf8,
            size=len(content),
        )
        self._log.info("cleanup", logfmt.cleanup_message_id(sub.queue_id, message_id))
        try:
            await self._store.commit(envelope, content)
        except (OSError, ValueError) as exc:
            self._log.warning("cleanup", f"{sub.queue_id}: queue file write error: {exc}")
            return Reply(451, "4.3.0", "Error: queue file write error")
        # The envelope goes along so the queue manager need not read the file back.
        self._on_commit(sub.queue_id, envelope)
        return None

    # -- headers -------------------------------------------------------------

    def _added_headers(self, sub: Submission) -> tuple[bytes, list[bytes], str | None]:
        """The Received header, the missing headers cleanup appends, and the message's
        Message-ID (for the log)."""
        now = time.time()
        received = self._received(sub, now)
        added = []
        present = _scan_headers(sub.content)
        message_id = present.get(b"message-id")
        if sub.rewrite_headers or self._always_add or sub.uid is not None or sub.internal:
            if b"message-id" not in present:
                stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
                message_id = f"<{stamp}.{sub.queue_id}@{self._hostname}>"
                added.append(f"Message-Id: {message_id}\r\n".encode())
            if b"date" not in present:
                added.append(f"Date: {_rfc5322_date(now)}\r\n".encode())
            if b"from" not in present:
                added.append(f"From: {_from_value(sub)}\r\n".encode("utf-8", "surrogateescape"))
        return received, added, message_id

    def _received(self, sub: Submission, now: float) -> bytes:
        if sub.uid is not None or sub.internal:  # pickup's (or bounce's) form
            by = (
                f"{self._mail_name}, from userid {sub.uid}"
                if sub.uid is not None
                else self._mail_name
            )
            return (
                f"Received: by {self._hostname} ({by})\r\n"
                f"\tid {sub.queue_id}; {_rfc5322_date(now)}\r\n"
            ).encode()
        addr = f"IPv6:{sub.client_addr}" if ":" in sub.client_addr else sub.client_addr
        lines = [f"Received: from {sub.helo or sub.client_name} ({sub.client_name} [{addr}])"]
        lines.extend(sub.tls_clauses)
        if sub.sasl_header and sub.sasl_username:
            lines.append(f"\t(Authenticated sender: {_comment_safe(sub.sasl_username)})")
        lines.append(
            f"\tby {self._hostname} ({self._mail_name}) with {sub.protocol} id {sub.queue_id}"
        )
        stamp = _rfc5322_date(now)
        if len(sub.recipients) == 1:
            lines.append(f"\tfor <{sub.recipients[0].address}>; {stamp}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{stamp}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def _from_value(sub: Submission) -> str:
    if not sub.sender:
        return "MAILER-DAEMON"
    name = sub.full_name.replace("\r", " ").replace("\n", " ").strip()
    if not name:
        return sub.sender
    if any(c in _SPECIALS for c in name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{sub.sender}>"


def _append_headers(content: bytes, headers: list[bytes]) -> bytes:
    """`headers` after the message's own header block: before the blank line, or before
    the first line that is not a header (then with a blank line, so the body stays body)."""
    if not headers:
        return content
    extra = b"".join(headers)
    pos = 0
    while pos < len(content):
        end = content.find(b"\r\n", pos)
        line = content[pos:] if end < 0 else content[pos:end]
        if line == b"":
            return content[:pos] + extra + content[pos:]
        if not (_HEADER.match(line) or (pos and line[:1] in (b" ", b"\t"))):
            return content[:pos] + extra + b"\r\n" + content[pos:]
        if end < 0:  # a last header line without its line end
            return content + b"\r\n" + extra
        pos = end + 2
    return content + extra


def _scan_headers(content: bytes) -> dict[bytes, str]:
    """One pass over the header block: the first value (unfolded) of each header
    cleanup cares about, by lower-case name."""
    end = content.find(b"\r\n\r\n")
    block = content if end < 0 else content[: end + 2]
    found: dict[bytes, list[bytes]] = {}
    current: list[bytes] | None = None
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line.strip())
            continue
        head, sep, rest = line.partition(b":")
        name = head.strip().lower()
        current = None
        if sep and name in _MISSING_CHECKED and name not in found:
            current = found[name] = [rest.strip()]
    return {name: b" ".join(v).decode("utf-8", "replace") for name, v in found.items()}


def _comment_safe(text: str) -> str:
    # Inside a header comment: no parentheses, backslashes or control characters.
    return "".join("?" if c in "()\\" or ord(c) < 32 or c == "\x7f" else c for c in text)


_date_cache: tuple[int, str] = (-1, "")


def _rfc5322_date(now: float) -> str:
    # Postfix writes e.g. "Sat, 28 Nov 2026 09:16:38 +0000 (UTC)".
    global _date_cache
    second, text = _date_cache  # one tuple: threads never see half an update
    if int(now) != second:  # formatting costs more than the rest of the header
        text = logfmt.mail_date(int(now))
        _date_cache = (int(now), text)
    return text
