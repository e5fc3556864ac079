"""`postwall report [LOGFILE...]`: the TLS picture of a mail log, postwall's or Postfix's.

Contract: reads each LOGFILE in turn (standard input when none; gzip-compressed files,
such as logrotate's `maillog.2.gz`, are recognised by their magic bytes) one line at a
time, so memory depends on the number of open sessions, queued messages and distinct
peers, never on the size of the log. Lines are `TIME HOST TAG[PID]: TEXT` where TIME is
syslog's `Mon DD HH:MM:SS` or ISO 8601 (`maillog_file`'s ISO styles, journald's
`short-iso`, rsyslog's RFC 3339) and TAG is `SYSLOG_NAME/SERVICE`; any syslog_name
(`postfix`, `postfix-postwall`, `postfix-foo`, `postfix/submission`) is accepted and the
service is the last component. Lines of other programs, garbage, truncated and overlong
lines are counted and skipped; they never stop the report.

Correlation, as pflogsumm does it:
- inbound: a session is `connect from` .. `disconnect from` of one smtpd process (HOST,
  TAG, PID); it used TLS when a `... TLS connection established from` line falls inside
  it. A message (`QID: client=`) used TLS when its session had by then.
- outbound (smtp and lmtp to a network peer): a connection starts with the line that
  Postfix logs before the first delivery on it: `... TLS connection established to PEER`
  (TLS), `Host offered STARTTLS: [HOST]` (smtp_tls_note_starttls_offer: offered, not
  used) or `SSL_connect error to PEER` (offered, handshake failed); a delivery line
  (`QID: to=<..>, relay=PEER, ...`) with none of these before it in that process opens a
  plaintext connection whose peer did not offer STARTTLS. Further recipients of the same
  message stay on the connection; `conn_use=N` marks a cached connection, which keeps
  the TLS state of the last connection to that peer. A message used TLS when every
  delivery attempt that reached a server did (counted at qmgr's `QID: removed`).
  "Did not offer STARTTLS" is only as reliable as the client's settings make it: a
  Postfix with smtp_tls_security_level = none logs no offer unless
  smtp_tls_note_starttls_offer = yes.
- failures (at most once per session and kind): `SSL_accept error`, `SSL_connect
  error`, `lost connection after STARTTLS`, `TLS library problem`, `TLS handshake
  failed`, `NOQUEUE: abort: TLS`, and the TLS deferral reasons of the smtp client.

Output: aligned text tables (default), `--json` (schema `postwall-report/1`, described in
docs/admin.md and built by `Report.to_json`), `--html FILE` (a self-contained page whose
charts are PNG images drawn with matplotlib's Agg backend; without matplotlib the
command says so in one line and exits 1). Layer 4: called by cli.py only.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import html
import io
import json
import re
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import ToolError, warn

SCHEMA = "postwall-report/1"
MAX_LINE = 8192  # Postfix cuts its text at 2000 characters; anything longer is not Postfix's
TRUST_LEVELS = ("Anonymous", "Untrusted", "Trusted", "Verified")

_LINE = re.compile(
    r"(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
    r" (?P<host>\S+) (?P<tag>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: (?P<text>.*)"
)
_SEVERITY = re.compile(r"(warning|error|fatal|panic): ")
_ESTABLISHED = re.compile(
    r"(?P<trust>\w+) TLS connection (?P<how>established|reused) (?P<dir>from|to) "
    r"(?P<peer>\S+?)(?: to \S+)?: (?P<proto>\S+) with cipher (?P<cipher>\S+) "
    r"\((?P<use>\d+)/(?P<alg>\d+) bits\)"
)
_CERT = re.compile(
    r"(?P<peer>\S+): subject_CN=(?P<cn>.*?), issuer(?:_CN)?=(?P<issuer>.*?), "
    r"fingerprint=(?P<fp>[0-9A-Fa-f:]+)"
)
_QID = r"(?P<qid>[0-9A-Za-z]+)"
_CLIENT = re.compile(_QID + r": client=(?P<peer>\S+?)(?:,|$)")
_DELIVERY = re.compile(
    _QID + r": to=<.*?>, (?:orig_to=<.*?>, )?relay=(?P<relay>[^,\s]+), "
    r"(?:conn_use=(?P<conn_use>\d+), )?.*?status=(?P<status>\w+)(?: \((?P<why>.*))?"
)
_OFFERED = re.compile(r"Host offered STARTTLS: \[(?P<host>[^\]]*)\]")
_SSL_ERROR = re.compile(r"SSL_(?P<op>accept|connect) error (?:from|to) (?P<peer>\S+?): (?P<d>.*)")
_LOST_STARTTLS = re.compile(r"lost connection after STARTTLS from (?P<peer>\S+)")
_ABORT = re.compile(r"NOQUEUE: abort: TLS from (?P<peer>\S+?): (?P<why>.*)")
_LIBRARY = re.compile(r"TLS library problem: (?:error:[0-9A-Fa-f]+:[^:]*:[^:]*:)?(?P<why>[^:]*)")
# Deferral reasons of Postfix's smtp client (strings in /usr/lib/postfix/sbin/smtp, 3.7).
_DEFERRAL_KINDS = (
    ("TLS is required, but was not offered", "TLS required but not offered"),
    ("refused to start TLS", "TLS required but STARTTLS refused"),
    ("Cannot start TLS: handshake failure", "Cannot start TLS: handshake failure"),
    ("Server certificate not verified", "Server certificate not verified"),
    ("Server certificate not trusted", "Server certificate not trusted"),
    ("TLS handshake failed", "TLS handshake failed"),
)
_INBOUND_SERVICES = frozenset({"smtpd"})
_OUTBOUND_SERVICES = frozenset({"smtp", "lmtp"})


def _host(peer: str) -> str:
    """`mx.example[192.0.2.1]:25` -> `mx.example`."""
    return peer.split("[", 1)[0]


# --------------------------------------------------------------------------- the figures


@dataclass
class Direction:
    """Counts for one direction; `Report.to_json` is the documented view of them."""

    sessions: int = 0
    tls_sessions: int = 0
    messages: int = 0
    tls_messages: int = 0
    deliveries: int = 0
    tls_deliveries: int = 0
    failed_sessions: int = 0
    protocols: Counter[str] = field(default_factory=Counter)
    ciphers: Counter[str] = field(default_factory=Counter)
    trust: Counter[str] = field(default_factory=Counter)
    certificates: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    plaintext_peers: Counter[str] = field(default_factory=Counter)
    offered_not_used: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    failure_peers: Counter[str] = field(default_factory=Counter)


@dataclass
class _TLS:
    trust: str
    protocol: str
    cipher: str
    bits: int


@dataclass
class _Session:
    """One smtpd session, or one smtp/lmtp connection."""

    peer: str
    tls: _TLS | None = None
    offered: bool = False
    counted: bool = True  # False for a TLS connection reused from another process
    cert: tuple[str, str] | None = None  # (subject, issuer)
    subject_dn: str | None = None
    failures: set[str] = field(default_factory=set)
    qid: str | None = None  # the message whose deliveries are on this connection
    attempt: int = 0


@dataclass
class _Message:
    """Outbound deliveries of one queue file; `attempt` counts qmgr's `(queue active)`."""

    tls: int = 0
    plain: int = 0
    attempt: int = 0


