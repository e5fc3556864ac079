"""smtpd access restrictions: Postfix's restriction lists, evaluated per stage.

Who calls it: the smtpd session, at each command, with what it knows of the client
(`ClientState`).  Each stage method (`connect`, `helo`, `mail`, `rcpt`, `etrn`,
`data`) is a coroutine returning a `Decision`: the reply to send (None: go on) and
the `warn:`/`reject_warning:` notices to log.  When no configured restriction needs
the DNS (`uses_dns` is False) the coroutines never suspend, and the session runs
them synchronously with `run_now()`.

Semantics follow Postfix 3.7's smtpd_check.c: each list is evaluated left to right
and stops at the first permit or reject; a permit ends only its own list, so every
list must permit; `warn_if_reject` turns the next restriction's reject into a log
line; `defer_if_permit`/`defer_if_reject` and temporary DNS failures change the
final outcome as Postfix does.  With smtpd_delay_reject = yes (the default) the
client, HELO and sender lists run again at RCPT (and ETRN), so their rejects are
reported against RCPT.  The recipient stage runs smtpd_relay_restrictions and
smtpd_recipient_restrictions (in the order smtpd_relay_before_recipient_restrictions
says), then the implicit unlisted recipient check.  Reply texts and codes are
Postfix's.

Anything postwall does not implement stops start-up with `NotSupported`, because a
restriction that is silently ignored can open a relay; so do access table actions
that change delivery (FILTER, HOLD, DISCARD, REDIRECT, BCC).  PREPEND is a
("prepend", header) notice: the session puts the header above its Received header.

Client-certificate restrictions (permit_tls_clientcerts, check_ccert_access) use
the certificate's fingerprints only when the certificate verified (Trusted): a
deliberate difference from Postfix 3.7, which also accepts a listed fingerprint of
an unverified certificate (docs/status.md).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from postwall import dns as mxdns
from postwall.anvil import ClientList
from postwall.config.network import Networks, is_ip
from postwall.config.params import Params, split_list
from postwall.config.tables import NotSupportedError, Table, TableError, open_table
from postwall.resolve import (
    AddressClass,
    AddressResolver,
    internal_form,
    mail_addr_find,
    split_address,
    strip_extension,
)
from postwall.smtp.replies import Reply
from postwall.smtpd import dnsbl, policy
from postwall.smtpd.policy import PolicyError, PolicyService

T = TypeVar("T")

# Postfix's names of what a restriction looked at (SMTPD_NAME_*).
CLIENT = "Client host"
HELO = "Helo command"
SENDER = "Sender address"
RECIPIENT = "Recipient address"
ETRN = "Etrn command"
DATA = "Data command"
EOD = "End-of-data"
CCERT = "Client certificate"
SASL = "SASL login name"

# Actions of access(5) that change what happens to the message; not supported yet.
_DELIVERY_ACTIONS = frozenset({"FILTER", "HOLD", "DISCARD", "REDIRECT", "BCC"})
# Postfix is_header(): a header name (printable, no colon or space), then a colon.
_HEADER = re.compile(r"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_DNS_TIMEOUT = 10.0


class NotSupported(ValueError):
    """A restriction (or access table action) postwall does not implement."""


class ConfigurationError(Exception):
    """Raised during evaluation: Postfix answers 451 4.3.5 Server configuration error."""


@dataclass(slots=True)
class ClientState:
    """What the restrictions may look at; the session keeps it up to date."""

    name: str
    addr: str
    peer: dnsbl.PeerName | None = None  # name lookup statuses; None: implied by `name`
    helo: str | None = None
    sender: str | None = None  # internal form; "" is the null sender
    protocol: str = "SMTP"
    sasl_username: str | None = None
    tls: bool = False
    tls_trusted_cert: bool = False
    cert_cn: str = ""
    cert_fingerprint: str = ""
    cert_pkey_fingerprint: str = ""
    ill_pipelining: bool = False
    rcpt_count: int = 0  # recipients accepted in this transaction
    # defer_if_permit carried from one stage to the next (Postfix defer_if_permit_*).
    defer_client: _Defer | None = None
    defer_helo: _Defer | None = None
    defer_sender: _Defer | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Defer:
    code: int
    dsn: str
    text: str
    software: bool = False


@dataclass(slots=True)
class Decision:
    """A stage's outcome: `reply` is the refusal (None: accept); `notices` are
    (action, text) pairs to log as Postfix's log_whatsup lines (warn, reject_warning)."""

    reply: Reply | None = None
    notices: list[tuple[str, str]] = field(default_factory=list)


class _Permit:
    def __repr__(self) -> str:
        return "PERMIT"


PERMIT = _Permit()
Status = Reply | _Permit | None  # None: DUNNO, go on


@dataclass(slots=True)
class _Ctx:
    """One stage's evaluation state (Postfix keeps it in SMTPD_STATE)."""

    c: ClientState
    where: str
    recipient: str | None = None
    etrn: str | None = None
    warn: int = 0
    recursion: int = 0
    defer_if_permit: _Defer | None = None
    defer_if_reject: _Defer | None = None
    notices: list[tuple[str, str]] = field(default_factory=list)
    rcpt_checked: bool = False
    sender_checked: bool = False


# A compiled restriction: awaitable or plain, given the context, reply name and class.
Check = Callable[[_Ctx, str, str], "Status | Awaitable[Status]"]


@dataclass(frozen=True, slots=True)
class _Item:
    name: str
    run: Check


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Finish a coroutine that never suspends (no DNS restriction configured)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("restriction evaluation suspended outside the event loop")


