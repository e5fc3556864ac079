"""DNS lists and client names against a real name server: a private unbound serves a
deny list (rbl.test), an allow list (wl.test), a domain list (dbl.test), and PTR
records for 127.0.0.x; postwall asks it through postwall_dns_servers.

First the restriction engine on its own (each list, the reply filter, TXT reasons,
rbl_reply_maps, a list that fails), then a running postwall with clients bound to
127.0.0.x (smtplib's source_address), checking replies and the NOQUEUE log lines.

Replies follow Postfix 3.7's smtpd_check.c (rbl_reject_reply, reject_unknown_client,
permit_dnswl_addr).  The private reference Postfix cannot take part: it resolves
through the system resolver, which cannot be pointed at this unbound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import peers
from postwall.config.network import Networks
from postwall.config.params import Params
from postwall.resolve import AddressResolver
from postwall.smtpd.dnsbl import FORGED, OK, PERM, ClientNames, PeerName, lookup_client_name
from postwall.smtpd.restrictions import ClientState, Restrictions

pytestmark = pytest.mark.interop

SOA = "@ IN SOA ns.names.test. hostmaster.names.test. 1 3600 600 86400 60\n@ IN NS ns.names.test.\n"
ZONES = {
    "names.test": "$ORIGIN names.test.\n$TTL 300\n" + SOA + "ns IN A 127.0.0.1\n"
    "good IN A 127.0.0.5\n"
    "forged IN A 192.0.2.66\n"
    "spammy IN A 127.0.0.8\n"
    "brief 1 IN A 127.0.0.9\n",
    "127.in-addr.arpa": "$ORIGIN 127.in-addr.arpa.\n$TTL 300\n"
    + SOA
    + "5.0.0 IN PTR good.names.test.\n"
    "6.0.0 IN PTR forged.names.test.\n"
    "8.0.0 IN PTR spammy.names.test.\n"
    "9.0.0 2 IN PTR brief.names.test.\n",
    "rbl.test": "$ORIGIN rbl.test.\n$TTL 300\n" + SOA + "2.0.0.127 IN A 127.0.0.2\n"
    '2.0.0.127 IN TXT "Listed; see https://rbl.test/q?127.0.0.2"\n'
    "4.0.0.127 IN A 127.0.0.2\n"
    "9.0.0.127 IN A 127.0.0.10\n"
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 IN A 127.0.0.4\n",
    "wl.test": "$ORIGIN wl.test.\n$TTL 300\n" + SOA + "4.0.0.127 IN A 127.0.10.1\n",
    "dbl.test": "$ORIGIN dbl.test.\n$TTL 300\n" + SOA + "spam.example.dbl.test. IN A 127.0.1.2\n"
    "spammy.names.test.dbl.test. IN A 127.0.1.2\n"
    'spammy.names.test.dbl.test. IN TXT "a known" "spam host"\n'
    'spammy.names.test.dbl.test. IN TXT "second"\n',
}


@pytest.fixture(scope="module")
def unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[peers.Unbound]:
    server = peers.Unbound(tmp_path_factory.mktemp("unbound"), ZONES)
    try:
        yield server.start()
    finally:
        server.stop()


def _make(unbound: peers.Unbound, tmp_path: Path, **kw: object) -> Restrictions:
    values: dict[str, object] = {
        "myhostname": "mx.example.com",
        "mydestination": ("mx.example.com",),
        "mynetworks": ("192.0.2.0/24",),
        "local_recipient_maps": (),
        "config_directory": str(tmp_path),
        "postwall_dns_servers": (f"127.0.0.1:{unbound.port}",),
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


def _client(unbound: peers.Unbound, addr: str, **kw: object) -> ClientState:
    servers = (f"127.0.0.1:{unbound.port}",)

    async def look() -> PeerName:
        return await lookup_client_name(asyncio.get_running_loop(), addr, servers)

    peer = asyncio.run(look())
    c = ClientState(name=peer.name, addr=addr, peer=peer, helo="client.example")
    c.sender = "alice@example.org"
    for key, value in kw.items():
        setattr(c, key, value)
    return c


def _rcpt(
    r: Restrictions, c: ClientState, to: str = "root@mx.example.com"
) -> tuple[str | None, list[tuple[str, str]]]:
    d = asyncio.run(r.rcpt(c, to))
    return (None if d.reply is None else str(d.reply)), d.notices


def test_client_names_from_ptr_records(unbound: peers.Unbound) -> None:
    assert _client(unbound, "127.0.0.5").peer == PeerName(
        "good.names.test", "good.names.test", OK, OK
    )
    assert _client(unbound, "127.0.0.6").peer == PeerName(
        "unknown",
        "forged.names.test",
        FORGED,
        OK,
        ("hostname forged.names.test does not resolve to address 127.0.0.6",),
    )
    assert _client(unbound, "127.0.0.7").peer == PeerName("unknown", "unknown", PERM, PERM)


def test_client_names_are_kept_no_longer_than_their_ttl(unbound: peers.Unbound) -> None:
    names = ClientNames((f"127.0.0.1:{unbound.port}",), keep=3600.0)

    async def look(addr: str) -> tuple[PeerName, float]:
        peer = await names.lookup(asyncio.get_running_loop(), addr)
        return peer, names._known[addr][0] - time.monotonic()

    # TTL 300 for both records; the brief name's A record has TTL 1 (its PTR 2).
    peer, left = asyncio.run(look("127.0.0.5"))
    assert peer.name == "good.names.test" and 290 < left <= 300
    peer, left = asyncio.run(look("127.0.0.9"))
    assert peer.name == "brief.names.test" and 0 < left <= 1
    first = names._known["127.0.0.9"][0]
    assert asyncio.run(look("127.0.0.9"))[0] is peer  # within the TTL: the kept answer
    time.sleep(left + 0.05)
    again, left = asyncio.run(look("127.0.0.9"))  # expired: asked again, kept afresh
    assert again == peer and again is not peer and names._known["127.0.0.9"][0] > first


def test_rbl_client_reply_and_filters(unbound: peers.Unbound, tmp_path: Path) -> None:
    r = _make(unbound, tmp_path, smtpd_client_restrictions="reject_rbl_client rbl.test")
    assert r.uses_dns
    assert _rcpt(r, _client(unbound, "127.0.0.2")) == (
        "554 5.7.1 Service unavailable; Client host [127.0.0.2] blocked using rbl.test; "
        "Listed; see https://rbl.test/q?127.0.0.2",
        [],
    )
    # Listed without a TXT record: no "; reason".
    assert _rcpt(r, _client(unbound, "127.0.0.9"))[0] == (
        "554 5.7.1 Service unavailable; Client host [127.0.0.9] blocked using rbl.test"
    )
    assert _rcpt(r, _client(unbound, "127.0.0.3")) == (None, [])
    assert _rcpt(r, ClientState(name="unknown", addr="2001:db8::1"))[0] == (
        "554 5.7.1 Service unavailable; Client host [2001:db8::1] blocked using rbl.test"
    )
    # Only the listed reply values count; $rbl_domain drops the filter.
    r = _make(
        unbound, tmp_path, smtpd_client_restrictions="reject_rbl_client rbl.test=127.0.0.[3..11]"
    )
    assert _rcpt(r, _client(unbound, "127.0.0.2")) == (None, [])
    assert _rcpt(r, _client(unbound, "127.0.0.9"))[0] == (
        "554 5.7.1 Service unavailable; Client host [127.0.0.9] blocked using rbl.test"
    )


def test_rbl_reply_maps_and_codes(unbound: peers.Unbound, tmp_path: Path) -> None:
    (tmp_path / "replies").write_text(
        "rbl.test=127.0.0.2 $rbl_code 5.7.9 Go away $client_address ($rbl_class) $rbl_reason\n"
        "wl.test 451 $nosuchname\n"
    )
    r = _make(
        unbound,
        tmp_path,
        smtpd_client_restrictions="reject_rbl_client rbl.test=127.0.0.2",
        rbl_reply_maps=f"texthash:{tmp_path / 'replies'}",
        maps_rbl_reject_code=550,
    )
    assert _rcpt(r, _client(unbound, "127.0.0.2"))[0] == (
        "550 5.7.9 Go away 127.0.0.2 (Client host) Listed; see https://rbl.test/q?127.0.0.2"
    )
    # A template naming something unknown is bad: Postfix warns and uses the default.
    r = _make(
        unbound,
        tmp_path,
        smtpd_client_restrictions="reject_rbl_client wl.test",
        rbl_reply_maps=f"texthash:{tmp_path / 'replies'}",
    )
    reply, notices = _rcpt(r, _client(unbound, "127.0.0.4"))
    assert reply == "554 5.7.1 Service unavailable; Client host [127.0.0.4] blocked using wl.test"
    assert notices == [
        ("warning", 'unknown macro name "nosuchname" in expansion request'),
        ("warning", "rbl_reject_reply: bad rbl reply template for domain wl.test: 451 $nosuchname"),
    ]
    r = _make(
        unbound,
        tmp_path,
        smtpd_client_restrictions="reject_rbl_client rbl.test",
        default_rbl_reply="Listed: $rbl_what",
    )
    assert _rcpt(r, _client(unbound, "127.0.0.2")) == (
        "450 4.7.1 Service unavailable",
        [("warning", "rbl response code configuration error: Listed: 127.0.0.2")],
    )


def test_rhsbl_lists(unbound: peers.Unbound, tmp_path: Path) -> None:
    r = _make(
        unbound,
        tmp_path,
        smtpd_client_restrictions="reject_rhsbl_reverse_client dbl.test",
        smtpd_sender_restrictions="reject_rhsbl_sender dbl.test",
        smtpd_helo_restrictions="reject_rhsbl_helo dbl.test",
        smtpd_recipient_restrictions="reject_rhsbl_recipient dbl.test, reject_unauth_destination",
        mynetworks=("127.0.0.0/8",),  # relay to spam.example is allowed: the list decides
    )
    assert _rcpt(r, _client(unbound, "127.0.0.5")) == (None, [])
    # Several TXT records are joined with " / "; the strings of one are concatenated.
    assert _rcpt(r, _client(unbound, "127.0.0.8"))[0] in (
        "554 5.7.1 Service unavailable; Unverified Client host [spammy.names.test] blocked "
        f"using dbl.test; {reason}"
        for reason in ("a knownspam host / second", "second / a knownspam host")
    )
    assert _rcpt(r, _client(unbound, "127.0.0.5", sender="alice@SPAM.example"))[0] == (
        "554 5.7.1 Service unavailable; Sender address [alice@SPAM.example] blocked using dbl.test"
    )
    assert _rcpt(r, _client(unbound, "127.0.0.5", helo="spam.example"))[0] == (
        "554 5.7.1 Service unavailable; Helo command [spam.example] blocked using dbl.test"
    )
    assert _rcpt(r, _client(unbound, "127.0.0.5"), "bob@spam.example")[0] == (
        "554 5.7.1 Service unavailable; Recipient address [bob@spam.example] blocked using dbl.test"
    )
    # reject_rhsbl_client looks at the verified name only: forged and unknown are skipped.
    r = _make(unbound, tmp_path, smtpd_client_restrictions="reject_rhsbl_client dbl.test")
    reply = _rcpt(r, _client(unbound, "127.0.0.8"))[0] or ""
    assert reply.startswith(
        "554 5.7.1 Service unavailable; Client host [spammy.names.test] blocked using dbl.test; "
    )
    assert _rcpt(r, _client(unbound, "127.0.0.6")) == (None, [])


def test_dnswl_permits_before_a_reject(unbound: peers.Unbound, tmp_path: Path) -> None:
    r = _make(
        unbound,
        tmp_path,
        smtpd_client_restrictions="permit_dnswl_client wl.test, reject_rbl_client rbl.test",
    )
    assert _rcpt(r, _client(unbound, "127.0.0.4")) == (None, [])
    assert _rcpt(r, _client(unbound, "127.0.0.2"))[0] is not None
    # Never for a recipient this server would not relay to.
    r = _make(
        unbound,
        tmp_path,
        smtpd_relay_restrictions="permit_dnswl_client wl.test, reject_unauth_destination",
    )
    assert _rcpt(r, _client(unbound, "127.0.0.4"), "bob@foreign.example")[0] == (
        "554 5.7.1 <bob@foreign.example>: Relay access denied"
    )


def test_failing_lists(unbound: peers.Unbound, tmp_path: Path) -> None:
    """A deny list that fails lists nothing; an allow list that fails turns a later
    reject into a deferral (Postfix: defer_if_reject)."""
    r = _make(
        unbound,
        tmp_path,
        smtpd_client_restrictions="reject_rbl_client refused.test, reject_unknown_client_hostname",
        unknown_client_reject_code=550,
    )
    reply, notices = _rcpt(r, _client(unbound, "127.0.0.7"))
    assert reply == "550 5.7.25 Client host rejected: cannot find your hostname, [127.0.0.7]"
    assert notices == [
        (
            "warning",
            "7.0.0.127.refused.test: RBL lookup error: Host or domain name not found. "
            "Name service error for name=7.0.0.127.refused.test type=A: Host not found, try again",
        )
    ]
    # The failure is remembered for a while: the next RCPT does not log it again.
    assert _rcpt(r, _client(unbound, "127.0.0.7")) == (reply, [])
    r = _make(
        unbound,
        tmp_path,
        smtpd_client_restrictions="permit_dnswl_client refused.test reject_unknown_client_hostname",
        unknown_client_reject_code=550,
    )
    reply, _ = _rcpt(r, _client(unbound, "127.0.0.7"))
    assert reply == "450 4.7.1 <127.0.0.7>: Client host rejected: Service unavailable"
    assert _rcpt(r, _client(unbound, "127.0.0.5"))[0] is None


# -- a running postwall -----------------------------------------------------------------


def _session(port: int, source: str, sender: str = "alice@example.org") -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as s:
        s.ehlo("client.example")
        s.mail(sender)
        code, text = s.rcpt("root@localhost")
        return code, text.decode()


def test_end_to_end(unbound: peers.Unbound, postwall_factory) -> None:  # type: ignore[no-untyped-def]
    server = postwall_factory(
        params={
            "postwall_dns_servers": f"127.0.0.1:{unbound.port}",
            "smtpd_client_restrictions": "permit_dnswl_client wl.test, "
            "reject_rbl_client rbl.test, reject_unknown_client_hostname",
            "smtpd_sender_restrictions": "reject_rhsbl_sender dbl.test",
        }
    )
    rbl = (
        "5.7.1 Service unavailable; Client host [127.0.0.2] blocked using rbl.test; "
        "Listed; see https://rbl.test/q?127.0.0.2"
    )
    assert _session(server.port, "127.0.0.2") == (554, rbl)
    server.wait_log(
        r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.2\]: 554 "
        + rbl.replace(".", r"\.").replace("?", r"\?").replace("[", r"\[").replace("]", r"\]")
        + r"; from=<alice@example\.org> to=<root@localhost> proto=ESMTP helo=<client\.example>"
    )
    # Listed in both: the allow list comes first.
    assert _session(server.port, "127.0.0.4")[0] == 250
    assert _session(server.port, "127.0.0.5")[0] == 250
    server.wait_log(r"connect from good\.names\.test\[127\.0\.0\.5\]")
    assert _session(server.port, "127.0.0.6") == (
        450,
        "4.7.25 Client host rejected: cannot find your hostname, [127.0.0.6]",
    )
    server.wait_log(
        r"warning: hostname forged\.names\.test does not resolve to address 127\.0\.0\.6$"
    )
    server.wait_log(
        r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.6\]: 450 4\.7\.25 Client host "
        r"rejected: cannot find your hostname, \[127\.0\.0\.6\]; from=<alice@example\.org> "
        r"to=<root@localhost> proto=ESMTP helo=<client\.example>"
    )
    assert _session(server.port, "127.0.0.5", "bob@spam.example") == (
        554,
        "5.7.1 Service unavailable; Sender address [bob@spam.example] blocked using dbl.test",
    )


def test_forged_name_passes_the_reverse_check(unbound: peers.Unbound, postwall_factory) -> None:  # type: ignore[no-untyped-def]
    server = postwall_factory(
        params={
            "postwall_dns_servers": f"127.0.0.1:{unbound.port}",
            "smtpd_client_restrictions": "reject_unknown_reverse_client_hostname",
            "unknown_client_reject_code": "550",
        }
    )
    assert _session(server.port, "127.0.0.6")[0] == 250
    assert _session(server.port, "127.0.0.7") == (
        550,
        "5.7.1 Client host rejected: cannot find your reverse hostname, [127.0.0.7]",
    )


# -- against Postfix 3.7: client names through libc, as both look them up ----------------


def test_client_name_rejects_match_postfix(postwall_factory, postfix_factory) -> None:  # type: ignore[no-untyped-def]
    """127.0.0.2 has no name (not in /etc/hosts, no PTR): the same replies and log lines
    from a private Postfix and from postwall, with the same restrictions."""
    del postfix_factory  # only checks root and the tools; the instance is made below
    params = {
        "mynetworks": "192.0.2.0/24",
        "unknown_client_reject_code": "550",
        "smtpd_client_restrictions": "warn_if_reject, reject_unknown_reverse_client_hostname, "
        "reject_unknown_client_hostname",
    }
    postfix = peers.PostfixInstance.create(params, port=peers.free_port())
    try:
        postfix.start()
        server = postwall_factory(params=params)
        replies = [
            _session(port, "127.0.0.2", "a@example.org") for port in (postfix.port, server.port)
        ]
        assert (
            replies[0]
            == replies[1]
            == (
                550,
                "5.7.25 Client host rejected: cannot find your hostname, [127.0.0.2]",
            )
        )
        for peer in (postfix, server):
            peer.wait_log(
                r"NOQUEUE: reject_warning: RCPT from unknown\[127\.0\.0\.2\]: 550 5\.7\.1 Client "
                r"host rejected: cannot find your reverse hostname, \[127\.0\.0\.2\]; "
                r"from=<a@example\.org> to=<root@localhost> proto=ESMTP helo=<client\.example>"
            )
            peer.wait_log(
                r"NOQUEUE: reject: RCPT from unknown\[127\.0\.0\.2\]: 550 5\.7\.25 Client host "
                r"rejected: cannot find your hostname, \[127\.0\.0\.2\]; from=<a@example\.org> "
                r"to=<root@localhost> proto=ESMTP helo=<client\.example>"
            )
    finally:
        postfix.destroy()
