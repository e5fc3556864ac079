"""Next-hop resolution for the outbound SMTP client, with dnspython's asyncio resolver.

Contract: `await resolve_nexthop(nexthop, resolver=...)` returns the hosts to try, in
order, each with its addresses and port, or raises `NexthopError` whose `temporary` flag
says defer (True) or bounce (False), with Postfix's DSN code and reason text. Nothing
else escapes: every dnspython error is mapped. Semantics follow Postfix 3.7 smtp(8):

- `[host]` or `[host]:port` suppresses the MX lookup; `host` may be an IP literal.
- `domain` or `domain:port`: MX records in preference order, equal preferences in random
  order (RFC 5321 5.1); no MX records means the domain's own A/AAAA records are an
  implicit MX of preference 0; a null MX (`0 .`, RFC 7505) is a permanent failure.
- NXDOMAIN (and "no address at all") is permanent; SERVFAIL, REFUSED, timeouts and
  unreachable name servers are temporary. An MX host whose address lookup fails is
  skipped; if none is left, the failure is temporary when any lookup was.

Which name servers are asked: `make_resolver(nameservers)` builds a resolver for a given
list ("127.0.0.1", "127.0.0.1:5353", "[::1]:5353"); without one, /etc/resolv.conf.
Called by the outbound delivery agent (layer 3); layer 2, no configuration knowledge.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from postwall.config.network import is_ip

__all__ = [
    "MxHost",
    "NexthopError",
    "host_addresses",
    "make_resolver",
    "mx_records",
    "parse_nameserver",
    "parse_nexthop",
    "resolve_nexthop",
]


@dataclass(frozen=True, slots=True)
class MxHost:
    hostname: str  # the MX exchange, the domain itself (implicit MX), or the [host]
    preference: int
    addresses: tuple[str, ...]  # IPv4 first, then IPv6, as the resolver returned them
    port: int


class NexthopError(Exception):
    """No host to try: `temporary` True means defer, False means bounce."""

    def __init__(self, temporary: bool, dsn: str, reason: str) -> None:
        super().__init__(reason)
        self.temporary = temporary
        self.dsn = dsn
        self.reason = reason


def parse_nameserver(spec: str, default_port: int = 53) -> tuple[str, int]:
    """ "127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353" -> (address, port)."""
    text = spec.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad name server: {spec!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isdigit():
            raise ValueError(f"bad name server: {spec!r}")
        port = int(p)
    if not is_ip(host):
        raise ValueError(f"name server must be an IP address: {spec!r}")
    if not 0 < port < 65536:
        raise ValueError(f"bad name server port: {spec!r}")
    return host, port


def make_resolver(
    nameservers: list[str] | None = None, port: int = 53, timeout: float = 10.0
) -> dns.asyncresolver.Resolver:
    """A resolver asking `nameservers` (each may carry its own :port), else resolv.conf.

    `timeout` bounds one whole lookup (dnspython's lifetime), retries included.
    """
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*parse_nameserver(n, port)) for n in nameservers
        ]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 3.0)
    return resolver


def parse_nexthop(nexthop: str, default_port: int = 25) -> tuple[str, int, bool]:
    """ "[host]:port" / "domain:port" -> (host, port, mx_lookup)."""
    text = nexthop.strip()
    if not text:
        raise ValueError("empty next hop")
    port = default_port
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not host:
            raise ValueError(f"bad next hop: {nexthop!r}")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad next hop: {nexthop!r}")
            port = int(rest[1:])
        if host.lower().startswith("ipv6:"):
            host = host[5:]
        mx = False
    else:
        host, colon, p = text.rpartition(":")
        if colon and p.isdigit():
            port = int(p)
        else:
            host = text
        mx = True
    if not 0 < port < 65536:
        raise ValueError(f"bad port in next hop: {nexthop!r}")
    return host.rstrip(".") if not is_ip(host) else host, port, mx


def _not_found(name: str, rtype: str) -> NexthopError:
    return NexthopError(
        False,
        "5.4.4",
        f"Host or domain name not found. Name service error for name={name} type={rtype}: "
        "Host not found",
    )


def _try_again(name: str, rtype: str) -> NexthopError:
    return NexthopError(
        True,
        "4.4.3",
        f"Host or domain name not found. Name service error for name={name} type={rtype}: "
        "Host not found, try again",
    )


async def _query(resolver: dns.asyncresolver.Resolver, name: str, rtype: str) -> list[object]:
    """Records of one type; [] for NODATA; NexthopError for NXDOMAIN or failures."""
    try:
        answer = await resolver.resolve(name, rtype, search=False)
    except dns.resolver.NXDOMAIN:
        raise _not_found(name, rtype) from None
    except dns.resolver.NoAnswer:
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers, OSError):
        raise _try_again(name, rtype) from None
    except dns.exception.DNSException:
        # Malformed names, YXDOMAIN and the like: Postfix defers "malformed reply" too.
        raise NexthopError(
            True,
            "4.4.3",
            f"Name service error for name={name} type={rtype}: "
            "Malformed or unexpected name server reply",
        ) from None
    return list(answer)


async def _addresses(
    resolver: dns.asyncresolver.Resolver, host: str, families: tuple[str, ...]
) -> tuple[str, ...]:
    """A then AAAA records of `host` (CNAMEs followed); NexthopError if neither exists."""
    found: list[str] = []
    errors: list[NexthopError] = []
    for family, rtype in (("ipv4", "A"), ("ipv6", "AAAA")):
        if family not in families:
            continue
        try:
            found += [r.address for r in await _query(resolver, host, rtype)]  # type: ignore[attr-defined]
        except NexthopError as err:
            errors.append(err)
    if found:
        return tuple(found)
    temporary = [e for e in errors if e.temporary]
    if temporary:
        raise temporary[0]
    if errors:
        raise errors[0]
    last = "AAAA" if "ipv6" in families else "A"
    raise NexthopError(
        False,
        "5.4.4",
        f"Host or domain name not found. Name service error for name={host} type={last}: "
        "Host found but no data record of requested type",
    )


async def mx_records(resolver: dns.asyncresolver.Resolver, domain: str) -> list[tuple[int, str]]:
    """(preference, exchange) of `domain`'s MX records, [] when it has none; NexthopError
    (with `temporary`) when the lookup fails (smtpd's permit_mx_backup)."""
    records = await _query(resolver, domain, "MX")
    return [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in records]  # type: ignore[attr-defined]


async def host_addresses(
    resolver: dns.asyncresolver.Resolver,
    host: str,
    inet_protocols: tuple[str, ...] = ("ipv4", "ipv6"),
) -> tuple[str, ...]:
    """A, then AAAA addresses of `host`; NexthopError when it has none."""
    return await _addresses(resolver, host, inet_protocols)


async def resolve_nexthop(
    nexthop: str,
    *,
    resolver: dns.asyncresolver.Resolver | None = None,
    nameservers: list[str] | None = None,
    port: int = 53,
    default_port: int = 25,
    inet_protocols: tuple[str, ...] = ("ipv4", "ipv6"),
    rng: random.Random | None = None,
) -> list[MxHost]:
    """The hosts to try for `nexthop` (see the module docstring); NexthopError if none."""
    if resolver is None:
        resolver = make_resolver(nameservers, port)
    try:
        host, dport, mx = parse_nexthop(nexthop, default_port)
    except ValueError as err:
        raise NexthopError(False, "5.4.4", f"Name service error for {nexthop}: {err}") from None
    if is_ip(host):
        return [MxHost(host, 0, (host,), dport)]
    try:
        dns.name.from_text(host)
    except dns.exception.DNSException:
        raise NexthopError(
            False, "5.4.4", f"Name service error for {host}: invalid host or domain name"
        ) from None
    if not mx:
        return [MxHost(host, 0, await _addresses(resolver, host, inet_protocols), dport)]
    records = await _query(resolver, host, "MX")
    if not records:
        # RFC 5321 5.1: no MX records, the domain itself is the implicit MX.
        return [MxHost(host, 0, await _addresses(resolver, host, inet_protocols), dport)]
    if any(r.exchange == dns.name.root for r in records):  # type: ignore[attr-defined]
        # RFC 7505 3: "0 ." says the domain accepts no mail at all (Postfix: 5.1.0).
        raise NexthopError(False, "5.1.0", f"Domain {host} does not accept mail (nullMX)")
    pairs = {(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in records}  # type: ignore[attr-defined]
    rng = rng or random.SystemRandom()
    hosts: list[MxHost] = []
    errors: list[NexthopError] = []
    for pref in sorted({p for p, _ in pairs}):
        names = [n for p, n in pairs if p == pref]
        rng.shuffle(names)
        for name in names:
            try:
                addrs = await _addresses(resolver, name, inet_protocols)
            except NexthopError as err:
                errors.append(err)
                continue
            hosts.append(MxHost(name, pref, addrs, dport))
    if hosts:
        return hosts
    if any(e.temporary for e in errors):
        raise next(e for e in errors if e.temporary)
    raise NexthopError(False, "5.4.4", f"no MX host for {host} has a valid address record")
