"""SMTP replies as typed values, and the fixed replies Postfix smtpd sends.

Contract: a `Reply` is immutable and always serialises to well-formed SMTP
reply lines (RFC 5321 section 4.2): a three-digit code, `-` on every line but
the last, CRLF endings. The constructor refuses a malformed code, status or a
line containing CR/LF, so a bad reply is caught where it is built rather than
sent to a peer. The texts below were checked byte for byte against Postfix
3.7.11 smtpd. Used by `smtp.server` and by the smtpd glue for its own
(restriction) rejections.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: `code`, optional enhanced `status` (RFC 3463), text lines.

    `text` may hold several lines separated by "\\n"; each becomes its own reply
    line. The enhanced status, when present, is repeated on every line, as RFC
    2034 section 4 requires.
    """

    code: int
    status: str = ""
    text: str = ""

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"bad SMTP reply code: {self.code}")
        if self.status and (
            not _STATUS.fullmatch(self.status) or self.status[0] != str(self.code)[0]
        ):
            raise ValueError(f"bad enhanced status code {self.status!r} for {self.code}")
        if "\r" in self.text or "\0" in self.text:
            raise ValueError("reply text must not contain CR or NUL")

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n") if self.text else [""]

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def to_bytes(self) -> bytes:
        out = []
        lines = self.lines
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            body = (f"{self.status} {line}" if line else self.status) if self.status else line
            out.append(f"{self.code}{sep}{body}\r\n")
        return "".join(out).encode("utf-8", "surrogateescape")

    def __str__(self) -> str:
        """The reply as Postfix logs it: lines joined by a space, no CRLF."""
        return " ".join(
            f"{self.code} {self.status} {line}" if self.status else f"{self.code} {line}"
            for line in self.lines
        )


# Connection-level replies (RFC 5321 section 4.2.3, 3.8).
def greeting(banner: str) -> Reply:
    return Reply(220, "", banner)


BYE = Reply(221, "2.0.0", "Bye")  # RFC 5321 4.1.1.10


def too_many_errors(host: str) -> Reply:
    # Postfix smtpd_hard_error_limit: 421 and disconnect (RFC 5321 3.8).
    return Reply(421, "4.7.0", f"{host} Error: too many errors")


def timeout_exceeded(host: str) -> Reply:
    return Reply(421, "4.4.2", f"{host} Error: timeout exceeded")


def bare_newline(code: int, host: str) -> Reply:
    # Postfix smtpd_forbid_bare_newline=reject, code from
    # smtpd_forbid_bare_newline_reject_code; the session is then closed.
    status = "4.5.2" if code < 500 else "5.5.2"
    return Reply(code, status, f"{host} Error: bare <LF> received")


SYNC_ERROR = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")  # RFC 2920 3.1

# Generic command results.
OK = Reply(250, "2.0.0", "Ok")  # NOOP, RSET
UNRECOGNIZED = Reply(500, "5.5.2", "Error: command not recognized")  # RFC 5321 4.2.4
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")  # empty command line
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
SEND_HELO_FIRST = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")  # RFC 3207 4

# HELO/EHLO (RFC 5321 4.1.1.1). Postfix sends these without enhanced codes.
HELO_SYNTAX = Reply(501, "", "Syntax: HELO hostname")
EHLO_SYNTAX = Reply(501, "", "Syntax: EHLO hostname")

# MAIL (RFC 5321 4.1.1.2, RFC 1870, RFC 6152, RFC 3461, RFC 6531).
MAIL_OK = Reply(250, "2.1.0", "Ok")
MAIL_SYNTAX = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
MAIL_AFTER_BDAT = Reply(503, "5.5.1", "Error: MAIL after BDAT")
BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_SIZE = Reply(501, "5.5.4", "Bad message size syntax")
SIZE_EXCEEDS = Reply(552, "5.3.4", "Message size exceeds fixed limit")  # RFC 1870 6
BAD_RET = Reply(501, "5.5.4", "Bad RET parameter syntax")
BAD_ENVID = Reply(501, "5.5.4", "Bad ENVID parameter syntax")
MULTIPLE_AUTH = Reply(503, "5.5.4", "Error: multiple AUTH= options")


