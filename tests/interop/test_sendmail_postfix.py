"""`postwall sendmail` side by side with Debian's /usr/sbin/sendmail on a private Postfix.

The same input goes to both; what each adds (the Received header's shape, Message-Id, Date and
From, the header order, Bcc removal), the log lines of the submission and the exit status and
stderr of bad command lines are compared after host names, queue ids, dates and sizes are
normalised.  The Postfix instance defers local mail (defer_transports = local), so its queue
file can be read back with postcat.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

import peers

MESSAGE = (
    b"From someone Sat Nov 28 10:00:00 2026\n"
    b"To: root+to@localhost\n"
    b"Cc: Carbon <root+cc@localhost>\n"
    b"Bcc: root+bcc@localhost\n"
    b"Subject: side by side\n"
    b"\n"
    b"body\n"
)


@pytest.fixture(scope="module")
def postfix() -> Iterator[peers.PostfixInstance]:
    peers.require_root()
    peers.require_tool("postmulti")
    peers.require_tool("sendmail")
    peers.require_tool("postcat")
    inst = peers.PostfixInstance.create(
        {
            "mydestination": "localhost, $myhostname",
            "recipient_delimiter": "+",
            "defer_transports": "local",
        }
    )
    try:
        yield inst.start()
    finally:
        inst.destroy()


@pytest.fixture
def postwall(postwall_factory: Callable[..., peers.PostwallServer]) -> peers.PostwallServer:
    return postwall_factory(
        params={"mydestination": "localhost, postwall.test", "recipient_delimiter": "+"}
    )


def run_postfix(inst: peers.PostfixInstance, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    exe = peers.require_tool("sendmail")
    res = subprocess.run(
        [exe, "-C", str(inst.config_dir), *args], input=stdin, capture_output=True, timeout=60
    )
    return res.returncode, res.stderr.decode()


def run_postwall(srv: peers.PostwallServer, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(peers.SRC))
    res = subprocess.run(
        [sys.executable, "-m", "postwall", "sendmail", "-C", str(srv.config_dir), *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
    )
    return res.returncode, res.stderr.decode()


def normalise(text: str, host: str, qid: str) -> str:
    text = text.replace(qid, "QID").replace(host, "HOST")
    text = re.sub(r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4} \(\w+\)", "DATE", text)
    text = re.sub(r"<\d{14}\.QID@HOST>", "<STAMP.QID@HOST>", text)
    return re.sub(r"\((Postfix|postwall)", "(NAME", text)


def header_block(text: str) -> list[str]:
    """Header fields (continuations joined with a newline), without the delivery's own."""
    out: list[str] = []
    for line in text.split("\n\n", 1)[0].split("\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] += "\n" + line
        elif line:
            out.append(line)
    skip = ("Return-Path:", "X-Original-To:", "Delivered-To:")
    return [h for h in out if not h.startswith(skip)]


def log_shape(log: str, qid: str, host: str) -> list[str]:
    """The submission's lines: `service: text`, normalised, in order."""
    lines = []
    for m in re.finditer(rf"^\S+ +\d+ \S+ \S+ [^/]+/(\w+)\[\d+\]: ({qid}: .*)$", log, re.M):
        text = re.sub(r"size=\d+", "size=N", normalise(m.group(2), host, qid))
        lines.append(f"{m.group(1)}: {text}")
    return lines


def test_headers_and_log_lines_match_postfix(
    postfix: peers.PostfixInstance, postwall: peers.PostwallServer
) -> None:
    assert run_postfix(postfix, "-t", stdin=MESSAGE) == (0, "")
    assert run_postwall(postwall, "-t", stdin=MESSAGE) == (0, "")

    # Postfix: the queue file, read back with postcat.
    m = postfix.wait_log(r"qmgr\[\d+\]: ([0-9A-F]+): from=<root@[^>]+>, size=\d+, nrcpt=3 ")
    pf_qid = m.group(1)
    pf_host = peers._run(["postconf", "-c", str(postfix.config_dir), "-h", "myhostname"]).strip()
    pf_text = peers._run(["postcat", "-c", str(postfix.config_dir), "-hq", pf_qid])
    # postwall: the copy delivered to root+to.
    msgs = peers.wait_for(
        lambda: m if len(m := peers.maildir_messages(postwall.maildir("root"))) == 3 else None,
        10,
        "three copies in root's Maildir",
    )
    pw_text = next(m for m in msgs if b"Delivered-To: root+to@localhost\n" in m).decode()
    pw_qid = re.search(r"\n\tid ([0-9A-F]+);", pw_text).group(1)  # type: ignore[union-attr]

    pf_headers = [normalise(h, pf_host, pf_qid) for h in header_block(pf_text)]
    pw_headers = [normalise(h, "postwall.test", pw_qid) for h in header_block(pw_text)]
    assert pw_headers == pf_headers
    assert pf_headers[0] == "Received: by HOST (NAME, from userid 0)\n\tid QID; DATE"
    assert pf_headers[-3:] == [
        "Message-Id: <STAMP.QID@HOST>",
        "Date: DATE",
        "From: root <root@HOST>",
    ]

    pf_log = log_shape(postfix.log_text(), pf_qid, pf_host)
    pw_log = log_shape(postwall.log_text(), pw_qid, "postwall.test")
    first_three = [
        "pickup: QID: uid=0 from=<root>",
        "cleanup: QID: message-id=<STAMP.QID@HOST>",
        "qmgr: QID: from=<root@HOST>, size=N, nrcpt=3 (queue active)",
    ]
    assert pf_log[:3] == first_three
    assert pw_log[:3] == first_three


@pytest.mark.parametrize(
    "args",
    [
        ["-Z", "root"],
        [],
        ["-t"],
        ["-bp", "root"],
        ["-bv", "-t", "root"],
        ["-n", "root"],
        ["-B", "x", "root"],
        ["-qZ"],
        ["-bz"],
    ],
    ids=lambda a: " ".join(a) or "no-args",
)
def test_bad_command_lines_fail_as_postfix(
    postfix: peers.PostfixInstance, postwall: peers.PostwallServer, args: list[str]
) -> None:
    stdin = b"Subject: x\n\nx\n"
    assert run_postwall(postwall, *args, stdin=stdin) == run_postfix(postfix, *args, stdin=stdin)