@dataclass
class Report:
    """Feed lines with `feed`, then `finish()`; the result is in the attributes."""

    syslog_names: tuple[str, ...] = ()
    files: list[str] = field(default_factory=list)
    lines: int = 0
    mail_lines: int = 0
    other_lines: int = 0
    unparsed_lines: int = 0
    first: str | None = None
    last: str | None = None
    instances: Counter[str] = field(default_factory=Counter)
    services: Counter[str] = field(default_factory=Counter)
    inbound: Direction = field(default_factory=Direction)
    outbound: Direction = field(default_factory=Direction)
    _smtpd: dict[tuple[str, str, str], _Session] = field(default_factory=dict, repr=False)
    _conn: dict[tuple[str, str, str], _Session] = field(default_factory=dict, repr=False)
    _last_tls: dict[str, _TLS | None] = field(default_factory=dict, repr=False)
    _pending_cert: dict[tuple[str, str, str], tuple[str, str]] = field(
        default_factory=dict, repr=False
    )
    _messages: dict[tuple[str, str, str], _Message] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ input

    def feed(self, line: str) -> None:
        self.lines += 1
        m = _LINE.match(line)
        if m is None:
            self.unparsed_lines += 1
            return
        tag = m["tag"]
        if (
            "/" not in tag
            or m["pid"] is None
            or (self.syslog_names and not any(tag.startswith(n + "/") for n in self.syslog_names))
        ):
            self.other_lines += 1
            return
        self.mail_lines += 1
        ts = m["ts"]
        if self.first is None:
            self.first = ts
        self.last = ts
        instance, _, rest = tag.partition("/")
        service = rest.rpartition("/")[2]
        self.instances[instance] += 1
        self.services[service] += 1
        text = m["text"].rstrip("\r\n")
        sev = _SEVERITY.match(text)
        if sev:
            text = text[sev.end() :]
        key = (m["host"], tag, m["pid"])
        if service in _INBOUND_SERVICES:
            self._inbound(key, text)
        elif service in _OUTBOUND_SERVICES:
            self._outbound(key, text)
        elif service == "qmgr":
            self._qmgr((m["host"], instance, text.partition(":")[0]), text)

    def _qmgr(self, key: tuple[str, str, str], text: str) -> None:
        if text.endswith("(queue active)"):
            # a new delivery attempt: its deliveries are on new connections
            self._messages.setdefault(key, _Message()).attempt += 1
        elif text.endswith(": removed"):
            msg = self._messages.pop(key, None)
            if msg is not None:
                self._count_message(msg)

    def finish(self) -> Report:
        """End of input: sessions and messages still open are counted as they stand."""
        for sess in self._smtpd.values():
            self._close_inbound(sess)
        for conn in self._conn.values():
            self._close_outbound(conn)
        for msg in self._messages.values():
            self._count_message(msg)
        self._smtpd.clear()
        self._conn.clear()
        self._messages.clear()
        return self

    # ------------------------------------------------------------------ inbound

    def _inbound(self, key: tuple[str, str, str], text: str) -> None:
        if text.startswith("connect from "):
            old = self._smtpd.pop(key, None)
            if old is not None:  # no disconnect logged (process killed, log cut)
                self._close_inbound(old)
            self._smtpd[key] = _Session(peer=text[len("connect from ") :])
            return
        if text.startswith("disconnect from "):
            sess = self._smtpd.pop(key, None)
            if sess is not None:
                self._close_inbound(sess)
            return
        sess = self._smtpd.get(key)
        if "TLS connection " in text and (m := _ESTABLISHED.match(text)):
            sess = sess or self._implicit(key, m["peer"])
            sess.tls = _tls(m)
            return
        if (m := _CLIENT.match(text)) is not None:
            sess = sess or self._implicit(key, m["peer"])
            self.inbound.messages += 1
            if sess.tls is not None:
                self.inbound.tls_messages += 1
            return
        if sess is not None and text.startswith("subject="):
            sess.subject_dn = text[len("subject=") :]
            return
        if "subject_CN=" in text and (m := _CERT.match(text)):
            sess = sess or self._implicit(key, m["peer"])
            sess.cert = (sess.subject_dn or f"CN={m['cn']}", m["issuer"])
            return
        kind, peer = _failure(text)
        if kind is not None:
            sess = sess or self._implicit(key, peer or "unknown")
            sess.failures.add(kind)

    def _implicit(self, key: tuple[str, str, str], peer: str) -> _Session:
        """A session whose connect line is not in the log (it started before the file)."""
        sess = self._smtpd[key] = _Session(peer=peer)
        return sess

    def _close_inbound(self, sess: _Session) -> None:
        d = self.inbound
        d.sessions += 1
        _count_session(d, sess)
        if sess.tls is None:
            d.plaintext_peers[sess.peer] += 1

    # ------------------------------------------------------------------ outbound

    def _outbound(self, key: tuple[str, str, str], text: str) -> None:
        if (m := _DELIVERY.match(text)) is not None:
            self._delivery(key, m)
            return
        if "TLS connection " in text and (m := _ESTABLISHED.match(text)):
            conn = self._open(key, m["peer"])
            conn.tls = _tls(m)
            conn.offered = True
            conn.counted = m["how"] == "established"
            conn.cert = self._pending_cert.pop(key, None)
            self._last_tls[m["peer"]] = conn.tls
            return
        if (m := _OFFERED.match(text)) is not None:
            self._open(key, m["host"]).offered = True
            return
        if "subject_CN=" in text and (m := _CERT.match(text)):
            self._pending_cert[key] = (f"CN={m['cn']}", m["issuer"])
            return
        kind, peer = _failure(text)
        if kind is None:
            return
        current = self._conn.get(key)
        if peer is not None and (
            current is None or _host(current.peer) != _host(peer) or current.qid is not None
        ):
            current = self._open(key, peer)  # SSL_connect error: the first line of a connection
        if current is not None:  # a library problem or "QID: Cannot start TLS" on the current one
            current.offered = True
            current.failures.add(kind)

    def _open(self, key: tuple[str, str, str], peer: str) -> _Session:
        old = self._conn.pop(key, None)
        if old is not None:
            self._close_outbound(old)
        conn = self._conn[key] = _Session(peer=peer)
        return conn

    def _delivery(self, key: tuple[str, str, str], m: re.Match[str]) -> None:
        relay, qid = m["relay"], m["qid"]
        if "[" not in relay:  # relay=none (no connection), or a unix-domain LMTP socket
            return
        msg = self._messages.setdefault((key[0], key[1].partition("/")[0], qid), _Message())
        conn = self._conn.get(key)
        fresh = conn is not None and conn.qid is None and _host(conn.peer) == _host(relay)
        same = conn is not None and (conn.qid, conn.attempt, conn.peer) == (qid, msg.attempt, relay)
        if int(m["conn_use"] or 1) > 1 and not fresh:
            # a cached connection, possibly opened by another process: not a new session
            tls = self._last_tls.get(relay)
            conn = self._open(key, relay)
            conn.tls, conn.offered, conn.counted = tls, tls is not None, False
        elif conn is None or not (fresh or same):
            conn = self._open(key, relay)
            self._last_tls[relay] = None
        conn.peer = relay  # "Host offered STARTTLS" names the host only
        conn.qid, conn.attempt = qid, msg.attempt
        why = m["why"] or ""
        for needle, kind in _DEFERRAL_KINDS:
            if needle in why:
                conn.failures.add(kind)
                if kind == "TLS required but not offered":
                    conn.offered = False
                break
        d = self.outbound
        d.deliveries += 1
        if conn.tls is not None:
            d.tls_deliveries += 1
            msg.tls += 1
        else:
            msg.plain += 1

    def _close_outbound(self, conn: _Session) -> None:
        if not conn.counted:
            return
        d = self.outbound
        d.sessions += 1
        _count_session(d, conn)
        if conn.tls is None:
            (d.offered_not_used if conn.offered else d.plaintext_peers)[conn.peer] += 1

    def _count_message(self, msg: _Message) -> None:
        if msg.tls + msg.plain == 0:  # delivered locally, or never attempted
            return
        self.outbound.messages += 1
        if msg.plain == 0:
            self.outbound.tls_messages += 1

    # ------------------------------------------------------------------ output

    def to_json(self, top: int = 0) -> dict[str, Any]:
        """The documented schema (docs/admin.md); `top` > 0 cuts each peer list."""
        return {
            "schema": SCHEMA,
            "input": {
                "files": self.files,
                "lines": self.lines,
                "mail_lines": self.mail_lines,
                "other_lines": self.other_lines,
                "unparsed_lines": self.unparsed_lines,
                "first": self.first,
                "last": self.last,
                "instances": dict(_ranked(self.instances)),
                "services": dict(_ranked(self.services)),
            },
            "inbound": _direction_json(self.inbound, top, outbound=False),
            "outbound": _direction_json(self.outbound, top, outbound=True),
        }