class Restrictions:
    """The restriction lists of one smtpd service, compiled once at start-up."""

    def __init__(
        self,
        params: Params,
        resolver: AddressResolver,
        networks: Networks,
        *,
        dns_resolver: dns.asyncresolver.Resolver | None = None,
        dns_timeout: float = _DNS_TIMEOUT,
        classes: Mapping[str, str] | None = None,
    ) -> None:
        """`classes`: smtpd_restriction_classes, each name with its definition (a main.cf
        parameter of that name; `Config.restriction_classes` gives them)."""
        self.p = params
        self._resolver = resolver
        self._networks = networks
        self._dns = dns_resolver  # made on first use (_resolver_for_dns)
        self._dns_timeout = dns_timeout
        self._base = Path(params.config_directory)
        self._tables: dict[str, Table] = {}
        self._policies: dict[str, PolicyService] = {}
        self.warnings: list[str] = []  # from opening tables (skipped regexp: rules...)
        self.uses_dns = False  # some restriction may suspend (DNS, policy server)
        self.delay_reject = params.smtpd_delay_reject
        self._parent_style = "smtpd_access_maps" in params.parent_domain_matches_subdomains
        self._relay_certs = [
            self._table(ref, "relay_clientcerts") for ref in params.relay_clientcerts
        ]
        self._login_maps = [
            self._table(ref, "smtpd_sender_login_maps") for ref in params.smtpd_sender_login_maps
        ]
        self._relay_rcpt_maps = [
            self._table(ref, "relay_recipient_maps") for ref in params.relay_recipient_maps
        ]
        try:
            self._mx_networks = ClientList(params.permit_mx_backup_networks)
        except ValueError as err:
            raise ValueError(f"permit_mx_backup_networks: {err}") from None
        self._own_addresses: dict[str, bool] = {}
        # Restriction classes (Postfix's RESTRICTION_CLASS_README): a name standing for a
        # list, usable in any list and as an access table's result.
        given = {k.lower(): v for k, v in (classes or {}).items()}
        self._class_defs: dict[str, list[str]] = {}
        for name in params.smtpd_restriction_classes:
            value = given.get(name.lower(), "")
            if not split_list(value):  # smtpd_check.c: a fatal error at start-up
                raise ValueError(f"restriction class `{name}' needs a definition")
            self._class_defs[name.lower()] = list(split_list(value))
        self._classes: dict[str, list[_Item]] = {}
        self._compiling: set[str] = set()
        for name in self._class_defs:
            self._class_items(name)
        self.client = self._compile("smtpd_client_restrictions", "check_client_access")
        self.helo_list = self._compile("smtpd_helo_restrictions", "check_helo_access")
        self.sender = self._compile("smtpd_sender_restrictions", "check_sender_access")
        self.relay = self._compile("smtpd_relay_restrictions", "check_recipient_access")
        self.recipient = self._compile("smtpd_recipient_restrictions", "check_recipient_access")
        self.etrn_list = self._compile("smtpd_etrn_restrictions", "check_etrn_access")
        self.data_list = self._compile("smtpd_data_restrictions", None)
        self.eod_list = self._compile("smtpd_end_of_data_restrictions", None)
        if not _has_required(params.smtpd_recipient_restrictions) and not _has_required(
            params.smtpd_relay_restrictions
        ):
            # Postfix refuses to start the same way: without one of these, anyone relays.
            raise ValueError(
                "in parameter smtpd_relay_restrictions or smtpd_recipient_restrictions, "
                "specify at least one working instance of: reject_unauth_destination, "
                "defer_unauth_destination, reject, defer, defer_if_permit or "
                "check_relay_domains (anything else would be an open relay)"
            )

    # -- compilation -------------------------------------------------------

    def _table(self, ref: str, where: str) -> Table:
        if ref not in self._tables:
            try:
                table = open_table(ref, self._base)
            except NotSupportedError as err:
                raise NotSupported(f"{where}: {err}") from None
            except TableError as err:
                raise ValueError(f"{where}: {err}") from None
            self.warnings.extend(table.warnings)
            for value in table.results():
                words = value.split()
                if words and words[0].upper() in _DELIVERY_ACTIONS:
                    raise NotSupported(
                        f"{where}: {ref}: access action {words[0]} is not supported by postwall"
                    )
                if any(w.lower().strip(",") in _DNS_CHECKS for w in words):
                    self.uses_dns = True
            self._tables[ref] = table
        return self._tables[ref]

    def _compile(
        self, param: str, def_acl: str | None, items: Sequence[str] | None = None
    ) -> list[_Item]:
        names = list(getattr(self.p, param) if items is None else items)
        out: list[_Item] = []
        i = 0
        while i < len(names):
            name = names[i]
            low = name.lower()
            if ":" in name or name.startswith("{"):
                # A bare type:table is its list's own check_*_access (Postfix def_acl).
                if def_acl is None:
                    raise NotSupported(
                        f"{param}: specify one of check_client_access, check_helo_access, "
                        f"check_sender_access, check_recipient_access, check_etrn_access "
                        f'before "{name}"'
                    )
                low, names = def_acl, [*names[:i], def_acl, *names[i:]]
            if low == "check_policy_service":
                arg = names[i + 1] if i + 1 < len(names) else ""
                if ":" not in arg:
                    raise ValueError(
                        f"{param}: restriction check_policy_service must be followed by "
                        "transport:server"
                    )
                self.uses_dns = True  # a network request: evaluation may suspend
                try:
                    out.append(_Item(low, _policy_check(self, arg)))
                except PolicyError as err:
                    raise ValueError(f"{param}: {err}") from None
                i += 2
                continue
            if low in _TABLE_CHECKS:
                if i + 1 >= len(names) or ":" not in names[i + 1]:
                    arg = names[i + 1] if i + 1 < len(names) else ""
                    raise ValueError(
                        f'{param}: restriction {low}: bad argument "{arg}": need maptype:mapname'
                    )
                ref = names[i + 1]
                if ref.startswith("{"):
                    raise NotSupported(f"{param}: {low}: search_order lists are not supported")
                table = self._table(ref, param)
                out.append(_Item(low, _TABLE_CHECKS[low](self, table, ref)))
                i += 2
                continue
            if low in dnsbl.DOMAIN_CHECKS:
                # Postfix takes the next word as the DNS list's domain[=pattern].
                if i + 1 >= len(names):
                    raise ValueError(f"{param}: restriction {low} requires domain name argument")
                self.uses_dns = True
                out.append(_Item(low, dnsbl.DOMAIN_CHECKS[low](self, names[i + 1])))
                i += 2
                continue
            if low in self._class_defs:
                out.append(_Item(low, self._class_check(self._class_items(low))))
                i += 1
                continue
            factory = _CHECKS.get(low)
            if factory is None:
                raise NotSupported(f"{param}: restriction {name!r} is not supported by postwall")
            if low in _DNS_CHECKS:
                self.uses_dns = True
            out.append(_Item(low, factory(self)))
            i += 1
        return out

    def _class_check(self, members: list[_Item]) -> Check:
        """A restriction class used as one restriction: its members, evaluated in turn."""

        def check(ctx: _Ctx, name: str, cls: str) -> Awaitable[Status]:
            return self._run(ctx, members, name, cls)

        return check

    def _class_items(self, name: str) -> list[_Item]:
        """A restriction class compiled once (a list object filled in place, so a class
        can name one defined later); one that names itself, directly or not, is refused."""
        if name in self._classes:
            if name in self._compiling:
                raise ValueError(f"restriction class `{name}' refers to itself")
            return self._classes[name]
        items: list[_Item] = []
        self._classes[name] = items
        self._compiling.add(name)
        try:
            items.extend(self._compile(name, None, self._class_defs[name]))
        finally:
            self._compiling.discard(name)
        return items

    @property
    def uses_policy(self) -> bool:
        """check_policy_service is configured: the session fills ClientState.extra."""
        return bool(self._policies)

    # -- the stages --------------------------------------------------------

    async def connect(self, c: ClientState) -> Decision:
        """At connection time; a no-op with smtpd_delay_reject = yes."""
        if self.delay_reject:
            return Decision()
        ctx = _Ctx(c, "CONNECT")
        return Decision(await self._client_stage(ctx), ctx.notices)

    async def helo(self, c: ClientState) -> Decision:
        if self.delay_reject:
            return Decision()
        ctx = _Ctx(c, "HELO")
        return Decision(await self._helo_stage(ctx), ctx.notices)

    async def mail(self, c: ClientState) -> Decision:
        if self.delay_reject:
            return Decision()
        ctx = _Ctx(c, "MAIL")
        return Decision(await self._mail_stage(ctx), ctx.notices)

    async def rcpt(self, c: ClientState, recipient: str) -> Decision:
        """`recipient` as the client gave it (external form, maybe unqualified)."""
        recipient = internal_form(recipient)
        ctx = _Ctx(c, "RCPT", recipient=recipient)
        if recipient.lower() == "postmaster":  # RFC 5321 4.5.1, before anything else
            return Decision()
        if self.delay_reject:
            for stage in (self._client_stage, self._helo_stage, self._mail_stage):
                reply = await stage(ctx)
                if reply is not None:
                    return Decision(reply, ctx.notices)
        ctx.defer_if_permit = c.defer_sender
        self._reset(ctx)
        lists = [self.relay, self.recipient]
        if not self.p.smtpd_relay_before_recipient_restrictions:
            lists.reverse()
        status: Status = None
        for items in lists:
            status = await self._guarded(ctx, items, recipient, RECIPIENT)
            if isinstance(status, Reply):
                break
        reply = self._finish(ctx, status)
        if reply is None and self.p.smtpd_reject_unlisted_recipient and not ctx.rcpt_checked:
            reply = _as_reply(self._rcpt_maps(ctx, recipient, RECIPIENT))
        return Decision(reply, ctx.notices)

    async def etrn(self, c: ClientState, domain: str) -> Decision:
        ctx = _Ctx(c, "ETRN", etrn=domain)
        if self.delay_reject:
            for stage in (self._client_stage, self._helo_stage):
                reply = await stage(ctx)
                if reply is not None:
                    return Decision(reply, ctx.notices)
        ctx.defer_if_permit = c.defer_helo or c.defer_client
        self._reset(ctx)
        status = await self._guarded(ctx, self.etrn_list, domain, ETRN)
        return Decision(self._finish(ctx, status), ctx.notices)

    async def data(self, c: ClientState, last_recipient: str | None = None) -> Decision:
        ctx = _Ctx(c, "DATA", recipient=last_recipient if c.rcpt_count <= 1 else None)
        self._reset(ctx)
        status = await self._guarded(ctx, self.data_list, "DATA", DATA)
        return Decision(self._finish(ctx, status), ctx.notices)

    async def end_of_data(self, c: ClientState, last_recipient: str | None = None) -> Decision:
        """smtpd_end_of_data_restrictions, once the content is in (Postfix's
        smtpd_check_eod: reply name END-OF-MESSAGE, class End-of-data)."""
        ctx = _Ctx(c, "END-OF-MESSAGE", recipient=last_recipient if c.rcpt_count <= 1 else None)
        self._reset(ctx)
        status = await self._guarded(ctx, self.eod_list, "END-OF-MESSAGE", EOD)
        return Decision(self._finish(ctx, status), ctx.notices)

    def vrfy(self, c: ClientState, address: str) -> Decision:
        """VRFY gets the local recipient check of RCPT (smtpd_reject_unlisted_recipient)."""
        if not self.p.smtpd_reject_unlisted_recipient:
            return Decision()
        ctx = _Ctx(c, "VRFY", recipient=internal_form(address))
        return Decision(_as_reply(self._rcpt_maps(ctx, ctx.recipient or "", RECIPIENT)))

    # -- stage helpers -----------------------------------------------------

    @staticmethod
    def _reset(ctx: _Ctx) -> None:
        ctx.recursion = 0
        ctx.warn = 0
        ctx.defer_if_reject = None

    async def _client_stage(self, ctx: _Ctx) -> Reply | None:
        c = ctx.c
        ctx.defer_if_permit = None
        self._reset(ctx)
        status = await self._guarded(ctx, self.client, f"{c.name}[{c.addr}]", CLIENT)
        c.defer_client = ctx.defer_if_permit
        return status if isinstance(status, Reply) else None

    async def _helo_stage(self, ctx: _Ctx) -> Reply | None:
        c = ctx.c
        if c.helo is None:
            return None
        ctx.defer_if_permit = c.defer_client
        self._reset(ctx)
        status = await self._guarded(ctx, self.helo_list, c.helo, HELO)
        c.defer_helo = ctx.defer_if_permit
        return status if isinstance(status, Reply) else None

    async def _mail_stage(self, ctx: _Ctx) -> Reply | None:
        c = ctx.c
        if c.sender is None:
            return None
        ctx.defer_if_permit = c.defer_helo or c.defer_client
        ctx.sender_checked = False
        self._reset(ctx)
        status = await self._guarded(ctx, self.sender, c.sender, SENDER)
        c.defer_sender = ctx.defer_if_permit
        if (
            self.p.smtpd_reject_unlisted_sender
            and not isinstance(status, Reply)
            and not ctx.sender_checked
            and c.sender
        ):
            status = self._rcpt_maps(ctx, c.sender, SENDER)
        return status if isinstance(status, Reply) else None

    def _finish(self, ctx: _Ctx, status: Status) -> Reply | None:
        """A permit is turned into the deferral an earlier temporary error asked for."""
        if not isinstance(status, Reply) and ctx.defer_if_permit is not None:
            d = ctx.defer_if_permit
            ctx.warn = 0
            status = self.reject(ctx, d.code, d.dsn, d.text, software=d.software)
        return status if isinstance(status, Reply) else None

    async def _guarded(self, ctx: _Ctx, items: list[_Item], name: str, cls: str) -> Status:
        if not items:
            return None
        try:
            return await self._run(ctx, items, name, cls)
        except ConfigurationError as err:
            ctx.notices.append(("warning", str(err)))
            ctx.warn = 0
            return self.reject(ctx, 451, "4.3.5", "Server configuration error", software=True)

    async def _run(self, ctx: _Ctx, items: list[_Item], name: str, cls: str) -> Status:
        """Postfix generic_checks(): first permit or reject wins."""
        saved = ctx.recursion
        ctx.recursion += 1
        status: Status = None
        for item in items:
            if item.name == "warn_if_reject":
                if not ctx.warn:
                    ctx.warn = ctx.recursion
                continue
            result = item.run(ctx, name, cls)
            status = await result if asyncio.iscoroutine(result) else result  # type: ignore[assignment]
            if ctx.warn >= ctx.recursion:
                ctx.warn = 0
            if status is not None:
                break
            if ctx.defer_if_permit is not None and ctx.defer_if_reject is not None:
                break
        ctx.recursion = saved
        if ctx.warn >= ctx.recursion:
            ctx.warn = 0
        return status

    # -- replies -----------------------------------------------------------

    def reject(
        self, ctx: _Ctx, code: int, dsn: str, text: str, *, software: bool = False
    ) -> Reply | None:
        """Postfix smtpd_check_reject(): a reply, or None when only warning."""
        warn = bool(ctx.warn) and not software
        if not 400 <= code <= 599 or not _DSN.fullmatch(dsn):
            ctx.notices.append(("warning", f"SMTP reply code configuration error: {code} {dsn}"))
            code, dsn, text = 450, "4.7.1", "Service unavailable"
        # Postfix printable(): anything unprintable becomes a space.
        text = "".join(ch if ord(ch) >= 32 and ch != "\x7f" else " " for ch in text)[:500]
        if not warn and ctx.defer_if_reject is not None and code >= 500:
            d, ctx.defer_if_reject = ctx.defer_if_reject, None
            ctx.warn = 0
            return self.reject(ctx, d.code, d.dsn, d.text, software=d.software)
        if self.p.soft_bounce and code >= 500:
            code -= 100
        dsn = f"{str(code)[0]}{dsn[1:]}"
        reply = Reply(code, dsn, text)
        if warn:
            ctx.notices.append(("reject_warning", str(reply)))
            return None
        return reply

    def defer_if_permit(
        self, ctx: _Ctx, action: str, code: int, dsn: str, text: str
    ) -> Reply | None:
        """DEFER_IF_PERMIT: remember a deferral for when the lists would permit."""
        if ctx.warn == 0 and action == "defer_if_permit":
            if ctx.defer_if_permit is None:
                ctx.defer_if_permit = _Defer(code, dsn, text)
            return None
        return self.reject(ctx, code, dsn, text)

    @staticmethod
    def defer_if_reject(ctx: _Ctx, code: int, dsn: str, text: str) -> None:
        if ctx.defer_if_reject is None:
            ctx.defer_if_reject = _Defer(code, dsn, text)

    # -- access tables -----------------------------------------------------

    def table_result(self, ctx: _Ctx, ref: str, value: str, name: str, cls: str) -> Status:
        """Postfix check_table_result(): what an access(5) value means."""
        action, _, rest = value.strip().partition(" ")
        text = rest.strip()
        upper = action.upper()
        if upper == "DUNNO":
            return None
        if upper in ("REJECT", "DEFER"):
            code = (
                self.p.access_map_reject_code if upper == "REJECT" else self.p.access_map_defer_code
            )
            dsn, text = _dsn_split("5.7.1" if upper == "REJECT" else "4.7.1", text)
            return self.reject(
                ctx,
                code,
                _dsn_fix(dsn, cls),
                f"<{name}>: {cls} rejected: {text or 'Access denied'}",
            )
        if upper in ("INFO", "WARN"):
            ctx.notices.append((upper.lower(), text))
            return None
        if upper == "PREPEND":
            if ctx.c.sender is None:
                ctx.notices.append(
                    (
                        "warning",
                        f"access table {ref}: with smtpd_delay_reject=no, action PREPEND is "
                        f"always skipped in {CLIENT} or {HELO} restrictions",
                    )
                )
            elif not _HEADER.match(text):
                ctx.notices.append(
                    ("warning", f'access table {ref} entry "{name}" requires header: text')
                )
            else:
                ctx.notices.append(("prepend", text))
            return None
        if upper in _DELIVERY_ACTIONS:
            raise ConfigurationError(f"access table {ref}: action {upper} is not supported")
        if upper in ("DEFER_IF_PERMIT", "DEFER_IF_REJECT"):
            dsn, text = _dsn_split("4.7.1", text)
            reason = f"<{name}>: {cls} rejected: {text or 'Service unavailable'}"
            code = self.p.access_map_defer_code
            if upper == "DEFER_IF_PERMIT":
                return self.defer_if_permit(
                    ctx, "defer_if_permit", code, _dsn_fix(dsn, cls), reason
                )
            self.defer_if_reject(ctx, code, _dsn_fix(dsn, cls), reason)
            return None
        if action.isdigit() and len(action) == 3 and action[0] in "45" and text:
            dsn, text = _dsn_split(f"{action[0]}.7.1", text)
            return self.reject(
                ctx,
                int(action),
                _dsn_fix(dsn, cls),
                f"<{name}>: {cls} rejected: {text or 'Access denied'}",
            )
        if value.strip().isdigit() or upper in ("OK", "RELAY"):
            return PERMIT
        if ":" in value:
            raise ConfigurationError(f"access table {ref} has entry with lookup table: {value}")
        if ctx.recursion > 100:
            raise ConfigurationError(
                f"access table {ref} entry {value} causes unreasonable recursion"
            )
        names = split_list(value)
        if not names:
            return PERMIT
        try:
            items = self._compile(f"access table {ref}", None, names)
        except (NotSupported, ValueError) as err:
            raise ConfigurationError(str(err)) from None
        return _Deferred(self._run(ctx, items, name, cls))  # type: ignore[return-value]

    def domain_access(
        self, ctx: _Ctx, table: Table, ref: str, domain: str, name: str, cls: str
    ) -> tuple[bool, Status]:
        """The name, then its parent domains (not for an address)."""
        low = domain.lower()
        partial = False
        current = low
        while current:
            value = table.query(current, partial)
            if value is not None:
                return True, self.table_result(ctx, ref, value, name, cls)
            if _is_hostaddr(domain):
                break
            dot = current.find(".", 1)
            if dot < 0:
                break
            current = current[dot + 1 :] if self._parent_style else current[dot:]
            partial = True
        return False, None

    def addr_access(
        self, ctx: _Ctx, table: Table, ref: str, addr: str, name: str, cls: str
    ) -> tuple[bool, Status]:
        """The address, then its networks with octets (or IPv6 groups) dropped."""
        delim = ":" if ":" in addr else "."
        current, partial = addr, False
        while current:
            value = table.query(current, partial)
            if value is not None:
                return True, self.table_result(ctx, ref, value, name, cls)
            current = current.rpartition(delim)[0]
            partial = True
        return False, None

    def mail_access(
        self, ctx: _Ctx, table: Table, ref: str, address: str, name: str, cls: str
    ) -> Status:
        """user+ext@domain, user@domain, domain and parents, user+ext@, user@."""
        resolved = self._resolver.resolve(address)
        full = resolved.address
        local, domain = split_address(full)
        bare = strip_extension(local, self.p.recipient_delimiter)
        keys: list[tuple[str, bool]] = [(full, False)]
        if bare != local:
            keys.append((f"{bare}@{domain}", True))
        parts = domain.lower().split(".")
        for i in range(len(parts)):
            parent = ".".join(parts[i:])
            if not parent:
                continue
            keys.append((parent if i == 0 or self._parent_style else "." + parent, True))
        keys.append((f"{local}@", True))
        if bare != local:
            keys.append((f"{bare}@", True))
        for key, partial in keys:
            value = table.query(key, partial)
            if value is not None:
                status = self.table_result(ctx, ref, value, name, cls)
                routed = resolved.routed and not self.p.allow_untrusted_routing
                if status is PERMIT and routed and cls == RECIPIENT:
                    return None  # source-routed: too suspicious for OK
                return status
        return None

    # -- recipient and sender tables ---------------------------------------

    def _rcpt_maps(self, ctx: _Ctx, address: str, cls: str) -> Status:
        """The implicit user-unknown check of local and relay addresses."""
        if cls == RECIPIENT:
            if ctx.rcpt_checked:
                return None
            if not ctx.warn:
                ctx.rcpt_checked = True
        else:
            if ctx.sender_checked:
                return None
            if not ctx.warn:
                ctx.sender_checked = True
        resolved = self._resolver.resolve(address)
        dsn = "5.1.0" if cls == SENDER else "5.1.1"
        show = self.p.show_user_unknown_table_name
        moved = self._resolver.relocated(resolved.address) if cls == RECIPIENT else None
        if moved is not None:
            return self.reject(
                ctx, 550, "5.1.6", f"<{address}>: {cls} rejected: User has moved to {moved}"
            )
        # Postfix's check_rcpt_maps(): a virtual alias is a valid address in any class.
        if self._resolver.virtual.lookup(resolved.address) is not None:
            return None
        if resolved.cls is AddressClass.VIRTUAL:
            return self.reject(
                ctx,
                self.p.unknown_virtual_alias_reject_code,
                dsn,
                f"<{address}>: {cls} rejected: User unknown"
                + (" in virtual alias table" if show else ""),
            )
        if resolved.cls is AddressClass.LOCAL:
            user = self._resolver.local_user(resolved.address).lower()
            if user in ("postmaster", "mailer-daemon", self.p.double_bounce_sender.lower()):
                return None
            if not self._resolver.is_known_local(address):
                return self.reject(
                    ctx,
                    self.p.unknown_local_recipient_reject_code,
                    dsn,
                    f"<{address}>: {cls} rejected: User unknown"
                    + (" in local recipient table" if show else ""),
                )
        elif resolved.cls is AddressClass.RELAY and self._relay_rcpt_maps:
            found = any(
                self._find_address(t, resolved.address) is not None for t in self._relay_rcpt_maps
            )
            if not found:
                return self.reject(
                    ctx,
                    self.p.unknown_relay_recipient_reject_code,
                    dsn,
                    f"<{address}>: {cls} rejected: User unknown"
                    + (" in relay recipient table" if show else ""),
                )
        return None

    def _find_address(self, table: Table, address: str) -> str | None:
        """mail_addr_find(): user+ext@domain, user@domain, user+ext, user, @domain."""
        hit = mail_addr_find(self._resolver, [table], address)
        return hit[0] if hit is not None else None

    # -- DNS -----------------------------------------------------------------

    def _resolver_for_dns(self) -> dns.asyncresolver.Resolver:
        if self._dns is None:
            servers = list(self.p.postwall_dns_servers) or None
            self._dns = mxdns.make_resolver(servers, timeout=self._dns_timeout)
        return self._dns

    async def dns_status(self, name: str, types: Sequence[str]) -> str:
        """ "ok", "notfound", "nullmx" or "retry" for the first type with records."""
        try:
            dns.name.from_text(name)
        except dns.exception.DNSException:
            return "notfound"
        try:
            resolver = self._resolver_for_dns()
        except dns.exception.DNSException:
            return "retry"
        nodata = False
        for rtype in types:
            try:
                async with asyncio.timeout(self._dns_timeout):
                    answer = await resolver.resolve(name, rtype, search=False)
            except dns.resolver.NXDOMAIN:
                return "notfound"
            except dns.resolver.NoAnswer:
                nodata = True
                continue
            except (TimeoutError, dns.exception.DNSException, OSError):
                return "retry"
            if rtype == "MX" and any(r.exchange == dns.name.root for r in answer):  # type: ignore[attr-defined]
                return "nullmx"
            return "ok"
        return "notfound" if nodata else "retry"

    def own_address(self, addr: str) -> bool:
        """An address of this host (Postfix own_inet_addr/proxy_inet_addr): in
        proxy_interfaces or an explicit inet_interfaces, or with inet_interfaces = all
        one this host can bind (the kernel's own view of its addresses)."""
        known = self._own_addresses.get(addr)
        if known is None:
            known = self._own_addresses[addr] = self._is_own(addr)
        return known

    def _is_own(self, addr: str) -> bool:
        if addr in self.p.proxy_interfaces:
            return True
        interfaces = {i.lower() for i in self.p.inet_interfaces}
        if "all" not in interfaces:
            if "loopback-only" in interfaces and addr in ("127.0.0.1", "::1"):
                return True
            return addr in interfaces
        if not is_ip(addr):
            return False
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind((addr, 0))
        except OSError:
            return False
        return True

    def in_mynetworks(self, client: ClientState) -> bool:
        return self._networks.match(client.addr)

    def resolve(self, address: str) -> Any:
        return self._resolver.resolve(address)


