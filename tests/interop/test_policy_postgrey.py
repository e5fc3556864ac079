"""check_policy_service with a real postgrey (Debian's package) behind a running postwall:
greylisted first, accepted and delivered after the delay, as with Postfix."""

from __future__ import annotations

import grp
import os
import pwd
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop


@pytest.fixture
def postgrey(tmp_path: Path) -> Iterator[int]:
    """postgrey in the foreground on a free loopback port, greylisting for 2 s."""
    exe = peers.require_tool("postgrey")
    port = peers.free_port()
    dbdir = tmp_path / "postgrey"
    dbdir.mkdir()
    log = tmp_path / "postgrey.log"
    # Net::Server changes to --user/--group: stay whoever runs the test.
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, f"--inet=127.0.0.1:{port}", "--delay=2", f"--dbdir={dbdir}",
             f"--user={user}", f"--group={group}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        peers.wait_for(
            lambda: proc.poll() is None and peers.port_open("127.0.0.1", port),
            30,
            "postgrey to listen",
            detail=lambda: peers.tail(peers.read_text(log)),
        )
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _send(server: peers.PostwallServer) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.org")
        code, text = smtp.rcpt("root@postwall.test")
        if code == 250:
            code, text = smtp.data(
                peers.simple_message("greylisted", "sender@example.org", "root@postwall.test")
            )
        return code, text.decode()


def test_postgrey_greylists_then_accepts(postwall_factory, postgrey):  # type: ignore[no-untyped-def]
    server = postwall_factory(
        params={
            "mydestination": "localhost, postwall.test",
            "smtpd_recipient_restrictions": (
                f"permit_sasl_authenticated, reject_unauth_destination, "
                f"check_policy_service inet:127.0.0.1:{postgrey}"
            ),
        }
    )
    first = time.monotonic()
    assert _send(server) == (
        450,
        "4.2.0 <root@postwall.test>: Recipient address rejected: Greylisted, "
        "see http://postgrey.schweikert.ch/help/postwall.test.html",
    )
    server.wait_log(
        r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 450 4\.2\.0 "
        r"<root@postwall\.test>: Recipient address rejected: Greylisted, see "
        r"http://postgrey\.schweikert\.ch/help/postwall\.test\.html; "
        r"from=<sender@example\.org> to=<root@postwall\.test> proto=ESMTP helo=<client\.example>"
    )
    # An early retry is still greylisted.
    assert _send(server)[0] == 450
    time.sleep(max(0.0, 3.0 - (time.monotonic() - first)))
    code, text = _send(server)
    assert code == 250 and text.startswith("2.0.0 Ok: queued as "), text
    (message,) = peers.wait_maildir(server.maildir("root"), 1)
    assert b"Subject: greylisted" in message
    # postgrey's PREPEND: its X-Greylist header sits above postwall's Received, as in Postfix.
    headers = message.split(b"\r\n\r\n" if b"\r\n" in message else b"\n\n")[0].decode()
    greylist = headers.index("\nX-Greylist: delayed ")
    assert greylist < headers.index("\nReceived: from client.example")
    assert " seconds by postgrey-" in headers[greylist:].splitlines()[1]
