"""header_checks and body_checks: the same tables in a private Postfix 3.7 and in postwall,
the same messages to both; the SMTP replies, cleanup's log lines and the delivered
content must be the same (queue ids, host names and the recipient aside)."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

import peers

HEADER_CHECKS = r"""# header_checks(5) actions
/^Subject: reject-me/ REJECT
/^Subject: reject-text/ REJECT go away now
/^Subject: reject-dsn/ REJECT 5.7.2 custom dsn
/^Subject: defer-me/ REJECT 4.7.1 later please
/^Subject: bad-dsn/ REJECT 2.1.1 odd
/^Subject: code-me/ 550 not an action in 3.7
/^Subject: warn-me/ WARN
/^Subject: warntext-me/ WARN some text
/^Subject: info-me/ INFO info text
/^Subject: hold-me/ HOLD held text
/^Subject: discard-me/ DISCARD discarded
/^Subject: pass-me/ PASS passing
/^Subject: fold-me..second/ WARN folded header, one string
/^X-After-Pass:/ REJECT never: PASS ends inspection
/^X-Drop:/ IGNORE
/^X-Strip:/ STRIP stripped
/^X-Replace: (.*)/ REPLACE X-Replaced: $1
/^X-Prepend:/ PREPEND X-Prepended: yes
/^X-Badprepend:/ PREPEND not a header
/^X-Part:/ WARN part header
/^X-Nested:/ WARN attached message header
/^Content-Type: multipart/ INFO multipart
/^Received: from client\.example/ WARN the Received header smtpd adds is inspected
/^Message-Id:/ WARN message-id seen
/^Date:/ WARN date seen
"""

BODY_CHECKS = r"""/^body-reject/ REJECT body rejected
/^body-warn/ WARN bodywarn
/^body-drop/ IGNORE
/^body-replace (.*)/ REPLACE replaced $1
/^body-prepend/ PREPEND prepended line
/^limit-(.*)/ WARN limit $1
/^--b1/ WARN boundary
/^$/ REJECT never: empty lines are not looked up
"""

FILLER = "x" * 60 + "\r\n"
# (name, message); each message's Subject: names it.
MESSAGES: list[tuple[str, str]] = [
    (s, f"Subject: {s}\r\nFrom: a@b.example\r\n\r\nhello\r\n")
    for s in (
        "reject-me", "reject-text", "reject-dsn", "defer-me", "bad-dsn", "code-me",
        "warn-me", "warntext-me", "info-me", "hold-me", "discard-me",
    )
] + [
    ("fold", "Subject: fold-me\r\n\tsecond\r\nFrom: a@b.example\r\n\r\nhello\r\n"),
    ("pass", "Subject: pass-me\r\nX-After-Pass: x\r\n\r\nbody-reject after pass\r\n"),
    (
        "message-id first",
        "Message-Id: <given@b.example>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
        "Subject: reject-me\r\n\r\nhello\r\n",
    ),
    (
        "edits",
        "Subject: edits\r\nX-Drop: x\r\nX-Strip: y\r\nX-Replace: old\r\nX-Prepend: p\r\n"
        "X-Badprepend: q\r\nFrom: a@b.example\r\n\r\nline1\r\n\r\nbody-warn here\r\n"
        "body-drop x\r\nbody-replace zz\r\nbody-prepend\r\nlast\r\n",
    ),
    ("body reject", "Subject: body reject\r\n\r\nline1\r\nbody-reject x\r\nnot seen\r\n"),
    (
        "mime",
        "Subject: mime\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n\r\npreamble\r\n'
        "--b1\r\nX-Part: 1\r\nContent-Type: message/rfc822\r\n\r\n"
        "Subject: inner\r\nX-Nested: y\r\n\r\nlimit-a\r\n"
        + FILLER * 3
        + "limit-b\r\n--b1\r\nX-Part: 2\r\n\r\nlimit-c\r\n"
        + FILLER * 3
        + "limit-d\r\n--b1--\r\nepilogue limit-e\r\n",
    ),
    ("plain limit", "Subject: plain limit\r\n\r\nlimit-f\r\n" + FILLER * 2 + "limit-g\r\n"),
]  # fmt: skip

SENDER = "sender@b.example"
_QID = re.compile(r"^[0-9A-F]{8,}: ")


def _send(port: int, rcpt: str, message: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.example")
        client.mail(SENDER)
        client.rcpt(rcpt)
        try:
            code, text = client.data(message.encode())
        except smtplib.SMTPDataError as err:
            code, text = err.smtp_code, err.smtp_error
    return code, re.sub(r"queued as \S+", "queued as QID", text.decode())


def _cleanup_lines(log: str, rcpt: str) -> list[str]:
    """cleanup's lines, with the queue id, message-id value and recipient made neutral."""
    out = []
    for line in log.splitlines():
        if "/cleanup[" not in line:
            continue
        text = line.split("]: ", 1)[1]
        text = _QID.sub("QID: ", text)
        text = re.sub(r"message-id=\S*", "message-id=...", text)
        text = re.sub(
            r"header Received: .*? from localhost\[", "header Received: ... from localhost[", text
        )
        text = text.replace(f"to=<{rcpt}>", "to=<RCPT>")
        out.append(text)
    return out