def _tls(m: re.Match[str]) -> _TLS:
    return _TLS(m["trust"], m["proto"], m["cipher"], int(m["use"]))


def _failure(text: str) -> tuple[str | None, str | None]:
    """(kind, peer) of a TLS failure line, or (None, None)."""
    if "TLS" not in text and "SSL_" not in text:  # most lines: answer quickly
        return None, None
    if text.startswith("SSL_") and (m := _SSL_ERROR.match(text)):
        return f"SSL_{m['op']} error: {m['d']}", m["peer"]
    if (m := _LOST_STARTTLS.match(text)) is not None:
        return "lost connection after STARTTLS", m["peer"]
    if (m := _ABORT.match(text)) is not None:
        return f"abort: {m['why']}", m["peer"]
    if (m := _LIBRARY.match(text)) is not None:
        return f"TLS library problem: {m['why'].strip() or 'unknown'}", None
    for needle in ("Cannot start TLS: handshake failure", "TLS handshake failed"):
        if needle in text:
            return needle, None
    return None, None


def _count_session(d: Direction, sess: _Session) -> None:
    if sess.tls is not None:
        d.tls_sessions += 1
        d.protocols[sess.tls.protocol] += 1
        d.ciphers[sess.tls.cipher] += 1
        d.trust[sess.tls.trust] += 1
        if sess.cert is not None:
            d.certificates[(*sess.cert, sess.tls.trust)] += 1
    if sess.failures:
        d.failed_sessions += 1
        d.failure_peers[sess.peer] += 1
        for kind in sess.failures:
            d.failures[kind] += 1


