"""`postwall sendmail` as a real command against a real running server (python3 -m postwall start).

The server's queue_run_delay is 300 s, so mail delivered within seconds was delivered through
the wake-up datagram on $queue_directory/public/qmgr, not by a periodic scan.  Recipients are
root+EXT@localhost (recipient_delimiter = +): every copy lands in root's Maildir, and its
Delivered-To names the recipient it was for.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

WAKE_DEADLINE = 10.0  # seconds; the periodic scan would take 300


def sendmail(
    server: peers.PostwallServer, *args: str, stdin: bytes = b"", timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(peers.SRC))
    return subprocess.run(
        [sys.executable, "-m", "postwall", "sendmail", "-C", str(server.config_dir), *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=timeout,
    )


def messages(server: peers.PostwallServer, user: str = "root") -> list[bytes]:
    return peers.maildir_messages(server.maildir(user))


def wait_messages(server: peers.PostwallServer, count: int) -> list[bytes]:
    return peers.wait_for(
        lambda: m if len(m := messages(server)) >= count else None,
        WAKE_DEADLINE,
        f"{count} message(s) in root's Maildir",
        detail=lambda: peers.tail(server.log_text()),
    )


def headers(msg: bytes) -> list[tuple[str, str]]:
    head = msg.split(b"\n\n", 1)[0].decode()
    out: list[tuple[str, str]] = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
        else:
            name, _, value = line.partition(":")
            out.append((name, value.strip()))
    return out


@pytest.fixture
def server(postwall_factory: Callable[..., peers.PostwallServer]) -> peers.PostwallServer:
    return postwall_factory(
        params={
            "mydestination": "localhost, postwall.test",
            "recipient_delimiter": "+",
            "queue_run_delay": "300s",
            "message_size_limit": "20000",
        }
    )


def test_t_delivers_to_to_cc_bcc_and_command_line_promptly_without_bcc(
    server: peers.PostwallServer,
) -> None:
    msg = (
        b"To: Root To <root+to@localhost>\n"
        b"Cc: root+cc@localhost\n"
        b"Bcc: root+bcc@localhost\n"
        b"Subject: sendmail -t\n"
        b"\n"
        b"hello\n"
    )
    res = sendmail(server, "-t", "root+cmd@localhost", stdin=msg)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"" and res.stderr == b""
    got = wait_messages(server, 4)
    delivered_to = sorted(dict(headers(m))["Delivered-To"] for m in got)
    assert delivered_to == [f"root+{x}@localhost" for x in ("bcc", "cc", "cmd", "to")]
    for m in got:
        hs = headers(m)
        names = [n for n, _ in hs]
        assert "Bcc" not in names
        # Postfix 3.7's pickup/cleanup shape: Received first, the message's own headers,
        # then Message-Id, Date and From appended.
        assert names[3:] == ["Received", "To", "Cc", "Subject", "Message-Id", "Date", "From"]
        received = dict(hs)["Received"]
        assert re.fullmatch(
            r"by postwall\.test \(postwall, from userid 0\)\n\tid ([0-9A-F]+); "
            r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4} \(\w+\)",
            received,
        ), received
        qid = re.search(r"id ([0-9A-F]+);", received).group(1)  # type: ignore[union-attr]
        assert dict(hs)["Message-Id"] == f"<{_stamp(dict(hs)['Message-Id'])}.{qid}@postwall.test>"
        assert dict(hs)["From"] == "root <root@postwall.test>"
        assert m.endswith(b"\n\nhello\n")
    log = server.log_text()
    assert re.search(rf"/pickup\[\d+\]: {qid}: uid=0 from=<root>$", log, re.M)
    assert re.search(rf"/cleanup\[\d+\]: {qid}: message-id=<\d+\.{qid}@postwall\.test>$", log, re.M)
    assert re.search(
        rf"/qmgr\[\d+\]: {qid}: from=<root@postwall\.test>, size=\d+, nrcpt=4 \(queue active\)$",
        log,
        re.M,
    )


def _stamp(message_id: str) -> str:
    return message_id.strip("<>").split(".")[0]


def test_f_F_and_i_keep_a_lone_dot(server: peers.PostwallServer) -> None:
    body = b"Subject: dots\n\nbefore\n.\nafter\r\nbare\rcr\n"
    res = sendmail(server, "-f", "joe@example.org", "-F", "Joe Q. User", "-i", "root+i", stdin=body)
    assert res.returncode == 0, res.stderr
    res = sendmail(server, "-r", "<joe@example.org>", "root+noi", stdin=body)
    assert res.returncode == 0, res.stderr
    got = {dict(headers(m))["Delivered-To"]: m for m in wait_messages(server, 2)}
    with_i = got["root+i@postwall.test"]
    assert with_i.startswith(b"Return-Path: <joe@example.org>\n")
    assert dict(headers(with_i))["From"] == '"Joe Q. User" <joe@example.org>'
    # CRLF and LF both end lines; a bare CR becomes a space, as Postfix's sendmail path.
    assert with_i.endswith(b"\n\nbefore\n.\nafter\nbare cr\n")
    without_i = got["root+noi@postwall.test"]
    assert without_i.endswith(b"\n\nbefore\n")  # the lone dot ended the input
    assert dict(headers(without_i))["From"] == "root <joe@example.org>"


def test_bs_is_an_smtp_session_on_stdin_and_stdout(server: peers.PostwallServer) -> None:
    session = (
        b"EHLO me\r\nMAIL FROM:<joe@example.org>\r\nRCPT TO:<root+bs>\r\n"
        b"RCPT TO:<somebody@remote.example>\r\nDATA\r\nSubject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n"
    )
    res = sendmail(server, "-bs", stdin=session)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().split("\r\n")
    assert lines[0] == "220 postwall.test ESMTP postwall"
    assert "250-PIPELINING" in lines and "250 CHUNKING" in lines
    tail = lines[lines.index("250 CHUNKING") + 1 :]
    # No relay control for a local user's session, as Postfix's -bs.
    assert tail[:4] == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    m = re.fullmatch(r"250 2\.0\.0 Ok: queued as ([0-9A-F]+)", tail[4])
    assert m, tail
    assert tail[5:] == ["221 2.0.0 Bye", ""]
    (msg,) = wait_messages(server, 1)
    hs = dict(headers(msg))
    assert hs["Received"].startswith(
        "from me (localhost [127.0.0.1])\n"
        f"\tby postwall.test (postwall) with ESMTP id {m.group(1)};"
    )
    assert hs["From"] == "joe@example.org" and "Message-Id" in hs and "Date" in hs
    log = server.log_text()
    assert re.search(r"/smtpd\[\d+\]: connect from localhost\[127\.0\.0\.1\]$", log, re.M)
    assert re.search(
        r"disconnect from localhost\[127\.0\.0\.1\] ehlo=1 mail=1 rcpt=2 data=1 quit=1 commands=6$",
        log,
        re.M,
    )


def test_bv_mails_a_delivery_status_report(server: peers.PostwallServer) -> None:
    res = sendmail(server, "-bv", "root+bv", "nosuchuser@localhost", "far@remote.example")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"Mail Delivery Status Report will be mailed to <root>.\n"
    (report,) = wait_messages(server, 1)
    hs = dict(headers(report))
    assert hs["Subject"] == "Mail Delivery Status Report"
    assert hs["From"] == "Mail Delivery System <MAILER-DAEMON@postwall.test>"
    assert report.startswith(b"Return-Path: <>\n")
    text = report.decode()
    assert (
        "Final-Recipient: rfc822; root+bv@postwall.test\n"
        "Original-Recipient: rfc822;root+bv@postwall.test\n"
        "Action: deliverable\nStatus: 2.0.0\n" in text
    )
    assert "Final-Recipient: rfc822; nosuchuser@localhost\n" in text
    assert "Action: undeliverable\nStatus: 5.1.1\n" in text
    assert "Final-Recipient: rfc822; far@remote.example\n" in text
    assert "Subject: probe\n" in text
    log = server.log_text()
    assert re.search(
        r"/local\[\d+\]: [0-9A-F]+: to=<root\+bv@postwall\.test>, orig_to=<root\+bv>, relay=local, "
        r"delay=0, delays=0/0/0/0, dsn=2\.0\.0, status=deliverable \(delivers to maildir\)$",
        log,
        re.M,
    )
    assert re.search(
        r"/bounce\[\d+\]: [0-9A-F]+: sender delivery status notification: [0-9A-F]+$", log, re.M
    )
    # Nothing was delivered to the probed addresses.
    assert all(dict(headers(m))["Delivered-To"] == "root@postwall.test" for m in messages(server))


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (
            ["-Z", "root"],
            "sendmail: invalid option -- 'Z'\nsendmail: invalid option -- 'Z'\n"
            "sendmail: fatal: usage: sendmail [options]\n",
        ),
        (
            [],
            "sendmail: fatal: root(0): Recipient addresses must be specified on the command "
            "line or via the -t option\n",
        ),
        (["-t"], "sendmail: fatal: root(0): No recipient addresses found in message header\n"),
        (["-bp", "root"], "sendmail: fatal: display queue mode requires no recipient\n"),
        (["-bv", "-t", "root"], "sendmail: fatal: -t option cannot be used with -bv\n"),
        (["-B", "x", "root"], "sendmail: fatal: -B option needs 8BITMIME or 7BIT\n"),
    ],
)
def test_bad_usage_exits_75_with_one_line(
    server: peers.PostwallServer, args: list[str], stderr: str
) -> None:
    # 75, not 64: Postfix's sendmail exits EX_TEMPFAIL on every fatal error (see the
    # interop comparison in tests/interop/test_sendmail_postfix.py).
    res = sendmail(server, *args, stdin=b"Subject: x\n\nx\n")
    assert (res.returncode, res.stderr.decode()) == (75, stderr)
    assert res.stdout == b""


def test_oversized_message_is_refused(server: peers.PostwallServer) -> None:
    big = b"Subject: big\n\n" + b"x" * 70 + b"\n"
    res = sendmail(server, "root", stdin=big * 400)
    assert res.returncode == 75
    assert res.stderr.decode().endswith("sendmail: fatal: root(0): message file too big\n")
    assert not any(Path(server.queue_dir, "incoming").iterdir())
    assert re.search(
        r"/sendmail\[\d+\]: fatal: root\(0\): message file too big$", server.log_text(), re.M
    )


def test_without_a_server_mail_waits_and_is_delivered_at_start(
    postwall_factory: Callable[..., peers.PostwallServer],
) -> None:
    srv = postwall_factory(
        params={"mydestination": "localhost", "recipient_delimiter": "+"}, start=False
    )
    srv.write_config()
    res = sendmail(srv, "-v", "root+later@localhost", stdin=b"Subject: later\n\nx\n")
    assert res.returncode == 0, res.stderr
    assert b"no postwall server is running" in res.stderr
    assert len(list(Path(srv.queue_dir, "incoming").iterdir())) == 1
    srv.start()
    (msg,) = wait_messages(srv, 1)
    assert dict(headers(msg))["Delivered-To"] == "root+later@localhost"


def test_bp_and_q_are_mailq_and_flush(server: peers.PostwallServer) -> None:
    res = sendmail(server, "-bp")
    assert (res.returncode, res.stdout) == (0, b"Mail queue is empty\n")
    res = sendmail(server, "-q")
    assert res.returncode == 0, res.stderr
