"""DNS-based client checks: the client's name, and the DNS allow/deny lists (DNSxL).

Who calls it: the smtpd session calls `lookup_client_name()` once per connection (when
smtpd_peername_lookup = yes) and keeps the `PeerName` in its `ClientState.peer`; the
restriction engine (`smtpd.restrictions`) registers the restrictions built here:

- reject_unknown_client_hostname (reject_unknown_client), reject_unknown_reverse_client_hostname
- reject_rbl_client (reject_rbl), permit_dnswl_client (address lists)
- reject_rhsbl_client, reject_rhsbl_reverse_client, reject_rhsbl_helo, reject_rhsbl_sender,
  reject_rhsbl_recipient, permit_rhswl_client (domain lists)

Semantics are Postfix 3.7's (smtpd_peer.c, smtpd_check.c):

- The client name: the PTR name is the *reverse* name; it becomes the (verified) client
  name only if its forward lookup, in the client's address family, lists the address.
  Each has a status: ok, temporary failure (4xx) or permanent failure (the configured
  unknown_client_reject_code); a PTR that does not resolve back is "forged", permanent.
  Numeric or malformed PTR names count as no name.  Lookups go through libc (so
  /etc/hosts counts, as in Postfix) or, when postwall_dns_servers is set, through
  dnspython against those servers.
- DNSxL queries: reversed IPv4 octets or IPv6 nibbles (or the domain) + the list's
  domain; an A record lists the name, a `=pattern` (Postfix ip_match: `127.0.0.2`,
  `127.0.0.[2..11]`, `127.0.0.[2;4]`) restricts which replies count.  TXT records (up to
  500 characters, joined with " / ") become $rbl_reason.  A lookup that fails
  temporarily lists nothing (with Postfix's "RBL lookup error" warning), except that
  a DNSWL then turns a later reject into a 450 deferral (defer_if_reject).
- Replies: rbl_reply_maps (keyed by the restriction's argument) or default_rbl_reply,
  expanded like Postfix's mac_expand (no recursion, smtpd_expansion_filter applied to
  each value, an unknown $name makes the template bad: a warning, then the default).

Results are cached per restriction set (a reload starts afresh): listings for their
DNS TTL (at most an hour), misses for a minute, temporary failures for 30 seconds.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver
import dns.reversename

from postwall.config.maincf import Expander, ExpandError
from postwall.config.network import is_ip
from postwall.dns import make_resolver

if TYPE_CHECKING:
    from postwall.smtpd.restrictions import Check, Restrictions, Status, _Ctx

# Postfix SMTPD_PEER_CODE_*: a status >= PERM is permanent.
OK, TEMP, PERM, FORGED = 2, 4, 5, 6
UNKNOWN = "unknown"
REVERSE_CLIENT = "Unverified Client host"  # Postfix SMTPD_NAME_REV_CLIENT
_TXT_LIMIT = 500  # Postfix RBL_TXT_LIMIT
_NAME_TIMEOUT = 10.0
_CACHE_SIZE = 1000
_NAMES_KEPT = 4096  # client names remembered (a few hundred bytes each)
_MISS_TTL = 60.0
_SOFT_TTL = 30.0  # also keeps the "RBL lookup error" warning to one per query and period
_HIT_TTL_MAX = 3600.0


@dataclass(frozen=True, slots=True)
class PeerName:
    """What Postfix keeps of the client's name (SMTPD_STATE name/reverse_name)."""

    name: str = UNKNOWN  # the verified name, or "unknown"
    reverse_name: str = UNKNOWN  # the PTR name, verified or not, or "unknown"
    name_status: int = PERM
    reverse_name_status: int = PERM
    warnings: tuple[str, ...] = ()  # for the log, as Postfix's smtpd warns


def peer_of(name: str) -> PeerName:
    """The PeerName implied by a bare client name (no lookup was recorded)."""
    if name.lower() == UNKNOWN:
        return PeerName()
    return PeerName(name, name, OK, OK)


# -- the client name -------------------------------------------------------------------

