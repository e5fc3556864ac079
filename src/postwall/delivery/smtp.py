"""The smtp delivery agent: queued mail to other servers, as Postfix's smtp(8) sends it.

Who calls it: qmgr, with one message, the indexes of its recipients that share one next
hop (at most smtp_destination_recipient_limit of them) and that `Destination`.  It
returns one `AgentResult` per recipient, in order, and never raises for anything a peer,
the DNS or the network does.

What one call does, in Postfix's order: look up the TLS policy for the next hop
(smtp_tls_policy_maps, else smtp_tls_security_level); take an idle cached connection to
that next hop if one is alive, else resolve the next hop (MX records, or the host itself
for `[host]`), and try at most smtp_mx_address_limit addresses and smtp_mx_session_limit
sessions, each through connect, greeting, EHLO and STARTTLS as the level demands; run
one transaction with every recipient; keep the connection for the next message to the
same next hop (smtp_connection_cache_time_limit) or QUIT.  A failure before the
transaction (refused connection, 4xx/5xx greeting, TLS required but not offered, failed
handshake, untrusted certificate) moves on to the next host; when none is left, every
recipient is deferred with the last host's reason.

TLS follows Postfix: `may` starts TLS when offered and falls back to a new plaintext
session with the same host when the handshake fails; `encrypt` needs STARTTLS and any
certificate; `verify` a trusted chain matching smtp_tls_verify_cert_match; `secure` the
same with smtp_tls_secure_cert_match.  Cleartext the server sends after its 220 to
STARTTLS is discarded by the protocol core (smtp/client.py), never read as a reply.
Each reply wait has Postfix's timeout (smtp_helo_timeout, smtp_mail_timeout, ...).

Better than Postfix, on purpose: TLS connections are reused like plaintext ones (one
process holds them; Postfix 3.7 needs tlsproxy and smtp_tls_connection_reuse for that),
and the client TLS session cache lives in memory, used when
smtp_tls_session_cache_database is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.asyncresolver
from OpenSSL import SSL

from postwall import dns as mxdns
from postwall import logfmt
from postwall.config.params import Params
from postwall.config.tables import Table, open_maps
from postwall.delivery import DeliveryResult
from postwall.delivery.agents import AgentResult
from postwall.log import MailLog
from postwall.queue.store import QueuedMessage
from postwall.resolve import Destination, sender_keys
from postwall.sasl import client as sasl_client
from postwall.smtp.client import (
    CLOSED,
    NEED_DATA,
    AuthChallenge,
    AuthDone,
    ClientConnection,
    ClientSettings,
    ConnectionFailed,
    Event,
    OutMessage,
    OutRecipient,
    Ready,
    RecipientResult,
    Refused,
    StartTLSReady,
    StartTLSRefused,
    TransactionDone,
)
from postwall.tls import certs as tls_certs
from postwall.tls import describe
from postwall.tls.client import ClientTLS
from postwall.tls.engine import TLSError, TLSSession

__all__ = ["SmtpAgent", "TLSPolicy"]

_LEVELS = ("none", "may", "encrypt", "verify", "secure")
# Postfix's hint when a session to the SMTPS port is not made with implicit TLS.
_SMTPS_HINT = (
    'SMTPS wrappermode (TCP port 465) requires setting "smtp_tls_wrappermode = yes", '
    'and "smtp_tls_security_level = encrypt" (or stronger)'
)
_READ_SIZE = 1 << 16


class _Timeout(Exception):
    pass


class _SessionFailed(Exception):
    """This host cannot take the mail: try the next one. `dsn` decides defer/bounce."""

    def __init__(
        self,
        dsn: str,
        reason: str,
        *,
        plaintext_retry: bool = False,
        final: bool = False,
        relay: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.dsn = dsn
        self.reason = reason
        self.plaintext_retry = plaintext_retry
        # Postfix names the server in relay= once a session was made (smtp_bulk_fail's
        # session->namaddrport); a failed connect logs relay=none.
        self.relay = relay
        # The server's own verdict (a 5xx to AUTH without soft bounce): when no other
        # server takes the mail it bounces, rather than being deferred like a refusal.
        self.final = final


@dataclass(frozen=True, slots=True)
class TLSPolicy:
    """The TLS requirements for one next hop: a level and, for verify/secure, match=."""

    level: str
    match: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, text: str, where: str) -> TLSPolicy:
        words = text.split()
        if not words or words[0].lower() not in _LEVELS:
            raise ValueError(f"{where}: unsupported TLS security level in {text!r}")
        match: tuple[str, ...] | None = None
        for word in words[1:]:
            name, eq, value = word.partition("=")
            if not eq:
                raise ValueError(f"{where}: malformed policy attribute {word!r}")
            if name.lower() != "match":
                raise ValueError(f"{where}: TLS policy attribute {name!r} is not supported")
            match = tuple(m for m in value.split(":") if m)
        return cls(words[0].lower(), match)


@dataclass
class _Conn:
    """One open session to one server address."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    core: ClientConnection
    host: str
    addr: str
    port: int
    key: tuple[str, str]  # the cache key: (next hop, policy) it was opened for
    tls: TLSSession | None = None
    session_key: tuple[str, int, str] | None = None  # client TLS session cache entry
    uses: int = 0
    opened: float = field(default_factory=time.monotonic)

    @property
    def namaddr(self) -> str:
        return f"{self.host}[{self.addr}]"

    @property
    def relay(self) -> str:
        return f"{self.host}[{self.addr}]:{self.port}"

    async def write(self, data: bytes, timeout: float) -> None:
        if not data:
            return
        if self.tls is not None:
            self.tls.send(data)
            data = self.tls.data_to_send()
        self.writer.write(data)
        # Usually the kernel took it all: no flow control to wait for, and a lost
        # connection shows at the next read. asyncio.timeout, unlike wait_for, makes
        # no task per call (a measurable cost at several calls per message).
        if self.writer.transport.get_write_buffer_size():
            try:
                async with asyncio.timeout(timeout):
                    await self.writer.drain()
            except TimeoutError:
                raise _Timeout from None

    async def read(self, timeout: float) -> bytes:
        """Plaintext from the server; b"" at EOF."""
        while True:
            try:
                async with asyncio.timeout(timeout):
                    raw = await self.reader.read(_READ_SIZE)
            except TimeoutError:
                raise _Timeout from None
            except OSError:
                raw = b""
            if self.tls is None:
                return raw
            if not raw:
                return b""
            plain = self.tls.receive(raw)
            pending = self.tls.data_to_send()
            if pending:  # key updates, alerts
                self.writer.write(pending)
            if plain:
                return plain

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class SmtpAgent:
    def __init__(
        self, params: Params, log: MailLog, *, resolver: dns.asyncresolver.Resolver | None = None
    ) -> None:
        self._params = params
        self._log = log
        self._settings = ClientSettings.from_params(
            params,
            dummy_mail_auth=params.smtp_sasl_auth_enable and params.smtp_send_dummy_mail_auth,
        )
        self._tls = ClientTLS.from_params(params)
        for warning in self._tls.warnings:
            log.warning("smtp", warning)
        if params.smtp_tls_wrappermode and self._tls.level in ("none", "may"):
            log.warning(
                "smtp",
                'smtp_tls_wrappermode requires "smtp_tls_security_level = encrypt" (or stronger)',
            )
        self._policy_maps: list[Table] = open_maps(
            params.smtp_tls_policy_maps, Path(params.config_directory)
        )
        self._resolver = resolver or mxdns.make_resolver(
            list(params.postwall_dns_servers) or None, timeout=params.smtp_connect_timeout
        )
        self._timeouts = {
            "greeting": params.smtp_helo_timeout,
            "ehlo": params.smtp_helo_timeout,
            "helo": params.smtp_helo_timeout,
            "starttls": params.smtp_starttls_timeout,
            "auth": params.smtp_helo_timeout,
            "mail": params.smtp_mail_timeout,
            "rcpt": params.smtp_rcpt_timeout,
            "data": params.smtp_data_init_timeout,
            "dot": params.smtp_data_done_timeout,
            "rset": params.smtp_rset_timeout,
            "abort": params.smtp_rset_timeout,
        }
        # Root-only, like Postfix's: after the privilege drop a reload reads it through
        # the root helper (tls_certs.read_file), which allows exactly these files.
        self._sasl_maps: list[Table] = (
            open_maps(
                params.smtp_sasl_password_maps,
                Path(params.config_directory),
                read=tls_certs.read_file,
            )
            if params.smtp_sasl_auth_enable
            else []
        )
        self._idle: dict[tuple[str, str], list[tuple[float, _Conn]]] = {}
        self._tls_sessions: dict[tuple[str, int, str], tuple[float, SSL.Session]] = {}
        self._closing = False

    async def __call__(
        self, msg: QueuedMessage, indexes: Sequence[int], dest: Destination
    ) -> list[AgentResult]:
        started = time.monotonic()
        try:
            policy = self._policy(dest.nexthop)
        except ValueError as exc:
            self._log.warning("smtp", str(exc))
            return _same(indexes, "deferred", "4.7.5", f"TLS policy error: {exc}")
        try:
            out = self._out_message(msg, indexes)
        except Exception as exc:  # the queue file's content cannot be read
            return _same(indexes, "deferred", "4.3.0", f"cannot read message: {exc}")
        key = (dest.nexthop.lower(), f"{policy.level}:{policy.match}")
        if self._sasl_maps and self._params.smtp_sender_dependent_authentication:
            # A session logged in for one sender is never reused for another (Postfix
            # turns connection caching off for this).
            key = (key[0], f"{key[1]} sender={out.sender.lower()}")
        conn = self._cached(key)
        if conn is not None:
            results = await self._transaction(conn, out, indexes, started, time.monotonic())
            if results is not None:
                return results
        try:
            conn = await self._open(dest.nexthop, policy, key, msg, out.sender)
        except _SessionFailed as failed:
            status = "bounced" if failed.dsn.startswith("5") else "deferred"
            return _same(indexes, status, failed.dsn, failed.reason, relay=failed.relay)
        results = await self._transaction(conn, out, indexes, started, time.monotonic())
        if results is None:  # a fresh connection failed before MAIL: defer, as Postfix
            reason = logfmt.lost_connection_with(conn.namaddr, "sending MAIL FROM")
            return _same(indexes, "deferred", "4.4.2", reason, conn)
        return results

    async def close(self) -> None:
        """QUIT every idle connection (at stop and reload)."""
        self._closing = True
        for entries in self._idle.values():
            for _, conn in entries:
                await self._quit(conn)
        self._idle.clear()

    # -- policy, message ---------------------------------------------------------

    def _policy(self, nexthop: str) -> TLSPolicy:
        policy = TLSPolicy(self._tls.level)
        if self._policy_maps:
            for key in _policy_keys(nexthop):
                found = next(
                    (v for t in self._policy_maps if (v := t.lookup(key)) is not None), None
                )
                if found is not None:
                    policy = TLSPolicy.parse(found, f"smtp_tls_policy_maps: {key}")
                    break
        if self._params.smtp_tls_wrappermode and policy.level in ("none", "may"):
            # TLS from the first byte cannot fall back to plaintext: at least encrypt.
            policy = TLSPolicy("encrypt", policy.match)
        return policy

    @staticmethod
    def _out_message(msg: QueuedMessage, indexes: Sequence[int]) -> OutMessage:
        env = msg.envelope
        recipients = []
        for i in indexes:
            r = env.recipients[i]
            orcpt = None
            if r.orcpt:
                kind, _, addr = r.orcpt.partition(";")
                orcpt = (kind, addr)
            recipients.append(OutRecipient(r.address, tuple(sorted(r.notify)), orcpt))
        return OutMessage(
            sender=env.sender,
            recipients=tuple(recipients),
            content=msg.read_content(),
            body=env.body_type or None,
            smtputf8=env.smtputf8,
            ret=env.ret,
            envid=env.envid,
        )

    # -- sessions ------------------------------------------------------------------

    def _cached(self, key: tuple[str, str]) -> _Conn | None:
        entries = self._idle.get(key)
        now = time.monotonic()
        while entries:
            idle_since, conn = entries.pop()
            if (
                now - idle_since <= self._params.smtp_connection_cache_time_limit
                and not conn.reader.at_eof()
                and not conn.writer.is_closing()
                and conn.core.ready
            ):
                return conn
            conn.close()
        return None

    def _keep(self, conn: _Conn) -> bool:
        p = self._params
        if self._closing or not p.smtp_connection_cache_on_demand or not conn.core.ready:
            return False
        if time.monotonic() - conn.opened > p.smtp_connection_reuse_time_limit:
            return False
        limit = p.smtp_connection_reuse_count_limit
        if limit and conn.uses >= limit:
            return False
        self._idle.setdefault(conn.key, []).append((time.monotonic(), conn))
        asyncio.get_running_loop().call_later(
            p.smtp_connection_cache_time_limit + 0.5, self._expire_idle, conn.key
        )
        return True

    def _expire_idle(self, key: tuple[str, str]) -> None:
        entries = self._idle.get(key)
        if not entries:
            return
        now = time.monotonic()
        keep = []
        for idle_since, conn in entries:
            if now - idle_since > self._params.smtp_connection_cache_time_limit:
                asyncio.get_running_loop().create_task(self._quit(conn))
            else:
                keep.append((idle_since, conn))
        if keep:
            self._idle[key] = keep
        else:
            del self._idle[key]

    async def _quit(self, conn: _Conn) -> None:
        with contextlib.suppress(Exception):
            if not conn.core.closed:
                conn.core.quit()
            await conn.write(conn.core.data_to_send(), 5.0)
            if conn.tls is not None:
                conn.tls.shutdown()
                conn.writer.write(conn.tls.data_to_send())
        conn.close()

    async def _open(
        self,
        nexthop: str,
        policy: TLSPolicy,
        key: tuple[str, str],
        msg: QueuedMessage,
        sender: str = "",
    ) -> _Conn:
        """A ready session with the first host that takes one; _SessionFailed if none.

        As Postfix's smtp_connect: a soft failure at a server that is not the last one
        to try is logged as `QID: reason` and the next one is tried; after a failed TLS
        handshake at level may the same server is tried again without STARTTLS, but only
        for mail that has already waited minimal_backoff_time and only without SASL
        credentials for it (Postfix's PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE), so
        an attacker who breaks the handshake does not get fresh mail in plaintext."""
        p = self._params
        hosts = await self._hosts(nexthop)
        candidates = [(host, addr) for host in hosts for addr in host.addresses]
        if p.smtp_mx_address_limit:
            candidates = candidates[: p.smtp_mx_address_limit]
        waited = int(msg.active_time) - int(msg.envelope.arrival_time)
        qid = msg.queue_id
        last: _SessionFailed | None = None
        sessions = 0
        for n, (host, addr) in enumerate(candidates):
            try:
                conn = await self._connect(host.hostname, addr, host.port, key)
            except _SessionFailed as failed:  # logged as "connect to ..." already
                last = failed
                continue
            sessions += 1
            final = n == len(candidates) - 1 or sessions == p.smtp_mx_session_limit
            try:
                return await self._ready(conn, nexthop, policy, sender, use_tls=True)
            except _SessionFailed as failed:
                last = failed
            if (
                last.plaintext_retry
                and waited >= p.minimal_backoff_time
                and self._credentials(host.hostname, nexthop, sender) is None
            ):
                self._log.info("smtp", f"{qid}: {last.reason}")
                try:  # Postfix's RETRY_AS_PLAINTEXT: same server, no STARTTLS
                    conn = await self._connect(host.hostname, addr, host.port, key)
                    return await self._ready(conn, nexthop, policy, sender, use_tls=False)
                except _SessionFailed as failed:
                    last = failed
            if final:
                break
            if last.dsn.startswith("4") or p.soft_bounce:
                self._log.info("smtp", f"{qid}: {last.reason}")
        if last is None:
            raise _SessionFailed("4.4.3", f"no usable address for {nexthop}")
        raise _SessionFailed(
            last.dsn if last.final else _soft(last.dsn), last.reason, relay=last.relay
        )

    async def _ready(
        self, conn: _Conn, nexthop: str, policy: TLSPolicy, sender: str, *, use_tls: bool
    ) -> _Conn:
        """Greeting, EHLO, STARTTLS, AUTH on a fresh connection: the session, or
        _SessionFailed naming the server (the connection closed)."""
        try:
            await self._hello(conn, nexthop, policy, use_tls=use_tls)
            await self._login(conn, nexthop, sender)
        except _SessionFailed as failed:
            failed.relay = failed.relay or conn.relay
            await self._quit(conn)
            raise
        return conn

    async def _hosts(self, nexthop: str) -> list[mxdns.MxHost]:
        """smtp_host_lookup: `dns` (MX records, then A/AAAA) and/or `native` (the
        system's resolver, /etc/hosts included: no MX records, as in Postfix)."""
        methods = self._params.smtp_host_lookup or ("dns",)
        failure: mxdns.NexthopError | None = None
        if "dns" in methods:
            try:
                return await mxdns.resolve_nexthop(nexthop, resolver=self._resolver)
            except mxdns.NexthopError as err:
                failure = err
        if "native" in methods:
            try:
                host, port, _ = mxdns.parse_nexthop(nexthop)
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
                addrs = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
                if addrs:
                    return [mxdns.MxHost(host, 0, addrs, port)]
            except (OSError, ValueError) as exc:
                if failure is None:
                    unknown = getattr(exc, "errno", None) in (socket.EAI_NONAME, socket.EAI_NODATA)
                    failure = mxdns.NexthopError(
                        not unknown,
                        "5.4.4" if unknown else "4.4.3",
                        f"Host or domain name not found. Name service error for name={nexthop}"
                        f" type=A: {'Host not found' if unknown else 'Host not found, try again'}",
                    )
        assert failure is not None
        dsn = failure.dsn if not failure.temporary else _soft(failure.dsn)
        raise _SessionFailed(dsn, failure.reason)

    async def _connect(self, host: str, addr: str, port: int, key: tuple[str, str]) -> _Conn:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(addr, port, limit=_READ_SIZE),
                self._params.smtp_connect_timeout,
            )
        except TimeoutError:
            reason = logfmt.connect_failed(host, addr, port, "Connection timed out")
            self._log.info("smtp", reason)
            raise _SessionFailed("4.4.1", reason) from None
        except OSError as exc:
            text = _strerror(exc)
            reason = logfmt.connect_failed(host, addr, port, text)
            self._log.info("smtp", reason)
            raise _SessionFailed("4.4.1", reason) from None
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer, ClientConnection(self._settings), host, addr, port, key)

    async def _next(self, conn: _Conn) -> Event | object:
        """Run the protocol core until it has an event (or CLOSED)."""
        core = conn.core
        while True:
            ev = core.next_event()
            tag = core.expecting
            await conn.write(core.data_to_send(), self._params.smtp_data_xfer_timeout)
            if ev is not NEED_DATA:
                return ev
            timeout = self._timeouts.get(tag or "", self._params.smtp_helo_timeout)
            core.receive_data(await conn.read(timeout))

    async def _hello(self, conn: _Conn, nexthop: str, policy: TLSPolicy, use_tls: bool) -> None:
        """Greeting, EHLO and the STARTTLS the policy asks for, up to a ready session."""
        level = policy.level
        stage = "receiving the initial server greeting"

        def broken(dsn: str, reason: str) -> _SessionFailed:
            # Postfix's PLAINTEXT_FALLBACK_OK_AFTER_TLS_SESSION_FAILURE: a session that
            # breaks after a good handshake at may may be retried without TLS.
            return _SessionFailed(
                dsn, reason, plaintext_retry=conn.tls is not None and level == "may"
            )

        if self._params.smtp_tls_wrappermode and conn.tls is None:
            # Implicit TLS (SMTPS, port 465): the handshake comes before the greeting.
            early = await self._handshake(conn, nexthop, policy, fallback=False)
            conn.core.tls_from_start()
            if early:
                conn.core.receive_data(early)
        elif conn.port == 465:
            self._log.info("smtp", _SMTPS_HINT)
        try:
            while True:
                stage = conn.core.stage
                ev = await self._next(conn)
                if isinstance(ev, Refused):
                    dsn = ev.reply.dsn
                    if dsn.startswith("5") and self._params.smtp_skip_5xx_greeting:
                        dsn = _soft(dsn)
                    raise _SessionFailed(dsn, ev.reason(conn.namaddr))
                if isinstance(ev, ConnectionFailed):
                    if ev.kind == "lost":
                        raise broken(ev.dsn, ev.reason(conn.namaddr))
                    raise _SessionFailed(ev.dsn, ev.reason(conn.namaddr))
                if ev is CLOSED:
                    raise broken("4.4.2", logfmt.lost_connection_with(conn.namaddr, stage))
                if isinstance(ev, StartTLSRefused):
                    if level in ("encrypt", "verify", "secure"):
                        raise _SessionFailed(
                            ev.reply.dsn,
                            f"TLS is required, but host {conn.namaddr} refused to start TLS: "
                            f"{ev.reply}",
                        )
                    continue  # may: go on in plaintext
                if isinstance(ev, StartTLSReady):
                    await self._handshake(conn, nexthop, policy, fallback=use_tls)
                    conn.core.tls_established()
                    continue
                assert isinstance(ev, Ready)
                ext = ev.extensions
                # Postfix notes the offer only when it will not use it (level none).
                note = self._params.smtp_tls_note_starttls_offer
                if note and ext.starttls and not ev.tls and (level == "none" or not use_tls):
                    self._log.info("smtp", logfmt.host_offered_starttls(conn.host))
                if ev.tls or level == "none":
                    return
                if ext.starttls and use_tls:
                    conn.core.starttls()
                    continue
                if level in ("encrypt", "verify", "secure"):
                    raise _SessionFailed(
                        "4.7.4", f"TLS is required, but was not offered by host {conn.namaddr}"
                    )
                return
        except _Timeout:
            raise broken("4.4.2", logfmt.conversation_timed_out(conn.namaddr, stage)) from None
        except (TLSError, OSError):
            raise broken("4.4.2", logfmt.lost_connection_with(conn.namaddr, stage)) from None

    async def _login(self, conn: _Conn, nexthop: str, sender: str = "") -> None:
        """smtp_sasl_auth_enable: AUTH with what smtp_sasl_password_maps has for this
        server (its host name, then the next hop as written: "[host]:port"), when it
        offers AUTH; a server that refuses is given up like one that refuses to talk."""
        if not self._sasl_maps:
            return
        p = self._params
        offered = conn.core.extensions.auth
        if not offered:
            return
        if p.smtp_sasl_mechanism_filter and not sasl_client.choose(
            offered, p.smtp_sasl_mechanism_filter, ()
        ):
            self._log.warning(
                "smtp", f"{conn.relay} offered no supported AUTH mechanisms: '{' '.join(offered)}'"
            )
            return
        found = self._credentials(conn.host, nexthop, sender)
        if found is None:
            return
        user, password = found
        if conn.tls is None:
            options = p.smtp_sasl_security_options
        elif conn.tls.info.trust == "Verified":
            options = p.smtp_sasl_tls_verified_security_options
        else:
            options = p.smtp_sasl_tls_security_options
        name = sasl_client.choose(offered, p.smtp_sasl_mechanism_filter, options)
        if name is None:
            # Cyrus's words when its security properties leave nothing (SASL_NOMECH).
            self._log.warning("smtp", "SASL authentication failure: No worthy mechs found")
            raise _SessionFailed(
                "4.7.0",
                f"SASL authentication failed; cannot authenticate to server "
                f"{conn.namaddr}: no mechanism available",
                relay=conn.relay,
            )
        mech = sasl_client.mechanism(name, user, password)
        try:
            await self._sasl_exchange(conn, mech)
        except _Timeout:
            raise _SessionFailed(
                "4.4.2", logfmt.conversation_timed_out(conn.namaddr, conn.core.stage)
            ) from None
        except (TLSError, OSError):
            raise _SessionFailed(
                "4.4.2", logfmt.lost_connection_with(conn.namaddr, conn.core.stage)
            ) from None

    async def _sasl_exchange(self, conn: _Conn, mech: sasl_client.ClientMechanism) -> None:
        core = conn.core
        core.authenticate(mech.name, mech.initial())
        for _ in range(100):  # Postfix's bound on challenges
            ev = await self._next(conn)
            if isinstance(ev, AuthDone):
                if ev.ok and (mech.done or not isinstance(mech, sasl_client.Scram)):
                    return
                if ev.ok:  # 235 without the server's proof: not the server we meant
                    raise _SessionFailed(
                        "4.7.0",
                        f"SASL authentication failed; cannot authenticate to server "
                        f"{conn.namaddr}: {sasl_client.BAD_SERVER}",
                        relay=conn.relay,
                    )
                soft = self._params.smtp_sasl_auth_soft_bounce
                dsn = _soft(ev.reply.dsn) if soft else ev.reply.dsn
                raise _SessionFailed(
                    dsn,
                    f"SASL authentication failed; server {conn.namaddr} said: {ev.reply}",
                    final=dsn.startswith("5"),
                    relay=conn.relay,
                )
            if isinstance(ev, ConnectionFailed):
                raise _SessionFailed(ev.dsn, ev.reason(conn.namaddr))
            if not isinstance(ev, AuthChallenge):
                raise _SessionFailed(
                    "4.4.2", logfmt.lost_connection_with(conn.namaddr, conn.core.stage)
                )
            try:
                if ev.data is None:
                    raise sasl_client.SaslClientError(f"malformed challenge: {ev.reply}")
                answer = mech.step(ev.data)
            except sasl_client.SaslClientError as exc:
                # As Postfix: the plug-in's complaint as a warning, then QUIT (no "*").
                self._log.warning("smtp", f"SASL authentication failure: {exc.detail}")
                raise _SessionFailed(
                    "4.7.0",
                    f"SASL authentication failed; cannot authenticate to server "
                    f"{conn.namaddr}: {exc.reason}",
                    relay=conn.relay,
                ) from None
            core.auth_respond(answer)
        raise _SessionFailed(
            "4.3.0",
            f"SASL authentication failed; authentication protocol loop with server {conn.namaddr}",
        )

    def _credentials(self, host: str, nexthop: str, sender: str = "") -> tuple[str, str] | None:
        """The user and password for the sender (smtp_sender_dependent_authentication:
        the address, without its extension, @domain; never for the null sender), else
        for the server's name, else for the next hop; keys folded to lower case."""
        keys: list[str] = []
        if "@" in sender and self._params.smtp_sender_dependent_authentication:
            keys += sender_keys(sender, self._params.recipient_delimiter)
        keys += [host.lower(), nexthop.lower()]
        for key in dict.fromkeys(keys):
            for table in self._sasl_maps:
                value = table.lookup(key)
                if value is not None:
                    user, _, password = value.partition(":")
                    return user, password
        return None

    async def _handshake(
        self, conn: _Conn, nexthop: str, policy: TLSPolicy, *, fallback: bool
    ) -> bytes:
        """TLS on conn; returns application data that came with the end of the
        handshake (an implicit-TLS server's greeting, with TLS 1.2)."""
        p = self._params
        peer = conn.relay
        lines: list[str] = []
        cache_key = (conn.addr, conn.port, nexthop.lower())
        resume = self._resumable(cache_key)
        tls = self._tls.new_session(
            peer,
            nexthop=_bare(nexthop),
            mx_hostname=conn.host,
            level=policy.level,
            log=lines.append,
            session=resume,
            match=policy.match,
        )
        if p.smtp_tls_loglevel >= 2:
            self._log.info("smtp", describe.setting_up(peer, server_side=False))
            cipher_list = self._tls.cipher_lists.get(policy.level or self._tls.level, "")
            self._log.info("smtp", describe.cipher_list_line(peer, cipher_list))
        deadline = time.monotonic() + p.smtp_starttls_timeout
        early = b""
        try:
            while not tls.handshake_done:
                out = tls.data_to_send()
                if out:
                    conn.writer.write(out)
                    await conn.writer.drain()
                if tls.handshake_done:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Timeout
                try:
                    raw = await asyncio.wait_for(conn.reader.read(_READ_SIZE), remaining)
                except TimeoutError:
                    raise _Timeout from None
                if not raw:
                    raise TLSError("lost connection during the TLS handshake")
                early += tls.receive(raw)
            out = tls.data_to_send()
            if out:
                conn.writer.write(out)
        except (TLSError, OSError, _Timeout) as exc:
            for line in lines:
                self._log.info("smtp", line)
            # tls_client_start's lines: the reason, then OpenSSL's error queue.
            if isinstance(exc, TLSError):
                self._log.info("smtp", exc.reason)
                for line in exc.details:
                    self._log.warning("smtp", line)
            else:
                why = "Connection timed out" if isinstance(exc, _Timeout) else _strerror(exc)
                self._log.info("smtp", f"SSL_connect error to {peer}: {why}")
            may = policy.level == "may"
            raise _SessionFailed(
                "4.7.5", "Cannot start TLS: handshake failure", plaintext_retry=may and fallback
            ) from None
        for line in lines:
            self._log.info("smtp", line)
        info = tls.info
        for line in describe.after_handshake(info, p.smtp_tls_loglevel):
            self._log.info("smtp", line)
        conn.tls = tls
        # Postfix 3.7 lets OpenSSL check the name too, so an untrusted chain and a wrong
        # name both end here, with its one wording.
        if policy.level in ("verify", "secure") and info.trust != "Verified":
            raise _SessionFailed("4.7.5", "Server certificate not verified")
        if p.smtp_tls_session_cache_database:
            conn.session_key = cache_key
            self._remember(conn)
        return early

    def _remember(self, conn: _Conn) -> None:
        """Keep the session for resumption; called again after a transaction, when a
        TLS 1.3 server's ticket (sent after the handshake) has been read."""
        if conn.tls is None or conn.session_key is None:
            return
        session = conn.tls.get_session()
        if session is not None:
            self._tls_sessions[conn.session_key] = (time.monotonic(), session)

    def _resumable(self, key: tuple[str, int, str]) -> SSL.Session | None:
        entry = self._tls_sessions.get(key)
        if entry is None:
            return None
        stamp, session = entry
        if time.monotonic() - stamp > self._params.smtp_tls_session_cache_timeout:
            del self._tls_sessions[key]
            return None
        return session

    # -- the transaction -------------------------------------------------------------

    async def _transaction(
        self,
        conn: _Conn,
        out: OutMessage,
        indexes: Sequence[int],
        started: float,
        ready: float,
    ) -> list[AgentResult] | None:
        """Results per recipient; None when a reused connection died before MAIL FROM
        was answered (the caller opens a fresh one: nothing was delivered)."""
        conn.uses += 1
        reused = conn.uses > 1
        conn_time = ready - started
        try:
            conn.core.send_mail(out)
        except ValueError as exc:  # CR/LF or controls in the envelope: never on the wire
            if not self._keep(conn):
                await self._quit(conn)
            reason = f"unsafe envelope for {conn.namaddr}: {exc}"
            return _same(indexes, "bounced", "5.5.2", reason, conn, conn_time)
        stage = conn.core.stage
        try:
            while True:
                stage = conn.core.stage
                ev = await self._next(conn)
                if isinstance(ev, TransactionDone | ConnectionFailed):
                    break
                if ev is CLOSED:
                    ev = ConnectionFailed("lost", stage, "")
                    break
        except _Timeout:
            conn.close()
            reason = logfmt.conversation_timed_out(conn.namaddr, stage)
            xfer = time.monotonic() - ready
            return _same(indexes, "deferred", "4.4.2", reason, conn, conn_time, xfer)
        except (TLSError, OSError) as exc:
            conn.close()
            ev = ConnectionFailed("lost", stage, str(exc))
        xfer = time.monotonic() - ready
        if isinstance(ev, ConnectionFailed):
            conn.close()
            if reused and not ev.results and stage == "sending MAIL FROM":
                return None
            decided = {id(r.recipient): r for r in ev.results}
            [undecided] = _same(
                [0], "deferred", ev.dsn, ev.reason(conn.namaddr), conn, conn_time, xfer, conn.uses
            )
            return [
                self._result(r, conn, conn_time, xfer)
                if (r := decided.get(id(rcpt)))
                else undecided
                for rcpt in out.recipients
            ]
        assert isinstance(ev, TransactionDone)
        self._remember(conn)
        if not (ev.reusable and self._keep(conn)):
            await self._quit(conn)
        return [self._result(r, conn, conn_time, xfer) for r in ev.results]

    @staticmethod
    def _result(r: RecipientResult, conn: _Conn, conn_time: float, xfer: float) -> AgentResult:
        return AgentResult(
            DeliveryResult(r.status, r.dsn, r.reason(conn.namaddr)),
            relay=conn.relay,
            conn_time=conn_time,
            xfer_time=xfer,
            conn_use=conn.uses,
            remote_mta=conn.host,
            smtp_reply=str(r.reply) if r.reply is not None else "",
            service="smtp",
            dsn_relayed=r.status == "sent" and conn.core.extensions.dsn,
        )


