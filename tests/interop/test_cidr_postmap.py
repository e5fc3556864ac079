"""cidr: tables (cidr_table(5)) against Postfix's own reading of the same file: every key
looked up with `postmap -q - cidr:FILE` and with postwall's table, and the warnings for
the rules both skip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import peers
from postwall.config.tables import open_table

pytestmark = pytest.mark.interop

TABLE = """\
# client access by network
192.168.1.0/24          REJECT lan
10.1.2.3                OK single
[2001:db8::]/32         DUNNO v6 net
2001:0db8:0:0:0:0:0:5   leading zeros
if 172.16.0.0/12
172.16.5.0/24           inner
if !172.16.5.128/25
172.16.4.0/22           nested
endif
endif
!127.0.0.0/8            notloop
::1                     loopv6
192.168.1.5/24          bad host bits
300.1.1.1/8             bad address
[fe80::1]/64            v6 host bits
1.2.3.0/24
endif
if 10.0.0.0/8
10.0.0.0/8              unclosed
"""
KEYS = [
    "192.168.1.7",
    "10.1.2.3",
    "2001:db8::1",
    "2001:db8::5",
    "172.16.5.9",
    "172.16.5.200",
    "172.16.6.1",
    "172.17.0.1",
    "127.0.0.1",
    "8.8.8.8",
    "::1",
    "::2",
    "[::1]",
    "not-an-address",
    "10.9.9.9",
]


def test_lookups_and_warnings_match_postmap(tmp_path: Path) -> None:
    postmap = peers.require_tool("postmap")
    path = tmp_path / "access.cidr"
    path.write_text(TABLE)
    res = subprocess.run(
        [postmap, "-q", "-", f"cidr:{path}"],
        input="\n".join(KEYS) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    theirs = dict(line.split("\t", 1) for line in res.stdout.splitlines())
    table = open_table(f"cidr:{path}")
    ours = {k: v for k in KEYS if (v := table.lookup(k)) is not None}
    assert ours == theirs
    assert len(theirs) >= 10  # the table is exercised, not empty on both sides
    warnings = [
        line.removeprefix("postmap: warning: ")
        for line in res.stderr.splitlines()
        if line.startswith("postmap: warning: ")
    ]
    assert table.warnings == warnings
