"""Next-hop resolution (postwall.dns) against a real unbound serving a test zone on loopback.

Each test asks a private unbound (started per module from a unbound.conf in a temporary
directory, stopped at teardown) through `make_resolver(["127.0.0.1:PORT"])`: MX order and
shuffling, implicit MX, [host]:port, null MX, NXDOMAIN, CNAMEs, and the temporary failures
(REFUSED, an unreachable name server).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

import peers
from postwall.dns import MxHost, NexthopError, make_resolver, parse_nexthop, resolve_nexthop

# Served as an auth-zone (not local-data), so unbound answers CNAME chains as a real
# authoritative server does.
ZONE = """\
$ORIGIN example.test.
$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 300
@ IN NS ns.example.test.
ns IN A 127.0.0.1
@ IN MX 10 mx1.example.test.
@ IN MX 20 mx2.example.test.
@ IN MX 20 mx3.example.test.
@ IN MX 20 mx4.example.test.
mx1 IN A 192.0.2.1
mx1 IN AAAA 2001:db8::1
mx2 IN A 192.0.2.2
mx3 IN A 192.0.2.3
mx4 IN A 192.0.2.4
noMX IN A 192.0.2.10
nullmx IN MX 0 .
alias IN CNAME noMX.example.test.
viacname IN MX 5 mxalias.example.test.
mxalias IN CNAME mx2.example.test.
dangling IN MX 10 missing.example.test.
dangling IN MX 20 mx3.example.test.
broken IN MX 10 missing.example.test.
txtonly IN TXT "hello"
"""


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.Unbound]:
    server = peers.Unbound(tmp_path_factory.mktemp("unbound"), {"example.test": ZONE})
    try:
        yield server.start()
    finally:
        server.stop()


def resolve(unbound: peers.Unbound, nexthop: str, **kw: object) -> list[MxHost]:
    resolver = make_resolver([f"127.0.0.1:{unbound.port}"], timeout=5)
    return asyncio.run(resolve_nexthop(nexthop, resolver=resolver, **kw))  # type: ignore[arg-type]


def failure(unbound: peers.Unbound, nexthop: str) -> NexthopError:
    with pytest.raises(NexthopError) as info:
        resolve(unbound, nexthop)
    return info.value


def test_mx_in_preference_order_with_addresses(unbound: peers.Unbound) -> None:
    hosts = resolve(unbound, "example.test")
    assert hosts[0] == MxHost("mx1.example.test", 10, ("192.0.2.1", "2001:db8::1"), 25)
    assert [h.preference for h in hosts] == [10, 20, 20, 20]
    assert {h.hostname for h in hosts[1:]} == {f"mx{i}.example.test" for i in (2, 3, 4)}
    assert {h.addresses for h in hosts[1:]} == {(f"192.0.2.{i}",) for i in (2, 3, 4)}


def test_equal_preferences_are_shuffled(unbound: peers.Unbound) -> None:
    orders = {
        tuple(h.hostname for h in resolve(unbound, "example.test", rng=random.Random(seed)))
        for seed in range(12)
    }
    assert len(orders) > 1, "equal-preference MX hosts always came in the same order"
    assert all(order[0] == "mx1.example.test" for order in orders)


def test_ipv4_only(unbound: peers.Unbound) -> None:
    hosts = resolve(unbound, "example.test", inet_protocols=("ipv4",))
    assert hosts[0].addresses == ("192.0.2.1",)


def test_domain_port_keeps_mx_lookup(unbound: peers.Unbound) -> None:
    hosts = resolve(unbound, "example.test:2525")
    assert hosts[0].hostname == "mx1.example.test"
    assert {h.port for h in hosts} == {2525}


def test_no_mx_falls_back_to_a_record(unbound: peers.Unbound) -> None:
    assert resolve(unbound, "nomx.example.test") == [
        MxHost("nomx.example.test", 0, ("192.0.2.10",), 25)
    ]


def test_bracketed_host_suppresses_mx_lookup(unbound: peers.Unbound) -> None:
    # example.test has MX records and no A record: with brackets only A/AAAA is asked.
    assert resolve(unbound, "[mx2.example.test]:2525") == [
        MxHost("mx2.example.test", 0, ("192.0.2.2",), 2525)
    ]
    err = failure(unbound, "[example.test]")
    assert not err.temporary and err.dsn == "5.4.4"


def test_ip_literal_needs_no_dns() -> None:
    async def run() -> list[MxHost]:
        # A resolver that would fail if asked: an unused loopback port.
        resolver = make_resolver([f"127.0.0.1:{peers.free_port()}"], timeout=0.5)
        return await resolve_nexthop("[127.0.0.1]:10025", resolver=resolver)

    assert asyncio.run(run()) == [MxHost("127.0.0.1", 0, ("127.0.0.1",), 10025)]


def test_cnames_are_followed(unbound: peers.Unbound) -> None:
    assert resolve(unbound, "[alias.example.test]")[0].addresses == ("192.0.2.10",)
    hosts = resolve(unbound, "viacname.example.test")
    assert hosts == [MxHost("mxalias.example.test", 5, ("192.0.2.2",), 25)]


def test_null_mx_is_permanent(unbound: peers.Unbound) -> None:
    err = failure(unbound, "nullmx.example.test")
    assert not err.temporary
    assert err.dsn == "5.1.0"
    assert err.reason == "Domain nullmx.example.test does not accept mail (nullMX)"


def test_nxdomain_is_permanent(unbound: peers.Unbound) -> None:
    err = failure(unbound, "nosuch.example.test")
    assert not err.temporary and err.dsn == "5.4.4"
    assert err.reason == (
        "Host or domain name not found. Name service error for "
        "name=nosuch.example.test type=MX: Host not found"
    )


def test_no_address_at_all_is_permanent(unbound: peers.Unbound) -> None:
    err = failure(unbound, "txtonly.example.test")
    assert not err.temporary and err.dsn == "5.4.4"
    assert "name=txtonly.example.test" in err.reason


def test_mx_host_without_address_is_skipped(unbound: peers.Unbound) -> None:
    assert [h.hostname for h in resolve(unbound, "dangling.example.test")] == ["mx3.example.test"]
    err = failure(unbound, "broken.example.test")
    assert not err.temporary
    assert err.reason == "no MX host for broken.example.test has a valid address record"


def test_refused_is_temporary(unbound: peers.Unbound) -> None:
    err = failure(unbound, "refused.test")
    assert err.temporary and err.dsn == "4.4.3"
    assert err.reason.endswith("name=refused.test type=MX: Host not found, try again")


def test_unreachable_name_server_is_temporary() -> None:
    async def run() -> NexthopError:
        resolver = make_resolver([f"127.0.0.1:{peers.free_port()}"], timeout=1)
        with pytest.raises(NexthopError) as info:
            await resolve_nexthop("example.test", resolver=resolver)
        return info.value

    err = asyncio.run(run())
    assert err.temporary and err.dsn == "4.4.3"


def test_parse_nexthop_forms() -> None:
    assert parse_nexthop("example.com") == ("example.com", 25, True)
    assert parse_nexthop("example.com:587") == ("example.com", 587, True)
    assert parse_nexthop("[mail.example.com]") == ("mail.example.com", 25, False)
    assert parse_nexthop("[192.0.2.1]:2525") == ("192.0.2.1", 2525, False)
    assert parse_nexthop("[ipv6:2001:db8::1]:26") == ("2001:db8::1", 26, False)
    for bad in ("", "[host", "[host]x", "[]", "[h]:0"):
        with pytest.raises(ValueError):
            parse_nexthop(bad)


def test_nameserver_specs() -> None:
    resolver = make_resolver(["127.0.0.1:5353", "[::1]:5354", "192.0.2.53"], port=53)
    got = [(ns.address, ns.port) for ns in resolver.nameservers]  # type: ignore[union-attr]
    assert got == [("127.0.0.1", 5353), ("::1", 5354), ("192.0.2.53", 53)]
    with pytest.raises(ValueError):
        make_resolver(["dns.example.com"])