class _Deferred:
    """A restriction list from an access table value, evaluated by the caller."""

    def __init__(self, coro: Coroutine[Any, Any, Status]) -> None:
        self.coro = coro


# -- helpers -------------------------------------------------------------------

_DSN = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def _dsn_split(default: str, text: str) -> tuple[str, str]:
    """Postfix dsn_split(): a leading x.y.z in the text overrides the default."""
    head, _, rest = text.partition(" ")
    if _DSN.fullmatch(head) and head[0] in "45":
        return head, rest.lstrip()
    return default, text


_DSN_MAP = {
    "1": ("4.1.0", "4.1.1"),
    "2": ("4.1.8", "4.1.2"),
    "3": ("4.1.7", "4.1.3"),
    "4": ("4.1.0", "4.1.4"),
    "5": ("4.1.0", "4.1.5"),
    "6": ("4.1.0", "4.1.6"),
    "7": ("4.1.7", "4.1.3"),
    "8": ("4.1.8", "4.1.2"),
}


def _dsn_fix(dsn: str, cls: str) -> str:
    """Postfix smtpd_dsn_fix(): an address DSN made to fit what is rejected."""
    if dsn[1:4] != ".1.":
        return dsn
    sender, rcpt = _DSN_MAP.get(dsn[4:], ("4.1.0", "4.1.0"))
    if cls == SENDER:
        return sender
    if cls == RECIPIENT:
        return rcpt
    return "4.0.0"


