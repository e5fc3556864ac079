"""Delivery status notifications: bounces, delay warnings and success reports (RFC 3464).

Contract: pure functions over a queued message (``queue.records.Envelope`` and its content)
and the per-recipient outcomes; no I/O, no clock, no randomness. The caller (qmgr) decides
when a notice is due, then for each ``Audience`` returned by :func:`audiences`:

1. ``qid = cleanup.new_queue_id()``;
2. ``data = compose(kind, envelope, content, notices, params=..., now=..., message_id=
   message_id(qid, now, params.myhostname), audience=aud)``;
3. ``cleanup.submit(Submission(queue_id=qid, sender=aud.sender, recipients=[Recipient(
   aud.recipient)], content=data, smtputf8=aud.smtputf8, ...))``;
4. log ``logfmt.notification(envelope.queue_id, aud.log_kind, qid)`` as service ``bounce``.

``kind`` is ``failure`` (permanent failure, or queue lifetime expiry: then pass the last
deferral of each pending recipient, status 4.x.x; Postfix reports those as ``Action: failed``
too, after logging ``logfmt.expired``), ``delay`` (delay_warning_time reached) or ``success``
(NOTIFY=SUCCESS: action ``delivered`` for a mailbox, ``relayed`` when the next hop took the
message without DSN support, ``expanded`` for an alias). :func:`wants_notice` applies RFC 3461
NOTIFY as Postfix does and filters the recipients a notice may list; a null-sender message
never gets one (no loops), and ``compose`` refuses to build one.

What the sender receives follows Postfix 3.7's bounce(8) (compared with a live Postfix in
tests/interop/test_bounce_postfix.py): headers Date, From (``Mail Delivery System
<MAILER-DAEMON@$myorigin>``), Subject, To, Auto-Submitted, MIME-Version, Content-Type
(multipart/report; report-type=delivery-status), Content-Transfer-Encoding, Message-Id;
then a text/plain part (our own wording, one wrapped ``<rcpt>: reason`` line per
recipient), a message/delivery-status part (message/global-delivery-status when the original
used SMTPUTF8, RFC 6533) and the returned message: message/rfc822 for a failure with RET=FULL
or no RET whose content fits bounce_size_limit, otherwise text/rfc822-headers (message/global
and message/global-headers under SMTPUTF8). Postfix references: src/bounce/
bounce_notify_util.c (header, DSN fields, returned message, size limit),
bounce_notify_service.c (who gets what), global/mail_date.c (dates).

Text from the network (remote replies, addresses) is masked so that no control character
can end a field or start a MIME boundary.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from postwall import logfmt
from postwall.config.params import Params
from postwall.logfmt import mail_date
from postwall.queue.records import Envelope, Recipient

__all__ = [
    "Audience",
    "Kind",
    "RecipientNotice",
    "audiences",
    "compose",
    "is_double_bounce",
    "mail_date",
    "message_id",
    "wants_notice",
]

Kind = Literal["failure", "delay", "success"]
Action = Literal["failed", "delayed", "delivered", "relayed", "expanded"]

_ACTIONS: dict[str, frozenset[str]] = {
    "failure": frozenset({"failed"}),
    "delay": frozenset({"delayed"}),
    "success": frozenset({"delivered", "relayed", "expanded"}),
}
# Subject lines are Postfix's (bounce_template.c defaults), so filters keyed on them work.
_SUBJECT = {
    ("failure", False): "Undelivered Mail Returned to Sender",
    ("delay", False): "Delayed Mail (still being retried)",
    ("success", False): "Successful Mail Delivery Report",
    ("failure", True): "Postmaster Copy: Undelivered Mail",
    ("delay", True): "Postmaster Warning: Delayed Mail",
}
# Postfix's line_wrap() for the human-readable report and long DSN fields.
_WRAP = 79
_INDENT = "    "
# Postfix is_header(): a field name of printable ASCII other than ':', then ':'.
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
# RFC 1894 atom for "X-$mail_name": Postfix turns specials into '-'.
_NOT_ATOM = re.compile(r"[\s()<>@,;:\\\".\[\]]")


@dataclass(frozen=True, slots=True)
class RecipientNotice:
    """What happened to one recipient, as the delivery agent reported it.

    ``diagnostic`` is the reason text as logged (``host mx[192.0.2.1] said: 550 5.1.1 ...
    (in reply to RCPT TO command)``); ``remote_mta`` the host that answered and
    ``smtp_reply`` its reply (``550 5.1.1 ...``), both None when no remote server was
    involved (the Diagnostic-Code is then ``X-$mail_name; <diagnostic>``)."""

    recipient: Recipient
    action: Action
    status: str
    diagnostic: str
    remote_mta: str | None = None
    smtp_reply: str | None = None


@dataclass(frozen=True, slots=True)
class Audience:
    """One notification to send: to whom, from which envelope sender, and its log wording."""

    recipient: str
    sender: str  # "" for the sender's notice; double_bounce_sender for postmaster copies
    postmaster: bool
    log_kind: str  # for logfmt.notification
    smtputf8: bool  # submit with SMTPUTF8: the notice may carry UTF-8 addresses


def wants_notice(
    kind: Kind, envelope: Envelope, recipient: Recipient, *, delay_warning_time: float
) -> bool:
    """RFC 3461 NOTIFY as Postfix applies it: a null sender never gets a notice; NEVER
    means none; without NOTIFY a recipient gets failures, and delay warnings when
    delay_warning_time is set; an explicit list gets exactly what it names (a delay warning
    still needs delay_warning_time > 0, the queue manager's only trigger)."""
    if not envelope.sender:
        return False
    notify = recipient.notify
    if "NEVER" in notify:
        return False
    if kind == "failure":
        return not notify or "FAILURE" in notify
    if kind == "delay":
        return delay_warning_time > 0 and (not notify or "DELAY" in notify)
    return "SUCCESS" in notify


def audiences(kind: Kind, envelope: Envelope, params: Params) -> list[Audience]:
    """Who is told: the sender (never for a null sender), plus a postmaster copy when
    notify_classes asks for it (``bounce`` for failures, ``delay`` for delay warnings),
    sent from double_bounce_sender so that it cannot bounce back (bounce_notify_service.c).
    Mail from double_bounce_sender gets nothing (:func:`is_double_bounce`, no loops).
    A failed null-sender message (a bounce that bounced) is dropped silently, which is
    Postfix's behaviour without ``2bounce`` in notify_classes; ``2bounce`` copies are not
    supported (docs/status.md)."""
    out: list[Audience] = []
    if not envelope.sender or is_double_bounce(envelope.sender, params):
        return out
    utf8 = envelope.smtputf8
    out.append(Audience(envelope.sender, "", False, logfmt.NOTIFICATION_KINDS[(kind, False)], utf8))
    wanted = {"failure": "bounce", "delay": "delay"}.get(kind)
    if wanted and wanted in params.notify_classes:
        rcpt = (
            params.bounce_notice_recipient if kind == "failure" else params.delay_notice_recipient
        )
        sender = f"{params.double_bounce_sender}@{params.myorigin}"
        out.append(Audience(rcpt, sender, True, logfmt.NOTIFICATION_KINDS[(kind, True)], utf8))
    return out


def is_double_bounce(sender: str, params: Params) -> bool:
    """True for mail from double_bounce_sender (a postmaster copy): when it fails, Postfix
    sends nothing and logs the warning ``logfmt.postmaster_notice_discarded``."""
    local, _, domain = sender.rpartition("@") if "@" in sender else (sender, "", "")
    if local.casefold() != params.double_bounce_sender.casefold():
        return False
    return not domain or domain.casefold() in (
        params.myorigin.casefold(),
        params.myhostname.casefold(),
    )


def message_id(new_queue_id: str, now: float, myhostname: str) -> str:
    """The Message-Id Postfix's cleanup gives a notice: ``<YYYYMMDDHHMMSS.QID@host>`` (UTC)."""
    return f"<{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}.{new_queue_id}@{myhostname}>"


def compose(
    kind: Kind,
    envelope: Envelope,
    content: bytes,
    notices: Sequence[RecipientNotice],
    *,
    params: Params,
    now: float,
    message_id: str,
    audience: Audience | None = None,
    boundary: str | None = None,
) -> bytes:
    """The complete notification (CRLF line endings) for ``audience`` (default: the
    sender). ``notices`` are listed in order, already filtered with :func:`wants_notice`.
    Raises ValueError for a null sender, no notices, or an action that does not fit
    ``kind``."""
    if not envelope.sender:
        raise ValueError("no notification for a null-sender message")
    if not notices:
        raise ValueError("a notification needs at least one recipient notice")
    for n in notices:
        if n.action not in _ACTIONS[kind]:
            raise ValueError(f"action {n.action!r} in a {kind} notification")
    postmaster = audience.postmaster if audience else False
    if (kind, postmaster) not in _SUBJECT:
        raise ValueError(f"no postmaster copy of a {kind} notification")
    to = audience.recipient if audience else envelope.sender
    host = params.myhostname
    qid = envelope.queue_id
    utf8 = envelope.smtputf8
    # bounce_mail_alloc(): with smtputf8_enable every notice is 8bit (addresses and
    # $myhostname may be UTF-8); otherwise it follows the message's BODY= declaration.
    if params.smtputf8_enable or envelope.body_type == "8BITMIME":
        encoding: str | None = "8bit"
    elif envelope.body_type == "7BIT":
        encoding = "7bit"
    else:
        encoding = None
    eight = encoding == "8bit"

    returned = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if content else b""
    full = (
        kind == "failure"
        and not postmaster
        and envelope.ret != "HDRS"
        # bounce_original(): a message over the limit returns its headers only.
        and not (params.bounce_size_limit > 0 and len(returned) > params.bounce_size_limit)
    )
    if not full:
        returned = _headers_only(returned)
    mark = boundary or _boundary(qid, now, host, returned)

    lines: list[str] = [
        f"Date: {mail_date(now)}",
        f"From: Mail Delivery System <MAILER-DAEMON@{params.myorigin}>",
        f"Subject: {_SUBJECT[(kind, postmaster)]}",
        f"To: {_clean(to, eight)}",
        f"Auto-Submitted: {'auto-generated' if postmaster else 'auto-replied'}",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{mark}"',
    ]
    if encoding:
        lines.append(f"Content-Transfer-Encoding: {encoding}")
    lines += [f"Message-Id: {message_id}", "", "This is a MIME-encapsulated message.", ""]

    lines += [f"--{mark}", "Content-Description: Notification"]
    lines.append(f"Content-Type: text/plain; charset={'utf-8' if eight else 'us-ascii'}")
    if eight:
        lines.append("Content-Transfer-Encoding: 8bit")
    lines.append("")
    lines += _report_text(kind, envelope, params, postmaster, full)
    for n in notices:
        lines.append("")
        rcpt = n.recipient
        who = f"<{_clean(rcpt.address, eight)}>"
        if rcpt.original and rcpt.original.casefold() != rcpt.address.casefold():
            who += f" (expanded from <{_clean(rcpt.original, eight)}>)"
        lines += _wrap(f"{who}: {_clean(n.diagnostic, eight)}")

    lines += ["", f"--{mark}", "Content-Description: Delivery report"]
    lines.append(f"Content-Type: message/{'global-' if utf8 else ''}delivery-status")
    if eight and utf8:  # bounce_header_dsn(): never downgrade a global report
        lines.append("Content-Transfer-Encoding: 8bit")
    lines += ["", f"Reporting-MTA: dns; {host}"]
    if envelope.envid:
        lines.append(f"Original-Envelope-Id: {_clean(envelope.envid, False)}")
    name = _NOT_ATOM.sub("-", params.mail_name)
    lines.append(f"X-{name}-Queue-ID: {qid}")
    sender = _clean(envelope.sender, eight)
    lines.append(f"X-{name}-Sender: {_addr_type(envelope.sender, utf8)}; {sender}")
    if envelope.arrival_time > 0:
        lines.append(f"Arrival-Date: {mail_date(envelope.arrival_time)}")
    for n in notices:
        lines += ["", *_recipient_fields(kind, n, envelope, params, name, eight)]

    lines += ["", f"--{mark}"]
    undelivered = "Undelivered " if kind != "success" else ""
    lines.append(f"Content-Description: {undelivered}{'Message' if full else 'Message Headers'}")
    if utf8:
        lines.append(f"Content-Type: message/{'global' if full else 'global-headers'}")
    else:
        lines.append(f"Content-Type: {'message/rfc822' if full else 'text/rfc822-headers'}")
    if eight:
        lines.append("Content-Transfer-Encoding: 8bit")
    lines += ["", f"Return-Path: <{sender}>"]

    head = "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n"
    tail = f"\r\n--{mark}--\r\n".encode()
    return head + returned + tail


# -- parts ------------------------------------------------------------------------------


def _report_text(
    kind: Kind, envelope: Envelope, params: Params, postmaster: bool, full: bool
) -> list[str]:
    """The human-readable introduction (postwall's own wording)."""
    out = [f"This is the mail system at host {params.myhostname}.", ""]
    if postmaster:
        what = "could not be delivered" if kind == "failure" else "is delayed"
        out += [
            f"A message from <{_clean(envelope.sender, True)}> {what};",
            "the report and the message headers follow.",
        ]
        return out
    if kind == "failure":
        attached = "a copy of the message" if full else "the headers of the message"
        out += [
            "Your message could not be delivered to the recipients listed below.",
            f"The reasons come first, then {attached}.",
        ]
    elif kind == "delay":
        out += [
            "This is a warning only: you do not need to send the message again.",
            "",
            f"Your message has not been delivered after {_span(params.delay_warning_time)}.",
            f"Delivery will be retried until it is {_span(params.maximal_queue_lifetime)} old.",
        ]
    else:
        out += [
            "Your message was delivered to the recipients listed below. Mail placed in",
            "a mailbox produces no further report; mail passed on to another system",
            "may still produce reports from there.",
        ]
    if kind != "success":
        out += ["", "If you need help, write to postmaster and include this report."]
    return out


def _recipient_fields(
    kind: Kind, n: RecipientNotice, envelope: Envelope, params: Params, name: str, eight: bool
) -> list[str]:
    rcpt = n.recipient
    utf8 = envelope.smtputf8
    out = [f"Final-Recipient: {_addr_type(rcpt.address, utf8)}; {_clean(rcpt.address, eight)}"]
    # RFC 3464 6.3: the ORCPT as received; Postfix's smtpd records "rfc822;addr" when the
    # client gave none, so every Postfix report carries the field.
    if rcpt.orcpt:
        out.append(f"Original-Recipient: {_clean(rcpt.orcpt, eight)}")
    elif rcpt.original:
        out.append(
            f"Original-Recipient: {_addr_type(rcpt.original, utf8)};{_clean(rcpt.original, eight)}"
        )
    out.append(f"Action: {n.action}")
    out.append(f"Status: {_clean(n.status, False)}")
    if n.remote_mta:
        out += _wrap(f"Remote-MTA: dns; {_clean(n.remote_mta, eight)}")
    if n.smtp_reply:
        out += _wrap(f"Diagnostic-Code: smtp; {_clean(n.smtp_reply, eight)}")
    else:
        out += _wrap(f"Diagnostic-Code: X-{name}; {_clean(n.diagnostic, eight)}")
    if kind == "delay":
        until = envelope.arrival_time + params.maximal_queue_lifetime
        out.append(f"Will-Retry-Until: {mail_date(until)}")
    return out


def _headers_only(content: bytes) -> bytes:
    """The header block as Postfix's bounce_original() copies it: header lines and their
    continuations, up to the first line that is neither."""
    end = 0
    while end < len(content):
        nl = content.find(b"\r\n", end)
        line = content[end:] if nl < 0 else content[end:nl]
        if not (line[:1] in (b" ", b"\t") or _HEADER_LINE.match(line)):
            break
        end = len(content) if nl < 0 else nl + 2
    head = content[:end]
    return head if head.endswith(b"\r\n") or not head else head + b"\r\n"


def _boundary(queue_id: str, now: float, host: str, returned: bytes) -> str:
    """Postfix's ``QID.time/host``, lengthened in the unlikely case the returned message
    contains it (a crafted message could otherwise end our MIME structure early)."""
    mark = f"{queue_id}.{int(now)}/{host}"
    n = 0
    while f"--{mark}".encode("utf-8", "surrogateescape") in returned:
        n += 1
        mark = f"{queue_id}.{int(now)}.{n}/{host}"
    return mark


def _wrap(text: str) -> list[str]:
    """line_wrap(79, 4): break at blanks; continuation lines indented by four spaces,
    which also makes them valid folded fields in the delivery-status part."""
    words = text.split(" ")
    lines: list[str] = []
    cur = ""
    for word in words:
        if not cur:
            cur = (_INDENT if lines else "") + word
        elif len(cur) + 1 + len(word) <= _WRAP:
            cur += " " + word
        else:
            lines.append(cur)
            cur = _INDENT + word
    lines.append(cur)
    return lines


def _clean(text: str, eight: bool) -> str:
    """Mask control characters (and non-ASCII in a 7-bit notice) as '?', as Postfix's
    bounce log reader does, so that no text can end a field or a line."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 32 or code == 127 or (code > 127 and not eight) or 0xDC80 <= code <= 0xDCFF:
            out.append("?" if ch != "\t" else " ")
        else:
            out.append(ch)
    return "".join(out)


def _addr_type(address: str, smtputf8: bool) -> str:
    """RFC 6533: ``utf-8`` only for a non-ASCII address of an SMTPUTF8 message."""
    return "utf-8" if smtputf8 and not address.isascii() else "rfc822"


def _span(seconds: float) -> str:
    """``4 hours``, ``5 days``: the largest unit that divides the time exactly."""
    secs = int(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size and secs % size == 0:
            count = secs // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{secs} second{'s' if secs != 1 else ''}"
