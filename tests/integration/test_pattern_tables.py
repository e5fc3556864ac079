"""regexp: and pcre: tables in a running postwall: check_sender_access answers as
Postfix's smtpd (whole-address lookups only), and a broken rule is logged at start-up."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from pathlib import Path

import peers

RCPT = "someone@postwall.test"


def _rcpt_reply(port: int, sender: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.example")
        code, _ = client.mail(sender)
        assert code == 250
        code, text = client.rcpt(RCPT)
        return code, text.decode()


def test_check_sender_access_with_a_regexp_table(postwall_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    table = tmp_path / "sender_access"
    table.write_text(
        "# spammers\n"
        "/^spam(\\+.*)?@/\tREJECT\n"
        "/@(.*\\.)?bad\\.example$/\t550 5.7.0 go away, ${1}domain\n"
        "/^bad\\.example$/\tREJECT never matched: pattern tables see the whole address\n"
        "/(broken/\tREJECT\n"
    )
    server = postwall_factory(
        params={
            "mydestination": "postwall.test",
            "local_recipient_maps": "",
            "smtpd_sender_restrictions": f"check_sender_access regexp:{table}",
        }
    )
    assert _rcpt_reply(server.port, "spam+x@anywhere.example") == (
        554,
        "5.7.1 <spam+x@anywhere.example>: Sender address rejected: Access denied",
    )
    assert _rcpt_reply(server.port, "joe@mail.bad.example") == (
        550,
        "5.7.0 <joe@mail.bad.example>: Sender address rejected: go away, mail.domain",
    )
    assert _rcpt_reply(server.port, "joe@bad.example")[0] == 550
    # Neither the domain nor `user@` is looked up in a pattern table.
    assert _rcpt_reply(server.port, "user@good.example") == (250, "2.1.5 Ok")
    assert _rcpt_reply(server.port, "spammer@good.example") == (250, "2.1.5 Ok")
    server.wait_log(
        r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 554 5\.7\.1 "
        r"<spam\+x@anywhere\.example>: Sender address rejected: Access denied; "
        r"from=<spam\+x@anywhere\.example> to=<someone@postwall\.test> proto=ESMTP "
        r"helo=<client\.example>"
    )
    server.wait_log(rf"warning: regexp map {table}, line 5: .*")


def test_header_checks_action_that_changes_delivery_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "header_checks").write_text("/^Subject: x/ FILTER smtp:[127.0.0.1]:10025\n")
    (tmp_path / "main.cf").write_text(
        f"myhostname = x.example\nqueue_directory = {tmp_path}/queue\n"
        f"data_directory = {tmp_path}/data\nmail_owner = root\n"
        f"header_checks = pcre:{tmp_path}/header_checks\n"
    )
    (tmp_path / "master.cf").write_text(f"127.0.0.1:{peers.free_port()} inet n - n - - smtpd\n")
    proc = subprocess.run(
        [sys.executable, "-m", "postwall", "start", "-c", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(peers.SRC)},
    )
    assert proc.returncode != 0
    assert (
        f"{tmp_path}/main.cf:5: header_checks: pcre:{tmp_path}/header_checks: "
        "action FILTER is not supported by postwall"
    ) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_postwall_check_reports_pattern_table_problems(tmp_path: Path) -> None:
    (tmp_path / "header_checks").write_text("/a(/ REJECT\n/^Subject: x/ WARN\n")
    (tmp_path / "body_checks").write_text("/y/ REDIRECT a@b.example\n")
    (tmp_path / "main.cf").write_text(
        f"myhostname = x.example\nqueue_directory = {tmp_path}/queue\n"
        f"header_checks = regexp:{tmp_path}/header_checks\n"
        f"body_checks = pcre:{tmp_path}/body_checks\n"
    )
    (tmp_path / "master.cf").write_text("127.0.0.1:2525 inet n - n - - smtpd\n")

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "postwall", "check", "-c", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYTHONPATH": str(peers.SRC)},
        )

    res = check()
    assert res.returncode == 1
    assert (
        f"error: {tmp_path}/main.cf:4: body_checks: pcre:{tmp_path}/body_checks: "
        "action REDIRECT is not supported by postwall"
    ) in res.stderr
    (tmp_path / "body_checks").write_text("/y/ WARN\n")
    res = check()
    assert res.returncode == 0, res.stderr
    assert f"warning: regexp map {tmp_path}/header_checks, line 1: " in res.stderr