def _as_reply(status: Status) -> Reply | None:
    return status if isinstance(status, Reply) else None


def _has_required(names: Sequence[str]) -> bool:
    required = {
        "reject_unauth_destination",
        "defer_unauth_destination",
        "reject",
        "defer",
        "defer_if_permit",
        "check_relay_domains",
    }
    skip = False
    for name in names:
        low = name.lower()
        if skip:
            skip = False
            continue
        if low == "warn_if_reject":
            skip = True
            continue
        if low == "permit":
            return False
        if low in required:
            return True
    return False


_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")


def valid_hostname(name: str) -> bool:
    """Postfix valid_hostname(): labels of letters, digits, '_' and inner '-', not all
    numeric, at most 63 per label and 255 in all."""
    if not name or len(name) > 255:
        return False
    labels = name.split(".")
    if any(not lab or len(lab) > 63 or not _LABEL.fullmatch(lab) for lab in labels):
        return False
    return not name.replace(".", "").isdigit()


def _is_hostaddr(text: str) -> bool:
    return is_ip(text[5:] if text[:5].lower() == "ipv6:" else text)


def _truncate_dot(name: str) -> str:
    if len(name) > 1 and name.endswith(".") and not name.endswith(".."):
        return name[:-1]
    return name


# -- the individual restrictions ----------------------------------------------