def _trust(d: Direction) -> dict[str, int]:
    """Postfix's four levels in order of strength, zeros included, then any other word."""
    levels = {level: d.trust.get(level, 0) for level in TRUST_LEVELS}
    return levels | {k: v for k, v in _ranked(d.trust) if k not in levels}


def _ranked(counter: Counter[Any], top: int = 0) -> list[tuple[Any, int]]:
    """Most frequent first, then by name, so output is stable."""
    items = sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return items[:top] if top > 0 else items


def _share(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _direction_json(d: Direction, top: int, *, outbound: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sessions": {
            "total": d.sessions,
            "tls": d.tls_sessions,
            "plaintext": d.sessions - d.tls_sessions,
            "tls_percent": _share(d.tls_sessions, d.sessions),
        },
        "messages": {
            "total": d.messages,
            "tls": d.tls_messages,
            "plaintext": d.messages - d.tls_messages,
            "tls_percent": _share(d.tls_messages, d.messages),
        },
    }
    if outbound:
        out["deliveries"] = {
            "total": d.deliveries,
            "tls": d.tls_deliveries,
            "plaintext": d.deliveries - d.tls_deliveries,
            "tls_percent": _share(d.tls_deliveries, d.deliveries),
        }
    out["protocols"] = dict(_ranked(d.protocols))
    out["ciphers"] = dict(_ranked(d.ciphers))
    out["trust"] = _trust(d)
    out["certificates"] = [
        {"subject": s, "issuer": i, "trust": t, "sessions": n}
        for (s, i, t), n in _ranked(d.certificates, top)
    ]
    peers = [{"peer": p, "sessions": n} for p, n in _ranked(d.plaintext_peers, top)]
    if outbound:
        out["no_starttls"] = peers
        out["starttls_not_used"] = [
            {"peer": p, "sessions": n} for p, n in _ranked(d.offered_not_used, top)
        ]
    else:
        out["plaintext_clients"] = peers
    out["failures"] = {
        "sessions": d.failed_sessions,
        "kinds": dict(_ranked(d.failures)),
        "peers": [{"peer": p, "sessions": n} for p, n in _ranked(d.failure_peers, top)],
    }
    return out


