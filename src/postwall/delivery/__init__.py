"""Delivery agents (layer 3): `local` (Maildir, mailbox files), `discard`, `smtp`.

Every agent returns a `DeliveryResult` per recipient; the queue manager turns it
into the `status=` log line (`status=sent (delivered to maildir)`) and into
recipient completion or a bounce/defer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = ["DeliveryResult", "DeliveryStatus", "copy_head", "dsn_split", "lf_lines"]

DeliveryStatus = Literal["sent", "deferred", "bounced"]


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome for one recipient: `status`, RFC 3463 enhanced code, Postfix's text."""

    status: DeliveryStatus
    dsn: str
    text: str

    def __post_init__(self) -> None:
        wanted = {"sent": "2", "deferred": "4", "bounced": "5"}[self.status]
        if not self.dsn.startswith(wanted + "."):
            raise ValueError(f"dsn {self.dsn} does not fit status {self.status}")


_DSN_PREFIX = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?:\s+|$)")


def dsn_split(text: str) -> tuple[str, str] | None:
    """Postfix's dsn_split()/dsn_valid(): a leading RFC 3463 status ("5.1.1", then white
    space or the end) and the text after it; None when the text has none. Transports
    whose next hop or output may carry a status (error, retry, discard, pipe) use it."""
    m = _DSN_PREFIX.match(text)
    if m is None:
        return None
    return m.group(0).strip(), text[m.end() :]


def lf_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Queue content (CRLF lines) as a local mailbox stores it: CRLF -> LF across chunk
    boundaries, and a final newline guaranteed."""
    carry = b""
    last = b"\n"
    for chunk in chunks:
        data = carry + chunk
        carry = b""
        if data.endswith(b"\r"):
            data, carry = data[:-1], b"\r"
        data = data.replace(b"\r\n", b"\n")
        if data:
            last = data[-1:]
            yield data
    if carry:
        yield carry
        last = carry
    if last != b"\n":
        yield b"\n"


def copy_head(sender: str, original: str, delivered: str, *, from_line: bool = False) -> bytes:
    """What local(8)'s mail_copy() writes before a delivered message: the UNIX From_
    line (mailbox files and commands; MAILER-DAEMON for the null sender, asctime date),
    then Return-Path, X-Original-To and Delivered-To."""
    head = f"From {sender or 'MAILER-DAEMON'}  {time.asctime()}\n" if from_line else ""
    head += f"Return-Path: <{sender}>\nX-Original-To: {original}\nDelivered-To: {delivered}\n"
    return head.encode("utf-8", "surrogateescape")
