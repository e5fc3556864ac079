"""smtpd: one SMTP session on one connection, as asyncio glue around the protocol core.

Who calls it: asyncio, through master's listeners (one `SmtpdService` per master.cf
smtpd service).  What it does: moves bytes between the socket, the TLS engine and
the sans-I/O `ServerConnection`; answers each command event with the service's
policy (restrictions, relay control); hands accepted messages to cleanup; keeps
the idle timer; writes Postfix's log lines.

What it guarantees: replies leave in command order; at STARTTLS the core drops
every plaintext byte that followed the command, and from then on only decrypted
bytes reach it; a message is answered 250 only after cleanup reports it durable;
any failure inside a session (a TLS error, a bug) ends that session with a log
line, never the server, and never sends a traceback to the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postwall import logfmt
from postwall.cleanup import Cleanup, ContentRejected, Submission
from postwall.config.network import Networks
from postwall.config.params import Params
from postwall.log import MailLog
from postwall.queue import wakeup
from postwall.queue.records import Recipient
from postwall.resolve import AddressResolver, internal_form, parent_domain_match
from postwall.sasl.dovecot import DovecotError
from postwall.sasl.server import Conversation, Done, More, Outcome, Refused, SaslServer
from postwall.smtp import events as ev
from postwall.smtp import replies
from postwall.smtp.replies import Reply
from postwall.smtp.server import CLOSED, NEED_DATA, ServerConnection, ServerSettings
from postwall.smtpd.dnsbl import ClientNames, PeerName
from postwall.smtpd.limits import ClientLimits, Limit, SessionLimits
from postwall.smtpd.restrictions import ClientState, Decision, Restrictions, run_now
from postwall.tls import describe
from postwall.tls.engine import TLSError, TLSInfo, TLSSession
from postwall.tls.policy import ServerTLS

# While a message is being committed the core keeps later input; past this much
# a pipelining client simply waits (TCP flow control), so memory stays bounded.
_MAX_BUFFERED = 256 * 1024


def core_settings(params: Params, tls: ServerTLS | None) -> ServerSettings:
    """The protocol core's view of one service's parameters."""
    return ServerSettings.from_params(
        params,
        starttls_offered=tls is not None and tls.offered and not tls.wrappermode,
        tls_required=tls is not None and tls.required and not tls.wrappermode,
    )


@dataclass(slots=True)
class SmtpdService:
    """What every session of one master.cf smtpd service shares; replaced on reload."""

    name: str
    params: Params
    log: MailLog
    cleanup: Cleanup
    restrictions: Restrictions
    resolver: AddressResolver
    networks: Networks
    tls: ServerTLS | None
    settings: ServerSettings
    sessions: set[SmtpSession]  # shared with the service's next incarnation on reload
    limits: ClientLimits
    names: ClientNames
    sasl: SaslServer | None = None
    max_sessions: int = 0  # master.cf maxproc; 0: no bound


class SmtpSession(asyncio.Protocol):
    def __init__(self, service: SmtpdService) -> None:
        self.svc = service
        self.log = service.log
        self.params = service.params
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn = ServerConnection(service.settings)
        self.client = ClientState(name="unknown", addr="")
        self.client_port = 0
        self.local_addr = ""
        self.peer = "unknown"
        self.sasl_method: str | None = None  # the mechanism that authenticated the client
        self.sasl_mechanism = ""  # the one being tried
        self.sasl_conv: Conversation | None = None
        self.sasl_sender: str | None = None
        self.sasl_last_user: str | None = None  # see Refused.from_backend
        self.tls: TLSSession | None = None
        self.tls_info: TLSInfo | None = None
        self.queue_id: str | None = None
        self.busy = False  # waiting for cleanup or an error sleep; the core holds input
        self.started = False  # greeting sent
        self.closed = False
        self.ended = False  # the disconnect line was logged
        self.early: list[bytes] = []  # bytes that arrived before the greeting
        self.early_bytes = 0  # a running total: summing the list per packet is quadratic
        self.early_eof = False
        self.last_activity = time.monotonic()
        # smtpd_per_request_deadline: the whole request (command line, message, TLS
        # handshake) must arrive by this time; otherwise each read restarts the clock.
        self.deadline = self.last_activity + self.params.smtpd_timeout
        self.in_data = False  # DATA/BDAT content: bytes extend the deadline
        self.write_paused = False  # the client does not read our replies
        self.timer: asyncio.TimerHandle | None = None
        self.connect_decision: Decision | None = None
        self.last_recipient: str | None = None  # for smtpd_data_restrictions' replies
        self.prepend: list[str] = []  # headers from PREPEND actions, for this transaction
        self.limits: SessionLimits | None = None

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.svc.sessions.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Replies must never wait on Nagle's algorithm (the ~40 ms stall Postfix
            # shows after a TLS session ticket).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockname = transport.get_extra_info("sockname")
        if isinstance(sockname, tuple) and sockname:
            self.local_addr = _plain_addr(str(sockname[0]))
        peername = transport.get_extra_info("peername") or ("", 0)
        self.client.addr = _plain_addr(str(peername[0]))
        self.client_port = int(peername[1]) if len(peername) > 1 else 0
        self.peer = f"unknown[{self.client.addr}]"
        self._arm_timer()
        self.loop.create_task(self._start())

    async def _start(self) -> None:
        try:
            if self.params.smtpd_peername_lookup:
                peer = await self.svc.names.lookup(self.loop, self.client.addr)
                for warning in peer.warnings:
                    self.log.warning("smtpd", warning)
                self.client.name, self.client.peer = peer.name, peer
            else:
                self.client.peer = PeerName()  # Postfix: both names unknown, permanently
            self.client.extra["client_port"] = str(self.client_port)
            self.peer = f"{self.client.name}[{self.client.addr}]"
            self.log.info("smtpd", logfmt.connect(self.client.name, self.client.addr))
            if self.svc.sasl is not None:
                await self._sasl_activate()
            self.connect_decision = await self.svc.restrictions.connect(self.client)
            if self.closed:
                return
            self.limits = self.svc.limits.session(self.client.name, self.client.addr)
            if self.svc.tls is not None and self.svc.tls.wrappermode:
                if self._limited(self.limits.wrappermode(self.peer)):
                    return
                self._start_tls()
            else:
                self._greet()
        except Exception as exc:  # a bug ends this session only
            self._crash(exc)

    def _greet(self) -> None:
        self.started = True
        hit = self.limits.connect(self.peer) if self.limits is not None else None
        decision = self.connect_decision or Decision()
        if hit is not None:
            # Postfix: the warning, then the 421 in place of the banner.
            self.log.warning("smtpd", hit.warning)
            reply = hit.reply
        else:
            self._log_notices("CONNECT", decision)
            reply = decision.reply
            if reply is not None:
                self._log_reject("CONNECT", reply)
        # A limit's 421 ends the session; a client restriction's refusal keeps it (503s).
        denied = None if hit is not None else f"{self.client.name}[{self.client.addr}]"
        self.conn.greeting(reply, denied=denied)
        # Fed before the banner is taken, so the core reports what the client sent
        # before it as "improper command pipelining after CONNECT", as Postfix does.
        early, self.early = self.early, []
        for chunk in early:
            self.conn.receive_data(chunk)
        self._flush()
        if self.early_eof:
            self.conn.receive_data(b"")
        else:
            self._resume_reading()
        self._pump()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        if self.in_data:
            # smtpd_min_data_rate: message content earns time as it arrives.
            self.deadline += len(data) / self.params.smtpd_min_data_rate
        try:
            if self.tls is not None:
                self._tls_received(data)
            else:
                self._feed(data)
        except Exception as exc:
            self._crash(exc)

    def eof_received(self) -> bool | None:
        try:
            if self.tls is not None and not self.tls.handshake_done:
                self._tls_lost()
            else:
                self._feed(b"")
        except Exception as exc:
            self._crash(exc)
        # Keep our half open: replies to what the client pipelined before its EOF (even
        # before the greeting) still go out; the session closes once the core is done.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.started:
            self._log_end("lost connection")
        self.closed = True
        self._teardown()

    def abort(self) -> None:
        """Shutdown: end the session now; what it was sending is not queued."""
        if not self.closed:
            self.conn.close(
                replies.Reply(421, "4.3.2", f"{self.params.myhostname} Service shutting down")
            )
            self._flush()
            self._close()

    # -- input ---------------------------------------------------------------

    def _feed(self, plaintext: bytes) -> None:
        if not self.started:
            # Before the greeting (peer name lookup): keep what the client pipelined,
            # and its EOF, for after the banner; past a bound, let TCP hold the rest.
            if plaintext:
                self.early.append(plaintext)
                self.early_bytes += len(plaintext)
                if self.early_bytes > _MAX_BUFFERED and self.transport is not None:
                    self.transport.pause_reading()
            else:
                self.early_eof = True
            return
        self.conn.receive_data(plaintext)
        if not self.busy:
            self._pump()
        elif self.conn.buffered > _MAX_BUFFERED and self.transport is not None:
            self.transport.pause_reading()

    def _tls_received(self, data: bytes) -> None:
        assert self.tls is not None
        was_done = self.tls.handshake_done
        try:
            plaintext = self.tls.receive(data)
        except TLSError as exc:
            self._write_raw(self.tls.data_to_send())
            self._tls_failed(exc.reason, exc.details)
            return
        self._write_raw(self.tls.data_to_send())
        if not was_done and self.tls.handshake_done:
            self._tls_ready()
        if plaintext:
            self._feed(plaintext)

    # -- the event loop of the protocol core -----------------------------------

    def _pump(self) -> None:
        while not self.busy and not self.closed:
            event = self.conn.next_event()
            if event is NEED_DATA:
                break
            if event is CLOSED:
                self._flush()
                self._log_end(self.conn.close_reason or "")
                self._close()
                return
            if getattr(event, "needs_answer", False):
                # A complete request: the next one gets a fresh deadline.
                self.deadline = time.monotonic() + self.params.smtpd_timeout
                self.in_data = isinstance(event, ev.DataStart)
            handler = _HANDLERS.get(type(event))
            if handler is not None:
                handler(self, event)
            elif getattr(event, "needs_answer", False):
                self.conn.accept()
        if self.conn.over_soft_error_limit and not self.busy and not self.closed:
            # Postfix's tarpit: past smtpd_soft_error_limit every reply waits.
            self.busy = True
            self.loop.call_later(self.params.smtpd_error_sleep_time, self._resume)
            return
        self._flush()

    def _resume(self) -> None:
        self.busy = False
        if self.closed:
            return
        # Time spent on our side (queue commit, tarpit) is not the client's.
        self.deadline = time.monotonic() + self.params.smtpd_timeout
        self._flush()
        self._resume_reading()
        try:
            self._pump()
        except Exception as exc:
            self._crash(exc)

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.write_paused and not self.closed:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        # The client does not read what we send: stop reading what it sends, so replies
        # cannot pile up in memory; the request deadline then ends the session.
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.busy:
            self._resume_reading()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if not out or self.transport is None or self.transport.is_closing():
            return
        if self.tls is not None and self.tls.handshake_done:
            self.tls.send(out)
            out = self.tls.data_to_send()
        self.transport.write(out)

    def _write_raw(self, data: bytes) -> None:
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- command handlers ----------------------------------------------------

    def _decide(
        self,
        check: Coroutine[Any, Any, Decision],
        then: Callable[[Decision], None],
    ) -> None:
        """Run a restriction stage; with DNS restrictions configured it may wait, so the
        core holds further input until the answer is sent (as during a commit)."""
        if not self.svc.restrictions.uses_dns:
            then(run_now(check))
            return
        if self.svc.restrictions.uses_policy:
            self._policy_attributes()
        self.busy = True
        self.loop.create_task(self._decide_later(check, then))

    async def _decide_later(
        self, check: Coroutine[Any, Any, Decision], then: Callable[[Decision], None]
    ) -> None:
        try:
            decision = await check
            if self.closed:
                return
            then(decision)
            self._resume()
        except Exception as exc:
            self._crash(exc)

    def _policy_attributes(self) -> None:
        """What a policy server is told that only the session knows (policy.py)."""
        x = self.client.extra
        transport = self.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        x["server_address"] = self.local_addr
        x["server_port"] = str(sockname[1]) if isinstance(sockname, tuple) else ""
        x["protocol_name"] = self._log_protocol()
        x["queue_id"] = self.queue_id or ""
        x["sasl_method"] = self.sasl_method or ""
        x["sasl_sender"] = self.sasl_sender or ""
        info = self.tls_info
        if info is not None:
            x["encryption_protocol"] = info.protocol
            x["encryption_cipher"] = info.cipher_name
            x["encryption_keysize"] = str(info.cipher_usebits)
            x["ccert_issuer_cn"] = info.peer_cert.issuer_cn if info.peer_cert else ""

    def on_helo(self, event: ev.Helo) -> None:
        previous, self.client.helo = self.client.helo, event.name
        stage = "EHLO" if event.esmtp else "HELO"

        def then(decision: Decision) -> None:
            self._log_notices(stage, decision)
            if decision.reply is not None:
                self._reject(stage, decision.reply)
                self.client.helo = previous
            else:
                self.client.sender = None
                self.conn.accept()

        self._decide(self.svc.restrictions.helo(self.client), then)

    def on_mail(self, event: ev.MailFrom) -> None:
        if self._refused(self.limits.mail(self.peer) if self.limits else None):
            return
        self.client.sender = internal_form(event.address)
        self.prepend = []
        if self.svc.restrictions.uses_policy:  # only policy requests carry these
            # Postfix's policy "instance": one per transaction (pid, time, sequence).
            now = time.time()
            self.client.extra["instance"] = (
                f"{os.getpid():x}.{int(now):x}.{int(now % 1 * 1e6):x}.{next(_INSTANCES):x}"
            )
            self.client.extra["size"] = str(event.params.size or 0)
        auth = event.params.auth
        self.sasl_sender = auth if auth and auth != "<>" and self.svc.sasl else None

        def then(decision: Decision) -> None:
            self._log_notices("MAIL", decision)
            if decision.reply is not None:
                self._reject("MAIL", decision.reply)
                self.client.sender = None
                return
            shortage = self._queue_space_shortage()
            if shortage is not None:
                # Postfix checks before the sender becomes the session's: no from= here.
                self.client.sender = None
                self._reject("MAIL", _INSUFFICIENT_STORAGE)
                self.log.warning("smtpd", shortage)
                return
            self._release_queue_id()
            self.client.rcpt_count = 0
            self.conn.accept()

        self._decide(self.svc.restrictions.mail(self.client), then)

    def _queue_space_shortage(self) -> str | None:
        """Postfix's smtpd_check_queue(): the warning when the queue file system has no
        more than queue_minfree, or less than 1.5 times message_size_limit, free."""
        try:
            blocks, size = self.svc.cleanup.free_space()
        except OSError as exc:  # the commit will say what is wrong; do not guess here
            self.log.warning("smtpd", f"cannot check free space in mail queue: {exc}")
            return None
        size = size or 1
        if (
            self.params.queue_minfree // size >= blocks
            or self.params.message_size_limit // size >= blocks / _SPACE_FACTOR
        ):
            return (
                f"not enough free space in mail queue: {blocks * size} bytes < "
                f"{_SPACE_FACTOR:g}*message size limit"
            )
        return None

    def on_rcpt(self, event: ev.RcptTo) -> None:
        if self._refused(self.limits.rcpt(self.peer) if self.limits else None):
            return
        shown = internal_form(event.address)

        def then(decision: Decision) -> None:
            self._log_notices("RCPT", decision, recipient=shown)
            if decision.reply is not None:
                self._reject("RCPT", decision.reply, recipient=shown)
                return
            if self.queue_id is None:
                # Postfix creates the queue file at the first accepted recipient.
                try:
                    self.queue_id = self.svc.cleanup.new_queue_id()
                except OSError as exc:  # queue directory unwritable, disk full...
                    self.log.warning("smtpd", f"cannot create a queue file: {exc}")
                    self.conn.reject(Reply(451, "4.3.0", "Error: queue file write error"))
                    return
                self.log.info(
                    "smtpd",
                    logfmt.client(
                        self.queue_id,
                        self.client.name,
                        self.client.addr,
                        sasl_method=self.sasl_method,
                        sasl_username=self.client.sasl_username,
                        sasl_sender=self.sasl_sender,
                    ),
                )
            self.client.rcpt_count += 1
            self.last_recipient = shown
            self.conn.accept()

        self._decide(self.svc.restrictions.rcpt(self.client, event.address), then)

    def on_data(self, event: ev.DataStart) -> None:
        stage = "BDAT" if event.bdat else "DATA"

        def then(decision: Decision) -> None:
            self._log_notices(stage, decision)
            if decision.reply is not None:
                self._reject(stage, decision.reply)
            else:
                self.conn.accept()

        check = self.svc.restrictions.data(self.client, self.last_recipient)
        self._decide(check, then)

    def on_message(self, event: ev.Message) -> None:
        if self.queue_id is None:  # cannot happen: a message needs an accepted RCPT
            self.conn.reject(Reply(451, "4.3.0", "Error: internal error"))
            return
        env = event.envelope
        qualify = self.svc.resolver.qualify
        recipients = []
        for r in env.recipients:
            address = qualify(r.address)
            recipients.append(
                Recipient(
                    address=address,
                    # RFC 3461 4.2: kept as "addr-type;address" (xtext-decoded).
                    orcpt=";".join(r.params.orcpt) if r.params.orcpt else "",
                    notify=frozenset(r.params.notify or ()),
                    original=address,
                )
            )
        sub = Submission(
            queue_id=self.queue_id,
            sender=qualify(env.sender),
            recipients=recipients,
            content=event.content,
            arrival_time=time.time(),
            client_name=self.client.name,
            client_addr=self.client.addr,
            client_port=self.client_port,
            helo=self.client.helo,
            protocol=self._received_protocol(),
            ret=env.ret,
            envid=env.envid,
            body_type=env.body_type,
            smtputf8=env.smtputf8,
            sasl_method=self.sasl_method,
            sasl_username=self.client.sasl_username,
            sasl_header=self.params.smtpd_sasl_authenticated_header,
            tls_clauses=self._received_tls_clauses(),
            # local_header_rewrite_clients = permit_inet_interfaces: our own addresses.
            rewrite_headers=_is_loopback(self.client.addr),
            prepend=self.prepend,
        )
        self.prepend = []
        self.busy = True
        if self.svc.restrictions.eod_list:
            self.client.extra["size"] = str(len(event.content))  # the policy request's size=
            self.loop.create_task(self._end_of_data(sub, event.bdat))
            return
        self.queue_id = None
        self.loop.create_task(self._commit(sub, event.bdat))

    async def _end_of_data(self, sub: Submission, bdat: bool) -> None:
        """smtpd_end_of_data_restrictions, then the commit; the core waits for the one
        answer to the message throughout (busy), whether the check suspends or not."""
        try:
            if self.svc.restrictions.uses_policy:
                self._policy_attributes()
            decision = await self.svc.restrictions.end_of_data(self.client, self.last_recipient)
            if self.closed:
                self.svc.cleanup.release_queue_id(sub.queue_id)
                return
            self._log_notices("END-OF-MESSAGE", decision)
            if decision.reply is not None:
                self._reject("END-OF-MESSAGE", decision.reply)  # logged with the queue id
                self.svc.cleanup.release_queue_id(sub.queue_id)
                self.queue_id = None
                self._resume()
                return
        except Exception as exc:
            self._crash(exc)
            return
        sub.prepend = sub.prepend + self.prepend  # PREPEND at end of data, as Postfix
        self.prepend = []
        self.queue_id = None
        await self._commit(sub, bdat)

    async def _commit(self, sub: Submission, bdat: bool) -> None:
        try:
            failure = await self.svc.cleanup.submit(sub)
        except Exception as exc:  # never answer 250 for what is not on disk
            self.log.warning("smtpd", f"{sub.queue_id}: cleanup failed: {exc!r}")
            failure = Reply(451, "4.3.0", "Error: queue file write error")
        if self.closed:
            return
        try:
            if failure is None:
                self.conn.accept(queue_id=sub.queue_id)
            elif isinstance(failure, ContentRejected):  # cleanup logged why
                self.conn.reject(failure)
            else:
                self.log.info(
                    "smtpd",
                    logfmt.reject(
                        sub.queue_id,
                        "END-OF-MESSAGE",
                        self.client.name,
                        self.client.addr,
                        str(failure),
                        sender=sub.sender,
                        protocol=self._log_protocol(),
                        helo=self.client.helo,
                    ),
                )
                self.conn.reject(failure)
            self._resume()
        except Exception as exc:
            self._crash(exc)

    def on_starttls(self, event: ev.StartTLS) -> None:
        if self._refused(self.limits.starttls(self.peer) if self.limits else None):
            return
        self.conn.accept()
        self._flush()
        self._start_tls()

    def on_vrfy(self, event: ev.Vrfy) -> None:
        # Postfix answers VRFY with its recipient lookup: 550 for an unknown local user.
        reply = self.svc.restrictions.vrfy(self.client, event.address).reply
        if reply is not None:
            self._reject("VRFY", reply, recipient=internal_form(event.address))
        else:
            self.conn.accept()

    def on_etrn(self, event: ev.Etrn) -> None:
        def then(decision: Decision) -> None:
            self._log_notices("ETRN", decision)
            domain = event.domain
            if decision.reply is not None:
                self._reject("ETRN", decision.reply)
            elif not self._fast_flush(domain):
                # Postfix's flush service refuses sites outside fast_flush_domains.
                self.log.warning("smtpd", f"reject: ETRN {domain}... from {self.peer}")
                self.conn.reject(Reply(459, "", f"<{domain}>: service unavailable"))
            else:
                # RFC 1985: start delivering what waits for the domain (the queue manager's
                # site flush, as postqueue -s).
                wakeup.notify(self.params.queue_directory, site=domain)
                self.conn.accept()

        self._decide(self.svc.restrictions.etrn(self.client, event.domain), then)

    def _fast_flush(self, domain: str) -> bool:
        """fast_flush_domains (names; a parent name covers its subdomains, as
        parent_domain_matches_subdomains has it by default)."""
        names = {d.lower().rstrip(".") for d in self.params.fast_flush_domains if d}
        domain = domain.lower().rstrip(".")
        parent = "fast_flush_domains" in self.params.parent_domain_matches_subdomains
        return domain in names or (parent and parent_domain_match(domain, names))

    # -- AUTH (RFC 4954) ----------------------------------------------------

    async def _sasl_activate(self) -> None:
        """Learn the mechanisms to announce (from Dovecot on first use)."""
        sasl = self.svc.sasl
        assert sasl is not None
        tls = self.tls_info is not None
        self.conn.auth_hidden = sasl.exceptions.match(self.client.name, self.client.addr)
        try:
            self.conn.sasl_mechanisms = await sasl.mechanisms(tls)
        except DovecotError as exc:
            # Postfix's smtpd dies here ("no SASL authentication mechanisms"); postwall
            # goes on without AUTH, so permit_sasl_authenticated simply never matches.
            self.log.warning("smtpd", str(exc))
            self.conn.sasl_mechanisms = ()

    def on_auth(self, event: ev.Auth) -> None:
        sasl = self.svc.sasl
        if sasl is None:  # the core offers AUTH only with mechanisms, which need this
            self.conn.reject(replies.AUTH_NOT_ENABLED)
            return
        if self._refused(self.limits.auth(self.peer) if self.limits else None):
            return
        self.sasl_mechanism = event.mechanism
        self.sasl_conv = sasl.conversation(
            event.mechanism,
            tls=self.tls_info is not None,
            offered=self.conn.sasl_mechanisms,
            client=self.client.addr,
            server=self.local_addr,
        )
        self._sasl_answer(self.sasl_conv.first(event.initial_response))

    def on_auth_response(self, event: ev.AuthResponse) -> None:
        assert self.sasl_conv is not None
        self._sasl_answer(self.sasl_conv.next(event.line))

    def _sasl_answer(self, step: Coroutine[object, object, Outcome]) -> None:
        self.busy = True
        self.loop.create_task(self._sasl_step(step))

    async def _sasl_step(self, step: Coroutine[object, object, Outcome]) -> None:
        try:
            outcome = await step
            if self.closed:
                return
            sasl = self.svc.sasl
            assert sasl is not None
            mechanism = self.sasl_mechanism
            match outcome:
                case More(challenge=challenge):
                    self.conn.challenge(challenge)
                case Done(username=username):
                    sasl.succeeded(self.client.addr)
                    self.sasl_conv = None
                    self.client.sasl_username = replies.printable(username)
                    self.sasl_method = replies.printable(mechanism)
                    self.conn.accept()
                case Refused(reason=reason, username=username, temporary=temporary):
                    self.sasl_conv = None
                    if sasl.dovecot is not None:
                        if outcome.from_backend:
                            self.sasl_last_user = username
                        username = self.sasl_last_user
                    self.log.warning(
                        "smtpd",
                        logfmt.sasl_failed(
                            self.client.name, self.client.addr, mechanism, reason, username
                        ),
                    )
                    if not temporary:
                        await asyncio.sleep(sasl.failure_delay(self.client.addr))
                        if self.closed:
                            return
                    reason = reason or "(reason unavailable)"
                    self.conn.reject(
                        replies.auth_temporary(reason) if temporary else replies.auth_failed(reason)
                    )
            self._resume()
        except Exception as exc:
            self._crash(exc)

    def on_notice(self, event: object) -> None:
        name, addr = self.client.name, self.client.addr
        match event:
            case ev.ImproperPipelining(after=after, pending=pending):
                self.client.ill_pipelining = True
                self.log.info("smtpd", logfmt.improper_pipelining(after, name, addr, pending))
            case ev.NonSmtpCommand(line=line):
                self.log.warning("smtpd", logfmt.non_smtp_command(name, addr, line))
            case ev.LineTooLong(limit=limit, head=head):
                self.log.warning(
                    "smtpd",
                    f"{self.peer}: request longer than {limit}: {logfmt.escape(head[:30])}...",
                )
            case ev.AuthAborted():
                self.sasl_conv = None
                self.log.warning("smtpd", logfmt.sasl_aborted(name, addr, self.sasl_mechanism))
            case ev.MailRefused(sender=sender, reply=reply):
                # The core refused MAIL itself, so the session never took the sender.
                self._log_reject("MAIL", reply, sender=internal_form(sender))
            case ev.ParameterWarning(text=text):
                self.log.warning("smtpd", text)
            case ev.MalformedBdat(line=line):
                qid = self._transaction_id or logfmt.NOQUEUE
                self.log.warning(
                    "smtpd", f"{qid}: malformed BDAT command syntax from {self.peer}: {line}"
                )
            case ev.IllegalAddress(command=command, argument=argument):
                self.log.warning(
                    "smtpd",
                    f"Illegal address syntax from {self.peer} in {command} command: {argument}",
                )

    # -- TLS -----------------------------------------------------------------

    def _start_tls(self) -> None:
        assert self.svc.tls is not None
        if self.svc.tls.loglevel >= 2:  # Postfix 3.7: both lines at 2 and up, not at 1
            self.log.info("smtpd", logfmt.tls_setup(self.client.name, self.client.addr))
            self.log.info("smtpd", describe.cipher_list_line(self.peer, self.svc.tls.cipher_list))
        self.tls = self.svc.tls.new_session(
            self.peer, log=lambda line: self.log.info("smtpd", line)
        )
        self._set_deadline(self.params.smtpd_starttls_timeout)
        if not self.started:
            # Implicit TLS: a fast client's ClientHello may have arrived during the
            # peer name lookup.
            early, self.early = self.early, []
            for chunk in early:
                self._tls_received(chunk)
            if self.early_eof and not self.closed:
                self._tls_lost()
            else:
                self._resume_reading()

    def _tls_ready(self) -> None:
        assert self.tls is not None and self.svc.tls is not None
        info = self.tls.info
        self.tls_info = info
        self.client.tls = True
        self.deadline = time.monotonic() + self.params.smtpd_timeout
        self.client.tls_trusted_cert = info.trust == "Trusted"
        if info.peer_cert is not None:
            self.client.cert_cn = info.peer_cert.subject_cn
            self.client.cert_fingerprint = info.peer_cert.fingerprint
            self.client.cert_pkey_fingerprint = info.peer_cert.pkey_fingerprint
        for line in describe.after_handshake(info, self.svc.tls.loglevel):
            self.log.info("smtpd", line)
        if self._limited(self.limits.handshake(self.peer, info.reused) if self.limits else None):
            return
        if self.svc.tls.required and self.svc.tls.req_ccert and info.trust != "Trusted":
            # smtpd_tls_req_ccert: only a client whose certificate verifies may go on.
            why = (
                "Client certificate not trusted"
                if info.cert_present
                else ("No client certificate presented")
            )
            self.log.info("smtpd", logfmt.tls_abort(self.client.name, self.client.addr, why))
            self.conn.close(Reply(421, "4.7.1", f"{self.params.myhostname} Error: {why}"))
            self.started = True
            self._flush()
            self._log_end("")
            self._close()
            return
        self.conn.tls_established()
        # RFC 3207 4.2: nothing learnt before the handshake counts, a login included.
        self.client.sasl_username = self.sasl_method = None
        if self.svc.sasl is not None:
            self.busy = True
            self.loop.create_task(self._sasl_after_tls())
            return
        if not self.started:
            self._greet()

    async def _sasl_after_tls(self) -> None:
        try:
            await self._sasl_activate()
            if self.closed:
                return
            self.busy = False
            if not self.started:
                self._greet()
            else:
                self._resume()
        except Exception as exc:
            self._crash(exc)

    def _tls_lost(self) -> None:
        """The client closed during the handshake: the engine words it (and logs the
        progress line Postfix's callback gives at loglevel 2)."""
        self._tls_received(b"")
        if not self.closed:  # the engine had already seen the end
            self._tls_failed("lost connection")

    def _tls_failed(self, reason: str, details: tuple[str, ...] = ()) -> None:
        """Postfix's order: `SSL_accept error from ...: -1` (a failed handshake only), the
        library's errors (worded "TLS library problem: ..."), then, whatever failed, the
        session ends as a lost connection (Postfix's EOF path)."""
        if self.tls is None or not self.tls.handshake_done:  # after it, only the warnings
            detail = reason.rpartition(": ")[2] or reason
            self.log.info(
                "smtpd", logfmt.ssl_accept_error(self.client.name, self.client.addr, detail)
            )
        for line in details:
            self.log.warning("smtpd", line)
        self._log_end("lost connection")
        self._close()

    def _received_tls_clauses(self) -> list[str]:
        tls = self.svc.tls
        if self.tls_info is None or tls is None or not self.params.smtpd_tls_received_header:
            return []
        return describe.received_clauses(self.tls_info, tls.ask_ccert)

    # -- logging and teardown ------------------------------------------------

    def _log_notices(self, stage: str, decision: Decision, recipient: str | None = None) -> None:
        """warn:, info: and reject_warning: lines, and configuration warnings."""
        for action, text in decision.notices:
            if action == "warning":
                self.log.warning("smtpd", text)
                continue
            if action == "prepend":  # access(5) PREPEND: a header for this message
                self.prepend.append(text)
                continue
            self.log.info(
                "smtpd",
                logfmt.reject(
                    self._transaction_id,
                    stage,
                    self.client.name,
                    self.client.addr,
                    text,
                    sender=self.client.sender,
                    recipient=recipient,
                    protocol=self._log_protocol(),
                    helo=self.client.helo,
                    action=action,
                ),
            )

    def _refused(self, hit: Limit | None) -> bool:
        """A rate limit refuses this command: Postfix logs a warning, not a reject line."""
        if hit is None or hit.reply is None:
            return False
        self.log.warning("smtpd", hit.warning)
        self.conn.reject(hit.reply)
        return True

    def _limited(self, hit: Limit | None) -> bool:
        """A limit ends the session: the warning, the reply if any, the disconnect line."""
        if hit is None:
            return False
        self.log.warning("smtpd", hit.warning)
        self.conn.close(hit.reply, reason="")
        self.started = True
        self._flush()
        self._log_end("")
        self._close()
        return True

    def _reject(self, stage: str, reply: Reply, recipient: str | None = None) -> None:
        self._log_reject(stage, reply, recipient)
        self.conn.reject(reply)

    def _log_reject(
        self, stage: str, reply: Reply, recipient: str | None = None, *, sender: str | None = None
    ) -> None:
        """Postfix's reject line; `sender` when it is not (yet) the session's."""
        self.log.info(
            "smtpd",
            logfmt.reject(
                self._transaction_id,
                stage,
                self.client.name,
                self.client.addr,
                str(reply),
                sender=self.client.sender if sender is None else sender,
                recipient=recipient,
                protocol=self._log_protocol(),
                helo=self.client.helo,
            ),
        )

    @property
    def _transaction_id(self) -> str | None:
        """The queue id log lines name: none outside a transaction. The id reserved at the
        first RCPT is kept across RSET until the next MAIL (it is given back then), but
        Postfix's queue file is gone at RSET, so its later lines say NOQUEUE."""
        return self.queue_id if self.conn.in_transaction else None

    def _log_protocol(self) -> str:
        return "ESMTP" if self.conn.esmtp else "SMTP"

    def _received_protocol(self) -> str:
        tls = "S" if self.tls_info is not None else ""
        auth = "A" if self.client.sasl_username else ""
        return self._log_protocol() + tls + auth

    def _log_end(self, reason: str) -> None:
        """The `lost connection after X` style line, then `disconnect from`."""
        if self.ended:
            return
        self.ended = True
        where = self.conn.last_command
        name, addr = self.client.name, self.client.addr
        if reason in ("lost connection", "timeout", "too many errors") and logfmt.should_log_abort(
            reason, where
        ):
            nbytes = self.conn.content_bytes if where in ("DATA", "BDAT") else None
            self.log.info("smtpd", logfmt.session_abort(reason, where, name, addr, nbytes))
        self.log.info("smtpd", logfmt.disconnect(name, addr, self.conn.disconnect_summary()))

    def _expiry(self) -> float:
        handshaking = self.tls is not None and not self.tls.handshake_done
        if self.params.smtpd_per_request_deadline:
            return self.deadline
        limit = self.params.smtpd_starttls_timeout if handshaking else self.params.smtpd_timeout
        return self.last_activity + limit

    def _arm_timer(self) -> None:
        self.timer = self.loop.call_later(
            max(0.05, self._expiry() - time.monotonic()), self._check_timeout
        )

    def _set_deadline(self, seconds: float) -> None:
        """A shorter deadline than the timer's (smtpd_starttls_timeout): re-arm it."""
        self.deadline = time.monotonic() + seconds
        if self.timer is not None and self.timer.when() > self.deadline:
            self.timer.cancel()
            self._arm_timer()

    def _check_timeout(self) -> None:
        if self.closed:
            return
        if self.busy or time.monotonic() < self._expiry():
            self._arm_timer()
            return
        if self.tls is not None and not self.tls.handshake_done:
            # Nothing can be said in the middle of a handshake.
            self.log.info(
                "smtpd",
                logfmt.ssl_accept_error(self.client.name, self.client.addr, "timed out"),
            )
            self._log_end("timeout")
            self._close()
            return
        self.conn.close(replies.timeout_exceeded(self.params.myhostname), reason="timeout")
        self._flush()
        if self.started:
            self._log_end("timeout")
        self._close()

    def _crash(self, exc: BaseException) -> None:
        # One log line with where it happened; the peer gets no details.
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames))
        self.log.warning(
            "smtpd", f"{self.peer}: session aborted: internal error: {exc!r} at {where}"
        )
        if self.started:
            self._log_end("")
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            if self.tls is not None:
                # A close_notify keeps the session resumable (OpenSSL drops sessions
                # from its cache when a connection is freed without one).
                with contextlib.suppress(Exception):
                    self.tls.shutdown()
                    self._write_raw(self.tls.data_to_send())
            self.transport.close()

    def _release_queue_id(self) -> None:
        # An abandoned transaction gives its reserved queue id back to the store.
        if self.queue_id is not None:
            self.svc.cleanup.release_queue_id(self.queue_id)
            self.queue_id = None

    def _teardown(self) -> None:
        if not self.busy:
            self._release_queue_id()
        if self.timer is not None:
            self.timer.cancel()
        if self.limits is not None:
            self.limits.close()
        self.svc.sessions.discard(self)