# --------------------------------------------------------------------------- reading


def _open_input(path: str) -> IO[bytes]:
    """The file's bytes, decompressed when it starts with gzip's magic number."""
    raw: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[type-var]
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    return buffered


def read_lines(stream: IO[bytes], limit: int = MAX_LINE) -> Iterator[str]:
    """Decoded lines; an overlong line keeps its head and the rest is skipped."""
    while True:
        line = stream.readline(limit)
        if not line:
            return
        if len(line) == limit and not line.endswith(b"\n"):
            while (rest := stream.readline(limit)) and not rest.endswith(b"\n"):
                pass
        yield line.decode("utf-8", "replace")


def build_report(
    paths: Iterable[str], syslog_names: tuple[str, ...] = (), stdin_name: str = "-"
) -> Report:
    report = Report(syslog_names=syslog_names)
    for path in paths:
        report.files.append(stdin_name if path == "-" else path)
        with _open_input(path) as stream:
            try:
                for line in read_lines(stream):
                    report.feed(line)
            except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
                # a rotated file still being compressed, or a damaged one: keep what was read
                warn(f"{path}: compressed data ends early or is damaged ({exc}); rest skipped")
    return report.finish()


# --------------------------------------------------------------------------- text


def _table(rows: list[list[str]], right: Iterable[int] = ()) -> list[str]:
    """Columns padded to their widest cell; `right` columns right-aligned."""
    if not rows:
        return []
    right = set(right)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _pct(part: int, whole: int) -> str:
    share = _share(part, whole)
    return "-" if share is None else f"{share:.1f}%"


