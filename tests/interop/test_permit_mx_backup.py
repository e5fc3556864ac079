"""permit_mx_backup (and permit_mx_backup_networks) against a real name server (a private
unbound): postwall relays for a domain only when it is one of the domain's backup MX hosts,
as Postfix 3.7's smtpd_check.c decides.  "This host" is 127.0.0.1 (inet_interfaces = all:
an address this machine can bind); 192.0.2.0/24 and 198.51.100.0/24 are elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
from collections.abc import Iterator

import pytest

import peers
from postwall.config.network import Networks
from postwall.config.params import Params
from postwall.resolve import AddressResolver
from postwall.smtpd.restrictions import ClientState, Restrictions

pytestmark = pytest.mark.interop

ZONE = """\
$TTL 300
@        IN SOA ns.mxb.test. hostmaster.mxb.test. 1 3600 600 86400 300
@        IN NS  ns.mxb.test.
ns       IN A   127.0.0.1
primary  IN A   192.0.2.10
faraway  IN A   198.51.100.7
backup   IN A   127.0.0.1
other    IN A   192.0.2.20
; this host is the second MX
relay    IN MX  10 primary.mxb.test.
relay    IN MX  20 backup.mxb.test.
; this host is the best MX: not a backup
self     IN MX  10 backup.mxb.test.
self     IN MX  20 primary.mxb.test.
; this host is not an MX at all
outside  IN MX  10 primary.mxb.test.
outside  IN MX  20 other.mxb.test.
; no MX records
nomx     IN A   192.0.2.30
; the primary lies outside permit_mx_backup_networks
far      IN MX  10 faraway.mxb.test.
far      IN MX  20 backup.mxb.test.
; a backup MX without an address
lame     IN MX  10 primary.mxb.test.
lame     IN MX  20 missing.mxb.test.
; the MX named by a local domain
named    IN MX  10 primary.mxb.test.
named    IN MX  20 mx.example.com.
"""

DENIED = "554 5.7.1 <{}>: Relay access denied"


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.Unbound]:
    server = peers.Unbound(tmp_path_factory.mktemp("unbound"), {"mxb.test": ZONE})
    server.start()
    yield server
    server.stop()


def _restrictions(unbound: peers.Unbound, **kw: object) -> Restrictions:
    values: dict[str, object] = {
        "myhostname": "mx.example.com",
        "mydestination": ("mx.example.com",),
        "smtpd_relay_restrictions": ("permit_mx_backup", "reject_unauth_destination"),
        "mynetworks": ("127.0.0.0/8",),
        "postwall_dns_servers": (f"127.0.0.1:{unbound.port}",),
    }
    values.update(kw)
    params = dataclasses.replace(Params(), **values)  # type: ignore[arg-type]
    return Restrictions(params, AddressResolver.from_params(params), Networks(params.mynetworks))


def _rcpt(r: Restrictions, rcpt: str) -> str | None:
    c = ClientState(name="client.example", addr="203.0.113.5", helo="client.example")
    c.sender = "a@client.example"
    d = asyncio.run(r.rcpt(c, rcpt))
    return None if d.reply is None else str(d.reply)


def test_backup_mx_is_permitted_and_nothing_else(unbound: peers.Unbound) -> None:
    r = _restrictions(unbound)
    assert r.uses_dns
    assert _rcpt(r, "u@relay.mxb.test") is None
    assert _rcpt(r, "u@named.mxb.test") is None  # MX name in mydestination: this host
    for denied in ("u@self.mxb.test", "u@outside.mxb.test", "u@nomx.mxb.test"):
        assert _rcpt(r, denied) == DENIED.format(denied), denied
    assert _rcpt(r, "u@[192.0.2.10]") == DENIED.format("u@[192.0.2.10]")
    # Local mail is permitted as permit_auth_destination would.
    assert _rcpt(r, "root@mx.example.com") is None


def test_permit_mx_backup_networks_restrict_the_primaries(unbound: peers.Unbound) -> None:
    open_ = _restrictions(unbound)
    assert _rcpt(open_, "u@far.mxb.test") is None
    r = _restrictions(unbound, permit_mx_backup_networks=("192.0.2.0/28",))
    assert _rcpt(r, "u@relay.mxb.test") is None
    assert _rcpt(r, "u@far.mxb.test") == DENIED.format("u@far.mxb.test")


def test_dns_failures_defer_instead_of_rejecting(unbound: peers.Unbound) -> None:
    r = _restrictions(unbound)
    assert _rcpt(r, "u@lame.mxb.test") == (
        "450 4.4.4 <u@lame.mxb.test>: Recipient address rejected: Unable to look up mail "
        "exchanger host missing.mxb.test: Name or service not known"
    )
    assert _rcpt(r, "u@x.refused.test") == (
        "450 4.4.4 <u@x.refused.test>: Recipient address rejected: Unable to look up mail "
        "exchanger information: Host not found, try again"
    )


def test_a_running_postwall_relays_as_backup_mx(postwall_factory, unbound):  # type: ignore[no-untyped-def]
    server = postwall_factory(
        params={
            "mynetworks": "192.0.2.0/24",  # 127.0.0.1 is an outside client here
            "postwall_dns_servers": f"127.0.0.1:{unbound.port}",
            "smtpd_relay_restrictions": "permit_mx_backup, reject_unauth_destination",
        }
    )
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("a@client.example")
        assert smtp.rcpt("u@relay.mxb.test") == (250, b"2.1.5 Ok")
        code, text = smtp.rcpt("u@outside.mxb.test")
        assert (code, text.decode()) == (554, "5.7.1 <u@outside.mxb.test>: Relay access denied")