def _delivered(messages: list[bytes]) -> dict[str, list[str]]:
    """Each delivered message by Subject: its lines from Subject: on, without the
    headers cleanup adds (their values differ by host and time)."""
    found = {}
    for raw in messages:
        text = raw.decode().replace("\r\n", "\n")
        start = text.index("Subject: ")
        lines = [
            ln
            for ln in text[start:].split("\n")
            if not ln.startswith(("Message-Id:", "Date:", "To:", "From: a@b"))
        ]
        found[lines[0]] = lines
    return found


@pytest.fixture
def tables() -> Iterator[Path]:
    # Under the peers' work root: Postfix's cleanup runs unprivileged.
    path = peers.WORK_ROOT / f"checks-{os.getpid()}-{peers.free_port()}"
    path.mkdir(mode=0o755, parents=True)
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.interop
def test_same_replies_logs_and_content_as_postfix(  # type: ignore[no-untyped-def]
    postfix_factory, postwall_factory, certs, tables: Path
):
    (tables / "header_checks").write_text(HEADER_CHECKS)
    (tables / "body_checks").write_text(BODY_CHECKS)
    checks = {
        "header_checks": f"regexp:{tables}/header_checks",
        "body_checks": f"regexp:{tables}/body_checks",
        "body_checks_size_limit": "100",
    }
    postfix = postfix_factory(
        "receiver", cert=certs.server_cert, key=certs.server_key, extra=checks
    )
    postwall = postwall_factory(params=checks)
    results: dict[str, list[tuple[tuple[int, str], list[str]]]] = {}
    for server, rcpt in ((postfix, "bob@example.test"), (postwall, "root@localhost")):
        for name, message in MESSAGES:
            before = server.log_text().count("disconnect from")
            reply = _send(server.port, rcpt, message)
            peers.wait_for(
                lambda s=server, b=before: s.log_text().count("disconnect from") > b,
                20,
                "the session's disconnect line",
            )
            results.setdefault(name, []).append((reply, []))
        log = server.log_text()
        # Split cleanup's lines per message by the smtpd connect lines.
        chunks = log.split(" connect from ")[1:]
        for (name, _), chunk in zip(MESSAGES, chunks[-len(MESSAGES) :], strict=True):
            results[name][-1][1].extend(_cleanup_lines(chunk, rcpt))

    for name, ((postfix_reply, postfix_log), (postwall_reply, postwall_log)) in results.items():
        assert postwall_reply == postfix_reply, name
        assert postwall_log == postfix_log, name

    delivered_postfix = _delivered(peers.wait_maildir(postfix.maildir("bob"), 9))
    delivered_postwall = _delivered(peers.wait_maildir(postwall.maildir("root"), 9))
    assert delivered_postwall == delivered_postfix
    assert "Subject: hold-me" not in delivered_postwall
    assert "Subject: discard-me" not in delivered_postwall
    held = list((postwall.queue_dir / "hold").iterdir())
    assert len(held) == 1
    assert b"Subject: hold-me" in held[0].read_bytes()
    for state in ("incoming", "active", "deferred"):
        assert not list((postwall.queue_dir / state).iterdir()), state
