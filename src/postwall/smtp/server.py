"""The sans-I/O SMTP server state machine: bytes in, events out, replies as values.

Contract: `ServerConnection` never does I/O and never raises on peer input.
Every command line gets exactly one reply, in order (RFC 2920 3.1). Syntax,
sequence, length and unknown-command errors are answered here with Postfix
3.7 smtpd's codes; every other command becomes an event the caller must
answer with `accept()` or `reject()` before asking for the next one (the
caller misusing the API gets `ProtocolMisuse`, a RuntimeError). Informational
events (`ImproperPipelining`, `LineTooLong`, `NonSmtpCommand`,
`IllegalAddress`) need no answer. Once the core decides to end the session
(QUIT, error limits, a BDAT syntax error, a bare LF under reject)
`next_event()` returns CLOSED after the final reply has been queued.

Caller loop (the smtpd glue):

    conn.greeting(); write(conn.data_to_send())
    while True:
        conn.receive_data(await read())          # b"" on EOF
        while (ev := conn.next_event()) not in (NEED_DATA, CLOSED):
            ...answer ev with conn.accept(...) / conn.reject(reply)
        write(conn.data_to_send())
        if ev is CLOSED: break

Bytes received before the greeting was taken with `data_to_send()` are
reported as improper pipelining "after CONNECT", as Postfix does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from postwall.smtp import replies
from postwall.smtp.address import (
    ArgumentError,
    MailParams,
    parse_mail,
    parse_rcpt,
    parse_vrfy,
    split_args,
)
from postwall.smtp.dataframe import BdatReader, DataReader
from postwall.smtp.events import (
    Auth,
    AuthAborted,
    AuthResponse,
    Counts,
    DataStart,
    Envelope,
    Etrn,
    Event,
    Helo,
    IllegalAddress,
    ImproperPipelining,
    LineTooLong,
    MailFrom,
    MailRefused,
    MalformedBdat,
    Message,
    NonSmtpCommand,
    ParameterWarning,
    RcptTo,
    Recipient,
    StartTLS,
    Vrfy,
)
from postwall.smtp.replies import Reply


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
CLOSED: Final = _Sentinel("CLOSED")


class ProtocolMisuse(RuntimeError):
    """The caller used the API out of order (a bug in the glue, not the peer)."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the core needs from main.cf/master.cf, already typed (names as Postfix)."""

    myhostname: str = "localhost"
    smtpd_banner: str = "localhost ESMTP"
    message_size_limit: int = 10240000  # 0: no limit
    smtpd_recipient_limit: int = 1000
    line_length_limit: int = 2048
    smtpd_soft_error_limit: int = 10
    smtpd_hard_error_limit: int = 20
    smtpd_junk_command_limit: int = 100
    smtpd_helo_required: bool = False
    disable_vrfy_command: bool = False
    smtputf8_enable: bool = True
    # "no" and "normalize"/"yes" both normalise bare LF to CRLF; only CRLF.CRLF
    # ends DATA in every mode (deviation from 3.7 "no", which is smuggle-prone).
    smtpd_forbid_bare_newline: str = "normalize"
    smtpd_forbid_bare_newline_reject_code: int = 550
    smtpd_forbid_unauth_pipelining: bool = False
    smtpd_discard_ehlo_keywords: tuple[str, ...] = ()
    smtpd_forbidden_commands: tuple[str, ...] = ("CONNECT", "GET", "POST")
    starttls_offered: bool = False  # from tls.policy: level may/encrypt and not wrappermode
    tls_required: bool = False  # smtpd_tls_security_level=encrypt
    sasl_mechanisms: tuple[str, ...] = ()  # the default of conn.sasl_mechanisms
    smtpd_sasl_auth_enable: bool = False
    smtpd_tls_auth_only: bool = False
    broken_sasl_auth_clients: bool = False
    smtpd_sasl_response_limit: int = 12288

    @classmethod
    def from_params(cls, params: object, **overrides: object) -> ServerSettings:
        """Build from a config Params object (duck-typed to keep layer 1 flat)."""
        values: dict[str, object] = {}
        for name in cls.__dataclass_fields__:
            if hasattr(params, name):
                values[name] = getattr(params, name)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