def _same(
    indexes: Sequence[int],
    status: str,
    dsn: str,
    text: str,
    conn: _Conn | None = None,
    conn_time: float = 0.0,
    xfer: float = 0.0,
    conn_use: int = 1,
    relay: str | None = None,
) -> list[AgentResult]:
    """One outcome for every recipient (a failure before or outside the server's replies);
    relay=none when no session was made."""
    result = DeliveryResult(status, dsn, text)  # type: ignore[arg-type]
    one = AgentResult(
        result,
        relay=conn.relay if conn else relay or "none",
        conn_time=conn_time,
        xfer_time=xfer,
        conn_use=conn_use,
        service="smtp",
    )
    return [one] * len(indexes)


def _strerror(exc: OSError) -> str:
    """An OSError as Postfix's %m prints it."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _soft(dsn: str) -> str:
    return "4" + dsn[1:] if dsn.startswith("5") else dsn


def _bare(nexthop: str) -> str:
    """The domain or host of a next hop, without brackets and port (for name matching)."""
    try:
        host, _, _ = mxdns.parse_nexthop(nexthop)
    except ValueError:
        return nexthop
    return host


def _policy_keys(nexthop: str) -> list[str]:
    """smtp_tls_policy_maps keys: the next hop as written, then `.parent` domains."""
    text = nexthop.strip().lower()
    keys = [text]
    if not text.startswith("["):
        domain = text.rsplit(":", 1)[0] if text.rsplit(":", 1)[-1].isdigit() else text
        if domain != text:
            keys.append(domain)
        parts = domain.split(".")
        keys += ["." + ".".join(parts[i:]) for i in range(1, len(parts))]
    return keys
