"""smtpd's client limits: anvil counts and rates turned into Postfix's replies and warnings.

Who calls it: the smtpd session, at connect, MAIL, RCPT, STARTTLS, after a TLS handshake
and at disconnect, through the `SessionLimits` its service's `ClientLimits` hands out.
What it guarantees: the checks, replies and warning lines of Postfix 3.7's smtpd.c
(smtpd_proto, mail_cmd, rcpt_cmd, starttls_cmd, smtpd_start_tls) for
smtpd_client_connection_count_limit, smtpd_client_connection_rate_limit,
smtpd_client_message_rate_limit, smtpd_client_recipient_rate_limit and
smtpd_client_new_tls_session_rate_limit; clients matching
smtpd_client_event_limit_exceptions are neither counted nor limited; a limit of 0 is
off; with every limit off nothing is counted at all (Postfix then has no anvil client).

Where postwall differs: Postfix counts a MAIL or RCPT against the rate before it parses
the address, postwall after its protocol core has checked the command's syntax, so a
command with a syntax error is answered 501 and not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from postwall.anvil import Anvil, ClientList
from postwall.config.params import Params
from postwall.log import MailLog
from postwall.smtp.replies import Reply

ALL_PORTS_BUSY = Reply(421, "4.3.2", "All server ports are busy")


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit was hit: log `warning` (as a warning) and answer `reply` (None: hang up
    without one)."""

    warning: str
    reply: Reply | None


class ClientLimits:
    """The limits of one smtpd service; built with the service, so a reload applies new
    limits to new sessions while the counts (in the shared Anvil) carry on."""

    def __init__(self, service: str, params: Params, anvil: Anvil) -> None:
        self.service = service
        self.params = params
        self.anvil = anvil
        self.exceptions = ClientList(params.smtpd_client_event_limit_exceptions)
        self.enabled = any(
            (
                params.smtpd_client_connection_count_limit,
                params.smtpd_client_connection_rate_limit,
                params.smtpd_client_message_rate_limit,
                params.smtpd_client_recipient_rate_limit,
                params.smtpd_client_new_tls_session_rate_limit,
                params.smtpd_client_auth_rate_limit,
            )
        )

    def session(self, name: str, addr: str) -> SessionLimits:
        counted = self.enabled and not self.exceptions.match(name, addr)
        return SessionLimits(self, f"{self.service}:{addr}" if counted else None, addr)


class SessionLimits:
    def __init__(self, limits: ClientLimits, ident: str | None, addr: str) -> None:
        self.limits = limits
        self.ident = ident  # None: not counted (exception, or every limit off)
        self.addr = addr
        self.connected = False

    def _text(self, what: str, value: int, namaddr: str) -> str:
        return f"{what}: {value} from {namaddr} for service {self.limits.service}"

    def connect(self, namaddr: str) -> Limit | None:
        if self.ident is None:
            return None
        p = self.limits.params
        count, rate = self.limits.anvil.connect(self.ident)
        self.connected = True
        busy = Reply(421, "4.7.0", f"{p.myhostname} Error: too many connections from {self.addr}")
        limit = p.smtpd_client_connection_count_limit
        if limit > 0 and count > limit:
            return Limit(self._text("Connection concurrency limit exceeded", count, namaddr), busy)
        limit = p.smtpd_client_connection_rate_limit
        if limit > 0 and rate > limit:
            return Limit(self._text("Connection rate limit exceeded", rate, namaddr), busy)
        return None

    def mail(self, namaddr: str) -> Limit | None:
        limit = self.limits.params.smtpd_client_message_rate_limit
        if self.ident is None or limit <= 0:
            return None
        rate = self.limits.anvil.mail(self.ident)
        if rate <= limit:
            return None
        return Limit(
            self._text("Message delivery request rate limit exceeded", rate, namaddr),
            Reply(450, "4.7.1", f"Error: too much mail from {self.addr}"),
        )

    def rcpt(self, namaddr: str) -> Limit | None:
        limit = self.limits.params.smtpd_client_recipient_rate_limit
        if self.ident is None or limit <= 0:
            return None
        rate = self.limits.anvil.rcpt(self.ident)
        if rate <= limit:
            return None
        return Limit(
            self._text("Recipient address rate limit exceeded", rate, namaddr),
            Reply(450, "4.7.1", f"Error: too many recipients from {self.addr}"),
        )

    def auth(self, namaddr: str) -> Limit | None:
        """At AUTH (smtpd_client_auth_rate_limit), for the SASL code to call."""
        limit = self.limits.params.smtpd_client_auth_rate_limit
        if self.ident is None or limit <= 0:
            return None
        rate = self.limits.anvil.auth(self.ident)
        if rate <= limit:
            return None
        return Limit(
            self._text("AUTH command rate limit exceeded", rate, namaddr),
            Reply(450, "4.7.1", f"Error: too many AUTH commands from {self.addr}"),
        )

    def _tls_over(self) -> bool:
        limit = self.limits.params.smtpd_client_new_tls_session_rate_limit
        return (
            self.ident is not None
            and limit > 0
            and self.limits.anvil.newtls_stat(self.ident) > limit
        )

    def starttls(self, namaddr: str) -> Limit | None:
        """Before `220 Ready to start TLS`: refuse when the client made too many new TLS
        sessions lately (no handshake is spent on it)."""
        if not self._tls_over():
            return None
        return Limit(
            f"Refusing STARTTLS request from {namaddr} for service {self.limits.service}",
            Reply(454, "4.7.0", f"Error: too many new TLS sessions from {namaddr}"),
        )

    def wrappermode(self, namaddr: str) -> Limit | None:
        """Before an implicit-TLS handshake: Postfix hangs up without a word."""
        if not self._tls_over():
            return None
        return Limit(
            f"Refusing TLS service request from {namaddr} for service {self.limits.service}",
            None,
        )

    def handshake(self, namaddr: str, reused: bool) -> Limit | None:
        """After a handshake: count a new (not resumed) session, end the session past the
        limit."""
        limit = self.limits.params.smtpd_client_new_tls_session_rate_limit
        if self.ident is None or limit <= 0 or reused:
            return None
        rate = self.limits.anvil.newtls(self.ident)
        if rate <= limit:
            return None
        host = self.limits.params.myhostname
        return Limit(
            self._text("New TLS session rate limit exceeded", rate, namaddr),
            Reply(421, "4.7.0", f"{host} Error: too many new TLS sessions from {namaddr}"),
        )

    def close(self) -> None:
        if self.connected and self.ident is not None:
            self.connected = False
            self.limits.anvil.disconnect(self.ident)


class AllPortsBusy(asyncio.Protocol):
    """A connection past the service's session bound: `421 4.3.2 All server ports are
    busy` (postscreen's words for the same condition) and close, before any name lookup
    or TLS, so turning clients away costs next to nothing.  An implicit-TLS client could
    not read a plaintext reply; it is only closed."""

    def __init__(self, log: MailLog, *, wrappermode: bool) -> None:
        self.log = log
        self.wrappermode = wrappermode

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername") or ("", 0)
        addr = str(peer[0])
        addr = addr[7:] if addr.startswith("::ffff:") and "." in addr else addr
        port = peer[1] if len(peer) > 1 else 0
        self.log.info(
            "smtpd", f"NOQUEUE: reject: CONNECT from [{addr}]:{port}: all server ports busy"
        )
        if not self.wrappermode:
            with contextlib.suppress(Exception):
                transport.write(ALL_PORTS_BUSY.to_bytes())  # type: ignore[attr-defined]
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass
