"""pflogsumm, unchanged, summarises our mail log correctly.

A realistic log (several clients, TLS and plain sessions, SASL, rejects, a
deferral, a bounce with its notification) is written with logfmt + MailLog
and fed to the real ``pflogsumm`` (Debian package); its Grand Totals must
equal what we logged.  Set POSTWALL_MAILLOG=/path/to/log to also check the
log of a real run.  Without pflogsumm the tests skip, except under CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from postwall import logfmt as lf
from postwall.log import DEFAULT_SYSLOG_NAME, MailLog

pytestmark = pytest.mark.interop

TOTALS = ("received", "delivered", "forwarded", "deferred", "bounced", "rejected")


def _pflogsumm() -> str:
    tool = shutil.which("pflogsumm")
    if tool:
        return tool
    reason = "pflogsumm not installed (apt-get install pflogsumm)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def pflogsumm_totals(log_path: Path, *extra: str) -> dict[str, int]:
    """Run pflogsumm and parse its "Grand Totals" message counts."""
    out = subprocess.run(
        [_pflogsumm(), "--problems-first", *extra, str(log_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    totals: dict[str, int] = {}
    for name in (*TOTALS, "bytes received", "senders", "sending hosts/domains"):
        m = re.search(rf"^\s*(\d+)\s+{re.escape(name)}\b", out, re.MULTILINE)
        assert m, f"pflogsumm output lacks {name!r}:\n{out}"
        totals[name] = int(m.group(1))
    return totals


Client = tuple[str | None, str]


def _deliver(qid: str, to: str, relay: str, d: lf.Delays, dsn: str, status: str, text: str) -> str:
    return lf.delivery_status(
        qid, to=to, relay=relay, delay=d.total, delays=d.parts, dsn=dsn, status=status, text=text
    )


class Scenario:
    """Writes the life of messages the way the daemons will, counting them."""

    def __init__(self, log: MailLog) -> None:
        self.smtpd = log.service("smtpd")
        self.cleanup = log.service("cleanup")
        self.qmgr = log.service("qmgr")
        self.local = log.service("local")
        self.smtp = log.service("smtp")
        self.bounce = log.service("bounce")
        self.received = self.delivered = self.deferred = self.bounced = self.rejected = 0
        self.bytes_received = 0
        self._qid = 0x1A2B3C000

    def qid(self) -> str:
        self._qid += 0x1F
        return f"{self._qid:X}"

    def session(
        self, client: Client, messages: list[tuple[str, str, int, str]], tls: bool = False
    ) -> list[str]:
        """One SMTP session; each message is (sender, recipient, size, fate)
        with fate "sent", "deferred" or "bounced".  Returns the queue ids."""
        self.smtpd.info(lf.connect(*client))
        if tls:
            self.smtpd.info(lf.tls_setup(*client))
            # Passed through verbatim from tls/describe.py in the real daemon.
            self.smtpd.info(
                f"Anonymous TLS connection established from {lf.namaddr(*client)}: TLSv1.3 "
                "with cipher "
                "TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 "
                "server-signature RSA-PSS (2048 bits) server-digest SHA256"
            )
        qids = []
        for sender, rcpt, size, fate in messages:
            qid = self.qid()
            qids.append(qid)
            self.smtpd.info(lf.client(qid, *client))
            self.cleanup.info(lf.cleanup_message_id(qid, f"<{qid}@client.example>"))
            self.qmgr.info(lf.queue_active(qid, sender, size, 1))
            self.received += 1
            self.bytes_received += size
            self.deliver(qid, sender, rcpt, fate)
        n = len(messages)
        tail = f"ehlo={2 if tls else 1}{' starttls=1' if tls else ''} mail={n} rcpt={n}"
        self.smtpd.info(lf.disconnect(*client, f"{tail} data={n} quit=1 commands={3 * n + 2}"))
        return qids

    def deliver(self, qid: str, sender: str, rcpt: str, fate: str) -> None:
        stamps = lf.Delays.from_stamps(0.0, 0.05, 0.06, None, 0.18)
        if fate == "sent":
            self.local.info(
                _deliver(qid, rcpt, "local", stamps, "2.0.0", "sent", "delivered to maildir")
            )
            self.qmgr.info(lf.removed(qid))
            self.delivered += 1
        elif fate == "deferred":
            why = lf.connect_failed("mx.example.net", "192.0.2.25", 25, "Connection refused")
            delays = lf.Delays.from_stamps(0.0, 0.05, 0.06, 30.1, 30.1)
            self.smtp.info(
                lf.connect_failed("mx.example.net", "192.0.2.25", 25, "Connection refused")
            )
            self.smtp.info(_deliver(qid, rcpt, "none", delays, "4.4.1", "deferred", why))
            self.deferred += 1
        else:
            self.local.info(
                _deliver(qid, rcpt, "local", stamps, "5.1.1", "bounced", 'unknown user: "nobody"')
            )
            self.bounced += 1
            notice = self.qid()
            self.cleanup.info(lf.cleanup_message_id(notice, f"<{notice}@mx.example.com>"))
            self.bounce.info(lf.notification(qid, "sender non-delivery", notice))
            self.qmgr.info(lf.queue_active(notice, "", 2100, 1))
            self.local.info(
                _deliver(notice, sender, "local", stamps, "2.0.0", "sent", "delivered to maildir")
            )
            self.qmgr.info(lf.removed(notice))
            self.qmgr.info(lf.removed(qid))
            self.delivered += 1  # the notification itself is a delivery

    def reject(self, stage: str, client: Client, reply: str, **fields: str) -> None:
        self.smtpd.info(lf.connect(*client))
        self.smtpd.info(lf.reject(None, stage, *client, reply, **fields))
        self.smtpd.info(lf.disconnect(*client, "ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4"))
        self.rejected += 1


def _write(path: Path, syslog_name: str = DEFAULT_SYSLOG_NAME, style: str = "postlog") -> Scenario:
    log = MailLog(syslog_name, "mx.example.com", maillog_file=path, timestamp_style=style)  # type: ignore[arg-type]
    log.service("master").info(lf.master_started("3.7.11", "/etc/postwall"))
    s = Scenario(log)
    s.session(
        ("mail.example.org", "192.0.2.10"),
        [("alice@example.org", "root@mx.example.com", 1200, "sent")] * 2,
        tls=True,
    )
    s.session(
        (None, "198.51.100.7"),
        [("bob@example.net", "postmaster@mx.example.com", 800, "sent")],
    )
    s.session(
        (None, "2001:db8::5"),
        [
            ("carol@example.com", "root@mx.example.com", 4096, "sent"),
            ("carol@example.com", "far@example.net", 512, "deferred"),
        ],
        tls=True,
    )
    s.session(
        ("relay.example.com", "203.0.113.3"),
        [("root@mx.example.com", "nobody@mx.example.com", 640, "bounced")],
    )
    s.reject(
        "RCPT",
        (None, "198.51.100.66"),
        "554 5.7.1 <x@example.net>: Relay access denied",
        sender="spam@example.biz",
        recipient="x@example.net",
        protocol="ESMTP",
        helo="spammer",
    )
    s.reject(
        "RCPT",
        (None, "198.51.100.67"),
        "550 5.1.1 <nosuchuser@mx.example.com>: Recipient address rejected: "
        "User unknown in local recipient table",
        sender="",
        recipient="nosuchuser@mx.example.com",
        protocol="ESMTP",
        helo="x",
    )
    s.smtpd.warning(lf.sasl_failed(None, "192.0.2.200", "LOGIN", "UGFzc3dvcmQ6"))
    log.close()
    return s


@pytest.mark.parametrize("style", ["postlog", "syslog"])
def test_grand_totals_match(tmp_path: Path, style: str) -> None:
    path = tmp_path / "maillog"
    s = _write(path, style=style)
    assert (s.received, s.delivered, s.deferred, s.bounced, s.rejected) == (6, 5, 1, 1, 2)
    # pflogsumm's multi-instance option names our (Postfix-instance style) syslog_name.
    totals = pflogsumm_totals(path, f"--syslog-name={DEFAULT_SYSLOG_NAME}")
    assert totals["received"] == s.received
    assert totals["delivered"] == s.delivered
    assert totals["forwarded"] == 0
    assert totals["deferred"] == s.deferred
    assert totals["bounced"] == s.bounced
    assert totals["rejected"] == s.rejected
    assert totals["bytes received"] == s.bytes_received
    assert totals["sending hosts/domains"] == 4
    assert totals["senders"] == 4


@pytest.mark.parametrize(
    ("syslog_name", "option", "seen"),
    [
        ("postfix", None, True),
        ("postfix-out", None, False),
        ("postfix-out", "--syslog-name=postfix-out", True),
        ("postwall", None, False),
        ("postfix-postwall", "--syslog-name=postfix-postwall", True),
    ],
)
def test_syslog_name_decides(
    tmp_path: Path, syslog_name: str, option: str | None, seen: bool
) -> None:
    # Evidence for DEFAULT_SYSLOG_NAME: pflogsumm only reads "postfix/..." lines
    # unless told another name.
    path = tmp_path / "maillog"
    s = _write(path, syslog_name)
    totals = pflogsumm_totals(path, *([option] if option else []))
    assert totals["received"] == (s.received if seen else 0)


def test_raw_counts_agree(tmp_path: Path) -> None:
    # pflogsumm against a plain count of the raw lines: on the log of a real
    # run when POSTWALL_MAILLOG names one, else on the scenario log.
    if os.environ.get("POSTWALL_MAILLOG"):
        path = Path(os.environ["POSTWALL_MAILLOG"])
    else:
        path = tmp_path / "maillog"
        _write(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    prog = r"postfix(?:-\w+)?(?:/\w+)*/"
    received = len(re.findall(rf" {prog}smtpd\[\d+\]: \w+: client=", text))
    sent = len(re.findall(rf" {prog}\w+\[\d+\]: \w+: to=<.*, status=sent ", text))
    # "warning: reject: ETRN ..." is a warning, not a rejected message.
    rejected = len(re.findall(rf" {prog}smtpd\[\d+\]: (?!warning)\w+: reject: ", text))
    name = re.search(r" (postfix(?:-\w+)?)/\w+\[", text)
    totals = pflogsumm_totals(path, f"--syslog-name={name.group(1) if name else 'postfix'}")
    assert totals["received"] == received
    assert totals["delivered"] == sent
    assert totals["rejected"] == rejected