_TEMP_EAI = frozenset({socket.EAI_AGAIN, socket.EAI_MEMORY, getattr(socket, "EAI_SYSTEM", -11)})
_EAI_NONAME_TEXT = "Name or service not known"
_EAI_NODATA_TEXT = "No address associated with hostname"
_EAI_AGAIN_TEXT = "Temporary failure in name resolution"


class _NameError(Exception):
    def __init__(self, temporary: bool, text: str) -> None:
        super().__init__(text)
        self.temporary = temporary
        self.text = text


@functools.lru_cache(maxsize=8)
def _name_resolver(servers: tuple[str, ...]) -> dns.asyncresolver.Resolver:
    return make_resolver(list(servers), timeout=_NAME_TIMEOUT)


class ClientNames:
    """The client-name lookup of one smtpd service, with a short memory.

    A busy client opens connection after connection; looking its name up each time
    costs two lookups through libc's thread pool (measured: 13 % of the CPU of a
    resumed-TLS session with one message).  An answer is kept `keep` seconds, never
    longer than its DNS TTL; a temporary failure is never kept.  A reload builds a new
    service, so it starts afresh (an edited /etc/hosts is then seen at once).
    """

    def __init__(self, servers: tuple[str, ...] = (), keep: float = 0.0) -> None:
        self.servers = servers
        self.keep = keep
        self._known: dict[str, tuple[float, PeerName]] = {}

    async def lookup(self, loop: asyncio.AbstractEventLoop, addr: str) -> PeerName:
        hit = self._known.get(addr)
        if hit is not None:
            if hit[0] > time.monotonic():
                return hit[1]
            del self._known[addr]
        seen = _Seen(ttl=self.keep)
        peer = await lookup_client_name(loop, addr, self.servers, seen)
        if seen.ttl > 0 and TEMP not in (peer.name_status, peer.reverse_name_status):
            if len(self._known) >= _NAMES_KEPT:
                del self._known[next(iter(self._known))]  # the oldest entry
            self._known[addr] = (time.monotonic() + seen.ttl, peer)
        return peer


@dataclass(slots=True)
class _Seen:
    """What a name lookup learnt on its way: the PTR name, the shortest DNS TTL."""

    ptr: str | None = None
    ttl: float = 0.0

    def answered(self, answer: dns.resolver.Answer) -> None:
        self.ttl = min(self.ttl, float(answer.rrset.ttl if answer.rrset is not None else 0))


async def lookup_client_name(
    loop: asyncio.AbstractEventLoop,
    addr: str,
    servers: tuple[str, ...] = (),
    seen: _Seen | None = None,
) -> PeerName:
    """Postfix smtpd_peer_sockaddr_to_hostname(): the PTR name, then its forward check."""
    resolver = _name_resolver(servers) if servers else None
    seen = seen if seen is not None else _Seen()
    try:
        async with asyncio.timeout(_NAME_TIMEOUT):
            return await _lookup(loop, addr, resolver, seen)
    except TimeoutError:
        if seen.ptr is None:
            return PeerName(UNKNOWN, UNKNOWN, TEMP, TEMP)
        warning = f"hostname {seen.ptr} does not resolve to address {addr}: {_EAI_AGAIN_TEXT}"
        return PeerName(UNKNOWN, seen.ptr, TEMP, OK, (warning,))


