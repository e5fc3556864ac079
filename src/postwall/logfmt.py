"""The text of every mail-log event, in Postfix 3.7's exact format (layer 1, pure).

Contract: each function returns one log message *without* the
``Mon DD HH:MM:SS host syslog_name/service[pid]: `` prefix and without the
``warning: `` severity label (``log.MailLog`` adds both).  Output is
byte-for-byte what Postfix 3.7.11 writes for the same event; the golden tests
in tests/golden/log/ hold lines captured from the reference Postfix and lines
derived from its source.  Functions never raise on odd input (a hostile peer
controls much of it): callers pass already-decoded ``str`` and raw peer bytes
go through :func:`escape`.  Addresses are logged as given: turning an envelope
address into its external (quoted) form is the caller's job, as in Postfix
(info_log_address_format=external is done by the SMTP layer).

Callers: smtpd/ (session events, rejects), cleanup.py (message-id), qmgr.py
(queue active, removed, expired), delivery/ (to=... status=...), the bounce
code (notifications), master.py and cli.py (daemon lines).  TLS wording
("Trusted TLS connection established ...") belongs to tls/describe.py and is
logged verbatim.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# Postfix parameter defaults that shape log text (postconf -d).
DELAY_RESOLUTION_LIMIT = 2  # delay_logging_resolution_limit
PIPELINING_REST_LIMIT = 100  # bytes of pipelined input shown (smtpd.c)
NOQUEUE = "NOQUEUE"
_BLANKS = " \t"

_C_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 92: "\\\\"}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ---------------------------------------------------------------- helpers


def namaddr(name: str | None, addr: str, port: int | None = None) -> str:
    """``name[addr]`` as smtpd's state->namaddr; ``unknown`` when the name did
    not verify.  ``port`` is appended only with smtpd_client_port_logging=yes.
    IPv6 addresses go in the brackets bare (``unknown[::1]``), as observed."""
    text = f"{name or 'unknown'}[{addr}]"
    return f"{text}:{port}" if port is not None else text


def escape(data: bytes) -> str:
    """C-style escaping of peer bytes, as Postfix's escape(3): \\a \\b \\t \\n
    \\v \\f \\r and \\\\ by name, other non-printables as 3-digit octal."""
    out: list[str] = []
    for byte in data:
        named = _C_ESCAPES.get(byte)
        if named is not None:
            out.append(named)
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def format_tv(sec: int, usec: int, sig_dig: int = 2, max_dig: int = DELAY_RESOLUTION_LIMIT) -> str:
    """A time value with Postfix's precision rules (util/format_tv.c): whole
    seconds from 10 s up, one decimal from 1 s, at most ``max_dig`` decimals
    below 1 s with ``sig_dig`` significant digits, rounded half up, trailing
    zeros dropped.  Bad input is clamped instead of panicking."""
    max_dig = min(max(max_dig, 0), 6)
    sig_dig = min(max(sig_dig, 1), 6)
    sec = max(sec, 0)
    usec = min(max(usec, 0), 1_000_000)
    million = 1_000_000
    ures = million // 10**max_dig
    wid = 10**sig_dig
    if ures < million:
        if sec > 0:
            n = 1
            while sec >= n and n <= wid // 10:
                n *= 10
            ures = (million // wid) * n
        else:
            while usec >= wid * ures:
                ures *= 10
    if ures > 1:
        usec += ures // 2
        if usec >= million:
            sec += 1
            usec -= million
    text = str(sec)
    if usec >= ures:
        digits = []
        rem, n = usec, million // 10
        while rem >= ures and n > 0:
            digits.append(str(rem // n))
            rem %= n
            n //= 10
        text += "." + "".join(digits)
    return text


def format_delay(seconds: float, max_dig: int = DELAY_RESOLUTION_LIMIT) -> str:
    """:func:`format_tv` for a float number of seconds (negative counts as 0,
    as Postfix does when the clock jumps back)."""
    micros = max(round(seconds * 1_000_000), 0)
    if micros < 10 ** (6 - min(max(max_dig, 0), 6)) // 2:
        return "0"  # rounds to zero: most delays= parts of a local delivery
    return format_tv(micros // 1_000_000, micros % 1_000_000, 2, max_dig)


@dataclass(frozen=True)
class Delays:
    """The ``delay=`` total and the four ``delays=a/b/c/d`` parts, in seconds:
    before the queue manager, in the queue manager, connection set-up,
    transmission (log_adhoc.c)."""

    total: float
    before_qmgr: float
    in_qmgr: float
    conn_setup: float
    transmission: float

    @classmethod
    def from_stamps(
        cls,
        incoming: float,
        active: float | None,
        handoff: float | None,
        conn_done: float | None,
        done: float,
    ) -> Delays:
        """Postfix's rules for missing time stamps (log_adhoc.c): no active
        stamp → everything is pdelay (bounced by cleanup); no hand-off → the
        rest is qmgr latency; no connection stamp → no network set-up."""

        def delta(later: float, earlier: float) -> float:
            return max(later - earlier, 0.0)

        p = a = s = x = 0.0
        if active is None:
            p = delta(done, incoming)
        else:
            p = delta(active, incoming)
            if handoff is None:
                a = delta(done, active)
            else:
                a = delta(handoff, active)
                if conn_done is None:
                    x = delta(done, handoff)
                else:
                    s = delta(conn_done, handoff)
                    x = delta(done, conn_done)
        return cls(delta(done, incoming), p, a, s, x)

    @property
    def parts(self) -> tuple[float, float, float, float]:
        return (self.before_qmgr, self.in_qmgr, self.conn_setup, self.transmission)


def ctime15(when: float) -> str:
    """``%.15s`` of ctime(3) after the weekday, as anvil prints: ``Jul  1 16:13:53``
    (local time, day space-padded, English month names regardless of locale)."""
    tm = time.localtime(when)
    clock = f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    return f"{_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {clock}"


def mail_date(when: float) -> str:
    """RFC 5322 date in local time as Postfix's mail_date(): ``Sat, 28 Nov 2026 11:59:10
    +0000 (UTC)`` (English names whatever the locale)."""
    tm = time.localtime(when)
    offset = (tm.tm_gmtoff or 0) // 60
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{_DAYS[tm.tm_wday]}, {tm.tm_mday:02d} {_MONTHS[tm.tm_mon - 1]} {tm.tm_year} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{hours:02d}{minutes:02d} "
        f"({tm.tm_zone or 'UTC'})"
    )


# ---------------------------------------------------------------- smtpd: session
# Client arguments are (name, addr): name None or "unknown" when the reverse
# name did not verify; ``port`` only with smtpd_client_port_logging=yes.


def connect(name: str | None, addr: str, *, port: int | None = None) -> str:
    return f"connect from {namaddr(name, addr, port)}"


def disconnect(name: str | None, addr: str, counts: str = "", *, port: int | None = None) -> str:
    """``counts`` is the ``ehlo=1 mail=1 ... commands=N`` tail from the SMTP core."""
    counts = counts.strip()
    who = namaddr(name, addr, port)
    return f"disconnect from {who} {counts}" if counts else f"disconnect from {who}"


def should_log_abort(reason: str, where: str) -> bool:
    """Postfix stays silent about a client that hangs up right after the final
    dot without QUIT (smtpd.c: lost connection after END-OF-MESSAGE)."""
    return not (reason == "lost connection" and where == "END-OF-MESSAGE")


def session_abort(
    reason: str,
    where: str,
    name: str | None,
    addr: str,
    nbytes: int | None = None,
    *,
    port: int | None = None,
) -> str:
    """``<reason> after <where> from <client>``; reason is ``lost connection``,
    ``timeout`` or ``too many errors``; ``where`` is the last command's verb
    (``UNKNOWN`` after an unrecognised one, ``CONNECT`` before any).  Inside
    message content Postfix writes ``after DATA (21 bytes)`` / ``after BDAT
    (N bytes)``: pass ``nbytes`` (all observed on the reference)."""
    who = namaddr(name, addr, port)
    if nbytes is not None:
        return f"{reason} after {where} ({nbytes} bytes) from {who}"
    return f"{reason} after {where} from {who}"


def lost_connection(
    where: str, name: str | None, addr: str, nbytes: int | None = None, *, port: int | None = None
) -> str:
    return session_abort("lost connection", where, name, addr, nbytes, port=port)


def timeout(
    where: str, name: str | None, addr: str, nbytes: int | None = None, *, port: int | None = None
) -> str:
    return session_abort("timeout", where, name, addr, nbytes, port=port)


def too_many_errors(where: str, name: str | None, addr: str, *, port: int | None = None) -> str:
    return session_abort("too many errors", where, name, addr, port=port)


def improper_pipelining(
    where: str, name: str | None, addr: str, rest: bytes, *, port: int | None = None
) -> str:
    """``rest`` is the unread input; Postfix shows its first 100 bytes escaped."""
    shown = escape(rest[:PIPELINING_REST_LIMIT])
    return f"improper command pipelining after {where} from {namaddr(name, addr, port)}: {shown}"


def non_smtp_command(name: str | None, addr: str, line: str) -> str:
    """Warning text for an HTTP-like command (smtpd_forbidden_commands): the
    first 100 characters (``%.100s``); MailLog turns control characters into
    ``?`` as Postfix's printable() does."""
    return f"non-SMTP command from {namaddr(name, addr)}: {line[:100]}"