def _breakdown(title: str, counter: Counter[str], total: int, top: int) -> list[str]:
    if not counter:
        return []
    rows = [[name, str(n), _pct(n, total)] for name, n in _ranked(counter, top)]
    return ["", title, *_table(rows, right=(1, 2))]


def _peer_list(title: str, counter: Counter[str], top: int) -> list[str]:
    if not counter:
        return []
    rows = [[p, str(n)] for p, n in _ranked(counter, top)]
    more = len(counter) - len(rows)
    return ["", title, *_table(rows, right=(1,))] + ([f"  ... and {more} more"] if more else [])


def render_text(r: Report, top: int = 20) -> str:
    out = [
        f"postwall report: {len(r.files)} file(s), {r.lines} lines "
        f"({r.mail_lines} mail, {r.other_lines} other programs, {r.unparsed_lines} unparsed)",
        f"period: {r.first or '-'} .. {r.last or '-'}",
        "instances: " + (", ".join(f"{n} ({c} lines)" for n, c in _ranked(r.instances)) or "none"),
    ]
    for label, d, outbound in (
        ("Inbound (smtpd)", r.inbound, False),
        ("Outbound (smtp, lmtp)", r.outbound, True),
    ):
        out += ["", f"== {label}"]
        rows = [["", "total", "TLS", "TLS %", "plaintext"]]
        figures = [
            ("sessions", d.sessions, d.tls_sessions),
            ("messages", d.messages, d.tls_messages),
        ]
        if outbound:
            figures.append(("deliveries", d.deliveries, d.tls_deliveries))
        for name, total, tls in figures:
            rows.append([name, str(total), str(tls), _pct(tls, total), str(total - tls)])
        out += _table(rows, right=(1, 2, 3, 4))
        out += _breakdown("TLS sessions by protocol", d.protocols, d.tls_sessions, top)
        out += _breakdown("TLS sessions by cipher", d.ciphers, d.tls_sessions, top)
        if d.tls_sessions:
            rows = [[k, str(n), _pct(n, d.tls_sessions)] for k, n in _trust(d).items()]
            out += ["", "TLS sessions by trust", *_table(rows, right=(1, 2))]
        if d.certificates:
            who = "Server" if outbound else "Client"
            rows = [[s, i, t, str(n)] for (s, i, t), n in _ranked(d.certificates, top)]
            out += [
                "",
                f"{who} certificates (subject, issuer, trust, sessions)",
                *_table(rows, right=(3,)),
            ]
        elif not outbound and (d.trust["Trusted"] or d.trust["Untrusted"]):
            out += ["", "Client certificates: subjects are logged at smtpd_tls_loglevel >= 2"]
        if outbound:
            out += _peer_list(
                "Servers that did not offer STARTTLS (sessions)", d.plaintext_peers, top
            )
            out += _peer_list(
                "Servers that offered STARTTLS, not used (sessions)", d.offered_not_used, top
            )
        else:
            out += _peer_list("Clients that did not use TLS (sessions)", d.plaintext_peers, top)
        if d.failures:
            out += _breakdown(
                f"TLS failures ({d.failed_sessions} sessions)", d.failures, d.failed_sessions, top
            )
            out += _peer_list("TLS failures by peer (sessions)", d.failure_peers, top)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- HTML