def printable(text: str) -> str:
    """Client text echoed in a reply, with control characters as "?" (Postfix's
    printable()): a CR or NUL from the peer can never split or end a reply line."""
    return "".join("?" if ord(c) < 32 or c == "\x7f" else c for c in text)


def unsupported_option(param: str) -> Reply:
    return Reply(555, "5.5.4", f"Unsupported option: {printable(param)}")  # RFC 5321 4.1.1.11


# RCPT (RFC 5321 4.1.1.3, RFC 3461 4).
RCPT_OK = Reply(250, "2.1.5", "Ok")
RCPT_SYNTAX = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "Error: RCPT after BDAT")
BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_NOTIFY = Reply(501, "5.5.4", "Error: Bad NOTIFY parameter syntax")
BAD_ORCPT = Reply(501, "5.5.4", "Error: Bad ORCPT parameter syntax")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")  # RFC 5321 4.5.3.1.10

# DATA (RFC 5321 4.1.1.4) and BDAT (RFC 3030 2).
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
DATA_SYNTAX = Reply(501, "5.5.4", "Syntax: DATA")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "Error: DATA after BDAT")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Error: message file too big")  # RFC 5321 4.5.3.1.7
CHUNK_TOO_BIG = Reply(552, "5.3.4", "Chunk exceeds message size limit")
BDAT_SYNTAX = Reply(521, "5.5.4", "Syntax: BDAT count [LAST]")  # then disconnect


def queued(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def chunk_ok(total: int) -> Reply:
    return Reply(250, "2.0.0", f"Ok: {total} bytes")


def chunk_queued(total: int, queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: {total} bytes queued as {queue_id}")


def chunk_discarded(size: int) -> Reply:
    return Reply(551, "5.0.0", f"Discarded {size} bytes after earlier error")


# RSET (RFC 5321 4.1.1.5).
RSET_SYNTAX = Reply(501, "5.5.4", "Syntax: RSET")

# STARTTLS (RFC 3207 4).
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")
STARTTLS_SYNTAX = Reply(501, "5.5.4", "Syntax: STARTTLS")
TLS_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available due to local problem")

# VRFY (RFC 5321 4.1.1.6, 3.5.3).
VRFY_DISABLED = Reply(502, "5.5.1", "VRFY command is disabled")


def vrfy_syntax(smtputf8: bool) -> Reply:
    return Reply(501, "5.5.4", "Syntax: VRFY address" + (" [SMTPUTF8]" if smtputf8 else ""))


def cannot_verify(arg: str) -> Reply:
    return Reply(252, "2.0.0", printable(arg))


# ETRN (RFC 1985 5). Postfix sends these without enhanced codes.
ETRN_SYNTAX = Reply(500, "", "Syntax: ETRN domain")
ETRN_BAD_PARAM = Reply(501, "", "Error: invalid parameter syntax")
ETRN_HELO_FIRST = Reply(503, "", "Error: send HELO/EHLO first")
ETRN_IN_TRANSACTION = Reply(503, "", "Error: MAIL transaction in progress")
QUEUING_STARTED = Reply(250, "", "Queuing started")
UNABLE_TO_QUEUE = Reply(458, "", "Unable to queue messages")


def etrn_unavailable(domain: str) -> Reply:
    return Reply(459, "", f"<{printable(domain)}>: service unavailable")


# AUTH (RFC 4954 4, 6).
AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")  # AUTH, XCLIENT
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
SASL_RESPONSE_TOO_LONG = Reply(500, "5.5.6", "SASL response limit exceeded")


def auth_failed(reason: str) -> Reply:
    # Postfix writes the plug-in's reason as is (it is printable ASCII already).
    return Reply(535, "5.7.8", f"Error: authentication failed: {printable(reason)}")


def auth_temporary(reason: str) -> Reply:
    return Reply(454, "4.7.0", f"Temporary authentication failure: {printable(reason)}")


def auth_challenge(b64: str) -> Reply:
    return Reply(334, "", b64)