def hostname_mismatch(name: str, addr: str, error: str | None = None) -> str:
    """Warning text when the PTR name does not resolve back to the client
    address (smtpd_peer.c); the client is then logged as ``unknown``."""
    text = f"hostname {name} does not resolve to address {addr}"
    return f"{text}: {error}" if error else text


def client(
    queue_id: str,
    name: str | None,
    addr: str,
    *,
    sasl_method: str | None = None,
    sasl_username: str | None = None,
    sasl_sender: str | None = None,
    port: int | None = None,
) -> str:
    """``ID: client=host[addr]`` (+ SASL details), logged at the first
    accepted RCPT when the queue file is created; pflogsumm counts these as
    "received"."""
    text = f"{queue_id}: client={namaddr(name, addr, port)}"
    if sasl_method:
        text += f", sasl_method={sasl_method}"
    if sasl_username:
        text += f", sasl_username={sasl_username}"
    if sasl_sender:
        text += f", sasl_sender={sasl_sender}"
    return text


_NOT_IN_DOT_STRING = frozenset('()<>@,;:\\"[] ')


def external_address(address: str) -> str:
    """An internal-form address as Postfix 3.7 logs it (info_log_address_format =
    external, quote_822_local): a local part that is not an RFC 822 dot-string is
    quoted, with '"' and '\\' escaped; 8-bit text stays as it is."""
    if not address:
        return address
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    dot_string = (
        local
        and not local.startswith(".")
        and not local.endswith(".")
        and ".." not in local
        and not any(c in _NOT_IN_DOT_STRING or ord(c) < 32 or ord(c) == 127 for c in local)
    )
    if dot_string:
        return address
    quoted = "".join("\\" + c if c in '"\\\r' else c for c in local)
    return f'"{quoted}"{at}{domain}'