def _load_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ToolError(
            "--html needs matplotlib, which is not installed: pip install 'postwall[report]'"
        ) from None
    matplotlib.use("Agg")  # no display; PNGs only
    import matplotlib.pyplot as plt

    return plt


def _png(plt: Any, fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _charts(plt: Any, r: Report, top: int) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each chart that has something to show."""
    charts = []
    rows = [
        ("inbound sessions", r.inbound.sessions, r.inbound.tls_sessions),
        ("inbound messages", r.inbound.messages, r.inbound.tls_messages),
        ("outbound sessions", r.outbound.sessions, r.outbound.tls_sessions),
        ("outbound messages", r.outbound.messages, r.outbound.tls_messages),
    ]
    rows = [row for row in rows if row[1]]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(rows)))
        labels = [name for name, _, _ in rows]
        tls = [100.0 * t / n for _, n, t in rows]
        ax.barh(labels, tls, color="#2e7d32", label="TLS")
        ax.barh(labels, [100.0 - x for x in tls], left=tls, color="#c62828", label="plaintext")
        ax.set_xlim(0, 100)
        ax.set_xlabel("%")
        ax.invert_yaxis()
        ax.legend(loc="lower right", fontsize="small")
        charts.append(("Share of TLS", _png(plt, fig)))
    for label, d in (("inbound", r.inbound), ("outbound", r.outbound)):
        for what, counter in (("protocol", d.protocols), ("cipher", d.ciphers), ("trust", d.trust)):
            items = _ranked(counter, top)
            if not items:
                continue
            fig, ax = plt.subplots(figsize=(7, 0.6 + 0.35 * len(items)))
            ax.barh([str(k) for k, _ in items], [n for _, n in items], color="#1565c0")
            ax.invert_yaxis()
            ax.set_xlabel("TLS sessions")
            charts.append((f"{label.capitalize()} TLS sessions by {what}", _png(plt, fig)))
    return charts


def render_html(r: Report, top: int = 20) -> str:
    plt = _load_pyplot()
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>postwall TLS report</title>',
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "pre{background:#f4f4f4;padding:1em;overflow-x:auto}</style></head><body>",
        "<h1>TLS report</h1>",
    ]
    for title, png in _charts(plt, r, top):
        parts.append(f"<h2>{esc(title)}</h2>")
        parts.append(f'<img alt="{esc(title)}" src="data:image/png;base64,{png}">')
    parts.append("<h2>Figures</h2>")
    parts.append(f"<pre>{esc(render_text(r, top))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- command


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="the TLS picture of a mail log (postwall's or Postfix's)",
        description="Read mail logs (postwall's or Postfix's, syslog or ISO time stamps, "
        "gzip-compressed or not; standard input when no file is given) and report the "
        "share of inbound and outbound sessions and messages that used TLS, by protocol, "
        "cipher and trust, the client certificates seen, the servers that did not offer "
        "STARTTLS, and TLS failures.",
    )
    p.add_argument("logfiles", nargs="*", metavar="LOGFILE", help="log files ('-' for stdin)")
    p.add_argument("--json", action="store_true", help="print JSON (schema postwall-report/1)")
    p.add_argument("--html", metavar="FILE", help="also write an HTML page with charts to FILE")
    p.add_argument(
        "--syslog-name",
        action="append",
        default=[],
        metavar="NAME",
        help="only lines of this syslog_name (repeatable; default: every instance)",
    )
    p.add_argument(
        "--top", type=int, default=20, metavar="N", help="longest list shown (0: all; default 20)"
    )
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    if args.top < 0:
        raise ToolError("--top must be 0 or more")
    if args.html:
        _load_pyplot()  # say so before reading a large log
    paths = args.logfiles or ["-"]
    report = build_report(paths, tuple(args.syslog_name))
    if args.html:
        Path(args.html).write_text(render_html(report, args.top), encoding="utf-8")
    if args.json:
        json.dump(report.to_json(args.top), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report, args.top))
    return 0
