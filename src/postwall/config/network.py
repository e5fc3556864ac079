"""Matching client addresses against mynetworks-style network lists.

Contract: `Networks(patterns)` parses every pattern up front and raises `NetworkError`
(a ValueError) naming the first bad one, so a configuration is rejected at load time,
never at match time. Patterns follow Postfix's mynetworks syntax: `a.b.c.d/len`,
`[ipv6]/len`, bare addresses (with or without brackets), `/file/name` holding more
patterns, and `!pattern` to exclude (first match wins, as in Postfix match_list).
`type:table` patterns raise `NotSupportedError`. An IPv4-mapped IPv6 client address
(::ffff:a.b.c.d) also matches IPv4 networks, since Postfix's smtpd reports such clients
by their IPv4 form. Used by config.load() for validation and by smtpd restrictions.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from .tables import NotSupportedError as TableNotSupported
from .tables import Table, TableError, open_table

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK = ("127.0.0.0/8", "[::1]/128")
_STYLES = ("host", "subnet", "class")


def is_ip(text: str) -> bool:
    """True for an IPv4 or IPv6 address literal (no brackets, no prefix length)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class NetworkError(ValueError):
    pass


class NotSupportedError(NetworkError):
    pass


def style_networks(style: str) -> str:
    """The mynetworks value for a mynetworks_style.

    Postfix adds this host's interface addresses (host), their subnets (subnet) or
    their class A/B/C networks (class). postwall does not enumerate interfaces yet, so
    every style yields the loopback networks: the narrowest trust that still lets local
    submissions relay.
    """
    if style.strip().lower() not in _STYLES:
        raise NetworkError(f'unknown mynetworks_style "{style}" (expected host, subnet or class)')
    return " ".join(LOOPBACK)


def parse_network(pattern: str) -> IPNetwork:
    """One address or network pattern; brackets around IPv6 are optional."""
    text = pattern.strip()
    host, slash, length = text.partition("/")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise NetworkError(f'bad network pattern "{pattern}"') from None
    if not slash:
        return ipaddress.ip_network(addr)
    if not length.isdigit():
        raise NetworkError(f'bad network pattern "{pattern}"')
    try:
        return ipaddress.ip_network(f"{addr}/{length}", strict=True)
    except ValueError as err:
        if "host bits set" in str(err):
            # Postfix refuses these too (cidr_match_parse: "non-null host address bits").
            fixed = ipaddress.ip_network(f"{addr}/{length}", strict=False)
            shown = f"[{fixed.network_address}]" if fixed.version == 6 else fixed.network_address
            raise NetworkError(
                f'non-null host address bits in "{pattern}", '
                f'perhaps you should use "{shown}/{length}" instead'
            ) from None
        raise NetworkError(f'bad network pattern "{pattern}"') from None


def _split(text: str) -> list[str]:
    return [p for p in text.replace(",", " ").split() if p]


@functools.lru_cache(maxsize=4096)
def _client_address(
    text: str,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ipaddress.IPv4Address | None] | None:
    """The address and its IPv4-mapped form; cached, as a session asks for every RCPT."""
    try:
        addr = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    return addr, addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None


class Networks:
    """An ordered list of (network, excluded) entries; see the module contract."""

    def __init__(self, patterns: Iterable[str], *, _depth: int = 0) -> None:
        # A network, or a lookup table (`cidr:/etc/postfix/mynetworks.cidr`) that lists
        # the client address.
        self.entries: list[tuple[IPNetwork | Table, bool]] = []
        for item in patterns:
            self._add(item, _depth)

    def _add(self, item: str, depth: int) -> None:
        negate = item.startswith("!")
        pat = item[1:] if negate else item
        if pat.startswith("/"):
            if negate:
                raise NetworkError(f'negation of a file is not supported: "{item}"')
            if depth > 10:
                raise NetworkError(f'file patterns nested too deeply: "{item}"')
            try:
                text = Path(pat).read_text()
            except OSError as err:
                raise NetworkError(f"open {pat}: {err.strerror}") from None
            for line in text.splitlines():
                for p in _split(line.split("#", 1)[0]):
                    self._add(p, depth + 1)
            return
        try:
            self.entries.append((parse_network(pat), negate))
        except NetworkError:
            kind, colon, _ = pat.partition(":")
            if not (colon and kind.isalnum() and not kind.isdigit()):
                raise
            try:
                self.entries.append((open_table(pat), negate))
            except TableNotSupported as err:
                raise NotSupportedError(str(err)) from None
            except TableError as err:
                raise NetworkError(str(err)) from None

    def match(self, address: str) -> bool:
        """True when `address` matches a non-excluded entry before any excluded one."""
        parsed = _client_address(address)
        if parsed is None:
            return False
        addr, alt = parsed
        for net, negate in self.entries:
            if isinstance(net, Table):
                if net.lookup(str(addr)) is not None or (
                    alt is not None and net.lookup(str(alt)) is not None
                ):
                    return not negate
            elif addr in net or (alt is not None and alt in net):
                return not negate
        return False

    def __contains__(self, address: str) -> bool:
        return self.match(address)