async def _lookup(
    loop: asyncio.AbstractEventLoop,
    addr: str,
    resolver: dns.asyncresolver.Resolver | None,
    seen: _Seen,
) -> PeerName:
    from postwall.smtpd.restrictions import valid_hostname

    try:
        if resolver is None:
            # NI_NUMERICSERV: no /etc/services parse for a port nobody reads.
            flags = socket.NI_NAMEREQD | socket.NI_NUMERICSERV
            name = (await loop.getnameinfo((addr, 0), flags))[0]
        else:
            name = await _dns_ptr(resolver, addr, seen)
    except _NameError as err:
        status = TEMP if err.temporary else PERM
        return PeerName(UNKNOWN, UNKNOWN, status, status)
    except socket.gaierror as err:
        status = TEMP if err.errno in _TEMP_EAI else PERM
        return PeerName(UNKNOWN, UNKNOWN, status, status)
    except (OSError, UnicodeError):
        return PeerName(UNKNOWN, UNKNOWN, TEMP, TEMP)
    # Postfix sockaddr_to_hostname(): a numeric or malformed name is no name.
    if not name.strip("0123456789abcdefABCDEF.:") and is_ip(name):
        return PeerName(warnings=(f"numeric hostname: {name}",))
    if not valid_hostname(name):
        return PeerName()
    seen.ptr = name
    v6 = ":" in addr
    try:
        if resolver is None:
            family = socket.AF_INET6 if v6 else socket.AF_INET
            infos = await loop.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
            found = [str(info[4][0]) for info in infos]
        else:
            found = await _dns_addresses(resolver, name, v6, seen)
    except (_NameError, socket.gaierror, OSError, UnicodeError) as err:
        if isinstance(err, _NameError):
            temporary, text = err.temporary, err.text
        elif isinstance(err, socket.gaierror):
            temporary, text = err.errno in _TEMP_EAI, str(err.strerror)
        else:
            temporary, text = True, _EAI_AGAIN_TEXT
        warning = f"hostname {name} does not resolve to address {addr}: {text}"
        return PeerName(UNKNOWN, name, TEMP if temporary else FORGED, OK, (warning,))
    if addr in found or (v6 and _same_ipv6(addr, found)):
        return PeerName(name, name, OK, OK)
    warning = f"hostname {name} does not resolve to address {addr}"
    return PeerName(UNKNOWN, name, FORGED, OK, (warning,))


