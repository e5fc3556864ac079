"""DNS-based client checks without a name server: query names, Postfix's reply filter
syntax, reply template expansion, the client-name restrictions and the libc name lookup
of loopback addresses (/etc/hosts).  The DNS lists against a real name server are in
tests/interop/test_dnsbl_unbound.py.

Texts and codes are Postfix 3.7's (smtpd_check.c, smtpd_peer.c, ip_match.c); the
strings were also checked in Debian's /usr/lib/postfix/sbin/smtpd.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from postwall.config.network import Networks
from postwall.config.params import Params
from postwall.resolve import AddressResolver
from postwall.smtpd import dnsbl
from postwall.smtpd.dnsbl import FORGED, OK, PERM, TEMP, PeerName
from postwall.smtpd.restrictions import ClientState, Restrictions, run_now


def make(tmp_path: Path, **kw: object) -> Restrictions:
    values: dict[str, object] = {
        "myhostname": "mx.example.com",
        "mydestination": ("mx.example.com",),
        "mynetworks": ("192.0.2.0/24",),
        "local_recipient_maps": (),
        "config_directory": str(tmp_path),
    }
    values.update(
        {
            k: tuple(v.replace(",", " ").split())
            if isinstance(v, str) and k.endswith(("restrictions", "maps"))
            else v
            for k, v in kw.items()
        }
    )
    params = dataclasses.replace(Params(), **values)  # type: ignore[arg-type]
    return Restrictions(params, AddressResolver.from_params(params), Networks(params.mynetworks))


def rcpt(r: Restrictions, peer: PeerName | None, name: str = "unknown") -> str | None:
    c = ClientState(name=name, addr="198.51.100.7", peer=peer, helo="h.example", sender="a@b.c")
    d = run_now(r.rcpt(c, "root@mx.example.com"))
    return None if d.reply is None else str(d.reply)


def test_address_queries() -> None:
    assert dnsbl.address_query("192.0.2.99", "zen.example") == "99.2.0.192.zen.example"
    assert dnsbl.address_query("2001:db8::1", "v6.example") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.v6.example"
    )


def test_domain_queries() -> None:
    q = dnsbl.domain_query
    assert q("alice@Example.ORG", "dbl.example") == "Example.ORG.dbl.example"
    assert q("mail.example.org", "dbl.example") == "mail.example.org.dbl.example"
    # Address literals, numeric last labels and malformed names are never looked up.
    assert q("alice@[192.0.2.1]", "dbl.example") is None
    assert q("host.123", "dbl.example") is None
    assert q("192.0.2.1", "dbl.example") is None
    assert q("bad_-.ex ample", "dbl.example") is None
    assert q("alice@", "dbl.example") is None
    assert q("bücher.example", "dbl.example") == "xn--bcher-kva.example.dbl.example"


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("127.0.0.2", ["127.0.0.2"], ["127.0.0.3", "127.0.1.2"]),
        ("127.0.0.[2..11]", ["127.0.0.2", "127.0.0.11"], ["127.0.0.1", "127.0.0.12"]),
        ("127.0.0.[2;4]", ["127.0.0.2", "127.0.0.4"], ["127.0.0.3"]),
        ("127.0.[0..1].[1..3;5]", ["127.0.1.5", "127.0.0.1"], ["127.0.2.1", "127.0.0.4"]),
        ("[127.0.0.2]", ["127.0.0.2"], ["127.0.0.3"]),
    ],
)
def test_reply_filters(pattern: str, matching: list[str], not_matching: list[str]) -> None:
    octets = dnsbl.parse_reply_filter(pattern)
    assert all(dnsbl.filter_matches(octets, a) for a in matching)
    assert not any(dnsbl.filter_matches(octets, a) for a in not_matching)


@pytest.mark.parametrize(
    "pattern",
    ["", "127.0.0", "127.0.0.256", "127.0.0.[5..2]", "127.0.0.[2", "1.2.3.4.5", "a.b.c.d"],
)
def test_bad_reply_filters_stop_start_up(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ValueError, match="RBL reply error"):
        make(tmp_path, smtpd_client_restrictions=f"reject_rbl_client rbl.example={pattern}")


def test_dns_lists_need_their_domain(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reject_rhsbl_sender requires domain name argument"):
        make(tmp_path, smtpd_sender_restrictions="reject_rhsbl_sender")
    r = make(tmp_path, smtpd_client_restrictions="permit_dnswl_client wl.example, reject")
    assert r.uses_dns


def test_expansion_like_mac_expand() -> None:
    names = {"rbl_code": "554", "rbl_reason": "see $HOME\x01", "empty": ""}
    allowed = dnsbl.unescape(Params().smtpd_expansion_filter)
    assert "\t" in allowed and " " in allowed and "\x01" not in allowed
    text, unknown = dnsbl.expand_reply(
        "$rbl_code x${rbl_reason?; $rbl_reason}${empty?never}", names.get, allowed
    )
    # Values are not expanded again; characters outside the filter become "_".
    assert (text, unknown) == ("554 x; see $HOME_", [])
    assert dnsbl.expand_reply("$rbl_code $nosuch", names.get, allowed) == ("554 ", ["nosuch"])
    assert dnsbl.expand_reply("${rbl_code", names.get, allowed)[0] is None


def test_unescape() -> None:
    assert dnsbl.unescape(r"\t\40a\\b\n\101") == "\t a\\b\nA"


def test_unknown_client_hostname(tmp_path: Path) -> None:
    r = make(tmp_path, smtpd_client_restrictions="reject_unknown_client_hostname")
    assert not r.uses_dns
    assert rcpt(r, PeerName("h.example", "h.example", OK, OK), "h.example") is None
    # RFC 7372's 4.7.25; a temporary failure is always 450, a permanent one (no PTR, or
    # a PTR that does not resolve back) unknown_client_reject_code.
    text = "Client host rejected: cannot find your hostname, [198.51.100.7]"
    assert rcpt(r, PeerName("unknown", "unknown", TEMP, TEMP)) == f"450 4.7.25 {text}"
    assert rcpt(r, PeerName("unknown", "h.example", FORGED, OK)) == f"450 4.7.25 {text}"
    r = make(
        tmp_path,
        smtpd_client_restrictions="reject_unknown_client_hostname",
        unknown_client_reject_code=550,
    )
    assert rcpt(r, PeerName("unknown", "h.example", FORGED, OK)) == f"550 5.7.25 {text}"
    assert rcpt(r, PeerName()) == f"550 5.7.25 {text}"
    assert rcpt(r, PeerName("unknown", "unknown", TEMP, TEMP)) == f"450 4.7.25 {text}"
    # A ClientState without lookup statuses takes them from its name.
    assert rcpt(r, None, "h.example") is None
    assert rcpt(r, None) == f"550 5.7.25 {text}"


def test_unknown_reverse_client_hostname(tmp_path: Path) -> None:
    r = make(
        tmp_path,
        smtpd_client_restrictions="reject_unknown_reverse_client_hostname",
        unknown_client_reject_code=550,
    )
    text = "Client host rejected: cannot find your reverse hostname, [198.51.100.7]"
    # A PTR that does not resolve back still is a reverse name.
    assert rcpt(r, PeerName("unknown", "h.example", FORGED, OK)) is None
    assert rcpt(r, PeerName()) == f"550 5.7.1 {text}"
    assert rcpt(r, PeerName("unknown", "unknown", TEMP, TEMP)) == f"450 4.7.1 {text}"


def test_warn_if_reject_logs_instead(tmp_path: Path) -> None:
    r = make(
        tmp_path,
        smtpd_client_restrictions="warn_if_reject reject_unknown_reverse_client_hostname",
        unknown_client_reject_code=550,
    )
    c = ClientState(name="unknown", addr="198.51.100.7", peer=PeerName())
    d = run_now(r.rcpt(c, "root@mx.example.com"))
    assert d.reply is None
    assert d.notices == [
        (
            "reject_warning",
            "550 5.7.1 Client host rejected: cannot find your reverse hostname, [198.51.100.7]",
        )
    ]


def test_libc_lookup_of_loopback_clients() -> None:
    async def look(addr: str) -> PeerName:
        return await dnsbl.lookup_client_name(asyncio.get_running_loop(), addr)

    # /etc/hosts names 127.0.0.1 "localhost"; nothing names 127.0.0.2 (permanent).
    assert asyncio.run(look("127.0.0.1")) == PeerName("localhost", "localhost", OK, OK)
    assert asyncio.run(look("127.0.0.2")) == PeerName("unknown", "unknown", PERM, PERM)
    assert asyncio.run(look("not an address")) == PeerName()


@pytest.mark.parametrize("template", ["$rbl_code ${rbl_reason", "$rbl_code $no_such_name"])
def test_bad_default_reply_stops_start_up(tmp_path: Path, template: str) -> None:
    with pytest.raises(ValueError, match="bad default rbl reply template"):
        make(
            tmp_path,
            smtpd_client_restrictions="reject_rbl_client rbl.example",
            default_rbl_reply=template,
        )
    make(tmp_path, default_rbl_reply=template)  # only checked where a list is used


def test_client_names_keep_final_answers_only(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        "192.0.2.1": PeerName("a.example", "a.example", OK, OK),
        "192.0.2.2": PeerName("unknown", "unknown", TEMP, TEMP),
        "192.0.2.3": PeerName("unknown", "b.example", TEMP, OK),
        "192.0.2.4": PeerName("unknown", "c.example", FORGED, OK),
    }
    asked: list[str] = []

    async def fake(loop: object, addr: str, servers: object, seen: object) -> PeerName:
        asked.append(addr)
        return answers[addr]

    monkeypatch.setattr(dnsbl, "lookup_client_name", fake)

    def twice(names: dnsbl.ClientNames) -> list[str]:
        async def run() -> None:
            loop = asyncio.get_running_loop()
            for addr in list(answers) * 2:
                assert await names.lookup(loop, addr) == answers[addr]

        asked.clear()
        asyncio.run(run())
        return asked

    # Kept: the verified name and the forged one; asked again: temporary failures.
    assert twice(dnsbl.ClientNames(keep=10.0)) == [*answers, "192.0.2.2", "192.0.2.3"]
    assert twice(dnsbl.ClientNames(keep=0.0)) == [*answers, *answers]  # Postfix: every time
    names = dnsbl.ClientNames(keep=0.05)
    twice(names)
    time.sleep(0.06)
    assert twice(names) == [*answers, "192.0.2.2", "192.0.2.3"]  # all expired


def test_client_names_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake(loop: object, addr: str, servers: object, seen: object) -> PeerName:
        return PeerName(f"h{addr}", f"h{addr}", OK, OK)

    monkeypatch.setattr(dnsbl, "lookup_client_name", fake)
    names = dnsbl.ClientNames(keep=60.0)

    async def run() -> None:
        for n in range(dnsbl._NAMES_KEPT + 5):
            await names.lookup(asyncio.get_running_loop(), f"10.0.{n // 256}.{n % 256}")

    asyncio.run(run())
    assert len(names._known) == dnsbl._NAMES_KEPT
    last = dnsbl._NAMES_KEPT + 4
    assert "10.0.0.0" not in names._known and f"10.0.{last // 256}.{last % 256}" in names._known
