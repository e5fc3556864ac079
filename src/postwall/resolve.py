"""Address resolution: which class a recipient's domain belongs to and where it goes.

This is postwall's counterpart of Postfix's trivial-rewrite: smtpd asks it whether a
recipient is local, relayed or remote (relay control, the local recipient check) and
the queue manager asks it which transport delivers a recipient.  Both must agree,
so the rules live here once.

Guarantees: pure decisions over the configuration and its lookup tables, no I/O
beyond table lookups; an address without a domain is qualified with $myorigin
(append_at_myorigin = yes, as Postfix), so `RCPT TO:<root>` is local.  Routing in
the local part of a local address is followed as trivial-rewrite does
(resolve_dequoted_address, allow_percent_hack, swap_bangpath): `"u@x"@here`,
`u%x@here` and `x!u@here` go to x, and are marked `routed`, so relay control
refuses them from untrusted clients (allow_untrusted_routing = no).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from postwall.config.params import Params
from postwall.config.tables import Table, open_table


class AddressClass(Enum):
    LOCAL = "local"  # $mydestination: delivered by the local agent
    VIRTUAL = "virtual"  # $virtual_alias_domains: every address is an alias, or unknown
    RELAY = "relay"  # $relay_domains: accepted from anyone, sent onward
    REMOTE = "remote"  # anything else: only authorised clients may relay


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one recipient goes: a transport name and its next hop."""

    transport: str
    nexthop: str
    address: str  # the recipient, qualified


@dataclass(frozen=True, slots=True)
class Resolved:
    """The outcome of resolving one address: its class, the address after local-part
    routing was followed, and whether such routing led off this system."""

    cls: AddressClass
    address: str
    routed: bool


def internal_form(address: str) -> str:
    """RFC 5321 external form to Postfix's internal form: quotes and backslash escapes
    of the local part removed (`"a b"@x` -> `a b@x`)."""
    if '"' not in address and "\\" not in address:
        return address
    out: list[str] = []
    escaped = False
    for ch in address:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch != '"':
            out.append(ch)
    return "".join(out)


def split_address(address: str) -> tuple[str, str]:
    """Split at the last @; an address without a domain has an empty domain."""
    local, sep, domain = address.rpartition("@")
    if not sep:
        return address, ""
    return local, domain


def strip_extension(local: str, delimiters: str) -> str:
    """The local part without its address extension (recipient_delimiter: the first
    delimiter, in the setting's order, that follows a non-empty user)."""
    for delim in delimiters:
        head, sep, _ = local.partition(delim)
        if sep and head:
            return head
    return local


def sender_keys(sender: str, delimiters: str) -> list[str]:
    """The keys of a per-sender table (sender_dependent_relayhost_maps, and
    smtp_sasl_password_maps with smtp_sender_dependent_authentication), in Postfix's
    order: the address, the address without its extension, @domain; lower case."""
    local, domain = split_address(sender.lower())
    bare = strip_extension(local, delimiters)
    return [sender.lower(), *([f"{bare}@{domain}"] if bare != local else []), f"@{domain}"]


