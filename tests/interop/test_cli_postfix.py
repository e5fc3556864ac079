"""postwall's operator commands next to Postfix's own, on the same input.

`postwall postconf -n` and `-M` against Postfix's postconf on the how-to's main.cf and
Postfix's stock master.cf; the mailq/postqueue -j listing and postsuper's messages against a
private Postfix instance (tests/peers.PostfixInstance) holding the same two messages.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import peers
from postwall.config import params as P

BASE_MAIN_CF = (peers.DEBIAN_MAIN_CF, peers.PROTO_MAIN_CF)
MASTER_PROTO = peers.MASTER_PROTO

postwall = peers.run_postwall


def real(*argv: str) -> subprocess.CompletedProcess[str]:
    peers.require_tool(argv[0])
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


@pytest.fixture
def howto_dir(tmp_path: Path) -> Path:
    base = next((p for p in BASE_MAIN_CF if p.exists()), None)
    if base is None or not MASTER_PROTO.exists():
        pytest.skip("Postfix's main.cf/master.cf prototypes are not installed")
    (tmp_path / "main.cf").write_text(base.read_text() + peers.HOWTO_TLS_BLOCK)
    shutil.copy(MASTER_PROTO, tmp_path / "master.cf")
    return tmp_path


@pytest.mark.parametrize("flags", ["-n", "-nx"])
def test_postconf_n_matches_postfix(howto_dir: Path, flags: str) -> None:
    main_cf = (howto_dir / "main.cf").read_text()
    # postwall's deliberate default differences, given to Postfix as what they are.
    unset = [n for n in sorted(P.DELIBERATE) if not re.search(rf"^{n}\s*=", main_cf, re.M)]
    overrides = [a for n in unset for a in ("-o", f"{n}={P.raw_default(n)}")]
    theirs = real("postconf", "-c", str(howto_dir), *overrides, flags)
    assert theirs.returncode == 0, theirs.stderr
    expected = "".join(
        line for line in theirs.stdout.splitlines(keepends=True)
        if line.split(" = ", 1)[0] not in unset
    )  # fmt: skip
    ours = postwall("postconf", "-c", str(howto_dir), flags)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == expected


def test_postconf_M_matches_postfix(howto_dir: Path) -> None:
    theirs = real("postconf", "-c", str(howto_dir), "-M")
    ours = postwall("postconf", "-c", str(howto_dir), "-M")
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout
    theirs = real("postconf", "-c", str(howto_dir), "-M", "smtp/inet", "pickup", "none/such")
    ours = postwall("postconf", "-c", str(howto_dir), "-M", "smtp/inet", "pickup", "none/such")
    assert ours.stdout == theirs.stdout
    assert ours.stderr.replace("postwall:", "postconf:") == theirs.stderr


# -- the queue ------------------------------------------------------------------------------

HEAD = re.compile(r"([0-9A-F]+)([*!]?) +(\d+) (\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d ) (.*)")


def normalise(listing: str) -> tuple[str, list[str]]:
    """The listing with ids, sizes and times replaced (after checking their columns) and
    reason lines dropped (a site throttled after the first failure is worded by each
    MTA at its own moment); message
    blocks sorted, as the two queues list in different orders."""
    head, *blocks = listing.split("\n\n")
    trailer = blocks.pop() if blocks else ""
    first, _, rest = head.partition("\n")
    out = []
    for block in [rest, *blocks]:
        lines = []
        for line in block.splitlines():
            m = HEAD.fullmatch(line)
            if m:
                assert line == f"{m[1] + m[2]:<11} {m[3]:>7} {m[4]} {m[5]}"
                line = f"QID{m[2]} SIZE TIME {m[5]}"
            elif re.fullmatch(r" *\(.*\)", line):
                continue
            lines.append(line)
        out.append("\n".join(lines))
    trailer = re.sub(r"-- \d+ Kbytes", "-- N Kbytes", trailer)
    return first + "|" + trailer, sorted(out)


MESSAGES = (
    ("alice@example.org", ["bob@remote.test", "carol@remote.test"], "x" * 3000),
    ("", ["dave@remote.test"], "short"),
)


def test_mailq_json_and_postsuper_match_postfix(
    postfix_factory: Callable[..., peers.PostfixInstance],
    postwall_factory: Callable[..., peers.PostwallServer],
    tmp_path: Path,
) -> None:
    dead = peers.free_port()  # nothing listens there: both defer
    inst = postfix_factory("relay_client", dead)
    srv = postwall_factory(
        params={
            "relayhost": f"[127.0.0.1]:{dead}",
            "mydestination": "localhost",
            "mynetworks": "127.0.0.0/8",
            "data_directory": str(tmp_path / "data"),
            "minimal_backoff_time": "3600s",
            "maximal_backoff_time": "4000s",
        }
    )
    for sender, rcpts, body in MESSAGES:
        msg = peers.simple_message("q", sender, rcpts[0], body + "\r\n")
        inst.sendmail(sender, rcpts, msg)
        peers.smtp_send("127.0.0.1", srv.port, sender, rcpts, msg)
    pf = ["-c", str(inst.config_dir)]
    pw = ["-c", str(srv.config_dir)]

    def both_queued(args: list[str], runner: Callable[..., subprocess.CompletedProcess[str]]):
        return lambda: "in 2 Requests." in runner(*args).stdout and "*" not in runner(*args).stdout

    peers.wait_for(both_queued(["postqueue", *pf, "-p"], real), 30, "Postfix queue")
    peers.wait_for(both_queued(["mailq", *pw], postwall), 30, "postwall queue")
    # Hold everything: the listings stop changing, and both print the "!" mark.
    theirs = real("postsuper", *pf, "-h", "ALL")
    ours = postwall("postsuper", *pw, "-h", "ALL")
    assert (ours.returncode, theirs.returncode) == (0, 0)
    assert re.sub(r"[0-9A-F]{10,}", "ID", ours.stderr) == re.sub(
        r"[0-9A-F]{10,}", "ID", theirs.stderr
    )
    theirs_p = real("postqueue", *pf, "-p").stdout
    ours_p = postwall("mailq", *pw).stdout
    assert normalise(ours_p) == normalise(theirs_p), (ours_p, theirs_p)

    def shape(out: str) -> list[dict[str, object]]:
        objs = [json.loads(x) for x in out.splitlines()]
        for o in objs:
            assert isinstance(o.pop("queue_id"), str) and isinstance(o.pop("arrival_time"), int)
            assert isinstance(o.pop("message_size"), int)
            for r in o["recipients"]:  # type: ignore[attr-defined]
                r.pop("delay_reason", None)
        return sorted(objs, key=lambda o: str(o["sender"]))

    theirs_j = real("postqueue", *pf, "-j").stdout
    ours_j = postwall("postqueue", *pw, "-j").stdout
    assert [list(json.loads(x)) for x in ours_j.splitlines()] == [
        list(json.loads(x)) for x in theirs_j.splitlines()
    ]
    assert shape(ours_j) == shape(theirs_j)

    for args in (["-H", "ALL"], ["-d", "ALL"]):
        theirs = real("postsuper", *pf, *args)
        ours = postwall("postsuper", *pw, *args)
        strip = re.compile(r"postsuper: [0-9A-F]{10,}: removed\n")
        assert sorted(strip.sub("postsuper: ID: removed\n", ours.stderr).splitlines()) == sorted(
            strip.sub("postsuper: ID: removed\n", theirs.stderr).splitlines()
        )
    assert postwall("mailq", *pw).stdout == real("postqueue", *pf, "-p").stdout
