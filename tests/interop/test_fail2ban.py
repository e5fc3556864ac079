"""fail2ban's stock postfix filter, unchanged, bans on our log lines.

Runs the real ``fail2ban-regex`` (Debian package fail2ban; filter.d/postfix.conf,
modes ``auth`` for SASL failures and ``aggressive``) on a log written by
logfmt + MailLog and checks that every failure is matched with the right
address, that ordinary traffic is not, and that the syslog name we chose is
what makes it work.  Without the tool the test skips, except under CI, where
it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from postwall import logfmt as lf
from postwall.log import DEFAULT_SYSLOG_NAME, MailLog

pytestmark = pytest.mark.interop

FILTER = Path("/etc/fail2ban/filter.d/postfix.conf")
NOV8 = time.mktime((2026, 11, 8, 9, 15, 47, 0, 0, -1))


def _require_fail2ban() -> str:
    tool = shutil.which("fail2ban-regex")
    if tool and FILTER.exists():
        return tool
    reason = (
        "fail2ban-regex or /etc/fail2ban/filter.d/postfix.conf missing (apt-get install fail2ban)"
    )
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _matched_ips(log_path: Path, mode: str) -> list[str]:
    tool = _require_fail2ban()
    out = subprocess.run(
        [tool, "--raw", "-o", "ip", str(log_path), f"postfix[mode={mode}]"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.split()


SASL_FAILURES = [
    ("192.0.2.200", "PLAIN", "authentication failure", None),
    ("192.0.2.201", "LOGIN", "UGFzc3dvcmQ6", "admin@example.com"),
    ("2001:db8::bad", "PLAIN", "", None),
    ("198.51.100.77", "CRAM-MD5", "authentication failure", "bob"),
]


def _write_log(path: Path, syslog_name: str, style: str) -> None:
    log = MailLog(
        syslog_name,
        "mx.example.com",
        maillog_file=path,
        pid=4242,
        clock=lambda: NOV8,
        timestamp_style=style,  # type: ignore[arg-type]
    )
    smtpd = log.service("smtpd")
    # Ordinary traffic around the failures: none of it may match.
    good = ("mail.example.org", "192.0.2.10")
    smtpd.info(lf.connect(*good))
    smtpd.info(lf.client("4B1C0D2E3F", *good, sasl_method="PLAIN", sasl_username="alice"))
    smtpd.info(lf.disconnect(*good, "ehlo=1 auth=1 mail=1 rcpt=1 data=1 quit=1 commands=6"))
    for addr, mech, reason, user in SASL_FAILURES:
        smtpd.info(lf.connect(None, addr))
        smtpd.warning(lf.sasl_failed(None, addr, mech, reason, user))
        smtpd.info(lf.disconnect(None, addr, "ehlo=1 auth=0/1 quit=1 commands=2/3"))
    relay = ("unknown", "203.0.113.9")
    smtpd.info(
        lf.reject(
            None,
            "RCPT",
            *relay,
            "554 5.7.1 <x@example.net>: Relay access denied",
            sender="spam@example.org",
            recipient="x@example.net",
            protocol="ESMTP",
            helo="spammer",
        )
    )
    smtpd.info(
        lf.reject(
            None,
            "RCPT",
            *relay,
            "550 5.1.1 <nosuchuser@example.com>: Recipient address rejected: "
            "User unknown in local recipient table",
            sender="spam@example.org",
            recipient="nosuchuser@example.com",
            protocol="ESMTP",
            helo="spammer",
        )
    )
    smtpd.info(lf.improper_pipelining("CONNECT", None, "203.0.113.10", b"EHLO x\r\n"))
    smtpd.info(lf.too_many_errors("RCPT", None, "203.0.113.11"))


@pytest.mark.parametrize("style", ["postlog", "syslog"])
def test_auth_mode_bans_every_sasl_failure(tmp_path: Path, style: str) -> None:
    path = tmp_path / "maillog"
    _write_log(path, DEFAULT_SYSLOG_NAME, style)
    assert _matched_ips(path, "auth") == [addr for addr, *_ in SASL_FAILURES]


def test_aggressive_mode_bans_failures_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "maillog"
    _write_log(path, DEFAULT_SYSLOG_NAME, "postlog")
    # The "ddos" part of aggressive mode also bans a disconnect line whose
    # command counts show a failed AUTH (auth=0/1): two hits per failure.
    assert _matched_ips(path, "aggressive") == [
        *(addr for addr, *_ in SASL_FAILURES for _ in range(2)),
        "203.0.113.9",  # Relay access denied
        "203.0.113.9",  # User unknown
        "203.0.113.10",  # improper command pipelining
        "203.0.113.11",  # too many errors
    ]


@pytest.mark.parametrize(
    ("syslog_name", "matches"),
    [("postfix", True), ("postfix-out", True), ("postfix-postwall", True), ("postwall", False)],
)
def test_syslog_name_decides(tmp_path: Path, syslog_name: str, matches: bool) -> None:
    # Evidence for DEFAULT_SYSLOG_NAME: the stock _daemon regex is
    # postfix(-\w+)?/..., so a "postwall/smtpd" line is never banned.
    path = tmp_path / "maillog"
    _write_log(path, syslog_name, "postlog")
    found = _matched_ips(path, "auth")
    assert found == ([addr for addr, *_ in SASL_FAILURES] if matches else [])