def _same_ipv6(addr: str, found: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
        return any(ipaddress.ip_address(f.partition("%")[0]) == ip for f in found)
    except ValueError:
        return False


async def _dns_ptr(resolver: dns.asyncresolver.Resolver, addr: str, seen: _Seen) -> str:
    try:
        query = dns.reversename.from_address(addr)
    except (dns.exception.SyntaxError, ValueError):
        raise _NameError(False, _EAI_NONAME_TEXT) from None
    try:
        answer = await resolver.resolve(query, "PTR", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        raise _NameError(False, _EAI_NONAME_TEXT) from None
    except (dns.exception.DNSException, OSError):
        raise _NameError(True, _EAI_AGAIN_TEXT) from None
    seen.answered(answer)
    return str(answer[0].target.to_text(omit_final_dot=True))  # type: ignore[attr-defined]


async def _dns_addresses(
    resolver: dns.asyncresolver.Resolver, name: str, v6: bool, seen: _Seen
) -> list[str]:
    try:
        answer = await resolver.resolve(name, "AAAA" if v6 else "A", search=False)
    except dns.resolver.NXDOMAIN:
        raise _NameError(False, _EAI_NONAME_TEXT) from None
    except dns.resolver.NoAnswer:
        raise _NameError(False, _EAI_NODATA_TEXT) from None
    except (dns.exception.DNSException, OSError):
        raise _NameError(True, _EAI_AGAIN_TEXT) from None
    seen.answered(answer)
    return [r.address for r in answer]  # type: ignore[attr-defined]


# -- DNSxL queries -----------------------------------------------------------------------

Octet = tuple[tuple[int, int], ...]  # inclusive ranges one octet may take


def parse_reply_filter(pattern: str) -> tuple[Octet, ...]:
    """Postfix ip_match_parse(): `d.d.d.d`, each field a number or `[n;n..m;...]`."""
    text = pattern
    if text.startswith("[") and _closing(text) == len(text) - 1:
        text = text[1:-1]
    if not text:
        raise ValueError("empty address pattern")
    fields = _split_fields(text)
    if len(fields) != 4:
        raise ValueError(f'need four address fields in "{pattern}"')
    out: list[Octet] = []
    for field_ in fields:
        members = field_[1:-1].split(";") if field_.startswith("[") else [field_]
        if field_.startswith("[") and not field_.endswith("]"):
            raise ValueError(f'need ";" or "]" in "{pattern}"')
        ranges: list[tuple[int, int]] = []
        for member in members:
            lo, dots, hi = member.partition("..")
            first, last = _octet(lo, pattern), _octet(hi if dots else lo, pattern)
            if first > last:
                raise ValueError(f'numeric range error in "{pattern}"')
            ranges.append((first, last))
        out.append(tuple(ranges))
    return tuple(out)


def _closing(text: str) -> int:
    depth = 0
    for i, ch in enumerate(text):
        depth += (ch == "[") - (ch == "]")
        if depth == 0:
            return i
    return -1


def _split_fields(text: str) -> list[str]:
    fields, current, inside = [], "", False
    for ch in text:
        if ch == "." and not inside:
            fields.append(current)
            current = ""
            continue
        inside = (inside or ch == "[") and ch != "]"
        current += ch
    fields.append(current)
    return fields


def _octet(text: str, pattern: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 255:
        raise ValueError(f'need decimal number 0..255 in "{pattern}"')
    return int(text)


def filter_matches(octets: tuple[Octet, ...], address: str) -> bool:
    try:
        parts = [int(p) for p in address.split(".")]
    except ValueError:
        return False
    if len(parts) != 4:
        return False
    return all(
        any(lo <= v <= hi for lo, hi in field_) for v, field_ in zip(parts, octets, strict=True)
    )


def address_query(addr: str, domain: str) -> str | None:
    """Reversed IPv4 octets or IPv6 nibbles, then the list's domain (None: no address)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if ip.version == 6:
        nibbles = ip.exploded.replace(":", "")
        return ".".join(reversed(nibbles)) + "." + domain
    return ".".join(reversed(addr.split("."))) + "." + domain


def domain_query(what: str, domain: str) -> str | None:
    """Postfix find_dnsxl_domain(): the domain of `what` (an address or a name) + the
    list's domain; None when it must not be looked up."""
    from postwall.smtpd.restrictions import valid_hostname

    name = what.rpartition("@")[2]
    if not name or name.startswith("["):
        return None
    # Some lists refuse "IP queries"; Postfix skips names ending in a numeric label.
    if name.rpartition(".")[2].isdigit():
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not valid_hostname(name):
        return None
    return f"{name}.{domain}"


# -- lookups ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listing:
    addresses: tuple[str, ...]  # the A records
    txt: str | None  # TXT records joined, or None


class _Soft:
    def __repr__(self) -> str:
        return "SOFT"


SOFT = _Soft()  # a temporary failure: not listed, but a DNSWL defers a later reject
Found = Listing | _Soft | None


class DnsxlLookups:
    """The DNS side of the DNSxL restrictions of one restriction set, with its cache."""

    def __init__(self, resolver: Callable[[], dns.asyncresolver.Resolver], timeout: float) -> None:
        self._resolver = resolver
        self._timeout = timeout
        self._cache: dict[str, tuple[float, Found]] = {}

    async def find(self, query: str, notices: list[tuple[str, str]]) -> Found:
        """Postfix rbl_pagein(): A records, then TXT records of a listed name."""
        now = time.monotonic()
        cached = self._cache.get(query)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            dns.name.from_text(query)
            resolver = self._resolver()
            async with asyncio.timeout(self._timeout):
                answer = await resolver.resolve(query, "A", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self._remember(query, now + _MISS_TTL, None)
            return None
        except (TimeoutError, dns.exception.DNSException, OSError):
            notices.append(
                (
                    "warning",
                    f"{query}: RBL lookup error: Host or domain name not found. "
                    f"Name service error for name={query} type=A: Host not found, try again",
                )
            )
            self._remember(query, now + _SOFT_TTL, SOFT)
            return SOFT
        listing = Listing(
            tuple(r.address for r in answer),  # type: ignore[attr-defined]
            await self._txt(query),
        )
        ttl = min(max(answer.expiration - time.time(), 0.0), _HIT_TTL_MAX)
        self._remember(query, now + ttl, listing)
        return listing

    async def _txt(self, query: str) -> str | None:
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._resolver().resolve(query, "TXT", search=False)
        except (TimeoutError, dns.exception.DNSException, OSError):
            return None
        out = ""
        records = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]  # type: ignore[attr-defined]
        for i, text in enumerate(records):
            space = _TXT_LIMIT - len(out)
            if space <= 0:
                break
            out += text[:space]
            if i + 1 < len(records) and _TXT_LIMIT - len(out) > 3:
                out += " / "
        return out

    def _remember(self, query: str, expires: float, value: Found) -> None:
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.pop(next(iter(self._cache)))
        self._cache.pop(query, None)
        self._cache[query] = (expires, value)


# -- reply text ------------------------------------------------------------------------


def unescape(text: str) -> str:
    """Postfix unescape(): \\a \\b \\f \\n \\r \\t \\v \\\\ and \\NNN octal."""
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        i += 1
        if ch != "\\" or i >= len(text):
            out.append(ch)
            continue
        ch = text[i]
        i += 1
        if ch in simple:
            out.append(simple[ch])
        elif ch in "01234567":
            digits = ch
            while len(digits) < 3 and i < len(text) and text[i] in "01234567":
                digits += text[i]
                i += 1
            out.append(chr(int(digits, 8)))
        else:
            out.append(ch)
    return "".join(out)


def expand_reply(
    template: str, lookup: Callable[[str], str | None], allowed: str
) -> tuple[str | None, list[str]]:
    """mac_expand() without recursion: (text, unknown names); text None when the template
    is malformed.  Characters of a value outside `allowed` become '_'."""
    unknown: list[str] = []

    def raw(name: str) -> str | None:
        value = lookup(name)
        if value is None:
            unknown.append(name)
            return None
        # Values are literal: keep "$" from being expanded again.
        return "".join(ch if ch in allowed else "_" for ch in value).replace("$", "$$")

    try:
        return Expander(raw).expand(template), unknown
    except ExpandError:
        return None, unknown


# -- the restrictions ------------------------------------------------------------------


def _lookups(r: Restrictions) -> DnsxlLookups:
    found = getattr(r, "_dnsxl", None)
    if found is None:
        found = DnsxlLookups(r._resolver_for_dns, r._dns_timeout)
        r._dnsxl = found  # type: ignore[attr-defined]
    return found  # type: ignore[no-any-return]


# Every $name a reply template may use (Postfix rbl_expand_lookup, smtpd_expand_lookup).
_NAMES = [
    "rbl_code",
    "rbl_domain",
    "rbl_reason",
    "rbl_txt",
    "rbl_what",
    "rbl_class",
    "server_name",
    "client",
    "client_port",
    "client_address",
    "client_name",
    "reverse_client_name",
    "helo_name",
    "localtime",
    "sender",
    "sender_name",
    "sender_domain",
    "recipient",
    "recipient_name",
    "recipient_domain",
]


def _spec(r: Restrictions, arg: str) -> tuple[str, tuple[Octet, ...] | None]:
    """ "domain[=pattern]" -> (domain, parsed pattern); opens rbl_reply_maps once."""
    if getattr(r, "_rbl_reply_maps", None) is None:
        r._rbl_reply_maps = [r._table(ref, "rbl_reply_maps") for ref in r.p.rbl_reply_maps]  # type: ignore[attr-defined]
        # Postfix finds a bad default template at the first listing (fatal); say so now.
        text, unknown = expand_reply(r.p.default_rbl_reply, dict.fromkeys(_NAMES, "x").get, "x")
        if text is None or unknown:
            raise ValueError(
                f"default_rbl_reply: bad default rbl reply template: {r.p.default_rbl_reply}"
            )
    domain, eq, pattern = arg.partition("=")
    if not domain:
        raise ValueError(f'empty DNS list domain in "{arg}"')
    if not eq:
        return domain, None
    try:
        return domain, parse_reply_filter(pattern)
    except ValueError as err:
        raise ValueError(f"RBL reply error: {err}") from None


async def _find(r: Restrictions, ctx: _Ctx, query: str, octets: tuple[Octet, ...] | None) -> Found:
    found = await _lookups(r).find(query, ctx.notices)
    if (
        isinstance(found, Listing)
        and octets is not None
        and not any(filter_matches(octets, a) for a in found.addresses)
    ):
        return None
    return found


def _reply(r: Restrictions, ctx: _Ctx, listing: Listing, arg: str, what: str, cls: str) -> Status:
    """Postfix rbl_reject_reply()."""
    from postwall.smtpd import restrictions as R

    c = ctx.c
    template: str | None = None
    for table in r._rbl_reply_maps:  # type: ignore[attr-defined]
        template = table.lookup(arg)
        if template is not None:
            break
    names: dict[str, str] = {
        "rbl_code": str(r.p.maps_rbl_reject_code),
        "rbl_domain": arg.partition("=")[0],
        "rbl_reason": listing.txt or "",
        "rbl_txt": listing.txt or "",
        "rbl_what": what,
        "rbl_class": cls,
        "server_name": r.p.myhostname,
        "client": f"{c.name}[{c.addr}]",
        "client_port": c.extra.get("client_port", ""),
        "client_address": c.addr,
        "client_name": c.name,
        "reverse_client_name": (c.peer or peer_of(c.name)).reverse_name,
        "helo_name": c.helo or "",
        "localtime": time.strftime("%b %d %H:%M:%S"),
    }
    for prefix, address in (("sender", c.sender), ("recipient", ctx.recipient)):
        # Postfix smtpd_expand_addr(): "<>" stands for the null address.
        local, at, domain = (address or "").rpartition("@")
        if address is None:
            names[prefix] = names[f"{prefix}_name"] = names[f"{prefix}_domain"] = ""
        elif not address:
            names[prefix] = names[f"{prefix}_name"] = "<>"
            names[f"{prefix}_domain"] = ""
        else:
            names[prefix] = address
            names[f"{prefix}_name"] = local if at else address
            names[f"{prefix}_domain"] = domain if at else ""
    allowed = unescape(r.p.smtpd_expansion_filter)
    text: str | None = None
    while text is None:
        default = template is None
        text, unknown = expand_reply(template or r.p.default_rbl_reply, names.get, allowed)
        for name in unknown:
            ctx.notices.append(("warning", f'unknown macro name "{name}" in expansion request'))
        if unknown:
            text = None
        if text is None:
            if default:
                raise R.ConfigurationError(
                    f"rbl_reject_reply: bad default rbl reply template: {r.p.default_rbl_reply}"
                )
            ctx.notices.append(
                (
                    "warning",
                    f"rbl_reject_reply: bad rbl reply template for domain {arg}: {template}",
                )
            )
            template = None
    if len(text) < 4 or text[0] not in "45" or not text[1:3].isdigit() or text[3] != " ":
        ctx.notices.append(("warning", f"rbl response code configuration error: {text}"))
        return r.reject(ctx, 450, "4.7.1", "Service unavailable")
    dsn, rest = R._dsn_split("4.7.1", text[4:].lstrip())
    return r.reject(ctx, int(text[:3]), R._dsn_fix(dsn, cls), rest or "Service unavailable")


def _client_name(r: Restrictions, reverse: bool) -> Check:
    """reject_unknown_client_hostname / reject_unknown_reverse_client_hostname."""

    def check(ctx: _Ctx, name: str, cls: str) -> Status:
        peer = ctx.c.peer or peer_of(ctx.c.name)
        if reverse:
            status, dsn, what = peer.reverse_name_status, "4.7.1", "reverse hostname"
            permanent = status == PERM  # Postfix: only PERM, never FORGED, here
        else:
            # RFC 7372 (Email Authentication Status Codes): 4.7.25 for the verified name.
            status, dsn, what = peer.name_status, "4.7.25", "hostname"
            permanent = status >= PERM
        if status == OK:
            return None
        code = r.p.unknown_client_reject_code if permanent else 450
        text = f"Client host rejected: cannot find your {what}, [{ctx.c.addr}]"
        return r.reject(ctx, code, dsn, text)

    return check


def _reject_addr(r: Restrictions, arg: str) -> Check:
    """reject_rbl_client domain[=pattern]."""
    domain, octets = _spec(r, arg)

    async def check(ctx: _Ctx, name: str, cls: str) -> Status:
        from postwall.smtpd.restrictions import CLIENT

        query = address_query(ctx.c.addr, domain)
        found = None if query is None else await _find(r, ctx, query, octets)
        if not isinstance(found, Listing):
            return None
        return _reply(r, ctx, found, arg, ctx.c.addr, CLIENT)

    return check


def _allowlisting(r: Restrictions, ctx: _Ctx) -> bool:
    """Postfix: a DNS allow list never permits an unauthorized recipient."""
    from postwall.smtpd import restrictions as R

    if ctx.where != "RCPT" or ctx.recipient is None:
        return True
    return R._permit_auth_destination(r)(ctx, ctx.recipient, R.RECIPIENT) is R.PERMIT


def _permit(r: Restrictions, ctx: _Ctx, found: Found, what: str, cls: str) -> Status:
    from postwall.smtpd.restrictions import PERMIT

    if found is SOFT:
        r.defer_if_reject(ctx, 450, "4.7.1", f"<{what}>: {cls} rejected: Service unavailable")
        return None
    return PERMIT if isinstance(found, Listing) else None


def _permit_addr(r: Restrictions, arg: str) -> Check:
    """permit_dnswl_client domain[=pattern]."""
    domain, octets = _spec(r, arg)

    async def check(ctx: _Ctx, name: str, cls: str) -> Status:
        from postwall.smtpd.restrictions import CLIENT

        query = address_query(ctx.c.addr, domain)
        if query is None or not _allowlisting(r, ctx):
            return None
        found = await _find(r, ctx, query, octets)
        return _permit(r, ctx, found, ctx.c.addr, CLIENT)

    return check


def _subject(which: str, ctx: _Ctx) -> tuple[str | None, str]:
    """What a domain list looks up for each restriction, and its reply class."""
    from postwall.smtpd import restrictions as R

    c = ctx.c
    if which == "client":
        return (c.name if c.name.lower() != UNKNOWN else None), R.CLIENT
    if which == "reverse_client":
        rev = (c.peer or peer_of(c.name)).reverse_name
        return (rev if rev.lower() != UNKNOWN else None), REVERSE_CLIENT
    if which == "helo":
        return c.helo, R.HELO
    if which == "sender":
        return (c.sender or None), R.SENDER
    return ctx.recipient, R.RECIPIENT


def _reject_domain(which: str) -> Callable[[Restrictions, str], Check]:
    """reject_rhsbl_{client,reverse_client,helo,sender,recipient} domain[=pattern]."""

    def factory(r: Restrictions, arg: str) -> Check:
        domain, octets = _spec(r, arg)

        async def check(ctx: _Ctx, name: str, cls: str) -> Status:
            what, reply_class = _subject(which, ctx)
            query = domain_query(what, domain) if what else None
            if query is None:
                return None
            found = await _find(r, ctx, query, octets)
            if not isinstance(found, Listing):
                return None
            return _reply(r, ctx, found, arg, what, reply_class)  # type: ignore[arg-type]

        return check

    return factory


def _permit_domain(r: Restrictions, arg: str) -> Check:
    """permit_rhswl_client domain[=pattern]."""
    domain, octets = _spec(r, arg)

    async def check(ctx: _Ctx, name: str, cls: str) -> Status:
        what, reply_class = _subject("client", ctx)
        if what is None or not _allowlisting(r, ctx):
            return None
        query = domain_query(what, domain)
        if query is None:
            return None
        found = await _find(r, ctx, query, octets)
        return _permit(r, ctx, found, what, reply_class)

    return check


# Registered by smtpd.restrictions: restrictions without an argument take (r), those with
# a DNS list domain take (r, "domain[=pattern]").
CHECKS: dict[str, Callable[[Restrictions], Check]] = {
    "reject_unknown_client_hostname": lambda r: _client_name(r, reverse=False),
    "reject_unknown_client": lambda r: _client_name(r, reverse=False),
    "reject_unknown_reverse_client_hostname": lambda r: _client_name(r, reverse=True),
}
DOMAIN_CHECKS: dict[str, Callable[[Restrictions, str], Check]] = {
    "reject_rbl_client": _reject_addr,
    "reject_rbl": _reject_addr,
    "permit_dnswl_client": _permit_addr,
    "reject_rhsbl_client": _reject_domain("client"),
    "reject_rhsbl_reverse_client": _reject_domain("reverse_client"),
    "reject_rhsbl_helo": _reject_domain("helo"),
    "reject_rhsbl_sender": _reject_domain("sender"),
    "reject_rhsbl_recipient": _reject_domain("recipient"),
    "permit_rhswl_client": _permit_domain,
}