Factory = Callable[[Restrictions], Check]


def _permit(r: Restrictions) -> Check:
    return lambda ctx, name, cls: PERMIT


def _reject(r: Restrictions) -> Check:
    return lambda ctx, name, cls: r.reject(
        ctx, r.p.reject_code, "5.7.1", f"<{name}>: {cls} rejected: Access denied"
    )


def _defer(r: Restrictions) -> Check:
    return lambda ctx, name, cls: r.reject(
        ctx, r.p.defer_code, "4.3.2", f"<{name}>: {cls} rejected: Try again later"
    )


def _defer_if_permit(r: Restrictions) -> Check:
    return lambda ctx, name, cls: r.defer_if_permit(
        ctx, "defer_if_permit", 450, "4.7.0", f"<{name}>: {cls} rejected: defer_if_permit requested"
    )


def _defer_if_reject(r: Restrictions) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        r.defer_if_reject(ctx, 450, "4.7.0", f"<{name}>: {cls} rejected: defer_if_reject requested")
        return None

    return check


def _warn_if_reject(r: Restrictions) -> Check:
    return lambda ctx, name, cls: None  # handled by the list runner


def _unauth_pipelining(r: Restrictions) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        if not ctx.c.ill_pipelining:
            return None
        text = f"<{name}>: {cls} rejected: Improper use of SMTP command pipelining"
        return r.reject(ctx, 503, "5.5.0", text)

    return check