# RFC 2920 3.1: these must end a pipelined group (Postfix SMTPD_CMD_FLAG_LAST).
_LAST_IN_GROUP = frozenset({"HELO", "EHLO", "DATA", "NOOP", "VRFY"})
# Allowed before STARTTLS at smtpd_tls_security_level=encrypt (RFC 3207 4).
_PRE_TLS = frozenset({"HELO", "EHLO", "STARTTLS", "NOOP", "QUIT"})
# Postfix SMTPD_CMD_FLAG_LIMIT: repeatable without a tarpit unless counted.
_JUNK = frozenset({"HELO", "EHLO", "RSET", "NOOP", "VRFY", "ETRN"})
_KNOWN = frozenset(
    {"HELO", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "BDAT"}
    | {"RSET", "NOOP", "VRFY", "ETRN", "QUIT", "XCLIENT", "XFORWARD"}
)


@dataclass
class _Transaction:
    sender: str
    params: MailParams
    recipients: list[Recipient] = field(default_factory=list)


# Input modes
_CMD, _DATA, _CHUNK, _AUTH, _TLS = range(5)


class ServerConnection:
    """One SMTP server session (see the module docstring for the loop)."""

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings()
        names = {k.lower() for k in self.settings.smtpd_discard_ehlo_keywords}
        # EHLO keywords hidden, and the commands refused with them (CHUNKING is BDAT).
        self._discarded = frozenset("bdat" if k == "chunking" else k for k in names) | names
        self.counts = Counts()
        self.error_count = 0
        self.junk_count = 0
        self.helo_name: str | None = None
        self.esmtp = False
        self.tls_active = False
        self.authenticated = False
        # Announced by EHLO and accepted by AUTH; the glue sets it per session (the
        # list depends on TLS and, with Dovecot, on what the auth server offers).
        self.sasl_mechanisms = self.settings.sasl_mechanisms
        # smtpd_sasl_exceptions_networks: EHLO does not announce AUTH (AUTH still works).
        self.auth_hidden = False
        self.client_quit = False
        self.close_reason: str | None = None
        # Postfix's "after CMD" word for `lost connection after ...` and `timeout after ...`.
        self.last_command = "CONNECT"
        self._line_text = ""  # the command line being handled, for warnings
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._eof = False
        self._closed = False
        self._greeted = False
        self._greeting_pending = False
        self._ill_pipelining_seen = False
        self._access_denied: str | None = None
        self._info: deque[Event] = deque()
        self._pending: Event | None = None
        self._ready: Event | None = None
        self._pending_verb = ""
        self._mode = _CMD
        self._discarding_long_line = False
        self._tx: _Transaction | None = None
        self._data: DataReader | None = None
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_reply: Reply | None = None
        # A BDAT sequence runs from the first chunk to LAST (or RSET), even when
        # its chunks are refused: Postfix answers MAIL/RCPT/DATA "after BDAT" then.
        self._bdat: BdatReader | None = None

    # -- the public API --------------------------------------------------------

    def greeting(self, reply: Reply | None = None, *, denied: str | None = None) -> None:
        """Queue the 220 banner, or a refusal (4xx/5xx) that ends the session.  With
        `denied` (the client's name[addr]) a refusal keeps the session open and every
        command but QUIT gets Postfix's `503 5.7.0 Error: access denied for ...`."""
        if self._greeted:
            raise ProtocolMisuse("greeting() called twice")
        self._greeted = True
        self._greeting_pending = True
        reply = reply or replies.greeting(self.settings.smtpd_banner)
        self._send(reply)
        if reply.code != 220 and denied is not None:
            self._access_denied = denied
            self.error_count += 1
        elif reply.code != 220:
            self._close("refused")

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if self._closed or self._mode == _TLS:
            return  # bytes after our last word, or cleartext meant for the TLS layer
        if self._greeting_pending and not self._ill_pipelining_seen and not self._buf:
            self._note_pipelining("CONNECT", bytes(data))
        self._buf += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        self._greeting_pending = False
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (for the glue's flow control)."""
        return len(self._buf)

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    @property
    def awaiting_tls(self) -> bool:
        """True after STARTTLS was accepted, until tls_established()."""
        return self._mode == _TLS

    def next_event(self) -> Event | _Sentinel:
        if self._pending is not None:
            raise ProtocolMisuse(f"answer {type(self._pending).__name__} first")
        if not self._greeted:
            raise ProtocolMisuse("greeting() must come first")
        while True:
            if self._info:
                return self._info.popleft()
            if self._closed:
                return CLOSED
            if self._ready is not None:
                event, self._ready = self._ready, None
                self._pending = event
                return event
            step = self._step()
            if step is NEED_DATA:
                if self._info:
                    continue
                if self._eof:
                    self._close("lost connection")
                    return CLOSED
                return NEED_DATA
            if isinstance(step, _Sentinel) or step is None:
                continue
            # Notices raised while reading the command are reported before it.
            self._ready = step

    def accept(self, reply: Reply | None = None, *, queue_id: str | None = None) -> None:
        """Answer the pending event positively (a default reply fits each event)."""
        if reply is not None and reply.code >= 400:
            raise ProtocolMisuse("accept() with an error reply; use reject()")
        if isinstance(self._pending, Message) and queue_id is None and reply is None:
            raise ProtocolMisuse("accept a Message with queue_id= (or a reply)")
        event = self._take_pending()
        verb = self._pending_verb
        match event:
            case Helo(name=name, esmtp=esmtp):
                self._reset_transaction()
                self.helo_name, self.esmtp = name, esmtp
                self._ok(verb, reply or self._helo_reply(esmtp))
            case MailFrom(address=address, params=params):
                self._tx = _Transaction(address, params)
                self._ok(verb, reply or replies.MAIL_OK)
            case RcptTo(address=address, params=params):
                assert self._tx is not None
                self._tx.recipients.append(Recipient(address, params))
                self._ok(verb, reply or replies.RCPT_OK)
            case DataStart(bdat=False):
                self.last_command = "DATA"
                self._data = DataReader(self.settings.message_size_limit, self._reject_bare_lf)
                self._mode = _DATA
                self._send(reply or replies.START_DATA)
            case DataStart(bdat=True):
                self._mode = _CHUNK  # counted when the chunk is answered
            case Message(bdat=bdat):
                if reply is None:
                    assert queue_id is not None
                    reply = (
                        replies.chunk_queued(event.size, queue_id)
                        if bdat
                        else replies.queued(queue_id)
                    )
                self._reset_transaction()
                # Postfix's SMTPD_AFTER_EOM for BDAT LAST too: no "lost connection" line
                # for a client that leaves without QUIT once its message is queued.
                self.last_command = "END-OF-MESSAGE"
                self._ok(verb, reply)
            case StartTLS():
                # Counted as done once the handshake is (Postfix: starttls=0/1 after a
                # client that never finishes it).
                self._ok("", reply or replies.READY_TLS)
                # RFC 3207 4.2 / CVE-2011-0411: nothing sent before the handshake counts.
                self._buf.clear()
                self._mode = _TLS
            case Vrfy(address=address):
                self._ok(verb, reply or replies.cannot_verify(address))
            case Etrn():
                self._ok(verb, reply or replies.QUEUING_STARTED)
            case Auth() | AuthResponse():
                self.authenticated = True
                self._mode = _CMD
                self._ok(verb, reply or replies.AUTH_OK)

    def reject(self, reply: Reply) -> None:
        """Answer the pending event with a 4xx/5xx reply."""
        if reply.code < 400:
            raise ProtocolMisuse("reject() needs a 4xx/5xx reply")
        event = self._take_pending()
        verb = self._pending_verb
        match event:
            case DataStart(bdat=True):
                # The chunk still arrives; swallow it and answer with this reply.
                assert self._bdat is not None
                self._bdat.failed = True
                self._chunk_reply = reply
                self._mode = _CHUNK
                return
            case Message():
                self._reset_transaction()
                self.last_command = "END-OF-MESSAGE"
            case Auth() | AuthResponse():
                self._mode = _CMD
        self._fail(verb, reply)

    def challenge(self, text: str) -> None:
        """Answer a pending Auth/AuthResponse with `334 text`; the next line is an AuthResponse."""
        event = self._take_pending()
        if not isinstance(event, Auth | AuthResponse):
            raise ProtocolMisuse("challenge() answers only AUTH")
        self._pending_verb = "auth"
        self._send(replies.auth_challenge(text))
        self._mode = _AUTH

    def tls_established(self) -> None:
        """The handshake finished: start a fresh session (RFC 3207 4.2)."""
        if self._mode != _TLS and (self.tls_active or self._greeted):
            raise ProtocolMisuse("tls_established() without an accepted STARTTLS")
        if self._mode == _TLS:
            self.counts.succeeded("starttls")
        self.tls_active = True
        self._mode = _CMD
        self._buf.clear()
        self._reset_transaction()
        self.helo_name, self.esmtp = None, False
        self.authenticated = False

    def close(self, reply: Reply | None = None, reason: str = "closed") -> None:
        """End the session from the glue's side (timeout, shutdown), with a last reply."""
        if self._closed:
            return
        if reply is not None:
            self._send(reply)
        self._pending = None
        self._close(reason)

    @property
    def content_bytes(self) -> int | None:
        """Message bytes received so far inside DATA or BDAT (Postfix's `lost connection
        after DATA (N bytes)`), None outside message content."""
        if self._data is not None:
            return self._data.size
        if self._bdat is not None:
            return self._bdat.received
        return None

    def disconnect_summary(self) -> str:
        """The tail of Postfix's `disconnect from ...` line, e.g. `ehlo=1 quit=1 commands=2`."""
        return self.counts.format()

    @property
    def over_soft_error_limit(self) -> bool:
        """Postfix sleeps smtpd_error_sleep_time before each reply from here on (tarpit)."""
        return self.error_count >= self.settings.smtpd_soft_error_limit

    # -- internals -------------------------------------------------------------

    @property
    def _reject_bare_lf(self) -> bool:
        return self.settings.smtpd_forbid_bare_newline.lower() == "reject"

    def _take_pending(self) -> Event:
        if self._pending is None:
            raise ProtocolMisuse("no event is waiting for an answer")
        event, self._pending = self._pending, None
        return event

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _close(self, reason: str) -> None:
        self._closed = True
        self._buf.clear()
        if self.close_reason is None:
            self.close_reason = reason

    def _ok(self, verb: str, reply: Reply) -> None:
        if verb:
            self.counts.succeeded(verb)
        self._send(reply)
        self._check_error_limit()

    def _fail(self, verb: str, reply: Reply, limit: bool = True) -> None:
        """A refused command: Postfix counts it towards the error limits."""
        self.error_count += 1
        self._send(reply)
        if limit:
            self._check_error_limit()

    def _check_error_limit(self) -> None:
        # Postfix checks the hard limit before it reads the next command, so the
        # 421 follows the reply that reached it without waiting for more input.
        s = self.settings
        if self.error_count >= s.smtpd_hard_error_limit and not self._closed:
            self._send(replies.too_many_errors(s.myhostname))
            self._reset_transaction()
            self._mode = _CMD
            self._close("too many errors")

    def _reset_transaction(self) -> None:
        self._tx = None
        self._data = None
        self._bdat = None

    def _note_pipelining(self, after: str, pending: bytes) -> None:
        self._ill_pipelining_seen = True
        self._info.append(ImproperPipelining(after, pending[:512]))
        if self.settings.smtpd_forbid_unauth_pipelining:
            self._send(replies.SYNC_ERROR)
            self._close("improper command pipelining")

    def _bare_lf_close(self) -> None:
        s = self.settings
        self._send(replies.bare_newline(s.smtpd_forbid_bare_newline_reject_code, s.myhostname))
        self._reset_transaction()
        self._close("bare <LF> received")

    def _step(self) -> Event | _Sentinel | None:
        """Advance on buffered input: an event, NEED_DATA, or None to go on."""
        if self._mode == _TLS:
            return NEED_DATA
        if self._mode == _DATA:
            return self._step_data()
        if self._mode == _CHUNK:
            return self._step_chunk()
        line = self._read_line()
        if line is None:
            return NEED_DATA
        if self._closed:
            return None
        if self._mode == _AUTH:
            return self._auth_line(line)
        return self._command(line)

    def _read_line(self) -> bytes | None:
        """One command line without its ending, or None if incomplete."""
        limit = self.settings.line_length_limit
        if self._mode == _AUTH:
            limit = self.settings.smtpd_sasl_response_limit
        while True:
            nl = self._buf.find(b"\n")
            if self._discarding_long_line:
                if nl < 0:
                    self._buf.clear()
                    return None
                del self._buf[: nl + 1]
                self._discarding_long_line = False
                continue
            if nl < 0 and len(self._buf) <= limit:
                return None
            if nl < 0 or nl > limit:
                # Postfix keeps the first line_length_limit bytes as the command
                # and throws away the rest of the line.
                line = bytes(self._buf[:limit])
                del self._buf[:limit]
                self._discarding_long_line = True
                self._info.append(LineTooLong(limit, line[:30]))
                if self._mode == _AUTH:
                    self._mode = _CMD
                    self._fail("auth", replies.SASL_RESPONSE_TOO_LONG)
                    return None
                return line.rstrip(b"\r")
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.endswith(b"\r"):
                return line[:-1]
            if self._reject_bare_lf:
                self._bare_lf_close()
            return line

    def _check_pipelining(self, verb: str) -> None:
        if verb in _LAST_IN_GROUP and self._buf and not self._ill_pipelining_seen:
            self._note_pipelining(verb, bytes(self._buf))

    def _command(self, raw: bytes) -> Event | None:
        s = self.settings
        # Postfix parses the line as a C string: a NUL ends the command there.
        raw = raw.partition(b"\0")[0]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            if s.smtputf8_enable:
                self._fail("", Reply(500, "5.5.2", "Error: bad UTF-8 syntax"))
                return None
            text = raw.decode("latin-1")
        self._line_text = text
        words = text.strip(" \t").split(None, 1)
        if not words:
            self._fail("", replies.BAD_SYNTAX)  # not counted in the disconnect line
            return None
        verb = words[0].upper()
        arg = words[1].strip(" \t") if len(words) > 1 else ""
        if verb in s.smtpd_forbidden_commands or not "A" <= verb[0] <= "Z":
            self.counts.tried("unknown")
            self._info.append(NonSmtpCommand(text))
            self._send(Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye."))
            self._close("non-SMTP command")
            return None
        if verb not in _KNOWN:
            self.counts.tried("unknown")
            self.last_command = "UNKNOWN"
            self._fail("unknown", replies.UNRECOGNIZED)
            return None
        name = verb.lower()
        self.counts.tried(name)
        self.last_command = verb
        self._pending_verb = name
        if verb in _JUNK:
            self.junk_count += 1
            if self.junk_count > s.smtpd_junk_command_limit:
                self.error_count += 1
        self._check_pipelining(verb)
        if self._closed:
            return None
        if self._access_denied is not None and verb != "QUIT":
            self._fail(name, Reply(503, "5.7.0", f"Error: access denied for {self._access_denied}"))
            return None
        if s.tls_required and not self.tls_active and verb not in _PRE_TLS:
            if verb == "BDAT":
                return self._cmd_bdat(name, arg, refuse=replies.MUST_STARTTLS)
            self._fail(name, replies.MUST_STARTTLS)
            return None
        if name in self._discarded and verb in ("STARTTLS", "ETRN", "BDAT"):
            # smtpd_discard_ehlo_keywords also disables the command, as in Postfix;
            # BDAT gets 521 because its chunk cannot be skipped reliably.
            if verb == "BDAT":
                self._fail(name, Reply(521, "5.5.1", "Error: command not implemented"), False)
                self._close("BDAT not implemented")
            else:
                self._fail(name, replies.NOT_IMPLEMENTED)
            return None
        handler = getattr(self, f"_cmd_{name}")
        return handler(name, arg)  # type: ignore[no-any-return]

    # -- command handlers: return an event, or None after replying ------------

    def _cmd_helo(self, name: str, arg: str) -> Event | None:
        return self._helo(name, arg, esmtp=False)

    def _cmd_ehlo(self, name: str, arg: str) -> Event | None:
        return self._helo(name, arg, esmtp=True)

    def _helo(self, name: str, arg: str, esmtp: bool) -> Event | None:
        if not arg:
            self._fail(name, replies.EHLO_SYNTAX if esmtp else replies.HELO_SYNTAX)
            return None
        return Helo(" ".join(arg.split()), esmtp)

    def _helo_reply(self, esmtp: bool) -> Reply:
        s = self.settings
        if not esmtp:
            return Reply(250, "", s.myhostname)
        # Postfix's keyword order (smtpd.c ehlo_cmd).
        words = ["PIPELINING"]
        words.append(f"SIZE {s.message_size_limit}" if s.message_size_limit else "SIZE")
        if not s.disable_vrfy_command:
            words.append("VRFY")
        words.append("ETRN")
        if s.starttls_offered and not self.tls_active:
            words.append("STARTTLS")
        if self._auth_offered() and not self.auth_hidden:
            words.append("AUTH " + " ".join(self.sasl_mechanisms))
            if s.broken_sasl_auth_clients:
                words.append("AUTH=" + " ".join(self.sasl_mechanisms))
        words += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN"]
        if s.smtputf8_enable:
            words.append("SMTPUTF8")
        words.append("CHUNKING")
        words = [w for w in words if w.split()[0].lower() not in self._discarded]
        return Reply(250, "", "\n".join([s.myhostname, *words]))

    def _auth_offered(self) -> bool:
        s = self.settings
        return bool(self.sasl_mechanisms) and (self.tls_active or not s.smtpd_tls_auth_only)

    def _need_helo(self, name: str) -> bool:
        if self.settings.smtpd_helo_required and self.helo_name is None:
            self._fail(name, replies.SEND_HELO_FIRST)
            return True
        return False

    def _cmd_mail(self, name: str, arg: str) -> Event | None:
        if self._need_helo(name):
            return None
        if self._tx is not None:
            self._fail(name, replies.NESTED_MAIL)
            return None
        if self._bdat is not None:
            self._fail(name, replies.MAIL_AFTER_BDAT)
            return None
        try:
            address, params = parse_mail(
                arg,
                size_limit=self.settings.message_size_limit,
                smtputf8_enable=self.settings.smtputf8_enable,
                sasl_enabled=self.settings.smtpd_sasl_auth_enable or bool(self.sasl_mechanisms),
            )
        except ArgumentError as err:
            if err.path is not None:
                self._info.append(IllegalAddress("MAIL", err.path))
            if err.sender is not None:
                self._info.append(MailRefused(err.sender, err.reply))
            self._fail(name, err.reply)
            return None
        return MailFrom(address, params)

    def _cmd_rcpt(self, name: str, arg: str) -> Event | None:
        tx = self._tx
        if self._bdat is not None:
            self._fail(name, replies.RCPT_AFTER_BDAT)
            return None
        if tx is None:
            self._fail(name, replies.NEED_MAIL)
            return None
        try:
            address, params = parse_rcpt(arg)
        except ArgumentError as err:
            if err.path is not None:
                self._info.append(IllegalAddress("RCPT", err.path))
            if err.warning is not None:
                self._info.append(ParameterWarning(err.warning))
            self._fail(name, err.reply)
            return None
        limit = self.settings.smtpd_recipient_limit
        if limit and len(tx.recipients) >= limit:
            self._fail(name, replies.TOO_MANY_RECIPIENTS)
            return None
        return RcptTo(address, params)

    def _cmd_data(self, name: str, arg: str) -> Event | None:
        tx = self._tx
        if self._bdat is not None:
            self._fail(name, replies.DATA_AFTER_BDAT)
        elif tx is None:
            self._fail(name, replies.NEED_RCPT)
        elif not tx.recipients:
            self._fail(name, replies.NO_VALID_RECIPIENTS)
        elif arg:
            self._fail(name, replies.DATA_SYNTAX)
        else:
            return DataStart(bdat=False)
        return None

    def _parse_bdat(self, arg: str) -> tuple[int, bool] | None:
        words = arg.split()
        if not 1 <= len(words) <= 2 or not words[0].isascii() or not words[0].isdigit():
            return None
        if len(words) == 2 and words[1].upper() != "LAST":
            return None
        size = int(words[0])
        return (size, len(words) == 2) if size < 2**53 else None

    def _cmd_bdat(self, name: str, arg: str, refuse: Reply | None = None) -> Event | None:
        parsed = self._parse_bdat(arg)
        if parsed is None:
            # The chunk length is unknown, so the byte stream cannot be resynchronised.
            self._info.append(MalformedBdat(self._line_text[:100]))
            self._fail(name, replies.BDAT_SYNTAX, limit=False)
            self._reset_transaction()
            self._close("malformed BDAT command")
            return None
        size, last = parsed
        self._chunk_left, self._chunk_last, self._chunk_reply = size, last, None
        self._mode = _CHUNK
        self.last_command = "BDAT"
        first = self._bdat is None
        if self._bdat is None:
            self._bdat = BdatReader(self.settings.message_size_limit, self._reject_bare_lf)
        reader = self._bdat
        tx = self._tx
        if reader.failed:
            self._chunk_reply = replies.chunk_discarded(size)
        elif refuse is not None or tx is None or not tx.recipients:
            # RFC 3030 2: a refused chunk is still read, then answered.
            reader.failed = True
            self._chunk_reply = refuse or (
                replies.NEED_RCPT if tx is None else replies.NO_VALID_RECIPIENTS
            )
        elif not reader.chunk_fits(size):
            reader.failed = True
            self._chunk_reply = replies.CHUNK_TOO_BIG
        elif first:
            # The glue gets its say (smtpd_data_restrictions) once per message.
            return DataStart(bdat=True)
        return None

    def _cmd_rset(self, name: str, arg: str) -> Event | None:
        if arg:
            self._fail(name, replies.RSET_SYNTAX)
            return None
        self._reset_transaction()
        self._ok(name, replies.OK)
        return None

    def _cmd_noop(self, name: str, arg: str) -> Event | None:
        self._ok(name, replies.OK)
        return None

    def _cmd_quit(self, name: str, arg: str) -> Event | None:
        self.client_quit = True
        self._reset_transaction()
        self._close("quit")
        self._ok(name, replies.BYE)
        return None

    def _cmd_starttls(self, name: str, arg: str) -> Event | None:
        if arg:
            self._fail(name, replies.STARTTLS_SYNTAX)
        elif self.tls_active:
            self._fail(name, replies.TLS_ACTIVE)
        elif not self.settings.starttls_offered:
            self._fail(name, replies.NOT_IMPLEMENTED)
        else:
            self._reset_transaction()
            return StartTLS()
        return None

    def _cmd_vrfy(self, name: str, arg: str) -> Event | None:
        s = self.settings
        if s.disable_vrfy_command:
            self._fail(name, replies.VRFY_DISABLED)
            return None
        try:
            address = parse_vrfy(arg, smtputf8_enable=s.smtputf8_enable)
        except ArgumentError as err:
            if err.path is not None:
                self._info.append(IllegalAddress("VRFY", err.path))
            self._fail(name, err.reply)
            return None
        return Vrfy(address)

    def _cmd_etrn(self, name: str, arg: str) -> Event | None:
        if self.settings.smtpd_helo_required and self.helo_name is None:
            self._fail(name, replies.ETRN_HELO_FIRST)
        elif self._tx is not None:
            self._fail(name, replies.ETRN_IN_TRANSACTION)
        elif len(split_args(arg)) != 1:
            self._fail(name, replies.ETRN_SYNTAX)
        else:
            domain = arg[1:] if arg[:1] in ("@", "#") else arg
            labels = domain.rstrip(".").split(".")
            if domain and all(lab and all(c.isalnum() or c in "-_" for c in lab) for lab in labels):
                return Etrn(domain)
            self._fail(name, replies.ETRN_BAD_PARAM)
        return None

    def _cmd_xclient(self, name: str, arg: str) -> Event | None:
        """XCLIENT and XFORWARD (Postfix's proxy extensions): known, never authorized
        (smtpd_authorized_xclient_hosts and _xforward_hosts are not supported), with
        Postfix's replies in its order of checks."""
        if self._tx is not None:
            self._fail(name, replies.IN_TRANSACTION)
        elif not arg:
            self._fail(name, Reply(501, "5.5.4", f"Syntax: {name.upper()} attribute=value..."))
        else:
            self._fail(name, Reply(550, "5.7.0", "Error: insufficient authorization"))
        return None

    _cmd_xforward = _cmd_xclient

    def _cmd_auth(self, name: str, arg: str) -> Event | None:
        words = arg.split()
        if self.settings.smtpd_helo_required and self.helo_name is None:
            self._fail(name, replies.SEND_HELO_FIRST)
        elif not self._auth_offered():
            self._fail(name, replies.AUTH_NOT_ENABLED)
        elif self.authenticated:
            self._fail(name, replies.ALREADY_AUTHENTICATED)
        elif self._tx is not None:
            self._fail(name, replies.IN_TRANSACTION)
        elif not 1 <= len(words) <= 2:
            self._fail(name, replies.AUTH_SYNTAX)
        else:
            initial = None if len(words) == 1 else ("" if words[1] == "=" else words[1])
            return Auth(words[0].upper(), initial)
        return None

    def _auth_line(self, line: bytes) -> Event | None:
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            self._mode = _CMD
            self._info.append(AuthAborted())
            self._fail("auth", replies.AUTH_ABORTED)  # RFC 4954 4
            return None
        return AuthResponse(text)

    # -- message bodies ---------------------------------------------------------

    def _step_data(self) -> Event | _Sentinel | None:
        reader = self._data
        assert reader is not None and self._tx is not None
        used = reader.feed(self._buf)
        del self._buf[:used]
        if reader.bare_lf and self._reject_bare_lf:
            self._mode = _CMD
            self._bare_lf_close()
            return None
        if not reader.done:
            return NEED_DATA
        self._mode = _CMD
        self.last_command = "END-OF-MESSAGE"
        self._pending_verb = "data"
        if reader.too_big:
            self._reset_transaction()
            self._fail("data", replies.MESSAGE_TOO_BIG)
            return None
        return self._message(reader.content, reader.size, bdat=False)

    def _message(self, content: bytes, size: int, bdat: bool) -> Message:
        tx = self._tx
        assert tx is not None
        envelope = Envelope(
            helo=self.helo_name,
            esmtp=self.esmtp,
            sender=tx.sender,
            mail_params=tx.params,
            recipients=tuple(tx.recipients),
            tls=self.tls_active,
            authenticated=self.authenticated,
        )
        return Message(content, envelope, bdat, size)

    def _step_chunk(self) -> Event | _Sentinel | None:
        reader = self._bdat
        assert reader is not None
        take = min(self._chunk_left, len(self._buf))
        reader.add(bytes(self._buf[:take]))
        del self._buf[:take]
        self._chunk_left -= take
        if reader.bare_lf and self._reject_bare_lf:
            self._mode = _CMD
            self._bare_lf_close()
            return None
        if self._chunk_left:
            return NEED_DATA
        self._mode = _CMD
        self._pending_verb = "bdat"
        if reader.failed or reader.too_big:
            reply = self._chunk_reply or replies.MESSAGE_TOO_BIG
            self._chunk_reply = None
            reader.failed = True
            if self._chunk_last:
                self._reset_transaction()
            self._fail("bdat", reply)
            return None
        if not self._chunk_last:
            self._ok("bdat", replies.chunk_ok(reader.received))
            return None
        content = reader.finish()
        return self._message(content, reader.received, bdat=True)
