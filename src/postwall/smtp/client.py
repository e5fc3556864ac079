"""The sans-I/O SMTP client state machine: server replies in, events out, commands as bytes.

Contract: `ClientConnection` never does I/O, never looks at a clock and never raises on
peer input. It drives one session the way Postfix 3.7 smtp(8) does: read the greeting,
EHLO (HELO when EHLO gets a non-2xx reply other than 421), optional STARTTLS when the
caller asks for it, then one mail transaction at a time (MAIL, RCPT..., DATA, content,
final dot; pipelined when the server offers PIPELINING, RFC 2920), RSET, QUIT. Every
server reply is parsed into a `ServerReply`; a transaction ends in `TransactionDone`
with one `RecipientResult` per recipient: 2xx -> sent, 4xx -> deferred, 5xx -> bounced.
A broken peer (connection lost, over-long or never-ending replies, mixed reply codes,
garbage, replies nobody asked for) ends the session with one `ConnectionFailed` event;
the caller defers every recipient whose result it does not carry. The caller owns
timeouts, sockets and the TLS engine, and calls the methods below in the states the
events announce (misuse raises `ProtocolMisuse`, a bug in the caller, not the peer).
An address or parameter that could break the command syntax (CR, LF, other controls)
makes `send_mail` raise ValueError before a byte is queued: the caller bounces or
defers that message; it never reaches the wire.

Caller loop (the outbound delivery agent):

    conn = ClientConnection(ClientSettings(helo_name=...))
    while (ev := conn.next_event()) is not CLOSED:
        write(conn.data_to_send())
        if ev is NEED_DATA: conn.receive_data(await read()); continue   # b"" on EOF
        Ready -> conn.starttls() / conn.send_mail(msg) / conn.quit()
        StartTLSReady -> handshake on the raw socket, then conn.tls_established()
        TransactionDone -> record results; send_mail() again or quit()
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal

from postwall.smtp.address import extract_address, xtext_encode
from postwall.smtp.replies import Reply
from postwall.smtp.server import CLOSED, NEED_DATA, ProtocolMisuse, _Sentinel

__all__ = [
    "CLOSED",
    "NEED_DATA",
    "AuthChallenge",
    "AuthDone",
    "ClientConnection",
    "ClientSettings",
    "ConnectionFailed",
    "Event",
    "Extensions",
    "OutMessage",
    "OutRecipient",
    "ProtocolMisuse",
    "Ready",
    "RecipientResult",
    "Refused",
    "RsetDone",
    "ServerReply",
    "StartTLSReady",
    "StartTLSRefused",
    "TransactionDone",
    "encode_content",
    "mail_command",
    "rcpt_command",
]

# Postfix smtp_chat_resp() reads each reply line with line_length_limit (2048); a longer
# line is a protocol error here instead of a truncated read that desynchronises replies.
REPLY_LINE_LIMIT: Final = 2048
# Postfix bounds the text it keeps of a multi-line reply; we also bound the line count,
# so a reply that never ends fails fast instead of waiting for the timeout.
REPLY_MAX_LINES: Final = 100
# Postfix smtp_line_length_limit: longer content lines are broken with CRLF SPACE.
CONTENT_LINE_LIMIT: Final = 998

Status = Literal["sent", "deferred", "bounced"]
_CTRL = re.compile(r"[\x00-\x1f\x7f]")
_STATUS_RE = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?= |$)")
_NEWLINES = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerReply:
    """One reply of the server: code, enhanced status (RFC 3463; "" if none), text lines.

    `raw` keeps every line as received (non-printable characters shown as "?", as
    Postfix's printable() does); `str()` is the form Postfix logs after "host X said:".
    """

    code: int
    status: str
    lines: tuple[str, ...]
    raw: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def dsn(self) -> str:
        # Postfix smtp_chat_resp(): no valid status in the reply means X.0.0.
        return self.status or f"{self.code // 100}.0.0"

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    def to_reply(self) -> Reply:
        return Reply(self.code, self.status, self.text)

    def __str__(self) -> str:
        return " ".join(self.raw)


@dataclass(frozen=True, slots=True)
class Extensions:
    """The EHLO keywords the server offered (minus smtp_discard_ehlo_keywords)."""

    keywords: tuple[tuple[str, str], ...] = ()  # (upper-case keyword, parameters)

    @classmethod
    def parse(cls, reply: ServerReply, discard: tuple[str, ...] = ()) -> Extensions:
        drop = {d.upper() for d in discard}
        found: list[tuple[str, str]] = []
        for line in reply.lines[1:]:
            # Some servers write "AUTH=LOGIN" (an old draft); Postfix accepts it too.
            word, _, params = line.strip().replace("=", " ", 1).partition(" ")
            word = word.upper()
            if word and word not in drop:
                found.append((word, params.strip()))
        return cls(tuple(found))

    def has(self, keyword: str) -> bool:
        wanted = keyword.upper()
        return any(k == wanted for k, _ in self.keywords)

    def param(self, keyword: str) -> str | None:
        wanted = keyword.upper()
        return next((p for k, p in self.keywords if k == wanted), None)

    @property
    def pipelining(self) -> bool:
        return self.has("PIPELINING")

    @property
    def starttls(self) -> bool:
        return self.has("STARTTLS")

    @property
    def eightbitmime(self) -> bool:
        # Postfix: a server announcing SMTPUTF8 without 8BITMIME gets 8BITMIME anyway.
        return self.has("8BITMIME") or self.has("SMTPUTF8")

    @property
    def dsn(self) -> bool:
        return self.has("DSN")

    @property
    def smtputf8(self) -> bool:
        return self.has("SMTPUTF8")

    @property
    def chunking(self) -> bool:
        return self.has("CHUNKING")

    @property
    def size(self) -> int | None:
        """None when SIZE is not offered; 0 when offered without a (valid) limit."""
        if not self.has("SIZE"):
            return None
        word = (self.param("SIZE") or "").split(" ")[0]
        return int(word) if word.isascii() and word.isdigit() else 0

    @property
    def auth(self) -> tuple[str, ...]:
        return tuple((self.param("AUTH") or "").upper().split())


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What the core needs from main.cf (names as Postfix's smtp_* parameters)."""

    helo_name: str = "localhost"  # smtp_helo_name
    never_send_ehlo: bool = False  # smtp_never_send_ehlo
    discard_ehlo_keywords: tuple[str, ...] = ()  # smtp_discard_ehlo_keywords
    line_length_limit: int = CONTENT_LINE_LIMIT  # smtp_line_length_limit; 0 = off
    reply_line_limit: int = REPLY_LINE_LIMIT
    reply_max_lines: int = REPLY_MAX_LINES
    # smtp_send_dummy_mail_auth with SASL on: AUTH=<> on MAIL when the server offers AUTH.
    dummy_mail_auth: bool = False

    def __post_init__(self) -> None:
        if not self.helo_name or _CTRL.search(self.helo_name) or " " in self.helo_name:
            raise ValueError(f"bad HELO name: {self.helo_name!r}")

    @classmethod
    def from_params(cls, params: object, **overrides: object) -> ClientSettings:
        """Build from a config Params object (duck-typed: parameters it lacks keep defaults)."""
        names = {
            "helo_name": "smtp_helo_name",
            "never_send_ehlo": "smtp_never_send_ehlo",
            "discard_ehlo_keywords": "smtp_discard_ehlo_keywords",
            "line_length_limit": "smtp_line_length_limit",
            "reply_line_limit": "line_length_limit",
        }
        values = {f: getattr(params, p) for f, p in names.items() if hasattr(params, p)}
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class OutRecipient:
    address: str
    notify: tuple[str, ...] = ()  # RFC 3461 NOTIFY words
    orcpt: tuple[str, str] | None = None  # (address type, address), decoded


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message for one transaction; content as queued (any line endings)."""

    sender: str  # "" is the null sender
    recipients: tuple[OutRecipient, ...]
    content: bytes
    body: str | None = None  # "7BIT" or "8BITMIME" (MAIL BODY=)
    smtputf8: bool = False
    ret: str | None = None  # "FULL" or "HDRS"
    envid: str | None = None  # decoded; sent xtext-encoded


@dataclass(frozen=True, slots=True)
class RecipientResult:
    recipient: OutRecipient
    status: Status
    dsn: str
    reply: ServerReply | None  # None: decided by postwall without a server reply
    in_reply_to: str = ""  # Postfix's words: "RCPT TO command", "end of DATA command"...
    local_reason: str = ""  # for reply None, with "{host}" for the peer's name[addr]

    def reason(self, namaddr: str) -> str:
        """The text Postfix puts in parentheses after status=..."""
        if self.reply is None:
            return self.local_reason.format(host=namaddr)
        if self.status == "sent":
            return str(self.reply)
        return f"host {namaddr} said: {self.reply} (in reply to {self.in_reply_to})"


# -- events --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """EHLO/HELO succeeded: start TLS, send mail, or quit."""

    reply: ServerReply
    esmtp: bool
    extensions: Extensions
    tls: bool


@dataclass(frozen=True, slots=True)
class Refused:
    """Greeting, EHLO (421) or HELO refused: Postfix's "host X refused to talk to me".

    Only quit() is allowed now; every recipient fails with this reply's class.
    """

    command: str  # "CONNECT", "EHLO" or "HELO"
    reply: ServerReply

    def reason(self, namaddr: str) -> str:
        return f"host {namaddr} refused to talk to me: {self.reply}"


@dataclass(frozen=True, slots=True)
class StartTLSReady:
    """220 to STARTTLS: the caller now starts TLS; the buffer was emptied.

    `discarded` counts the cleartext bytes that followed the 220 and were thrown away
    (response injection, CVE-2021-38371); then call tls_established() after the handshake.
    """

    reply: ServerReply
    discarded: int


@dataclass(frozen=True, slots=True)
class StartTLSRefused:
    """Non-2xx to STARTTLS: the session stays usable in plaintext (policy decides)."""

    reply: ServerReply


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """334 to AUTH (RFC 4954): answer with auth_respond() or give up with auth_cancel().

    `data` is the decoded challenge; None when it was not valid base64."""

    reply: ServerReply
    data: bytes | None


@dataclass(frozen=True, slots=True)
class AuthDone:
    """The server's final answer to AUTH: 235 (`ok`) or a refusal; either way the session
    is idle again (Postfix gives a server that refused up: the caller quits)."""

    reply: ServerReply

    @property
    def ok(self) -> bool:
        return self.reply.code // 100 == 2


@dataclass(frozen=True, slots=True)
class TransactionDone:
    results: tuple[RecipientResult, ...]
    reusable: bool  # False: the final RSET was refused; quit instead of another mail


@dataclass(frozen=True, slots=True)
class RsetDone:
    reply: ServerReply


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The session is over: "lost" (EOF) or "protocol" (a reply we must not trust).

    `results` holds only the recipients already decided (RCPT refusals); the caller
    defers all the others with `reason()`.
    """

    kind: Literal["lost", "protocol"]
    stage: str  # Postfix's "while ..." words
    detail: str
    results: tuple[RecipientResult, ...] = ()

    @property
    def dsn(self) -> str:
        return "4.4.2" if self.kind == "lost" else "4.5.0"

    def reason(self, namaddr: str) -> str:
        if self.kind == "lost":
            return f"lost connection with {namaddr} while {self.stage}"
        return f"remote protocol error with {namaddr} while {self.stage}: {self.detail}"


Event = (
    Ready
    | Refused
    | StartTLSReady
    | StartTLSRefused
    | AuthChallenge
    | AuthDone
    | TransactionDone
    | RsetDone
    | ConnectionFailed
)

# Postfix smtp_proto.c: what the client was doing, for "lost connection ... while".
_STAGE = {
    "greeting": "receiving the initial server greeting",
    "ehlo": "performing the EHLO handshake",
    "helo": "performing the HELO handshake",
    "starttls": "receiving the STARTTLS response",
    # Postfix authenticates inside its EHLO step, and words a failure there the same way.
    "auth": "performing the EHLO handshake",
    "mail": "sending MAIL FROM",
    "rcpt": "sending RCPT TO",
    "data": "sending DATA command",
    "dot": "sending end of data -- message may be sent more than once",
    "abort": "sending final RSET",
    "rset": "sending RSET probe",
    "quit": "sending QUIT",
}
_IN_REPLY_TO = {
    "mail": "MAIL FROM command",
    "rcpt": "RCPT TO command",
    "data": "DATA command",
    "dot": "end of DATA command",
}


# -- command building ----------------------------------------------------------------


def _check(value: str, what: str) -> str:
    if _CTRL.search(value):
        raise ValueError(f"{what} contains CR, LF or another control character: {value!r}")
    return value


def _quote_local(local: str) -> str:
    body = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{body}"'


def _path(address: str, what: str) -> str:
    """The RFC 5321 path for `address`, quoting the local part when it needs it."""
    _check(address, what)
    if not address or extract_address(f"<{address}>") == address:
        return f"<{address}>"
    local, at, domain = address.rpartition("@")
    if at and not local.startswith('"'):
        quoted = f"{_quote_local(local)}@{domain}"
        if extract_address(f"<{quoted}>") == quoted:
            return f"<{quoted}>"
    raise ValueError(f"{what} is not a valid address: {address!r}")


def _uxtext(text: str) -> str:
    # RFC 6533 3: utf-8-addr-xtext; "+", "=", "\\" and non-ASCII as \x{HEX}.
    out = []
    for ch in text:
        if 0x21 <= ord(ch) <= 0x7E and ch not in "+=\\":
            out.append(ch)
        else:
            out.append(f"\\x{{{ord(ch):X}}}")
    return "".join(out)


def mail_command(msg: OutMessage, ext: Extensions, dummy_auth: bool = False) -> bytes:
    """MAIL FROM with the parameters the server offers (Postfix smtp_proto.c order)."""
    parts = [f"MAIL FROM:{_path(msg.sender, 'sender')}"]
    if ext.size is not None:
        parts.append(f"SIZE={len(msg.content)}")  # RFC 1870
    if ext.eightbitmime and msg.body in ("8BITMIME", "7BIT"):
        parts.append(f"BODY={msg.body}")  # RFC 6152
    elif msg.body not in (None, "7BIT", "8BITMIME"):
        raise ValueError(f"bad BODY value: {msg.body!r}")
    if ext.dsn:
        if msg.envid:
            parts.append(f"ENVID={xtext_encode(_check(msg.envid, 'ENVID'))}")  # RFC 3461 4.4
        if msg.ret:
            if msg.ret.upper() not in ("FULL", "HDRS"):
                raise ValueError(f"bad RET value: {msg.ret!r}")
            parts.append(f"RET={msg.ret.upper()}")
    if ext.smtputf8 and msg.smtputf8:
        parts.append("SMTPUTF8")  # RFC 6531 3.4
    if dummy_auth and ext.auth:
        parts.append("AUTH=<>")  # RFC 4954 5: the sender is not vouched for
    return (" ".join(parts) + "\r\n").encode("utf-8")


def rcpt_command(rcpt: OutRecipient, ext: Extensions) -> bytes:
    parts = [f"RCPT TO:{_path(rcpt.address, 'recipient')}"]
    if ext.dsn:
        if rcpt.orcpt is not None:
            kind, addr = rcpt.orcpt
            _check(kind, "ORCPT type")
            _check(addr, "ORCPT address")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", kind):
                raise ValueError(f"bad ORCPT address type: {kind!r}")
            if addr.isascii() and kind.lower() != "utf-8":
                parts.append(f"ORCPT={kind};{xtext_encode(addr)}")  # RFC 3461 4.2
            else:
                parts.append(f"ORCPT=utf-8;{_uxtext(addr)}")  # RFC 6533 3
        if rcpt.notify:
            words = [w.upper() for w in rcpt.notify]
            ok = words == ["NEVER"] or (
                set(words) <= {"SUCCESS", "FAILURE", "DELAY"} and len(set(words)) == len(words)
            )
            if not ok:
                raise ValueError(f"bad NOTIFY value: {rcpt.notify!r}")
            parts.append("NOTIFY=" + ",".join(words))  # RFC 3461 4.1
    return (" ".join(parts) + "\r\n").encode("utf-8")


def encode_content(content: bytes, line_limit: int = CONTENT_LINE_LIMIT) -> bytes:
    """The DATA stream for `content`: CRLF lines, dot-stuffed, ending in CRLF.CRLF.

    Every bare CR and bare LF becomes CRLF (RFC 5321 2.3.8), so no byte sequence in a
    queued message can end DATA early at a lenient receiver (SMTP smuggling,
    CVE-2023-51764). Lines longer than `line_limit` are broken with CRLF SPACE, as
    Postfix's smtp_line_length_limit does; a leading dot is doubled (RFC 5321 4.5.2).
    """
    lines = _NEWLINES.split(content)
    if lines and lines[-1] == b"":
        lines.pop()  # the content ended with a line ending
    out = bytearray()
    for line in lines:
        first = True
        while True:
            if first and line.startswith(b"."):
                line = b"." + line
            if not line_limit or len(line) <= line_limit:
                out += line + b"\r\n"
                break
            out += line[:line_limit] + b"\r\n"
            line = b" " + line[line_limit:]
            first = False
    out += b".\r\n"
    return bytes(out)


# -- the state machine ----------------------------------------------------------------

# Session states
_GREETING, _HELLO, _READY, _STARTTLS, _TLS_WAIT, _TX, _RSET, _REFUSED, _DONE, _AUTH = range(10)


@dataclass
class _Transaction:
    msg: OutMessage
    results: list[RecipientResult | None]
    pending: deque[tuple[str, bytes]] = field(default_factory=deque)
    accepted: list[int] = field(default_factory=list)
    rcpt_seen: int = 0
    mail_rejected: bool = False


class ClientConnection:
    """One SMTP client session (see the module docstring for the loop)."""

    def __init__(self, settings: ClientSettings | None = None) -> None:
        self.settings = settings or ClientSettings()
        self.greeting: ServerReply | None = None
        self.extensions = Extensions()
        self.esmtp = False
        self.tls_active = False
        self.discarded = 0  # cleartext bytes thrown away after a 220 to STARTTLS
        self._state = _GREETING
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._expect: deque[str] = deque(["greeting"])
        self._events: deque[Event] = deque()
        self._eof = False
        self._tx: _Transaction | None = None
        self._quit_after_tx = False

    # -- public API ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server (plaintext; after TLS, decrypted); b"" means EOF."""
        if not data:
            self._eof = True
            return
        if self._state == _DONE:
            return
        if self._state == _TLS_WAIT:
            # Cleartext after our STARTTLS was answered is never a reply to anything.
            self.discarded += len(data)
            return
        self._buf += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def closed(self) -> bool:
        return self._state == _DONE and not self._events

    @property
    def awaiting_tls(self) -> bool:
        return self._state == _TLS_WAIT

    @property
    def expecting(self) -> str | None:
        """The oldest reply awaited ("greeting", "ehlo", "starttls", "mail", "rcpt",
        "data", "dot", "rset", "abort"), so the caller can pick Postfix's timeout."""
        return self._expect[0] if self._expect else None

    @property
    def stage(self) -> str:
        """Postfix's words for what the client waits for ("sending MAIL FROM", ...)."""
        tag = self.expecting
        return _STAGE[tag] if tag else "waiting for the next command"

    @property
    def ready(self) -> bool:
        """Idle between transactions: send_mail(), rset(), starttls() or quit() may follow."""
        return self._state == _READY

    def next_event(self) -> Event | _Sentinel:
        while True:
            if self._events:
                return self._events.popleft()
            if self._state == _DONE:
                return CLOSED
            if self._state == _TLS_WAIT:
                return NEED_DATA
            if self._buf and not self._expect:
                # An early reply (CVE-2009-3555 style injection) or garbage: trust nothing.
                self._fail("protocol", "unexpected server reply: " + _head(self._buf))
                continue
            parsed = self._parse_reply()
            if isinstance(parsed, str):
                self._fail("protocol", parsed)
                continue
            if parsed is None:
                if self._eof:
                    self._fail("lost", "")
                    continue
                return NEED_DATA
            self._dispatch(self._expect.popleft(), parsed)

    def starttls(self) -> None:
        """Send STARTTLS (RFC 3207); the policy decides, `extensions.starttls` informs."""
        self._require(_READY, "starttls()")
        if self.tls_active:
            raise ProtocolMisuse("TLS is already active")
        self._state = _STARTTLS
        self._command("starttls", b"STARTTLS\r\n")

    def tls_from_start(self) -> None:
        """Implicit TLS (SMTPS): the caller made the handshake before the greeting."""
        self._require(_GREETING, "tls_from_start()")
        if self._buf:
            raise ProtocolMisuse("tls_from_start() after server bytes")
        self.tls_active = True

    def tls_established(self) -> None:
        """The handshake finished: forget the plaintext session and send EHLO again."""
        self._require(_TLS_WAIT, "tls_established()")
        self.tls_active = True
        self.extensions = Extensions()
        self.esmtp = False
        self._state = _HELLO
        # RFC 3207 4.2: after TLS the client must send EHLO first (Postfix always does).
        self._command("ehlo", f"EHLO {self.settings.helo_name}\r\n".encode())

    def authenticate(self, mechanism: str, initial: bytes | None) -> None:
        """Send AUTH (RFC 4954) with the initial response, if any ("=" when empty)."""
        self._require(_READY, "authenticate()")
        if not re.fullmatch(r"[A-Z0-9_-]{1,20}", mechanism):
            raise ValueError(f"bad SASL mechanism name {mechanism!r}")
        line = f"AUTH {mechanism}"
        if initial is not None:
            line += " " + (base64.b64encode(initial).decode() if initial else "=")
        self._state = _AUTH
        self._command("auth", line.encode() + b"\r\n")

    def auth_respond(self, data: bytes) -> None:
        """Answer the last AuthChallenge."""
        self._require(_AUTH, "auth_respond()")
        if self._expect:
            raise ProtocolMisuse("auth_respond() before the challenge")
        self._command("auth", base64.b64encode(data) + b"\r\n")

    def auth_cancel(self) -> None:
        """RFC 4954 4: "*" ends the exchange; the server answers 501."""
        self._require(_AUTH, "auth_cancel()")
        if self._expect:
            raise ProtocolMisuse("auth_cancel() before the challenge")
        self._command("auth", b"*\r\n")

    def send_mail(self, msg: OutMessage) -> None:
        """Run one transaction; raises ValueError (nothing sent) for unsafe envelope data."""
        self._require(_READY, "send_mail()")
        if not msg.recipients:
            raise ValueError("a transaction needs at least one recipient")
        ext = self.extensions
        commands = [("mail", mail_command(msg, ext, self.settings.dummy_mail_auth))]
        commands += [("rcpt", rcpt_command(r, ext)) for r in msg.recipients]
        commands.append(("data", b"DATA\r\n"))
        tx = _Transaction(msg, [None] * len(msg.recipients))
        local = self._local_refusal(msg)
        if local is not None:
            dsn, text = local
            done = [RecipientResult(r, "bounced", dsn, None, "", text) for r in msg.recipients]
            self._events.append(TransactionDone(tuple(done), True))
            return
        self._tx = tx
        self._state = _TX
        if ext.pipelining:
            for tag, line in commands:  # RFC 2920 3.1: DATA may end the group
                self._command(tag, line)
        else:
            tx.pending.extend(commands)
            self._command(*tx.pending.popleft())

    def rset(self) -> None:
        """RSET probe of an idle (cached) session; answered by RsetDone."""
        self._require(_READY, "rset()")
        self._state = _RSET
        self._command("rset", b"RSET\r\n")

    def quit(self) -> None:
        """Queue QUIT. Like Postfix (smtp_skip_quit_response=yes) the reply is not awaited.

        Allowed when idle, after Refused/StartTLSRefused, and while a transaction waits
        for its end-of-data reply (QUIT is then pipelined after the dot, as Postfix does).
        """
        if self._state == _DONE:
            return
        tx = self._tx
        if self._state == _TX and tx is not None and self._expect and self._expect[-1] == "dot":
            self._out.append(b"QUIT\r\n")
            self._quit_after_tx = True
            return
        if self._state == _AUTH and not self._expect:
            pass  # the client gives up on a challenge it cannot answer, as Postfix does
        elif self._state not in (_READY, _REFUSED):
            raise ProtocolMisuse("quit() only when idle or refused")
        self._out.append(b"QUIT\r\n")
        self._finish_session()

    # -- reply parsing --------------------------------------------------------------

    def _parse_reply(self) -> ServerReply | str | None:
        """One complete reply from the buffer, None if incomplete, or an error text."""
        s = self.settings
        buf = self._buf
        pos = 0
        code: int | None = None
        raw: list[str] = []
        while True:
            nl = buf.find(b"\n", pos)
            end = nl if nl >= 0 else len(buf)
            line = bytes(buf[pos:end])
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > s.reply_line_limit:
                return f"response longer than {s.reply_line_limit}: {_head(line)}"
            if nl < 0:
                return None
            pos = nl + 1
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                return f"non-SMTP response: {_head(line)}"
            this = int(line[:3])
            if not 200 <= this <= 599:
                return f"non-SMTP response: {_head(line)}"
            if code is None:
                code = this
            elif this != code:
                # RFC 5321 4.2.1: every line of a reply has the same code.
                return f"mixed reply codes {code} and {this}"
            raw.append(_printable(line))
            if len(raw) > s.reply_max_lines:
                return f"multi-line response longer than {s.reply_max_lines} lines"
            if line[3:4] != b"-":
                break
        del buf[:pos]
        return _make_reply(code, raw)

    # -- reply handling ---------------------------------------------------------------

    def _dispatch(self, tag: str, reply: ServerReply) -> None:
        s = self.settings
        cls = reply.code // 100
        if tag == "greeting":
            self.greeting = reply
            if cls != 2:
                self._refuse("CONNECT", reply)
                return
            self._state = _HELLO
            verb = "helo" if s.never_send_ehlo else "ehlo"
            self._command(verb, f"{verb.upper()} {s.helo_name}\r\n".encode())
        elif tag == "ehlo":
            if cls == 2:
                self.esmtp = True
                self.extensions = Extensions.parse(reply, s.discard_ehlo_keywords)
                self._ready(reply)
            elif reply.code == 421:
                self._refuse("EHLO", reply)
            else:
                self._command("helo", f"HELO {s.helo_name}\r\n".encode())
        elif tag == "helo":
            if cls == 2:
                self._ready(reply)
            else:
                self._refuse("HELO", reply)
        elif tag == "starttls":
            if cls == 2:
                # RFC 3207 4.2: anything after the 220 was sent in cleartext by someone.
                self.discarded += len(self._buf)
                dropped = len(self._buf)
                self._buf.clear()
                self._state = _TLS_WAIT
                self._events.append(StartTLSReady(reply, dropped))
            else:
                self._state = _READY
                self._events.append(StartTLSRefused(reply))
        elif tag == "auth":
            if reply.code == 334:
                text = reply.raw[0][4:].strip() if reply.raw else ""
                try:
                    data: bytes | None = base64.b64decode(text, validate=True)
                except binascii.Error:
                    data = None
                self._events.append(AuthChallenge(reply, data))
            else:
                self._state = _READY
                self._events.append(AuthDone(reply))
        elif tag == "rset":
            self._state = _READY
            self._events.append(RsetDone(reply))
        else:
            self._tx_reply(tag, reply)

    def _ready(self, reply: ServerReply) -> None:
        self._state = _READY
        self._events.append(Ready(reply, self.esmtp, self.extensions, self.tls_active))

    def _refuse(self, command: str, reply: ServerReply) -> None:
        self._state = _REFUSED
        self._events.append(Refused(command, reply))

    def _tx_reply(self, tag: str, reply: ServerReply) -> None:
        tx = self._tx
        assert tx is not None
        ok = reply.code // 100 == 2
        if tag == "mail":
            if not ok:
                tx.mail_rejected = True
                for i in range(len(tx.results)):
                    tx.results[i] = self._failed(tx, i, reply, "mail")
        elif tag == "rcpt":
            i = tx.rcpt_seen
            tx.rcpt_seen += 1
            if tx.mail_rejected:
                pass  # every recipient already failed with the MAIL reply
            elif ok:
                tx.accepted.append(i)
            else:
                tx.results[i] = self._failed(tx, i, reply, "rcpt")
        elif tag == "data":
            if reply.code // 100 == 3:
                # RFC 2197 (Postfix): with no recipient accepted, send only the dot.
                body = encode_content(tx.msg.content, self.settings.line_length_limit)
                self._command("dot", body if tx.accepted else b".\r\n")
                return
            for i in tx.accepted:
                tx.results[i] = self._failed(tx, i, reply, "data")
            tx.accepted.clear()
            self._abort()
            return
        elif tag == "dot":
            if tx.accepted:
                for i in tx.accepted:
                    tx.results[i] = (
                        RecipientResult(
                            tx.msg.recipients[i], "sent", reply.dsn, reply, "end of DATA command"
                        )
                        if ok
                        else self._failed(tx, i, reply, "dot")
                    )
            self._tx_done(True)
            return
        elif tag == "abort":
            self._tx_done(ok)
            return
        if not self._expect:
            # Not pipelining (or all pipelined replies are in): the next step.
            if tx.mail_rejected or (tx.pending and tx.pending[0][0] == "data" and not tx.accepted):
                self._abort()
            elif tx.pending:
                self._command(*tx.pending.popleft())

    def _failed(self, tx: _Transaction, i: int, reply: ServerReply, tag: str) -> RecipientResult:
        status: Status = "deferred" if reply.code < 500 else "bounced"
        return RecipientResult(tx.msg.recipients[i], status, reply.dsn, reply, _IN_REPLY_TO[tag])

    def _abort(self) -> None:
        # Postfix sends RSET after a refused MAIL, all RCPTs refused, or a refused DATA.
        assert self._tx is not None
        self._tx.pending.clear()
        self._command("abort", b"RSET\r\n")

    def _tx_done(self, reusable: bool) -> None:
        tx = self._tx
        assert tx is not None
        results = []
        for i, r in enumerate(tx.results):
            if r is None:  # accepted, but the transaction was cut short (no dot sent)
                r = RecipientResult(
                    tx.msg.recipients[i], "deferred", "4.0.0", None, "", "transaction aborted"
                )
            results.append(r)
        self._tx = None
        self._state = _READY
        self._events.append(TransactionDone(tuple(results), reusable))
        if self._quit_after_tx:
            self._finish_session()

    def _local_refusal(self, msg: OutMessage) -> tuple[str, str] | None:
        ext = self.extensions
        size = len(msg.content)
        if ext.size and size > ext.size:
            return "5.3.4", f"message size {size} exceeds size limit {ext.size} of server {{host}}"
        addresses = [msg.sender, *(r.address for r in msg.recipients)]
        if not ext.smtputf8 and not all(a.isascii() for a in addresses):
            return "5.6.7", (
                "message requires SMTPUTF8, but no server was found that supports SMTPUTF8."
                " The last attempted server was {host}"
            )
        return None

    # -- helpers ---------------------------------------------------------------------

    def _command(self, tag: str, line: bytes) -> None:
        self._out.append(line)
        self._expect.append(tag)

    def _require(self, state: int, what: str) -> None:
        if self._state != state:
            raise ProtocolMisuse(f"{what} is not allowed now (state {self._state})")

    def _fail(self, kind: Literal["lost", "protocol"], detail: str) -> None:
        # Idle (e.g. a cached session the server closed): no Postfix stage applies.
        stage = _STAGE[self._expect[0]] if self._expect else "waiting for the next command"
        tx = self._tx
        done = tuple(r for r in (tx.results if tx else []) if r is not None and r.status != "sent")
        self._tx = None
        self._finish_session()
        self._events.append(ConnectionFailed(kind, stage, detail, done))

    def _finish_session(self) -> None:
        self._state = _DONE
        self._buf.clear()
        self._expect.clear()


def _printable(line: bytes) -> str:
    text = line.decode("utf-8", "replace")
    if text.isprintable() and "\ufffd" not in text:
        return text  # the usual reply line: no per-character pass
    return "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in text)


def _head(data: bytes | bytearray) -> str:
    return _printable(bytes(data[:30]).split(b"\n")[0].rstrip(b"\r")) + (
        "..." if len(data) > 30 else ""
    )


def _make_reply(code: int | None, raw: list[str]) -> ServerReply:
    assert code is not None
    texts = [r[4:] for r in raw]
    m = _STATUS_RE.match(texts[0])
    status = m.group(0) if m and m.group(1) == str(code)[0] else ""
    lines = []
    for t in texts:
        if status and (t == status or t.startswith(status + " ")):
            t = t[len(status) + 1 :]
        lines.append(t)
    return ServerReply(code, status, tuple(lines), tuple(raw))