def _plaintext(r: Restrictions) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        if ctx.c.tls:
            return None
        return r.reject(ctx, r.p.plaintext_reject_code, "4.7.1", "Session encryption is required")

    return check


def _permit_mynetworks(r: Restrictions) -> Check:
    return lambda ctx, name, cls: PERMIT if r.in_mynetworks(ctx.c) else None


def _permit_inet_interfaces(r: Restrictions) -> Check:
    # postwall listens on the loopback and the addresses it is configured for.
    return lambda ctx, name, cls: PERMIT if ctx.c.addr in ("127.0.0.1", "::1") else None


def _permit_sasl(r: Restrictions) -> Check:
    return lambda ctx, name, cls: PERMIT if ctx.c.sasl_username else None


def _cert_prints(c: ClientState) -> list[str]:
    # Fingerprints count only for a certificate that verified (see the module docstring).
    if not c.tls_trusted_cert:
        return []
    return [p.lower() for p in (c.cert_fingerprint, c.cert_pkey_fingerprint) if p]


def _permit_tls_clientcerts(r: Restrictions) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        for fp in _cert_prints(ctx.c):
            if any(t.lookup(fp) is not None for t in r._relay_certs):
                return PERMIT
        return None

    return check


def _permit_tls_all_clientcerts(r: Restrictions) -> Check:
    return lambda ctx, name, cls: PERMIT if ctx.c.tls_trusted_cert else None


def _unauth_destination(r: Restrictions, defer: bool) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        if ctx.recipient is None:
            return None
        resolved = r.resolve(ctx.recipient)
        routed = resolved.routed and not r.p.allow_untrusted_routing
        if resolved.cls is not AddressClass.REMOTE and not routed:
            return None
        code = r.p.relay_domains_reject_code - (100 if defer else 0)
        dsn = "4.7.1" if defer else "5.7.1"
        return r.reject(ctx, code, dsn, f"<{ctx.recipient}>: Relay access denied")

    return check


def _permit_auth_destination(r: Restrictions) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        if ctx.recipient is None:
            return None
        resolved = r.resolve(ctx.recipient)
        if resolved.routed and not r.p.allow_untrusted_routing:
            return None
        return PERMIT if resolved.cls is not AddressClass.REMOTE else None

    return check


def _permit_mx_backup(r: Restrictions) -> Check:
    """Postfix 3.7's permit_mx_backup: this host is a backup MX (not a primary) of the
    recipient's domain, and with permit_mx_backup_networks every primary MX address is
    in those networks.  DNS failures defer what would be rejected (450 4.4.4)."""

    async def check(ctx: _Ctx, name: str, cls: str) -> Status:
        if ctx.recipient is None:
            return None
        resolved = r.resolve(ctx.recipient)
        if "@" not in resolved.address:
            return PERMIT
        if resolved.routed and not r.p.allow_untrusted_routing:
            return None
        if resolved.cls is not AddressClass.REMOTE:
            return PERMIT
        domain = resolved.address.rpartition("@")[2].rstrip(".")
        if domain.startswith("["):
            return None
        try:
            domain = domain.encode("idna").decode("ascii")
            records = await _dns_bounded(r, mxdns.mx_records(r._resolver_for_dns(), domain))
        except UnicodeError:
            return None
        except mxdns.NexthopError as err:
            if err.temporary:
                why = "Host not found, try again"
                text = (
                    f"<{name}>: {cls} rejected: Unable to look up mail exchanger information: {why}"
                )
                r.defer_if_reject(ctx, 450, "4.4.4", text)
            return None
        if not records or any(host in ("", ".") for _, host in records):
            return None
        best = min(pref for pref, _ in records)
        primaries = [host for pref, host in records if pref == best]
        backups = [host for pref, host in records if pref != best]
        if await _i_am_mx(r, ctx, primaries, name, cls):
            return None
        if not backups or not await _i_am_mx(r, ctx, backups, name, cls):
            return None
        if r.p.permit_mx_backup_networks:
            for host in primaries:
                if not await _all_in_mx_networks(r, ctx, host, name, cls):
                    return None
        return PERMIT

    return check


async def _dns_bounded(r: Restrictions, lookup: Awaitable[T]) -> T:
    try:
        async with asyncio.timeout(r._dns_timeout):
            return await lookup
    except TimeoutError:
        raise mxdns.NexthopError(True, "4.4.3", "timeout") from None


async def _mx_addresses(
    r: Restrictions, ctx: _Ctx, host: str, what: str, name: str, cls: str
) -> tuple[str, ...] | None:
    """A/AAAA of an MX host, or None after remembering the deferral Postfix asks for."""
    try:
        return await _dns_bounded(r, mxdns.host_addresses(r._resolver_for_dns(), host))
    except mxdns.NexthopError as err:
        why = (
            "Temporary failure in name resolution" if err.temporary else "Name or service not known"
        )
        r.defer_if_reject(
            ctx, 450, "4.4.4", f"<{name}>: {cls} rejected: {what.format(host)}: {why}"
        )
        return None