class AddressResolver:
    def __init__(
        self,
        *,
        myhostname: str,
        myorigin: str,
        mydestination: Sequence[str],
        relay_domains: Sequence[str],
        local_recipient_maps: Sequence[Table],
        local_maps_configured: bool,
        recipient_delimiter: str,
        local_interfaces: Iterable[str] = (),
        local_transport: str = "local",
        default_transport: str = "smtp",
        relayhost: str = "",
        transport_maps: Sequence[Table] = (),
        allow_percent_hack: bool = True,
        swap_bangpath: bool = True,
        virtual_alias_domains: Sequence[str | Table] = (),
        sender_relayhost_maps: Sequence[Table] = (),
        null_sender_key: str = "<>",
        relocated_maps: Sequence[Table] = (),
    ) -> None:
        self.myhostname = myhostname.lower()
        self.myorigin = myorigin.lower() or self.myhostname
        self._local_domains = {d.lower().rstrip(".") for d in mydestination if d}
        self._relay_domains = {d.lower().rstrip(".") for d in relay_domains if d}
        self._local_maps = list(local_recipient_maps)
        self._local_maps_configured = local_maps_configured
        self._delimiter = recipient_delimiter
        self._interfaces = {a for a in local_interfaces}
        self._local_transport = local_transport.partition(":")[0] or "local"
        self._default_transport = default_transport
        self._relayhost = relayhost
        self._transport_maps = list(transport_maps)
        self._percent_hack = allow_percent_hack
        self._bangpath = swap_bangpath
        self._virtual_names = {
            d.lower().rstrip(".") for d in virtual_alias_domains if isinstance(d, str) and d
        }
        self._virtual_tables = [d for d in virtual_alias_domains if isinstance(d, Table)]
        self.virtual = VirtualAliases(self)  # no tables: rewrites nothing
        self._sender_relayhosts = list(sender_relayhost_maps)
        self._null_sender_key = null_sender_key
        self.relocated_maps = list(relocated_maps)

    @classmethod
    def from_params(cls, params: Params) -> AddressResolver:
        maps_ref = params.local_recipient_maps
        alias_refs = set(params.alias_maps)
        base = Path(params.config_directory)
        tables = [open_table(ref, base, aliases=ref in alias_refs) for ref in maps_ref]
        virtual_maps = {ref: open_table(ref, base) for ref in params.virtual_alias_maps}
        # Domain list entries are names or tables (by default the alias tables themselves,
        # where a domain is listed when it is a key).
        virtual_domains: list[str | Table] = [
            (virtual_maps.get(item) or open_table(item, base)) if ":" in item else item
            for item in params.virtual_alias_domains
        ]
        resolver = cls(
            myhostname=params.myhostname,
            myorigin=params.myorigin,
            mydestination=params.mydestination,
            relay_domains=params.relay_domains,
            local_recipient_maps=tables,
            local_maps_configured=bool(maps_ref),
            recipient_delimiter=params.recipient_delimiter,
            local_interfaces=("127.0.0.1", "::1"),
            local_transport=params.local_transport,
            default_transport=params.default_transport,
            relayhost=params.relayhost,
            transport_maps=[open_table(ref, base) for ref in params.transport_maps],
            allow_percent_hack=params.allow_percent_hack,
            swap_bangpath=params.swap_bangpath,
            virtual_alias_domains=virtual_domains,
            sender_relayhost_maps=[
                open_table(ref, base) for ref in params.sender_dependent_relayhost_maps
            ],
            null_sender_key=params.empty_address_relayhost_maps_lookup_key,
            relocated_maps=[open_table(ref, base) for ref in params.relocated_maps],
        )
        resolver.virtual = VirtualAliases(
            resolver,
            list(virtual_maps.values()),
            propagate="virtual" in params.propagate_unmatched_extensions,
            recursion_limit=params.virtual_alias_recursion_limit,
            expansion_limit=params.virtual_alias_expansion_limit,
        )
        return resolver

    def qualify(self, address: str) -> str:
        if not address or "@" in address:
            return address
        return f"{address}@{self.myorigin}"

    def resolve(self, address: str) -> Resolved:
        """Class and final address of `address` (external or internal form)."""
        addr = self.qualify(internal_form(address))
        stripped = False
        for _ in range(20):  # each round removes a local domain, so this always ends
            local, domain = split_address(addr)
            domain = domain.lower()
            if domain.endswith(".") and not domain.endswith(".."):
                domain = domain[:-1]
            if not self._is_local_domain(domain):
                break
            if "@" in local:  # resolve_dequoted_address: "u@x"@here is u@x
                addr = local
            elif self._percent_hack and "%" in local:
                user, _, host = local.rpartition("%")
                addr = f"{user}@{host}"
            elif self._bangpath and "!" in local.strip("!"):
                host, _, user = local.partition("!")
                addr = f"{user}@{host}"
            else:
                return Resolved(AddressClass.LOCAL, f"{local}@{domain}", False)
            stripped = True
        _, domain = split_address(addr)
        domain = domain.lower().rstrip(".")
        if self.is_virtual_alias_domain(domain):
            return Resolved(AddressClass.VIRTUAL, addr, stripped)
        if domain in self._relay_domains or parent_domain_match(domain, self._relay_domains):
            return Resolved(AddressClass.RELAY, addr, stripped)
        return Resolved(AddressClass.REMOTE, addr, stripped)

    def classify(self, address: str) -> AddressClass:
        return self.resolve(address).cls

    def _is_local_domain(self, domain: str) -> bool:
        if domain in self._local_domains:
            return True
        # An address literal for one of our own addresses is local (RFC 5321 4.1.3).
        if domain.startswith("[") and domain.endswith("]"):
            literal = domain[1:-1]
            if literal.lower().startswith("ipv6:"):
                literal = literal[5:]
            try:
                return str(ipaddress.ip_address(literal)) in self._interfaces
            except ValueError:
                return False
        return False

    def is_virtual_alias_domain(self, domain: str) -> bool:
        """virtual_alias_domains: a listed name, or a key of a listed table (exact: the
        list is not in parent_domain_matches_subdomains)."""
        if not domain:
            return False
        return domain in self._virtual_names or any(
            t.lookup(domain) is not None for t in self._virtual_tables
        )

    def local_user(self, address: str) -> str:
        """The mailbox owner of a local address: the local part without its extension."""
        local, _ = split_address(self.qualify(address))
        return strip_extension(local, self._delimiter)

    def is_known_local(self, address: str) -> bool:
        """local_recipient_maps semantics: an empty setting accepts every local part."""
        if not self._local_maps_configured:
            return True
        address = self.resolve(address).address
        local, _ = split_address(address)
        user = self.local_user(address)
        # RFC 5321 4.5.1: postmaster must always be accepted.
        if user.lower() == "postmaster":
            return True
        keys = [local] if local == user else [local, user]
        return any(t.lookup(k) is not None for t in self._local_maps for k in keys)

    def destination(self, address: str, sender: str | None = None) -> Destination:
        """Transport and next hop of a recipient; `sender` (the envelope sender, "" for
        the null sender) picks a sender_dependent_relayhost_maps entry."""
        qualified = self.qualify(address)
        moved = self.relocated(qualified)
        if moved is not None:  # trivial-rewrite: every class, to the error transport
            return Destination("error", f"5.1.6 User has moved to {moved}", qualified)
        resolved = self.resolve(qualified)
        if resolved.cls is AddressClass.LOCAL:
            default = Destination(self._local_transport, self.myhostname, qualified)
        elif resolved.cls is AddressClass.VIRTUAL:
            # Left after cleanup's alias expansion: no such alias (trivial-rewrite's
            # error:5.1.1 for the virtual alias class).
            return Destination("error", "5.1.1 User unknown in virtual alias table", qualified)
        else:
            transport, _, nexthop = self._default_transport.partition(":")
            if not nexthop:
                relayhost = self._sender_relayhost(sender) or self._relayhost
                nexthop = relayhost or split_address(resolved.address)[1]
            default = Destination(transport or "smtp", nexthop, qualified)
        override = self._transport_entry(qualified)
        if override is None:
            return default
        # transport(5): an empty part keeps the default's transport or next hop.
        transport, _, nexthop = override.strip().partition(":")
        return Destination(transport or default.transport, nexthop or default.nexthop, qualified)

    def relocated(self, address: str) -> str | None:
        """relocated_maps: the new contact of a user or domain that moved, or None."""
        if not self.relocated_maps:
            return None
        hit = mail_addr_find(self, self.relocated_maps, address)
        return hit[0].strip() if hit is not None else None

    def _sender_relayhost(self, sender: str | None) -> str | None:
        """sender_dependent_relayhost_maps: the sender address, without its extension,
        then @domain; the null sender as empty_address_relayhost_maps_lookup_key; a
        DUNNO result ends the search without an override, as in Postfix."""
        if sender is None or not self._sender_relayhosts:
            return None
        if not sender:
            keys = [self._null_sender_key]
        else:
            keys = sender_keys(self.qualify(sender), self._delimiter)
        for i, key in enumerate(keys):
            for table in self._sender_relayhosts:
                value = table.query(key.lower(), partial=i > 0)
                if value is not None:
                    value = value.strip()
                    return None if value.upper() == "DUNNO" else value or None
        return None

    def _transport_entry(self, address: str) -> str | None:
        """transport(5) lookup order: user+ext@domain, user@domain, domain, .parent
        domains (transport_maps is not in parent_domain_matches_subdomains), then *."""
        if not self._transport_maps:
            return None
        local, domain = split_address(address)
        domain = domain.lower().rstrip(".")
        keys = [address.lower()]
        user = self.local_user(address)
        if user != local:
            keys.append(f"{user}@{domain}".lower())
        keys.append(domain)
        parts = domain.split(".")
        keys += ["." + ".".join(parts[i:]) for i in range(1, len(parts))]
        keys.append("*")
        for i, key in enumerate(keys):
            for table in self._transport_maps:
                value = table.query(key, partial=i > 0)
                if value is not None:
                    return value
        return None