_INSTANCES = itertools.count(1)
# Free queue space must exceed this many times message_size_limit (Postfix's
# smtpd_space_multf), so that a message the server accepts at MAIL can be written.
_SPACE_FACTOR = 1.5
_INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")

# Each handler takes the event type it is listed under.
_HANDLERS: dict[type, Callable[[SmtpSession, Any], None]] = {
    ev.Helo: SmtpSession.on_helo,
    ev.MailFrom: SmtpSession.on_mail,
    ev.RcptTo: SmtpSession.on_rcpt,
    ev.DataStart: SmtpSession.on_data,
    ev.Message: SmtpSession.on_message,
    ev.StartTLS: SmtpSession.on_starttls,
    ev.Vrfy: SmtpSession.on_vrfy,
    ev.Etrn: SmtpSession.on_etrn,
    ev.Auth: SmtpSession.on_auth,
    ev.AuthResponse: SmtpSession.on_auth_response,
    ev.AuthAborted: SmtpSession.on_notice,
    ev.ImproperPipelining: SmtpSession.on_notice,
    ev.NonSmtpCommand: SmtpSession.on_notice,
    ev.LineTooLong: SmtpSession.on_notice,
    ev.IllegalAddress: SmtpSession.on_notice,
    ev.MailRefused: SmtpSession.on_notice,
    ev.ParameterWarning: SmtpSession.on_notice,
    ev.MalformedBdat: SmtpSession.on_notice,
}


def _plain_addr(addr: str) -> str:
    # An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
    return addr[7:] if addr.startswith("::ffff:") and "." in addr else addr


def _is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1"
