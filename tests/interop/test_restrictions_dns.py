"""reject_unknown_{sender,recipient}_domain and reject_unknown_helo_hostname against a
real name server (unbound, serving example.test as in test_dns_unbound), and against
one that does not answer (a temporary failure defers, as Postfix's defer_if_permit)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from test_dns_unbound import unbound  # noqa: F401  (the fixture)

import peers
from postwall.config.network import Networks
from postwall.config.params import Params
from postwall.dns import make_resolver
from postwall.resolve import AddressResolver
from postwall.smtpd.restrictions import ClientState, Restrictions

pytestmark = pytest.mark.interop


def _restrictions(nameserver: str, timeout: float = 5, **kw: object) -> Restrictions:
    values: dict[str, object] = {
        "myhostname": "mx.example.com",
        "mydestination": ("mx.example.com",),
        "local_recipient_maps": (),
        "smtpd_helo_restrictions": ("reject_unknown_helo_hostname",),
        "smtpd_sender_restrictions": ("reject_unknown_sender_domain",),
        "smtpd_recipient_restrictions": ("reject_unknown_recipient_domain",),
        "smtpd_relay_restrictions": ("permit_mynetworks", "reject_unauth_destination"),
        "mynetworks": ("127.0.0.0/8",),
    }
    values.update(kw)
    params = dataclasses.replace(Params(), **values)  # type: ignore[arg-type]
    return Restrictions(
        params,
        AddressResolver.from_params(params),
        Networks(params.mynetworks),
        dns_resolver=make_resolver([nameserver], timeout=timeout),
        dns_timeout=timeout,
    )


def _rcpt(r: Restrictions, helo: str, sender: str, rcpt: str) -> str | None:
    c = ClientState(name="localhost", addr="127.0.0.1", helo=helo, sender=sender)
    d = asyncio.run(r.rcpt(c, rcpt))
    return None if d.reply is None else str(d.reply)


def test_unknown_domains(unbound: peers.Unbound) -> None:  # noqa: F811
    r = _restrictions(f"127.0.0.1:{unbound.port}")
    assert r.uses_dns
    ok = ("mx1.example.test", "a@example.test", "b@noMX.example.test")
    assert _rcpt(r, *ok) is None
    assert _rcpt(r, "missing.example.test", "a@example.test", "b@example.test") == (
        "450 4.7.1 <missing.example.test>: Helo command rejected: Host not found"
    )
    assert _rcpt(r, "mx1.example.test", "a@missing.example.test", "b@example.test") == (
        "450 4.1.8 <a@missing.example.test>: Sender address rejected: Domain not found"
    )
    assert _rcpt(r, "mx1.example.test", "a@example.test", "b@txtonly.example.test") == (
        "450 4.1.2 <b@txtonly.example.test>: Recipient address rejected: Domain not found"
    )
    assert _rcpt(r, "mx1.example.test", "a@example.test", "b@nullmx.example.test") == (
        "556 5.1.10 <b@nullmx.example.test>: Recipient address rejected: "
        "Domain nullmx.example.test does not accept mail (nullMX)"
    )
    # Local addresses are never looked up.
    assert _rcpt(r, "mx1.example.test", "a@example.test", "root@mx.example.com") is None


def test_unknown_address_reject_code(unbound: peers.Unbound) -> None:  # noqa: F811
    r = _restrictions(f"127.0.0.1:{unbound.port}", unknown_address_reject_code=550)
    assert _rcpt(r, "mx1.example.test", "a@example.test", "b@missing.example.test") == (
        "550 5.1.2 <b@missing.example.test>: Recipient address rejected: Domain not found"
    )


def test_temporary_failure_defers(tmp_path: Path) -> None:
    silent = f"127.0.0.1:{peers.free_port()}"
    r = _restrictions(silent, timeout=0.5, smtpd_helo_restrictions=())
    # defer_if_permit: the sender check goes on and its permit becomes a 450.
    assert _rcpt(r, "x", "a@example.test", "root@mx.example.com") == (
        "450 4.1.8 <a@example.test>: Sender address rejected: Domain not found"
    )
    r = _restrictions(
        silent,
        timeout=0.5,
        smtpd_helo_restrictions=(),
        smtpd_sender_restrictions=("reject_unknown_sender_domain", "reject"),
    )
    # ... and a later reject wins over the deferral.
    assert _rcpt(r, "x", "a@example.test", "root@mx.example.com") == (
        "554 5.7.1 <a@example.test>: Sender address rejected: Access denied"
    )