def reject(
    queue_id: str | None,
    stage: str,
    name: str | None,
    addr: str,
    reply: str,
    *,
    sender: str | None = None,
    recipient: str | None = None,
    protocol: str | None = None,
    helo: str | None = None,
    action: str = "reject",
    port: int | None = None,
) -> str:
    """smtpd_check.c log_whatsup: ``NOQUEUE: reject: RCPT from c: 554 5.7.1
    ...; from=<a> to=<b> proto=ESMTP helo=<h>``.  ``stage`` is CONNECT, HELO,
    EHLO, MAIL, RCPT, DATA, END-OF-MESSAGE, VRFY or ETRN; ``action`` may be
    ``reject_warning``, ``hold``, ``discard``...  A field that smtpd does not
    know yet is None and left out (sender ``""`` is the null sender).
    ``protocol`` is ``SMTP`` from the connection on and ``ESMTP`` after EHLO,
    also under TLS and after AUTH (reference: ``proto=ESMTP`` after
    STARTTLS); ESMTPS/ESMTPSA belong to the Received: header only."""
    who = namaddr(name, addr, port)
    text = f"{queue_id or NOQUEUE}: {action}: {stage} from {who}: {reply};"
    if sender is not None:
        text += f" from=<{external_address(sender)}>"
    if recipient is not None:
        text += f" to=<{external_address(recipient)}>"
    if protocol is not None:
        text += f" proto={protocol}"
    if helo is not None:
        text += f" helo=<{helo}>"
    return text


