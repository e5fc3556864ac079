"""Events of the SMTP server core and the per-command counters.

Contract: every event is an immutable value. A `Command` event must be
answered by the caller (`accept`/`reject`) before the next event is asked
for; a `Notice` is information for the log and needs no answer. `Envelope`
carries everything cleanup needs from the transaction. `Counts.format()`
renders the tail of Postfix's `disconnect from host[addr] ...` line exactly.
Produced by `smtp.server`; read by the smtpd glue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from postwall.smtp.address import MailParams, RcptParams
from postwall.smtp.replies import Reply


class Command:
    """An event that needs an answer."""

    __slots__ = ()
    needs_answer: ClassVar[bool] = True


class Notice:
    """An event for the log only."""

    __slots__ = ()
    needs_answer: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Helo(Command):
    name: str
    esmtp: bool


@dataclass(frozen=True, slots=True)
class MailFrom(Command):
    address: str
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo(Command):
    address: str
    params: RcptParams


@dataclass(frozen=True, slots=True)
class DataStart(Command):
    bdat: bool


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    params: RcptParams


@dataclass(frozen=True, slots=True)
class Envelope:
    """What cleanup needs from the transaction."""

    helo: str | None
    esmtp: bool
    sender: str
    mail_params: MailParams
    recipients: tuple[Recipient, ...]
    tls: bool
    authenticated: bool

    @property
    def body_type(self) -> str | None:
        return self.mail_params.body

    @property
    def smtputf8(self) -> bool:
        return self.mail_params.smtputf8

    @property
    def ret(self) -> str | None:
        return self.mail_params.ret

    @property
    def envid(self) -> str | None:
        return self.mail_params.envid


@dataclass(frozen=True, slots=True)
class Message(Command):
    """A complete message; answer with accept(queue_id=...) once it is durable."""

    content: bytes
    envelope: Envelope
    bdat: bool
    size: int


@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    pass


@dataclass(frozen=True, slots=True)
class Vrfy(Command):
    address: str


@dataclass(frozen=True, slots=True)
class Etrn(Command):
    domain: str


@dataclass(frozen=True, slots=True)
class Auth(Command):
    mechanism: str
    initial_response: str | None  # None: none given; "" for "="


@dataclass(frozen=True, slots=True)
class AuthResponse(Command):
    line: str


@dataclass(frozen=True, slots=True)
class ImproperPipelining(Notice):
    """Postfix: `improper command pipelining after CMD from host: pending`."""

    after: str
    pending: bytes


@dataclass(frozen=True, slots=True)
class LineTooLong(Notice):
    """Postfix: `warning: host: request longer than N: head...`."""

    limit: int
    head: bytes


@dataclass(frozen=True, slots=True)
class NonSmtpCommand(Notice):
    """Postfix: `warning: non-SMTP command from host: line`."""

    line: str


@dataclass(frozen=True, slots=True)
class MailRefused(Notice):
    """A MAIL refused by a check Postfix logs (the declared SIZE over the limit):
    `NOQUEUE: reject: MAIL from host: 552 5.3.4 ...; from=<s> proto=ESMTP helo=<h>`."""

    sender: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class MalformedBdat(Notice):
    """Postfix: `warning: QID: malformed BDAT command syntax from host: line`."""

    line: str


@dataclass(frozen=True, slots=True)
class ParameterWarning(Notice):
    """A warning Postfix logs while it parses a command parameter."""

    text: str


@dataclass(frozen=True, slots=True)
class IllegalAddress(Notice):
    """Postfix: `warning: Illegal address syntax from host in CMD command: arg`."""

    command: str
    argument: str


@dataclass(frozen=True, slots=True)
class AuthAborted(Notice):
    """The client answered a 334 with `*` (Postfix: `SASL X authentication aborted`)."""


Event = (
    Helo
    | MailFrom
    | RcptTo
    | DataStart
    | Message
    | StartTLS
    | Vrfy
    | Etrn
    | Auth
    | AuthResponse
    | ImproperPipelining
    | LineTooLong
    | NonSmtpCommand
    | IllegalAddress
    | MailRefused
    | MalformedBdat
    | ParameterWarning
    | AuthAborted
)


# Postfix's command table order, which is the order of the `disconnect` tail.
COUNTED = (
    "helo", "ehlo", "xclient", "xforward", "starttls", "auth", "mail", "rcpt", "data", "bdat",
    "rset", "noop", "vrfy", "etrn", "quit", "unknown",
)  # fmt: skip


@dataclass
class Counts:
    """Per-command ok/total counters, as in Postfix's `disconnect` log line."""

    ok: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)

    def tried(self, name: str) -> None:
        self.total[name] = self.total.get(name, 0) + 1

    def succeeded(self, name: str) -> None:
        self.ok[name] = self.ok.get(name, 0) + 1

    def format(self) -> str:
        """`ehlo=2 starttls=1 mail=1 rcpt=1/2 ... commands=6/7`."""
        parts = []
        for name in COUNTED:
            total = self.total.get(name, 0)
            if total:
                parts.append(f"{name}={_ratio(self.ok.get(name, 0), total)}")
        ok, total = sum(self.ok.values()), sum(self.total.values())
        parts.append(f"commands={_ratio(ok, total)}")
        return " ".join(parts)


def _ratio(ok: int, total: int) -> str:
    return str(total) if ok == total and total else f"{ok}/{total}"