async def _i_am_mx(r: Restrictions, ctx: _Ctx, hosts: list[str], name: str, cls: str) -> bool:
    """Postfix i_am_mx(): an MX name in mydestination, else an MX address of this host."""
    if any(r.resolve(f"postmaster@{host}").cls is AddressClass.LOCAL for host in hosts):
        return True
    for host in hosts:
        addrs = await _mx_addresses(
            r, ctx, host, "Unable to look up mail exchanger host {}", name, cls
        )
        if addrs and any(r.own_address(a) for a in addrs):
            return True
    return False


async def _all_in_mx_networks(r: Restrictions, ctx: _Ctx, host: str, name: str, cls: str) -> bool:
    addrs = await _mx_addresses(
        r, ctx, host, "Unable to look up host {} as mail exchanger", name, cls
    )
    return bool(addrs) and all(r._mx_networks.match(host, a) for a in addrs or ())


def _helo_syntax(r: Restrictions, fqdn: bool) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        helo = ctx.c.helo
        if helo is None:
            return None
        if helo.startswith("["):
            literal = helo[1:-1] if helo.endswith("]") and len(helo) > 2 else helo
            if _is_hostaddr(literal):
                return None
            return r.reject(
                ctx,
                r.p.invalid_hostname_reject_code,
                "5.5.2",
                f"<{helo}>: {HELO} rejected: invalid ip address",
            )
        test = _truncate_dot(helo)
        if fqdn:
            if valid_hostname(test) and "." in test:
                return None
            code, text = r.p.non_fqdn_reject_code, "need fully-qualified hostname"
        else:
            if valid_hostname(test) or _is_hostaddr(test):
                return None
            code, text = r.p.invalid_hostname_reject_code, "Invalid name"
        return r.reject(ctx, code, "5.5.2", f"<{helo}>: {HELO} rejected: {text}")

    return check


def _non_fqdn_address(r: Restrictions, which: str) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        address = ctx.c.sender if which == SENDER else ctx.recipient
        if not address:
            return None
        domain = address.rpartition("@")[2] if "@" in address else ""
        if domain.startswith("[") and domain.endswith("]"):
            return None
        test = _truncate_dot(domain)
        if test and valid_hostname(test) and "." in test:
            return None
        return r.reject(
            ctx,
            r.p.non_fqdn_reject_code,
            "4.5.2",
            f"<{address}>: {which} rejected: need fully-qualified address",
        )

    return check


def _unknown_domain(r: Restrictions, which: str) -> Check:
    async def check(ctx: _Ctx, name: str, cls: str) -> Status:
        address = ctx.c.sender if which == SENDER else ctx.recipient
        if not address:
            return None
        resolved = r.resolve(address)
        if resolved.cls is AddressClass.LOCAL:
            return None
        domain = resolved.address.rpartition("@")[2]
        if not domain or (domain.startswith("[") and domain.endswith("]")):
            return None
        status = await r.dns_status(_truncate_dot(domain), ("MX", "A", "AAAA"))
        dsn = "4.1.8" if which == SENDER else "4.1.2"
        if status == "ok":
            return None
        if status == "nullmx":
            code = 550 if which == SENDER else 556
            dsn = "4.7.27" if which == SENDER else "4.1.10"
            text = f"<{address}>: {which} rejected: Domain {domain} does not accept mail (nullMX)"
            return r.reject(ctx, code, dsn, text)
        text = f"<{address}>: {which} rejected: Domain not found"
        if status == "notfound":
            return r.reject(ctx, r.p.unknown_address_reject_code, dsn, text)
        return r.defer_if_permit(ctx, r.p.unknown_address_tempfail_action, 450, dsn, text)

    return check


def _unknown_helo(r: Restrictions) -> Check:
    async def check(ctx: _Ctx, name: str, cls: str) -> Status:
        helo = ctx.c.helo
        if helo is None:
            return None
        if helo.startswith("["):
            return await _resolved(_helo_syntax(r, fqdn=False)(ctx, name, cls))
        status = await r.dns_status(_truncate_dot(helo), ("A", "AAAA", "MX"))
        if status in ("ok", "nullmx"):
            return None
        text = f"<{helo}>: {HELO} rejected: Host not found"
        if status == "notfound":
            return r.reject(ctx, r.p.unknown_hostname_reject_code, "4.7.1", text)
        return r.defer_if_permit(ctx, r.p.unknown_helo_hostname_tempfail_action, 450, "4.7.1", text)

    return check


async def _resolved(status: Status | Awaitable[Status]) -> Status:
    return await status if asyncio.iscoroutine(status) else status  # type: ignore[return-value]


def _unlisted(r: Restrictions, which: str) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        address = ctx.c.sender if which == SENDER else ctx.recipient
        if not address:
            return None
        return r._rcpt_maps(ctx, address, which)

    return check


def _multi_recipient_bounce(r: Restrictions) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        # At RCPT any earlier recipient counts; at DATA the message has more than one.
        limit = 0 if ctx.where == "RCPT" else 1
        if ctx.c.sender != "" or ctx.c.rcpt_count <= limit:
            return None
        text = f"<{name}>: {cls} rejected: Multi-recipient bounce"
        return r.reject(ctx, r.p.multi_recipient_bounce_reject_code, "5.5.3", text)

    return check


def _login_owners(r: Restrictions, sender: str) -> list[str] | None:
    resolved = r.resolve(sender)
    for table in r._login_maps:
        value = r._find_address(table, resolved.address)
        if value is not None:
            return [v.lower() for v in split_list(value)]
    return None


def _login_mismatch(r: Restrictions, mode: str) -> Check:
    """reject_{authenticated,known,unauthenticated}_sender_login_mismatch."""

    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        c = ctx.c
        if not r.p.smtpd_sasl_auth_enable or not r._login_maps or not c.sender:
            return None
        user = c.sasl_username
        auth_check = mode == "authenticated" or (mode == "known" and user)
        if auth_check and user:
            owners = _login_owners(r, c.sender)
            if owners is None and mode == "known":
                return None
            if owners is None or user.lower() not in owners:
                text = f"<{c.sender}>: Sender address rejected: not owned by user {user}"
                return r.reject(ctx, 553, "5.7.1", text)
            return None
        if (
            not user
            and mode in ("unauthenticated", "known")
            and _login_owners(r, c.sender) is not None
        ):
            return r.reject(
                ctx, 553, "5.7.1", f"<{c.sender}>: Sender address rejected: not logged in"
            )
        return None

    return check


def _sender_login_mismatch(r: Restrictions) -> Check:
    first, second = _login_mismatch(r, "authenticated"), _login_mismatch(r, "unauthenticated")

    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        return first(ctx, name, cls) or second(ctx, name, cls)  # type: ignore[return-value]

    return check


