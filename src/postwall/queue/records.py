"""The queue file format: typed, length-prefixed records with a required end.

Layout (all integers big-endian)::

    header   b"PWQF" + version (1 byte, currently 1)
    record   type (1 ASCII byte) + payload length (4 bytes) + payload
    T        arrival time, ASCII decimal seconds            exactly once, first
    S        envelope sender, "" for the null sender        exactly once
    A        attribute "name=value"                         any number
    W        next delay-warning time, 8-byte signed int     at most once
    R        recipient: status byte + address NUL orcpt NUL notify NUL original
    M        the message content, verbatim                  exactly once
    E        end marker, empty payload                      exactly once, last

The record set follows Postfix's queue file (src/global/rec_type.h: T time,
S sender, A attributes, W warn time, R recipients, M message, E end), but the
encoding is our own and length-prefixed so content is stored verbatim.

Recipient completion is updated in place, as Postfix's qmgr does by flipping
an R record to D: the first payload byte of each R record is a status byte
(`-` pending, `S` sent, `B` bounced). One aligned byte is written at a time, so
after a crash a recipient is either still pending (retried, maybe delivered
twice) or marked done, never lost. The W payload is fixed width for the same
reason. Everything else in a queue file is written once.

Text is UTF-8; bytes that are not (8-bit addresses without SMTPUTF8) round
trip through surrogateescape. Fields may not contain NUL (the SMTP layer never
passes one); `encode` raises ValueError for that.

`parse` raises `CorruptQueueFile` for anything incomplete or inconsistent:
bad magic or version, truncated record, length past the end of file, unknown
record type or attribute, duplicate or missing required record, records after
the content other than E, data after E, bad field syntax, no recipients.
Pure data handling plus reads from a file object it is given; callers:
queue.store (and tools reading queue files).
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

__all__ = [
    "MAGIC",
    "PROTOCOLS",
    "CorruptQueueFile",
    "Envelope",
    "ParsedQueueFile",
    "RcptStatus",
    "Recipient",
    "encode",
    "parse",
]

MAGIC = b"PWQF"
VERSION = 1
_HEADER = MAGIC + bytes([VERSION])
_REC_HEAD = struct.Struct(">cI")
_WARN = struct.Struct(">q")
_MAX_LEN = 0xFFFFFFFF

REC_TIME = b"T"
REC_SENDER = b"S"
REC_ATTR = b"A"
REC_WARN = b"W"
REC_RCPT = b"R"
REC_MESG = b"M"
REC_END = b"E"
_ENVELOPE_TYPES = {REC_TIME, REC_SENDER, REC_ATTR, REC_WARN, REC_RCPT}

# Received-header protocol names, including the SMTPUTF8 ones (RFC 6531 3.7.3);
# "" for mail submitted with sendmail, which has no protocol (Postfix's pickup).
PROTOCOLS = frozenset(
    {"", "SMTP", "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA", "LMTP", "LMTPS", "LMTPA", "LMTPSA"}
    | {"UTF8SMTP", "UTF8SMTPS", "UTF8SMTPA", "UTF8SMTPSA", "UTF8LMTP", "UTF8LMTPS"}
)
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})
_EXTRA_PREFIX = "x-"


class CorruptQueueFile(Exception):
    """A queue file that is incomplete or inconsistent; it belongs in corrupt/."""


class RcptStatus(enum.Enum):
    """Per-recipient completion, stored as one byte that is rewritten in place."""

    PENDING = b"-"
    SENT = b"S"
    BOUNCED = b"B"


_STATUS_BY_BYTE = {s.value: s for s in RcptStatus}


@dataclass
class Recipient:
    """One envelope recipient. `orcpt` is the DSN ORCPT value (RFC 3461 4.2),
    `original` the address as first received (for X-Original-To); "" if none."""

    address: str
    orcpt: str = ""
    notify: frozenset[str] = frozenset()
    status: RcptStatus = RcptStatus.PENDING
    original: str = ""

    @property
    def done(self) -> bool:
        return self.status is not RcptStatus.PENDING


@dataclass
class Envelope:
    """Everything about a queued message except its content."""

    sender: str
    recipients: list[Recipient]
    queue_id: str = ""
    arrival_time: float = 0.0
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None
    client_name: str = ""
    client_addr: str = ""
    client_port: int | None = None
    helo: str = ""
    protocol: str = "ESMTP"
    sasl_username: str = ""
    body_type: Literal["7BIT", "8BITMIME"] | None = None
    smtputf8: bool = False
    size: int = 0
    warn_time: int = 0
    # Free-form attributes (log hints, TLS summary, ...); names are stored "x-"-prefixed.
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class ParsedQueueFile:
    """A parsed queue file: the envelope plus where the mutable parts live."""

    envelope: Envelope
    content_offset: int
    content_length: int
    status_offsets: list[int]
    warn_offset: int | None


def _text(value: str, what: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError(f"NUL byte in {what}")
    return raw


def _record(rtype: bytes, payload: bytes) -> bytes:
    if len(payload) > _MAX_LEN:
        raise ValueError("record too large")
    return _REC_HEAD.pack(rtype, len(payload)) + payload


def _attr(name: str, value: str) -> bytes:
    if "=" in name or not name:
        raise ValueError(f"bad attribute name {name!r}")
    return _record(REC_ATTR, _text(name, "attribute") + b"=" + _text(value, name))


def encode(envelope: Envelope, content: bytes | memoryview) -> list[bytes | memoryview]:
    """Serialise a queue file; returns buffers to write in order (content is not copied)."""
    if not envelope.recipients:
        raise ValueError("a queue file needs at least one recipient")
    env = envelope
    # Refuse here what `parse` would call corrupt: never write an unreadable file.
    if env.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {env.protocol!r}")
    if env.ret not in (None, "FULL", "HDRS"):
        raise ValueError(f"bad ret {env.ret!r}")
    if env.body_type not in (None, "", "7BIT", "8BITMIME"):
        raise ValueError(f"bad body_type {env.body_type!r}")
    if env.client_port is not None and not 0 <= env.client_port <= 65535:
        raise ValueError(f"bad client_port {env.client_port!r}")
    out: list[bytes | memoryview] = [
        _HEADER,
        _record(REC_TIME, repr(float(env.arrival_time)).encode()),
    ]
    out.append(_record(REC_SENDER, _text(env.sender, "sender")))
    if env.ret is not None:
        out.append(_attr("ret", env.ret))
    if env.envid is not None:
        out.append(_attr("envid", env.envid))
    for name in ("client_name", "client_addr", "helo", "sasl_username"):
        value = getattr(env, name)
        if value:
            out.append(_attr(name, value))
    if env.client_port is not None:
        out.append(_attr("client_port", str(int(env.client_port))))
    out.append(_attr("protocol", env.protocol))
    if env.body_type:  # None or "" both mean "not declared"
        out.append(_attr("body_type", env.body_type))
    if env.smtputf8:
        out.append(_attr("smtputf8", "1"))
    for name, value in env.attrs.items():
        out.append(_attr(_EXTRA_PREFIX + name, value))
    out.append(_record(REC_WARN, _WARN.pack(int(env.warn_time))))
    for r in env.recipients:
        bad = r.notify - _NOTIFY
        if bad:
            raise ValueError(f"bad NOTIFY keyword(s): {sorted(bad)}")
        fields = [
            _text(r.address, "recipient"),
            _text(r.orcpt, "orcpt"),
            ",".join(sorted(r.notify)).encode(),
            _text(r.original, "original recipient"),
        ]
        out.append(_record(REC_RCPT, r.status.value + b"\0".join(fields)))
    if len(content) > _MAX_LEN:
        raise ValueError("message content too large for one queue file")
    out.append(_REC_HEAD.pack(REC_MESG, len(content)))
    out.append(content)
    out.append(_record(REC_END, b""))
    return out


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8", "surrogateescape")
    except UnicodeDecodeError as exc:  # pragma: no cover - surrogateescape never fails
        raise CorruptQueueFile(f"undecodable text: {exc}") from None


def _read_exact(fp: BinaryIO, n: int, what: str) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise CorruptQueueFile(f"truncated {what}: wanted {n} bytes, got {len(data)}")
    return data


def _set_attr(env: Envelope, name: str, value: str) -> None:
    if name.startswith(_EXTRA_PREFIX):
        env.attrs[name[len(_EXTRA_PREFIX) :]] = value
    elif name == "ret":
        if value not in ("FULL", "HDRS"):
            raise CorruptQueueFile(f"bad ret value {value!r}")
        env.ret = value  # type: ignore[assignment]
    elif name == "body_type":
        if value not in ("7BIT", "8BITMIME"):
            raise CorruptQueueFile(f"bad body_type value {value!r}")
        env.body_type = value  # type: ignore[assignment]
    elif name == "protocol":
        if value not in PROTOCOLS:
            raise CorruptQueueFile(f"bad protocol value {value!r}")
        env.protocol = value
    elif name == "client_port":
        if not value.isdigit() or int(value) > 65535:
            raise CorruptQueueFile(f"bad client_port value {value!r}")
        env.client_port = int(value)
    elif name == "smtputf8":
        if value not in ("0", "1"):
            raise CorruptQueueFile(f"bad smtputf8 value {value!r}")
        env.smtputf8 = value == "1"
    elif name in ("envid", "client_name", "client_addr", "helo", "sasl_username"):
        setattr(env, name, value)
    else:
        raise CorruptQueueFile(f"unknown attribute {name!r}")


def _parse_rcpt(payload: bytes) -> Recipient:
    if not payload:
        raise CorruptQueueFile("empty recipient record")
    status = _STATUS_BY_BYTE.get(payload[:1])
    if status is None:
        raise CorruptQueueFile(f"bad recipient status byte {payload[:1]!r}")
    parts = payload[1:].split(b"\0")
    if len(parts) != 4:
        raise CorruptQueueFile("recipient record does not have 4 fields")
    notify = frozenset(p for p in parts[2].decode("ascii", "replace").split(",") if p)
    if notify - _NOTIFY:
        raise CorruptQueueFile(f"bad NOTIFY keywords {sorted(notify - _NOTIFY)}")
    return Recipient(
        address=_decode(parts[0]),
        orcpt=_decode(parts[1]),
        notify=notify,
        status=status,
        original=_decode(parts[3]),
    )


def parse(fp: BinaryIO, queue_id: str = "") -> ParsedQueueFile:
    """Parse a queue file from a seekable binary file; the content is skipped, not read."""
    fp.seek(0, os.SEEK_END)
    file_size = fp.tell()
    fp.seek(0)
    header = _read_exact(fp, len(_HEADER), "header")
    if header[: len(MAGIC)] != MAGIC:
        raise CorruptQueueFile("bad magic: not a queue file")
    version = header[len(MAGIC)]
    if version != VERSION:
        raise CorruptQueueFile(f"unsupported queue file version {version}")
    env = Envelope(sender="", recipients=[], queue_id=queue_id)
    seen: set[bytes] = set()
    status_offsets: list[int] = []
    warn_offset: int | None = None
    content: tuple[int, int] | None = None
    while True:
        pos = fp.tell()
        rtype, length = _REC_HEAD.unpack(_read_exact(fp, _REC_HEAD.size, "record header"))
        start = pos + _REC_HEAD.size
        if start + length > file_size:
            raise CorruptQueueFile(f"record {rtype!r} at offset {pos}: length past end of file")
        if rtype == REC_END:
            if length != 0:
                raise CorruptQueueFile("end record has a payload")
            if content is None:
                raise CorruptQueueFile("end record before the content")
            if start != file_size:
                raise CorruptQueueFile("data after the end record")
            break
        if content is not None:
            raise CorruptQueueFile(f"record {rtype!r} after the content")
        if rtype == REC_MESG:
            content = (start, length)
            fp.seek(length, os.SEEK_CUR)
            continue
        if rtype not in _ENVELOPE_TYPES:
            raise CorruptQueueFile(f"unknown record type {rtype!r} at offset {pos}")
        if rtype in (REC_TIME, REC_SENDER, REC_WARN) and rtype in seen:
            raise CorruptQueueFile(f"duplicate record {rtype!r}")
        if rtype != REC_TIME and REC_TIME not in seen:
            raise CorruptQueueFile("time record is not first")
        seen.add(rtype)
        payload = _read_exact(fp, length, f"record {rtype!r}")
        if rtype == REC_TIME:
            try:
                env.arrival_time = float(payload.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise CorruptQueueFile(f"bad time record {payload!r}") from None
        elif rtype == REC_SENDER:
            env.sender = _decode(payload)
        elif rtype == REC_ATTR:
            name, eq, value = payload.partition(b"=")
            if not eq:
                raise CorruptQueueFile("attribute record without '='")
            _set_attr(env, _decode(name), _decode(value))
        elif rtype == REC_WARN:
            if length != _WARN.size:
                raise CorruptQueueFile("bad warn record length")
            env.warn_time = _WARN.unpack(payload)[0]
            warn_offset = start
        else:
            env.recipients.append(_parse_rcpt(payload))
            status_offsets.append(start)
    if REC_SENDER not in seen:
        raise CorruptQueueFile("no sender record")
    if not env.recipients:
        raise CorruptQueueFile("no recipient records")
    env.size = content[1]
    return ParsedQueueFile(env, content[0], content[1], status_offsets, warn_offset)