def mail_addr_find(
    resolver: AddressResolver, tables: Sequence[Table], address: str
) -> tuple[str, str] | None:
    """Postfix's mail_addr_find(): the first table value for user+ext@domain,
    user@domain, then user+ext and user when the domain is ours, then @domain; with the
    extension (delimiter included) when it was dropped to find the key, else ""."""
    address = resolver.qualify(address)
    local, domain = split_address(address)
    user = resolver.local_user(address)
    ext = local[len(user) :] if user != local else ""
    keys: list[tuple[str, str]] = [(address, "")]
    if ext:
        keys.append((f"{user}@{domain}", ext))
    if resolver._is_local_domain(domain.lower().rstrip(".")):
        keys.append((local, ""))
        if ext:
            keys.append((user, ext))
    keys.append((f"@{domain}", ""))
    for i, (key, dropped) in enumerate(keys):
        for table in tables:
            value = table.query(key.lower() if "@" in key else key, partial=i > 0)
            if value is not None:
                return value, dropped
    return None


class AliasExpansionError(Exception):
    """A virtual alias chain over the recursion or expansion limit: Postfix's cleanup
    warns and the message is not accepted (451 4.7.1)."""


class VirtualAliases:
    """virtual(5) alias rewriting, as Postfix's cleanup applies it to every recipient
    before the message is queued (so the queue holds the final addresses, each with the
    address it came from as `original`).

    Lookup order (mail_addr_find): user+ext@domain, user@domain, then user+ext and user
    when the domain is local (mydestination, an address literal of ours), then @domain.
    A result found without the extension gets it back (propagate_unmatched_extensions
    has `virtual`).  Results are expanded again; an address that maps to itself stays;
    duplicates are dropped; past virtual_alias_recursion_limit lookups of one address or
    virtual_alias_expansion_limit addresses, AliasExpansionError.
    """

    def __init__(
        self,
        resolver: AddressResolver,
        maps: Sequence[Table] = (),
        *,
        propagate: bool = True,
        recursion_limit: int = 1000,
        expansion_limit: int = 1000,
    ) -> None:
        self._resolver = resolver
        self.maps = list(maps)
        self._propagate = propagate
        self._recursion_limit = recursion_limit
        self._expansion_limit = expansion_limit

    def lookup(self, address: str) -> list[str] | None:
        """One level: the addresses `address` is an alias for, or None."""
        if not self.maps:
            return None
        r = self._resolver
        hit = mail_addr_find(r, self.maps, address)
        if hit is None:
            return None
        value, extension = hit
        found = [r.qualify(a.strip()) for a in value.split(",") if a.strip()]
        if extension and self._propagate:
            found = [_with_extension(a, extension) for a in found]
        return found

    def expand(self, address: str) -> list[str]:
        """The final addresses for one recipient (itself when it is no alias), in
        Postfix's order: each address is looked up again until it is no alias or maps
        to itself; further results are appended; duplicates are dropped at the end."""
        if not self.maps:
            return [address]
        out = [address]
        itself: set[str] = set()
        i = 0
        while i < len(out):
            for count in range(self._recursion_limit + 1):
                addr = out[i]
                if addr.lower() in itself:
                    break
                if count >= self._recursion_limit:
                    raise AliasExpansionError(
                        f"unreasonable virtual_alias_maps map nesting for {address}"
                    )
                found = self.lookup(addr)
                if found is None:
                    break
                if any(a.lower() == addr.lower() for a in found):
                    itself.add(addr.lower())
                if not found:  # an empty right-hand side: nothing to deliver to
                    break
                out[i] = found[0]
                out.extend(found[1:])
                if len(out) > self._expansion_limit:
                    raise AliasExpansionError(
                        f"unreasonable virtual_alias_maps map expansion size for {address}"
                    )
            i += 1
        first: dict[str, str] = {}
        for addr in out:
            first.setdefault(addr.lower(), addr)
        return list(first.values())


def _with_extension(address: str, extension: str) -> str:
    local, sep, domain = address.rpartition("@")
    if not sep:
        return address + extension
    return f"{local}{extension}@{domain}"


def parent_domain_match(domain: str, domains: set[str]) -> bool:
    # Postfix's parent_domain_matches_subdomains includes relay_domains by default:
    # "example.com" in relay_domains also matches "sub.example.com".
    parts = domain.split(".")
    return any(".".join(parts[i:]) in domains for i in range(1, len(parts)))
