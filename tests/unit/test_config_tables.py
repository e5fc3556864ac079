"""Lookup tables and mynetworks matching."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from postwall.config import default_params
from postwall.config.network import (
    NetworkError,
    Networks,
    style_networks,
)
from postwall.config.network import (
    NotSupportedError as NetNotSupported,
)
from postwall.config.tables import (
    NotSupportedError,
    TableError,
    lookup_maps,
    open_maps,
    open_table,
)


def test_hash_reads_the_postmap_source_file(tmp_path: Path) -> None:
    src = tmp_path / "transport"
    src.write_text(
        "# comment\nExample.COM   smtp:[mx.example.com]:25\n"
        "long.example   relay:[a]\n   # between\n  :25\nbroken\nexample.com  dup\n"
    )
    (tmp_path / "transport.db").write_bytes(b"\x00binary, never read")
    table = open_table(f"hash:{src}")
    assert table.lookup("example.com") == "smtp:[mx.example.com]:25"
    assert table.lookup("EXAMPLE.com") == "smtp:[mx.example.com]:25"
    assert table.lookup("long.example") == "relay:[a]  :25"
    assert table.lookup("other") is None
    assert table.warnings == [
        f'{src}:6: expected format: key whitespace value: "broken"',
        f"{src}:7: duplicate entry: example.com",
    ]
    # texthash and relative names against a base directory read the same file.
    assert open_table("texthash:transport", tmp_path).lookup("long.example") == "relay:[a]  :25"


def test_aliases_format(tmp_path: Path) -> None:
    src = tmp_path / "aliases"
    src.write_text(
        '# aliases\npostmaster:    root\nRoot: alice,\n   bob\n"quoted name": carol\nnocolon dave\n'
    )
    table = open_table(f"hash:{src}", aliases=True)
    assert table.lookup("postmaster") == "root"
    assert table.lookup("root") == "alice, bob"
    assert table.lookup("Quoted Name") == "carol"
    assert table.lookup("nocolon") is None
    assert table.warnings == [f"{src}:6: need name:value pair"]


def test_inline_and_static() -> None:
    t = open_table("inline:{ Foo=bar, { key = value with spaces }, x= }")
    assert t.lookup("foo") == "bar"
    assert t.lookup("KEY") == "value with spaces"
    assert t.lookup("x") == ""
    assert t.lookup("bar") is None
    assert open_table("static:OK").lookup("anything") == "OK"
    assert open_table("static:{ a b }").lookup("x") == "a b"
    with pytest.raises(TableError):
        open_table("inline:foo=bar")
    with pytest.raises(TableError):
        open_table("inline:{ novalue }")


def test_unsupported_and_missing_tables(tmp_path: Path) -> None:
    with pytest.raises(NotSupportedError, match="not supported"):
        open_table("mysql:/etc/postfix/client_access.cf")
    with pytest.raises(NotSupportedError):
        open_table("ldap:/x")
    with pytest.raises(TableError, match="No such file"):
        open_table(f"cidr:{tmp_path}/missing")
    with pytest.raises(TableError, match="No such file"):
        open_table(f"regexp:{tmp_path}/missing")
    with pytest.raises(TableError, match="No such file"):
        open_table(f"hash:{tmp_path}/missing")
    with pytest.raises(TableError, match="type:name"):
        open_table("/etc/aliases")


def test_local_recipient_maps_default_list(tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("postmaster: root\n")
    p = default_params(alias_maps=f"hash:{aliases}")
    tables = open_maps(p.local_recipient_maps, aliases=False)
    assert [t.ref for t in tables] == ["proxy:unix:passwd.byname", f"hash:{aliases}"]
    root = pwd.getpwuid(0).pw_name
    assert lookup_maps(tables, root) is not None
    assert lookup_maps(tables, root).split(":")[2] == "0"  # type: ignore[union-attr]
    assert lookup_maps(tables, "no-such-user-xyz") is None
    alias_tables = open_maps(p.alias_maps, aliases=True)
    assert lookup_maps(alias_tables, "Postmaster") == "root"
    # Postfix's default alias_maps names NIS, which finds nothing without a NIS domain.
    assert open_table("nis:mail.aliases").lookup("root") is None


def test_networks_patterns(tmp_path: Path) -> None:
    listing = tmp_path / "nets"
    listing.write_text("# trusted\n192.0.2.0/24, 198.51.100.7 # one host\n")
    nets = Networks(
        [
            *("127.0.0.0/8", "[::1]/128", "[::ffff:127.0.0.0]/104", "!10.1.0.0/16", "10.0.0.0/8"),
            *(str(listing), "[2001:db8::]/32", "203.0.113.9"),
        ]
    )
    assert nets.match("127.0.0.1") and "127.255.0.1" in nets
    assert nets.match("::1") and nets.match("[::1]")
    assert nets.match("::ffff:127.0.0.1")
    assert nets.match("10.2.3.4") and not nets.match("10.1.2.3")
    assert nets.match("192.0.2.77") and nets.match("198.51.100.7")
    assert not nets.match("198.51.100.8")
    assert nets.match("2001:db8::1") and not nets.match("2001:db9::1")
    assert nets.match("203.0.113.9") and not nets.match("203.0.113.10")
    assert nets.match("::ffff:10.2.3.4")  # mapped clients match IPv4 networks
    assert not nets.match("not an address")


def test_networks_from_tables(tmp_path: Path) -> None:
    """mynetworks = cidr:/etc/postfix/mynetworks.cidr: the table lists the clients (its
    result is not used); a negated table excludes."""
    (tmp_path / "nets.cidr").write_text("192.0.2.0/24 trusted\n2001:db8::/32 trusted\n")
    (tmp_path / "banned").write_text("192.0.2.66 x\n")
    nets = Networks([f"!texthash:{tmp_path}/banned", f"cidr:{tmp_path}/nets.cidr", "10.0.0.0/8"])
    assert nets.match("192.0.2.7") and nets.match("2001:db8::5") and nets.match("10.1.1.1")
    assert not nets.match("192.0.2.66")  # the excluding table comes first
    assert nets.match("::ffff:192.0.2.7")  # IPv4-mapped, as for networks
    assert not nets.match("198.51.100.1")


def test_network_errors() -> None:
    with pytest.raises(NetworkError, match=r'perhaps you should use "10\.0\.0\.0/8"'):
        Networks(["10.1.2.3/8"])
    with pytest.raises(NetworkError, match="bad network pattern"):
        Networks(["example.com"])
    with pytest.raises(NetNotSupported):
        Networks(["ldap:/etc/postfix/ldap-networks.cf"])
    with pytest.raises(NetworkError, match="No such file"):
        Networks(["cidr:/no/such/table"])
    with pytest.raises(NetworkError, match="open"):
        Networks(["/no/such/file"])


def test_mynetworks_from_style(tmp_path: Path) -> None:
    assert style_networks("host") == "127.0.0.0/8 [::1]/128"
    assert default_params().mynetworks == ("127.0.0.0/8", "[::1]/128")
    assert default_params(mynetworks_style="host").mynetworks == ("127.0.0.0/8", "[::1]/128")
    (tmp_path / "main.cf").write_text("mynetworks_style = galaxy\nmynetworks = 10.1.2.3/8\n")
    from postwall.config import ConfigError, load

    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    assert exc.value.problems == [
        f"{tmp_path}/main.cf:2: mynetworks: non-null host address bits in "
        f'"10.1.2.3/8", perhaps you should use "10.0.0.0/8" instead'
    ]
    (tmp_path / "main.cf").write_text("mynetworks_style = galaxy\n")
    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    assert exc.value.problems == [
        f'{tmp_path}/main.cf:1: mynetworks_style: unknown mynetworks_style "galaxy" '
        "(expected host, subnet or class)"
    ]
