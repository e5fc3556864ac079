"""anvil.Anvil (counts, fixed-window rates, expiry, the table bound) and ClientList."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from postwall.anvil import Anvil, ClientList


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_and_rates_follow_anvil() -> None:
    clock = Clock()
    a = Anvil(60, clock=clock)
    assert a.connect("smtp:1.2.3.4") == (1, 1)
    assert a.connect("smtp:1.2.3.4") == (2, 2)
    assert a.connect("submission:1.2.3.4") == (1, 1)  # per service
    a.disconnect("smtp:1.2.3.4")
    assert a.connect("smtp:1.2.3.4") == (2, 3)
    assert [a.mail("smtp:1.2.3.4") for _ in range(3)] == [1, 2, 3]
    assert a.rcpt("smtp:1.2.3.4") == 1
    assert a.newtls_stat("smtp:1.2.3.4") == 0
    assert a.newtls("smtp:1.2.3.4") == 1
    assert a.newtls_stat("smtp:1.2.3.4") == 1
    # The window restarts with the first event after it ran out (not a moving average).
    clock.now += 61
    assert a.newtls_stat("smtp:1.2.3.4") == 0
    assert a.mail("smtp:1.2.3.4") == 1
    assert a.connect("smtp:1.2.3.4") == (3, 1)


def test_idle_entries_expire_after_the_time_unit() -> None:
    clock = Clock()
    a = Anvil(60, clock=clock)
    a.connect("smtp:10.0.0.1")
    a.disconnect("smtp:10.0.0.1")
    clock.now += 30
    a.connect("smtp:10.0.0.2")  # expiry runs on connect
    assert len(a) == 2
    clock.now += 31
    a.connect("smtp:10.0.0.3")
    assert len(a) == 2 and a.lookup("smtp:10.0.0.1") == (0, 0, 0, 0, 0)
    # A client with a session open is never forgotten.
    clock.now += 3600
    a.connect("smtp:10.0.0.4")
    assert a.lookup("smtp:10.0.0.2")[0] == 1


def test_reconnect_keeps_the_rate_of_a_returning_client() -> None:
    clock = Clock()
    a = Anvil(60, clock=clock)
    a.connect("s:x")
    a.disconnect("s:x")
    clock.now += 10
    assert a.connect("s:x") == (1, 2)
    a.disconnect("s:x")
    clock.now += 55  # 65 s after the first idle mark, 55 after the second
    a.connect("s:y")
    # The stale queue item (first idle mark) did not drop it early...
    assert "s:x" in a._remotes
    clock.now += 6
    a.connect("s:z")
    assert "s:x" not in a._remotes  # ...the second one does, on time


def test_table_is_bounded_under_a_flood_of_addresses() -> None:
    clock = Clock()
    a = Anvil(60, max_entries=1000, clock=clock)
    for i in range(50_000):
        ident = f"smtp:10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        a.connect(ident)
        a.disconnect(ident)
        clock.now += 0.0001  # all within one time unit
    assert len(a) <= 1000
    assert a.evicted >= 49_000
    assert len(a._idle) <= 2 * 1000 + 1


def test_status_lines_report_peaks_then_reset() -> None:
    clock = Clock()
    a = Anvil(60, clock=clock)
    for _ in range(3):
        a.connect("smtp:1.2.3.4")
    a.mail("smtp:1.2.3.4")
    lines = a.status_lines()
    stamp = r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d"
    assert re.fullmatch(
        rf"statistics: max connection rate 3/60s for \(smtp:1.2.3.4\) at {stamp}", lines[0]
    )
    assert re.fullmatch(
        rf"statistics: max connection count 3 for \(smtp:1.2.3.4\) at {stamp}", lines[1]
    )
    assert re.fullmatch(
        rf"statistics: max message rate 1/60s for \(smtp:1.2.3.4\) at {stamp}", lines[2]
    )
    assert re.fullmatch(rf"statistics: max cache size 1 at {stamp}", lines[3])
    assert a.status_lines() == []


def test_client_list_matches_addresses_and_names() -> None:
    cl = ClientList(
        ["!192.0.2.1", "192.0.2.0/24", "[2001:db8::]/32", "mx.example.com", ".example.net"]
    )
    assert cl.match("unknown", "192.0.2.7")
    assert not cl.match("unknown", "192.0.2.1")
    assert cl.match("unknown", "2001:db8::5")
    assert cl.match("MX.example.com", "198.51.100.1")
    assert cl.match("a.b.example.net", "198.51.100.1")
    assert not cl.match("example.net", "198.51.100.1")
    assert not cl.match("unknown", "198.51.100.1")
    with pytest.raises(ValueError, match="not supported"):
        ClientList(["ldap:/etc/postfix/clients.cf"])


def test_client_list_tables_match_names_and_addresses(tmp_path: Path) -> None:
    (tmp_path / "nets.cidr").write_text("192.0.2.0/24 x\n")
    (tmp_path / "names").write_text("mail.example.com x\n")
    cl = ClientList([f"cidr:{tmp_path}/nets.cidr", f"texthash:{tmp_path}/names"])
    assert cl.match("unknown", "192.0.2.9")
    assert cl.match("mail.example.com", "203.0.113.1")
    assert not cl.match("other.example.com", "203.0.113.1")