def etrn_reject(argument: str, name: str | None, addr: str) -> str:
    """Warning text when ETRN is refused: ``reject: ETRN example.com... from c``."""
    return f"reject: ETRN {argument[:100]}... from {namaddr(name, addr)}"


def sasl_failed(
    name: str | None, addr: str, mechanism: str, reason: str, username: str | None = None
) -> str:
    """Warning text, 3.7.11 form (smtpd_sasl_glue.c): ``unknown[1.2.3.4]: SASL
    PLAIN authentication failed: authentication failure, sasl_username=u``.
    Postfix writes ``(reason unavailable)`` / ``(unavailable)`` for blanks.
    fail2ban's filter keys on the text up to ``authentication failed:``."""
    user = (username or "(unavailable)")[:100]
    return (
        f"{namaddr(name, addr)}: SASL {mechanism[:100]} authentication failed: "
        f"{reason or '(reason unavailable)'}, sasl_username={user}"
    )


def sasl_aborted(name: str | None, addr: str, mechanism: str) -> str:
    """Warning text when the client answers a challenge with ``*``."""
    return f"{namaddr(name, addr)}: SASL {mechanism} authentication aborted"


# ---------------------------------------------------------------- smtpd: TLS
# The handshake summary ("Anonymous TLS connection established from ...")
# comes from tls/describe.py and is logged verbatim.


def tls_setup(name: str | None, addr: str) -> str:
    return f"setting up TLS connection from {namaddr(name, addr)}"


def ssl_accept_error(name: str | None, addr: str, detail: str) -> str:
    """``detail`` is ``lost connection`` (peer closed), an errno text, or the
    SSL_accept return value (``-1``) followed by a library-problem warning."""
    return f"SSL_accept error from {namaddr(name, addr)}: {detail}"


def tls_library_problem(detail: str) -> str:
    """Warning text: ``TLS library problem: error:0A00010B:SSL routines::...``."""
    return f"TLS library problem: {detail}"


def tls_abort(name: str | None, addr: str, reason: str) -> str:
    """``NOQUEUE: abort: TLS from c: Cannot start TLS: handshake failure``."""
    return f"{NOQUEUE}: abort: TLS from {namaddr(name, addr)}: {reason}"


# ---------------------------------------------------------------- cleanup, pickup


def cleanup_message_id(queue_id: str, value: str | None, resent: bool = False) -> str:
    """``ID: message-id=<x@y>``: the header value as received (leading space
    stripped; an empty header gives ``message-id=``), or ``message-id=<>``
    (None) when the message has none and cleanup did not add one."""
    label = "resent-message-id" if resent else "message-id"
    if value is None:
        return f"{queue_id}: {label}=<>"
    return f"{queue_id}: {label}={value.lstrip(_BLANKS)}"


def pickup(queue_id: str, uid: int, sender: str) -> str:
    return f"{queue_id}: uid={uid} from=<{sender}>"


# ---------------------------------------------------------------- qmgr


def queue_active(queue_id: str, sender: str, size: int, nrcpt: int) -> str:
    """global/opened.c with qmgr's ``queue active`` note."""
    return f"{queue_id}: from=<{sender}>, size={size}, nrcpt={nrcpt} (queue active)"


def removed(queue_id: str) -> str:
    return f"{queue_id}: removed"


def corrupt_queue_file(queue_id: str, reason: str = "", queue: str = "active") -> str:
    """Warning text, qmgr's ``saving corrupt file "ID" from queue "active" to
    queue "corrupt"``; a non-empty ``reason`` is appended after ``: `` (Postfix
    logs the reason on a separate line before it)."""
    text = f'saving corrupt file "{queue_id}" from queue "{queue}" to queue "corrupt"'
    return f"{text}: {reason}" if reason else text


def expired(queue_id: str, sender: str, forced: bool = False) -> str:
    """Past maximal_queue_lifetime (``force-expired`` after postsuper -e)."""
    status = "force-expired" if forced else "expired"
    return f"{queue_id}: from=<{sender}>, status={status}, returned to sender"


# ---------------------------------------------------------------- delivery agents


