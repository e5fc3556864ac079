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

Content inspection (`ContentChecks`, Postfix's header_checks(5)): every logical
header of the message (folded lines joined with "\n", as Postfix passes them), of its
MIME parts (mime_header_checks) and of attached messages (nested_header_checks), and
each body line up to body_checks_size_limit bytes per MIME segment (body_checks), is
looked up; the Received header cleanup adds and the headers it appends are not, as in
Postfix.  REJECT returns a `ContentRejected` reply (550, or 451 for a 4.x.x text) and
queues nothing; DISCARD answers 250 and queues nothing; HOLD commits into hold/, which
the queue manager never scans; IGNORE, STRIP, REPLACE and PREPEND edit the content;
WARN, INFO and PASS log.  Each action is logged with Postfix's wording.  FILTER,
REDIRECT and BCC stop start-up as not supported.  Without checks configured, the
content is never walked line by line; with them, headers are parsed once.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from postwall import logfmt
from postwall.config.params import Params
from postwall.config.tables import NotSupportedError, Table, TableError, open_table
from postwall.log import MailLog
from postwall.queue.records import Envelope, Recipient
from postwall.queue.store import QueueStore
from postwall.resolve import AddressResolver, AliasExpansionError, VirtualAliases, mail_addr_find
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

    @classmethod
    def local(
        cls,
        sender: str,
        recipients: list[Recipient],
        content: bytes,
        *,
        uid: int,
        full_name: str = "",
        ret: str | None = None,
        envid: str | None = None,
        body_type: str | None = None,
    ) -> Submission:
        """A message a local user submits (sendmail, pickup): no client, no HELO."""
        return cls(
            queue_id="",
            sender=sender,
            recipients=recipients,
            content=content,
            arrival_time=time.time(),
            client_name="",
            client_addr="",
            client_port=0,
            helo=None,
            protocol="",
            ret=ret,
            envid=envid,
            body_type=body_type,
            uid=uid,
            full_name=full_name,
        )


@dataclass
class EnvelopeRouting:
    """What main.cf asks cleanup to do to the envelope: always_bcc, sender_bcc_maps and
    recipient_bcc_maps (one copy address per lookup, keyed as mail_addr_find: the
    address, without its extension, the user of a local domain, @domain), and the
    virtual alias maps every address then goes through."""

    resolver: AddressResolver
    virtual: VirtualAliases
    always_bcc: str = ""
    sender_bcc: list[Table] = field(default_factory=list)
    recipient_bcc: list[Table] = field(default_factory=list)

    @classmethod
    def from_params(
        cls, params: Params, resolver: AddressResolver | None = None
    ) -> EnvelopeRouting:
        """`resolver`: the one the caller already built from `params` (its tables are
        opened once), else a new one."""
        resolver = resolver or AddressResolver.from_params(params)
        base = Path(params.config_directory)
        return cls(
            resolver,
            resolver.virtual,
            resolver.qualify(params.always_bcc.strip()),
            [open_table(ref, base) for ref in params.sender_bcc_maps],
            [open_table(ref, base) for ref in params.recipient_bcc_maps],
        )

    def bcc(self, sender: str, recipients: list[str]) -> list[str]:
        found = [self.always_bcc] if self.always_bcc else []
        if sender and self.sender_bcc:
            hit = mail_addr_find(self.resolver, self.sender_bcc, sender)
            found += [hit[0].strip()] if hit else []
        for rcpt in recipients if self.recipient_bcc else ():
            hit = mail_addr_find(self.resolver, self.recipient_bcc, rcpt)
            found += [hit[0].strip()] if hit else []
        return [self.resolver.qualify(a) for a in found if a]


class Cleanup:
    def __init__(
        self,
        params: Params,
        store: QueueStore,
        log: MailLog,
        on_commit: Callable[[str, Envelope], None] = lambda qid, envelope: None,
        checks: ContentChecks | None = None,
        resolver: AddressResolver | None = None,
    ) -> None:
        # ChecksError (a ValueError naming the parameter) for tables it cannot use.
        self.checks = checks if checks is not None else ContentChecks(params)
        self._hostname = params.myhostname
        self._mail_name = params.mail_name
        self._always_add = params.always_add_missing_headers
        self._store = store
        self._log = log
        self._on_commit = on_commit
        # BCC copies and virtual(5) aliases are applied here, before queueing, as in
        # Postfix; a reload replaces them (master.py).
        self.routing = EnvelopeRouting.from_params(params, resolver)

    def _route(self, sub: Submission) -> list[Recipient]:
        """The recipients to queue: each replaced by its virtual alias expansion (a new
        address keeps the one it came from as `original`: orig_to=, X-Original-To:),
        plus the BCC copies for mail from outside; duplicates dropped, as Postfix's
        cleanup drops them (same address, original and DSN attributes)."""
        routing = self.routing
        wanted = [(r, r.address) for r in sub.recipients]
        if not sub.internal:
            for bcc in routing.bcc(sub.sender, [r.address for r in sub.recipients]):
                wanted.append((Recipient(bcc), bcc))
        if not routing.virtual.maps and len(wanted) == len(sub.recipients):
            return sub.recipients
        out: list[Recipient] = []
        seen: set[tuple[str, str, str, frozenset[str]]] = set()
        for r, first in wanted:
            for address in routing.virtual.expand(first):
                original = r.original if address == r.address else r.original or first
                key = (address.lower(), original.lower(), r.orcpt, r.notify)
                if key not in seen:
                    seen.add(key)
                    out.append(dataclasses.replace(r, address=address, original=original))
        return out

    def new_queue_id(self) -> str:
        return self._store.new_queue_id()

    def free_space(self) -> tuple[int, int]:
        return self._store.free_space()

    def release_queue_id(self, queue_id: str) -> None:
        self._store.release_queue_id(queue_id)

    async def submit(self, sub: Submission) -> Reply | None:
        """Queue the message durably; None on success (also for a DISCARD), else the
        reply for the client (`ContentRejected` for a REJECT by header/body checks)."""
        checks = self.checks
        content = sub.content
        now = time.time()
        try:
            recipients = self._route(sub)
        except AliasExpansionError as exc:
            self._log.warning("cleanup", f"{sub.queue_id}: {exc} -- message not accepted")
            self._store.release_queue_id(sub.queue_id)
            return Reply(451, "4.7.1", "Error: service unavailable")
        # PREPEND headers (access maps, policy servers) go above the Received header, as
        # Postfix's smtpd sends them to cleanup first; header_checks see them too.
        prepend = "".join(f"{_one_line(h)}\r\n" for h in sub.prepend)
        received = prepend.encode("utf-8", "surrogateescape") + self._received(sub, now)
        state: Literal["incoming", "hold"] = "incoming"
        present = None
        if checks.active and not sub.internal:  # Postfix never inspects its own notices
            # The Received header is inspected too (Postfix's smtpd writes it to cleanup).
            found = checks.inspect(received + content, self._log_origin(sub))
            message_id_at = found.message_id_at
            for i, (level, text) in enumerate(found.events):
                if i == message_id_at:
                    message_id_at = None
                    self._log_message_id(sub, found.present, now)
                if level == "info":
                    self._log.info("cleanup", f"{sub.queue_id}: {text}")
                else:
                    self._log.warning("cleanup", text)
            if found.reject is not None or found.discard:
                self._store.release_queue_id(sub.queue_id)
                return found.reject
            if message_id_at is not None:
                self._log_message_id(sub, found.present, now)
            content, present, received = found.content, found.present, b""
            if found.hold:
                state = "hold"
        missing, message_id = self._missing_headers(sub, content, present, now)
        content = received + _append_headers(content, missing)
        envelope = Envelope(
            queue_id=sub.queue_id,
            sender=sub.sender,
            recipients=recipients,
            # Words the SMTP core or sendmail accepted; records.encode checks them again.
            ret=cast("Literal['FULL', 'HDRS'] | None", sub.ret),
            envid=sub.envid,
            arrival_time=sub.arrival_time,
            client_name=sub.client_name,
            client_addr=sub.client_addr,
            client_port=sub.client_port,
            helo=sub.helo or "",
            protocol=sub.protocol,
            sasl_username=sub.sasl_username or "",
            body_type=cast("Literal['7BIT', '8BITMIME'] | None", sub.body_type or None),
            smtputf8=sub.smtputf8,
            size=len(content),
        )
        if present is None:
            self._log.info("cleanup", logfmt.cleanup_message_id(sub.queue_id, message_id))
        try:
            await self._store.commit(envelope, content, state=state)
        except (OSError, ValueError) as exc:
            self._log.warning("cleanup", f"{sub.queue_id}: queue file write error: {exc}")
            return Reply(451, "4.3.0", "Error: queue file write error")
        if state == "incoming":
            # The envelope goes along so the queue manager need not read the file back.
            self._on_commit(sub.queue_id, envelope)
        return None

    def _log_origin(self, sub: Submission) -> str:
        """The tail of a header/body checks log line, as Postfix's cleanup_act_log()."""
        local = sub.uid is not None
        addr = f"IPv6:{sub.client_addr}" if ":" in sub.client_addr else sub.client_addr
        tail = " from local;" if local else f" from {sub.client_name}[{addr}];"
        tail += f" from=<{sub.sender}>"
        if sub.recipients:
            tail += f" to=<{sub.recipients[-1].address}>"
        if not local:
            tail += f" proto={sub.protocol} helo=<{sub.helo or ''}>"
        return tail

    def _log_message_id(self, sub: Submission, present: dict[bytes, str], now: float) -> None:
        # The Message-ID as received, else the one _missing_headers will make, if any.
        value = present.get(b"message-id")
        if value is None and self._adds_missing(sub):
            value = f"<{self._message_id(sub, now)}>"
        self._log.info("cleanup", logfmt.cleanup_message_id(sub.queue_id, value))

    # -- headers -------------------------------------------------------------

    def _adds_missing(self, sub: Submission) -> bool:
        return sub.rewrite_headers or self._always_add or sub.uid is not None or sub.internal

    def _message_id(self, sub: Submission, now: float) -> str:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        return f"{stamp}.{sub.queue_id}@{self._hostname}"

    def _missing_headers(
        self, sub: Submission, content: bytes, present: dict[bytes, str] | None, now: float
    ) -> tuple[list[bytes], str | None]:
        """The missing headers cleanup appends, and the message's Message-ID (for the
        log); `present` when header checks already parsed the headers."""
        added = []
        if present is None:
            present = _scan_headers(content)
        message_id = present.get(b"message-id")
        if self._adds_missing(sub):
            if b"message-id" not in present:
                message_id = f"<{self._message_id(sub, now)}>"
                added.append(f"Message-Id: {message_id}\r\n".encode())
            if b"date" not in present:
                added.append(f"Date: {_rfc5322_date(now)}\r\n".encode())
            if b"from" not in present:
                added.append(f"From: {_from_value(sub)}\r\n".encode("utf-8", "surrogateescape"))
        return added, message_id

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


# -- header_checks and body_checks ---------------------------------------------------

# Headers Postfix flags HDR_OPT_MIME: looked up in mime_header_checks wherever they are.
_MIME_HEADERS = frozenset(
    {
        b"mime-version",
        b"content-type",
        b"content-transfer-encoding",
        b"content-description",
        b"content-disposition",
        b"content-id",
    }
)
_REFUSED_ACTIONS = frozenset({"FILTER", "REDIRECT", "BCC"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DSN = re.compile(r"\d\.\d{1,3}\.\d{1,3}(?=[ \t]|$)")
_BOUNDARY = re.compile(rb'boundary[ \t]*=[ \t]*(?:"([^"\r\n]*)"|([^ \t;\r\n]+))', re.I)
_PRIMARY, _MULTIPART, _NESTED = 0, 1, 2
_MIME_NESTING_LIMIT = 100  # mime_nesting_limit's default
_COMMAND_END = re.compile(r"[ \t]+")
_LOG_ACTIONS = {"WARN": "warning", "INFO": "info", "PASS": "pass", "DISCARD": "discard"}


class ChecksError(ValueError):
    """A header_checks or body_checks setting postwall cannot use; names the parameter."""


class ContentRejected(Reply):
    """A REJECT by header or body checks; cleanup has logged it, smtpd need not."""

    __slots__ = ()


@dataclass(slots=True)
class _Inspection:
    """What inspecting one message decided, and its log lines in order (level, text);
    `message_id_at` is where among them the message-id line goes (None: not reached)."""

    content: bytes
    present: dict[bytes, str] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    message_id_at: int | None = None
    reject: Reply | None = None
    discard: bool = False
    hold: bool = False


class ContentChecks:
    """The tables of header_checks, mime_header_checks, nested_header_checks and
    body_checks of one configuration; `active` is False when all are empty."""

    def __init__(self, params: Params) -> None:
        self.warnings: list[str] = []
        base = Path(params.config_directory)
        opened: dict[str, Table] = {}

        def tables(name: str) -> list[Table]:
            out = []
            for ref in getattr(params, name):
                if ref not in opened:
                    try:
                        table = open_table(ref, base)
                    except (NotSupportedError, TableError) as err:
                        raise ChecksError(f"{name}: {err}") from None
                    for value in table.results():
                        word = value.split(None, 1)[0].upper() if value.split() else ""
                        if word in _REFUSED_ACTIONS:
                            raise ChecksError(
                                f"{name}: {ref}: action {word} is not supported by postwall"
                            )
                    self.warnings.extend(table.warnings)
                    opened[ref] = table
                out.append(opened[ref])
            return out

        self.header = tables("header_checks")
        self.mime = tables("mime_header_checks")
        self.nested = tables("nested_header_checks")
        self.body = tables("body_checks")
        self.body_limit = params.body_checks_size_limit
        self.line_limit = params.line_length_limit
        self.active = bool(self.header or self.mime or self.nested or self.body)

    def inspect(self, content: bytes, origin: str) -> _Inspection:
        """Walk the message once; `origin` is the log lines' tail after the content
        (" from host[addr]; from=<s> to=<r> proto=P helo=<h>")."""
        return _Inspector(self, content, origin).run()


def _lookup(tables: list[Table], key: str) -> str | None:
    if not key:  # maps_find() never looks up an empty string
        return None
    for table in tables:
        value = table.lookup(key)
        if value is not None:
            return value
    return None


class _Inspector:
    """One message's walk through Postfix's MIME states, applying the actions."""

    def __init__(self, checks: ContentChecks, content: bytes, origin: str) -> None:
        self.checks = checks
        self.content = content
        self.origin = origin
        self.result = _Inspection(content)
        self.edits: list[tuple[int, int, bytes]] = []  # (start, end, replacement)
        self.checking = True  # until REJECT, DISCARD or PASS
        self.aborted = False  # REJECT or DISCARD: the message is not queued
        self.boundaries: list[bytes] = []

    # -- actions

    def act(self, context: str, key: str, value: str, map_class: str) -> tuple[str, bytes]:
        """cleanup_act(): ("keep"|"drop"|"replace"|"prepend", line with CRLF)."""
        res = self.result
        cut = _COMMAND_END.search(value)
        command, text = (value[: cut.start()], value[cut.end() :]) if cut else (value, "")
        action = command.upper()
        if action == "REJECT":
            reason = self.dsn_reason(text) if text else "5.7.1 message content rejected"
            status, _, words = reason.partition(" ")
            res.reject = ContentRejected(550 if status[0] == "5" else 451, status, words)
            self.log("reject", context, key, reason)
            self.checking, self.aborted = False, True
        elif action in _LOG_ACTIONS:
            self.log(_LOG_ACTIONS[action], context, key, text)
            if action == "DISCARD":
                res.discard = True
                self.aborted = True
            self.checking = action in ("WARN", "INFO")
        elif action == "HOLD":
            if not res.hold:
                self.log("hold", context, key, text)
                res.hold = True
        elif action in ("PREPEND", "REPLACE"):
            line = text.encode("utf-8", "surrogateescape")
            if not text:
                self.warn(f"{action} action without text in {map_class} map")
            elif context == "header" and not _HEADER.match(line):
                self.warn(
                    f'bad {action} header text "{text}" in {map_class} map -- '
                    'need "headername: headervalue"'
                )
            else:
                self.log(action.lower(), context, key, text)
                return action.lower(), line + b"\r\n"
        elif action in ("STRIP", "IGNORE"):
            if action == "STRIP":
                self.log("strip", context, key, text)
            return "drop", b""
        elif action not in ("DUNNO", "OK"):
            self.warn(f"unknown command in {map_class} map: {value}")
        return "keep", b""

    def dsn_reason(self, text: str) -> str:
        """dsn_prepend("5.7.1", text), with Postfix's check of the status class."""
        reason = text if _DSN.match(text) else f"5.7.1 {text}"
        if reason[0] not in "45":
            self.warn(f"bad DSN action in {text} -- need 4.x.x or 5.x.x")
            reason = "4" + reason[1:]
        return reason

    def log(self, action: str, context: str, key: str, text: str) -> None:
        line = f"{action}: {context} {_CONTROL.sub('?', key[:200])}{self.origin}"
        self.result.events.append(("info", f"{line}: {text}" if text else line))

    def warn(self, text: str) -> None:
        self.result.events.append(("warning", text))

    def edit(self, start: int, end: int, how: str, line: bytes) -> None:
        if how == "drop":
            self.edits.append((start, end, b""))
        elif how == "replace":
            self.edits.append((start, end, line))
        elif how == "prepend":
            self.edits.append((start, start, line))

    # -- the walk

    def run(self) -> _Inspection:
        content, res = self.content, self.result
        pos, nested = self.header_block(0, _PRIMARY)
        if not self.aborted:
            if res.message_id_at is None:
                res.message_id_at = len(res.events)
            if self.checking:
                if nested:
                    pos = self.nested_headers(pos)
                self.body(pos)
        if self.edits and not self.aborted:
            out: list[bytes] = []
            last = 0
            for start, end, repl in self.edits:
                out += (content[last:start], repl)
                last = end
            out.append(content[last:])
            res.content = b"".join(out)
        return res

    def header_block(self, pos: int, cls: int) -> tuple[int, bool]:
        """The header block at `pos`: (where its body starts, whether that body is an
        attached message); a multipart boundary it declares is pushed."""
        content = self.content
        n = len(content)
        ctype = boundary = encoding = b""
        while pos < n and not self.aborted:
            end = content.find(b"\r\n", pos)
            end = n if end < 0 else end
            line = content[pos:end]
            if not line:
                pos = end + 2  # the blank line is neither header nor body text
                break
            if not _HEADER.match(line):
                break  # body text without a blank line before it
            stop = end  # the logical header: this line and its continuation lines
            while content[stop + 2 : stop + 3] in (b" ", b"\t"):
                nxt = content.find(b"\r\n", stop + 2)
                stop = n if nxt < 0 else nxt
            raw = content[pos:stop]
            name = line.split(b":", 1)[0].strip().lower()
            kept: bytes | None = raw
            if self.checking:
                tables, map_class = self.tables_for(cls, name)
                key = raw.replace(b"\r\n", b"\n").decode("utf-8", "surrogateescape")
                value = _lookup(tables, key) if tables else None
                if value is not None:
                    how, repl = self.act("header", key, value, map_class)
                    self.edit(pos, stop + 2, how, repl)
                    if how == "drop":
                        kept = None
                    elif how == "replace":
                        kept = repl[:-2]
                        name = kept.split(b":", 1)[0].strip().lower()
            if kept is not None:
                if cls == _PRIMARY:
                    self.note_present(name, kept)
                if name == b"content-type":
                    params = kept.split(b":", 1)[1]
                    ctype = params.split(b";", 1)[0].strip().lower()
                    m = _BOUNDARY.search(params)
                    boundary = (m.group(1) if m.group(1) is not None else m.group(2)) if m else b""
                elif name == b"content-transfer-encoding":
                    encoding = kept.split(b":", 1)[1].strip().lower()
            pos = stop + 2
        nesting = len(self.boundaries)
        if ctype.startswith(b"multipart/") and boundary and nesting < _MIME_NESTING_LIMIT:
            self.boundaries.append(boundary)
        nested = ctype in (b"message/rfc822", b"message/global") and encoding in (
            b"",
            b"7bit",
            b"8bit",
            b"binary",
        )
        return min(pos, n), nested

    def nested_headers(self, pos: int) -> int:
        depth = 0
        nested = True
        while nested and depth < _MIME_NESTING_LIMIT and not self.aborted:
            pos, nested = self.header_block(pos, _NESTED)
            depth += 1
        return pos

    def tables_for(self, cls: int, name: bytes) -> tuple[list[Table], str]:
        checks = self.checks
        if name in _MIME_HEADERS or cls == _MULTIPART:
            return checks.mime, "mime_header_checks"
        if cls == _NESTED:
            return checks.nested, "nested_header_checks"
        return checks.header, "header_checks"

    def note_present(self, name: bytes, header: bytes) -> None:
        present = self.result.present
        if name in _MISSING_CHECKED and name not in present:
            lines = header.split(b"\r\n")
            parts = [lines[0].split(b":", 1)[1].strip()] + [ln.strip() for ln in lines[1:]]
            present[name] = b" ".join(parts).decode("utf-8", "replace")
            if name == b"message-id" and self.result.message_id_at is None:
                self.result.message_id_at = len(self.result.events)

    def body(self, pos: int) -> None:
        """Body lines to body_checks, up to body_checks_size_limit bytes per segment;
        MIME boundaries lead to part headers (and attached messages' headers)."""
        content, checks = self.content, self.checks
        n = len(content)
        limit = checks.body_limit
        offset = 0  # bytes into the current body segment
        while pos < n and self.checking:
            bounds = self.boundaries
            if not checks.body or (limit and offset >= limit):
                if not bounds:
                    return
                # Nothing to look up until the next boundary: skip ahead to a "--" line.
                nxt = content.find(b"\r\n--", pos - 2) if pos >= 2 else -1
                if nxt < 0:
                    return
                if nxt + 2 > pos:
                    offset += nxt + 2 - pos
                    pos = nxt + 2
            end = content.find(b"\r\n", pos)
            end = n if end < 0 else end
            line = content[pos:end]
            if bounds and line[:2] == b"--":
                for i in range(len(bounds) - 1, -1, -1):
                    b = bounds[i]
                    if line.startswith(b, 2):
                        closing = line[2 + len(b) : 4 + len(b)] == b"--"
                        del bounds[i + 1 if not closing else i :]
                        if closing:
                            offset = 0  # Postfix resets the segment before this line
                        self.body_line(pos, end, line, offset)
                        pos, offset = end + 2, offset + len(line) + 1
                        if not closing and self.checking:
                            pos, nested = self.header_block(pos, _MULTIPART)
                            if nested:
                                pos = self.nested_headers(pos)
                            offset = 0
                        break
                else:
                    self.body_line(pos, end, line, offset)
                    pos, offset = end + 2, offset + len(line) + 1
                continue
            self.body_line(pos, end, line, offset)
            pos, offset = end + 2, offset + len(line) + 1

    def body_line(self, pos: int, end: int, line: bytes, offset: int) -> None:
        checks = self.checks
        if (
            not checks.body
            or not self.checking
            or (checks.body_limit and offset >= checks.body_limit)
        ):
            return
        step = checks.line_limit
        # Postfix looks at long lines in line_length_limit pieces.
        for start in range(0, max(len(line), 1), step):
            piece = line[start : start + step]
            key = piece.decode("utf-8", "surrogateescape")
            value = _lookup(checks.body, key)
            if value is None:
                continue
            how, repl = self.act("body", key, value, "body_checks")
            whole = len(line) <= step
            if whole:
                self.edit(pos, end + 2, how, repl)
            elif how == "prepend":
                self.edit(pos, pos, how, repl)
            else:
                self.edit(pos + start, pos + start + len(piece), how, repl[:-2])
            if not self.checking:
                return