def _policy_check(r: Restrictions, spec: str) -> Check:
    """check_policy_service: the server's action goes through the access(5) machinery;
    when the server cannot be asked (or answers malformed UTF-8), the default action."""
    service = r._policies.get(spec)
    if service is None:
        settings = policy.parse_service(spec, r.p)
        service = r._policies[spec] = PolicyService(settings, r.p.queue_directory)

    async def check(ctx: _Ctx, name: str, cls: str) -> Status:
        def warn(text: str) -> None:
            ctx.notices.append(("warning", text))

        attrs = policy.request_attributes(ctx.c, ctx.where, ctx.recipient, ctx.etrn, service.s, r.p)
        action = await service.query(attrs, warn)
        if action is not None and r.p.smtputf8_enable and not policy.valid_action(action):
            warn(f'malformed UTF-8 in policy server {spec} response: "{action}"')
            action = None
        if action is None:
            action = service.s.default_action
        status = r.table_result(ctx, spec, action, name, cls)
        if isinstance(status, _Deferred):
            return await status.coro
        return status

    return check


# -- table restrictions: factory(r, table, ref) -> Check ---------------------------

TableFactory = Callable[[Restrictions, Table, str], Check]


def _finish_table(found_status: tuple[bool, Status]) -> Status:
    return found_status[1]


def _client_access(r: Restrictions, table: Table, ref: str) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        c = ctx.c
        namaddr = f"{c.name}[{c.addr}]"
        found, status = r.domain_access(ctx, table, ref, c.name, namaddr, CLIENT)
        if found:
            return status
        return r.addr_access(ctx, table, ref, c.addr, namaddr, CLIENT)[1]

    return check


def _helo_access(r: Restrictions, table: Table, ref: str) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        helo = ctx.c.helo
        if helo is None:
            return None
        return r.domain_access(ctx, table, ref, helo, helo, HELO)[1]

    return check


def _sender_access(r: Restrictions, table: Table, ref: str) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        sender = ctx.c.sender
        if sender is None:
            return None
        if sender == "":
            value = table.lookup(r.p.smtpd_null_access_lookup_key)
            return None if value is None else r.table_result(ctx, ref, value, "", SENDER)
        return r.mail_access(ctx, table, ref, sender, sender, SENDER)

    return check


def _recipient_access(r: Restrictions, table: Table, ref: str) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        if ctx.recipient is None:
            return None
        return r.mail_access(ctx, table, ref, ctx.recipient, ctx.recipient, RECIPIENT)

    return check


def _etrn_access(r: Restrictions, table: Table, ref: str) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        if ctx.etrn is None:
            return None
        return r.domain_access(ctx, table, ref, ctx.etrn, ctx.etrn, ETRN)[1]

    return check


def _ccert_access(r: Restrictions, table: Table, ref: str) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        for fp in _cert_prints(ctx.c):
            value = table.lookup(fp)
            if value is not None:
                status = r.table_result(ctx, ref, value, ctx.c.cert_cn, CCERT)
                if status is not None:
                    return status
        return None

    return check


def _sasl_access(r: Restrictions, table: Table, ref: str) -> Check:
    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        user = ctx.c.sasl_username
        if not r.p.smtpd_sasl_auth_enable or not user:
            return None
        value = table.lookup(user)
        shown = "".join(ch if ch.isprintable() else "_" for ch in user)
        return None if value is None else r.table_result(ctx, ref, value, shown, SASL)

    return check


def _deferring(factory: TableFactory) -> TableFactory:
    """Table checks may return a nested restriction list; run it here."""

    def wrap(r: Restrictions, table: Table, ref: str) -> Check:
        inner = factory(r, table, ref)

        async def check(ctx: _Ctx, name: str, cls: str) -> Status:
            status = inner(ctx, name, cls)
            if isinstance(status, _Deferred):
                return await status.coro
            return status  # type: ignore[return-value]

        return check

    return wrap


_CHECKS: dict[str, Factory] = {
    "permit": _permit,
    "reject": _reject,
    "defer": _defer,
    "defer_if_permit": _defer_if_permit,
    "defer_if_reject": _defer_if_reject,
    "warn_if_reject": _warn_if_reject,
    "reject_unauth_pipelining": _unauth_pipelining,
    "reject_plaintext_session": _plaintext,
    "permit_mynetworks": _permit_mynetworks,
    "permit_inet_interfaces": _permit_inet_interfaces,
    "permit_sasl_authenticated": _permit_sasl,
    "permit_tls_clientcerts": _permit_tls_clientcerts,
    "permit_tls_all_clientcerts": _permit_tls_all_clientcerts,
    "reject_unauth_destination": lambda r: _unauth_destination(r, defer=False),
    "defer_unauth_destination": lambda r: _unauth_destination(r, defer=True),
    "permit_auth_destination": _permit_auth_destination,
    "permit_mx_backup": _permit_mx_backup,
    "reject_invalid_helo_hostname": lambda r: _helo_syntax(r, fqdn=False),
    "reject_invalid_hostname": lambda r: _helo_syntax(r, fqdn=False),
    "reject_non_fqdn_helo_hostname": lambda r: _helo_syntax(r, fqdn=True),
    "reject_non_fqdn_hostname": lambda r: _helo_syntax(r, fqdn=True),
    "reject_unknown_helo_hostname": _unknown_helo,
    "reject_unknown_hostname": _unknown_helo,
    "reject_non_fqdn_sender": lambda r: _non_fqdn_address(r, SENDER),
    "reject_non_fqdn_recipient": lambda r: _non_fqdn_address(r, RECIPIENT),
    "reject_unknown_sender_domain": lambda r: _unknown_domain(r, SENDER),
    "reject_unknown_address": lambda r: _unknown_domain(r, SENDER),
    "reject_unknown_recipient_domain": lambda r: _unknown_domain(r, RECIPIENT),
    "reject_unlisted_sender": lambda r: _unlisted(r, SENDER),
    "reject_unlisted_recipient": lambda r: _unlisted(r, RECIPIENT),
    "check_recipient_maps": lambda r: _unlisted(r, RECIPIENT),
    "reject_multi_recipient_bounce": _multi_recipient_bounce,
    "reject_sender_login_mismatch": _sender_login_mismatch,
    "reject_authenticated_sender_login_mismatch": lambda r: _login_mismatch(r, "authenticated"),
    "reject_known_sender_login_mismatch": lambda r: _login_mismatch(r, "known"),
    "reject_unauthenticated_sender_login_mismatch": lambda r: _login_mismatch(r, "unauthenticated"),
    **dnsbl.CHECKS,
}
_DNS_CHECKS = frozenset(
    {
        "permit_mx_backup",
        "reject_unknown_helo_hostname",
        "reject_unknown_hostname",
        "reject_unknown_sender_domain",
        "reject_unknown_address",
        "reject_unknown_recipient_domain",
        *dnsbl.DOMAIN_CHECKS,
    }
)
_TABLE_CHECKS: dict[str, TableFactory] = {
    name: _deferring(f)
    for name, f in {
        "check_client_access": _client_access,
        "check_helo_access": _helo_access,
        "check_sender_access": _sender_access,
        "check_recipient_access": _recipient_access,
        "check_etrn_access": _etrn_access,
        "check_ccert_access": _ccert_access,
        "check_sasl_access": _sasl_access,
    }.items()
}