def delivery_status(
    queue_id: str,
    *,
    to: str,
    relay: str,
    delay: float,
    delays: tuple[float, float, float, float],
    dsn: str,
    status: str,
    text: str,
    orig_to: str | None = None,
    conn_use: int = 1,
) -> str:
    """log_adhoc.c: ``ID: to=<r>, orig_to=<o>, relay=local, delay=0.12,
    delays=0.01/0.01/0/0.1, dsn=2.0.0, status=sent (delivered to maildir)``.
    ``delay`` is arrival to now; ``delays`` are before qmgr, in qmgr,
    connection set-up, transmission (:meth:`Delays.from_stamps` computes both
    from time stamps).  ``orig_to`` is shown only when it differs
    (case-insensitively) from ``to``; ``conn_use`` only for a reused cached
    connection (>1).  Postfix 3.7 has no ``tls=`` field here."""
    line = f"{queue_id}: to=<{to}>"
    if orig_to and orig_to.casefold() != to.casefold():
        line += f", orig_to=<{orig_to}>"
    line += f", relay={relay}"
    if conn_use > 1:
        line += f", conn_use={conn_use}"
    parts = "/".join(format_delay(v) for v in delays)
    return (
        f"{line}, delay={format_delay(delay)}, delays={parts}, dsn={dsn}, status={status} ({text})"
    )


# bounce(8)'s name for each notice it sends, by (bounce.Kind, postmaster copy);
# src/bounce/bounce_notify_service.c, bounce_warn_service.c, bounce_trace_service.c.
NOTIFICATION_KINDS = {
    ("failure", False): "sender non-delivery",
    ("failure", True): "postmaster non-delivery",
    ("delay", False): "sender delay",
    ("delay", True): "postmaster delay",
    ("success", False): "sender delivery status",
}


def notification(queue_id: str, kind: str, new_queue_id: str) -> str:
    """Bounce daemon (service ``bounce``): ``kind`` is one of NOTIFICATION_KINDS'
    values, e.g. ``QID: sender non-delivery notification: NEWQID``."""
    return f"{queue_id}: {kind} notification: {new_queue_id}"


def postmaster_notice_discarded(queue_id: str) -> str:
    """Warning text (bounce_notify_service.c) when mail from double_bounce_sender, a
    postmaster notice, is itself undeliverable: no notice about a notice."""
    return f"{queue_id}: undeliverable postmaster notification discarded"


def host_offered_starttls(host: str) -> str:
    """smtp client, with smtp_tls_note_starttls_offer=yes."""
    return f"Host offered STARTTLS: [{host}]"


def connect_failed(host: str, addr: str, port: int, error: str) -> str:
    """``connect to mx.example.com[192.0.2.1]:25: Connection refused``; also
    the text of the deferral reason."""
    return f"connect to {host}[{addr}]:{port}: {error}"


def host_said(host: str, reply: str, command: str) -> str:
    """Delivery reason text: ``host mx[192.0.2.1] said: 550 ... (in reply to
    RCPT TO command)``."""
    return f"host {host} said: {reply} (in reply to {command})"


def lost_connection_with(host: str, while_: str) -> str:
    return f"lost connection with {host} while {while_}"


def conversation_timed_out(host: str, while_: str) -> str:
    return f"conversation with {host} timed out while {while_}"


# ---------------------------------------------------------------- anvil, master


def anvil_max_rate(kind: str, count: int, interval: int, ident: str, when: float) -> str:
    """``statistics: max connection rate 2/60s for (smtp:192.0.2.1) at Jul 11
    16:13:53``; ``kind`` is connection, message, recipient, newtls or auth."""
    return f"statistics: max {kind} rate {count}/{interval}s for ({ident}) at {ctime15(when)}"


def anvil_max_count(count: int, ident: str, when: float) -> str:
    return f"statistics: max connection count {count} for ({ident}) at {ctime15(when)}"


def anvil_max_cache(size: int, when: float) -> str:
    return f"statistics: max cache size {size} at {ctime15(when)}"


def master_started(version: str, config_dir: str) -> str:
    return f"daemon started -- version {version}, configuration {config_dir}"


def master_reload(version: str, config_dir: str) -> str:
    return f"reload -- version {version}, configuration {config_dir}"


def master_terminating(signum: int) -> str:
    return f"terminating on signal {int(signum)}"  # a signal.Signals prints as its number
