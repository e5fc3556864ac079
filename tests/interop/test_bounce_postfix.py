"""bounce.py against the notices a real Postfix 3.7 writes, and back into a real Postfix.

A private Postfix relays to two smtp-sinks, one refusing every RCPT with 550, one with 450,
and delivers example.test to Maildirs. It then bounces (RET=FULL with ENVID and ORCPT; RET=HDRS
with two recipients), warns about a delay (delay_warning_time=1s) and reports a success
(NOTIFY=SUCCESS). For each of its notices we rebuild the same case from what the notice says
(queue id, arrival, recipients, reasons, the returned message) and compose ours: the header
fields, the MIME structure, the recipient lines of the text and the delivery-status and
returned-message parts must be the same, byte for byte where Postfix's text is not
template wording. Finally our notices go back into that Postfix from the null sender, which
must accept and deliver them.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import smtplib
from collections.abc import Callable, Iterator
from email.message import EmailMessage

import pytest

import peers
from postwall import bounce
from postwall.bounce import RecipientNotice
from postwall.config.params import Params
from postwall.queue.records import Envelope, Recipient

BODY = b"body line\r\n"
# Headers the delivery to the Maildir added to Postfix's notice (not part of the notice).
DELIVERY_HEADERS = {"Return-Path", "X-Original-To", "Delivered-To", "Received"}


def message(subject: str) -> bytes:
    return (
        f"From: Bob <bob@example.test>\r\nTo: x@nowhere.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\n"
    ).encode() + BODY


def unfold(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def split_parts(data: bytes, boundary: str) -> tuple[bytes, list[bytes]]:
    """(top-level headers, [each body part with its headers]) by the raw boundary lines."""
    head, _, body = data.partition(b"\r\n\r\n")
    mark = f"--{boundary}".encode()
    chunks = body.split(b"\r\n" + mark)
    parts = [c.removeprefix(b"\r\n") for c in chunks[1:]]
    assert parts[-1].startswith(b"--"), "missing closing boundary"
    return head + b"\r\n", parts[:-1]


def recipient_lines(text_part: bytes) -> list[str]:
    """The `<rcpt>: reason` lines (with their wrapped continuations) of the text part."""
    lines = text_part.decode().split("\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("<"))
    return lines[start:]


def reasons(text_part: bytes) -> dict[str, str]:
    """recipient address -> the reason text, unwrapped."""
    out: dict[str, str] = {}
    current = ""
    for line in recipient_lines(text_part):
        if line.startswith("<"):
            current, _, reason = line[1:].partition(">: ")
            out[current] = reason
        elif line.startswith("    "):
            out[current] += " " + line.strip()
    return out


def rebuild(notice: EmailMessage, raw: bytes, kind: bounce.Kind, content: bytes) -> bytes:
    """Compose our notice for the case Postfix reported in `notice`."""
    report, returned = notice.get_payload()[1:]
    per_message, *blocks = report.get_payload()
    host = per_message["Reporting-MTA"].removeprefix("dns; ")
    queue_id = per_message["X-Postfix-Queue-ID"]
    sender = per_message["X-Postfix-Sender"].removeprefix("rfc822; ")
    arrival = email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp()
    boundary = notice.get_boundary()
    now = float(boundary.split("/")[0].rsplit(".", 1)[1])
    _, parts = split_parts(raw, boundary)
    why = reasons(parts[0].partition(b"\r\n\r\n")[2])
    notices = []
    for block in blocks:
        address = block["Final-Recipient"].removeprefix("rfc822; ")
        rcpt = Recipient(address, orcpt=block["Original-Recipient"], original=address)
        diag_type, _, diag = unfold(block["Diagnostic-Code"]).partition("; ")
        remote = block["Remote-MTA"]
        notices.append(
            RecipientNotice(
                rcpt,
                block["Action"],
                block["Status"],
                why[address],
                remote.removeprefix("dns; ") if remote else None,
                diag if diag_type == "smtp" else None,
            )
        )
    env = Envelope(
        sender=sender,
        recipients=[n.recipient for n in notices],
        queue_id=queue_id,
        arrival_time=arrival,
        envid=per_message["Original-Envelope-Id"],
        ret="HDRS" if returned.get_content_type() == "text/rfc822-headers" else None,
    )
    params = dataclasses.replace(
        Params(),
        myhostname=host,
        myorigin=host,
        mail_name="Postfix",  # so the X-Postfix-* names are comparable
        delay_warning_time=1.0,
        maximal_queue_lifetime=3600.0,
    )
    return bounce.compose(
        kind,
        env,
        content,
        notices,
        params=params,
        now=now,
        message_id=notice["Message-Id"],
        boundary=boundary,
    )


def compare(theirs_raw: bytes, ours_raw: bytes) -> None:
    theirs = email.message_from_bytes(theirs_raw, policy=email.policy.default)
    ours = email.message_from_bytes(ours_raw, policy=email.policy.default)
    assert not ours.defects
    names = [n for n in theirs if n not in DELIVERY_HEADERS]
    assert list(ours.keys()) == names
    for name in names:
        if name != "Date":  # Postfix's clock, not the notice's content
            assert unfold(ours[name]) == unfold(theirs[name]), name
    boundary = theirs.get_boundary()
    assert ours.get_boundary() == boundary
    _, their_parts = split_parts(theirs_raw, boundary)
    _, our_parts = split_parts(ours_raw, boundary)
    assert len(our_parts) == len(their_parts) == 3
    their_text_head, _, their_text = their_parts[0].partition(b"\r\n\r\n")
    our_text_head, _, our_text = our_parts[0].partition(b"\r\n\r\n")
    assert our_text_head == their_text_head  # Content-Description, -Type, -Transfer-Encoding
    assert recipient_lines(our_text) == recipient_lines(their_text)  # same reasons, same wrap
    assert our_parts[1] == their_parts[1]  # the delivery-status part, byte for byte
    assert our_parts[2] == their_parts[2]  # the returned message or headers


def returned_content(notice: EmailMessage, raw: bytes) -> bytes:
    """The original content as Postfix returned it (its Return-Path line removed), with the
    body we sent when only the headers came back."""
    _, parts = split_parts(raw, notice.get_boundary())
    body = parts[2].partition(b"\r\n\r\n")[2]
    assert body.startswith(b"Return-Path: <")
    body = body.partition(b"\r\n")[2]
    return body if b"\r\n\r\n" in body else body + b"\r\n" + BODY


@pytest.fixture
def sinks() -> Iterator[tuple[peers.SmtpSink, peers.SmtpSink]]:
    hard = peers.SmtpSink(
        options=["-f", "RCPT", "-B", "550 5.1.1 Recipient address rejected: User unknown"]
    )
    soft = peers.SmtpSink(options=["-r", "RCPT", "-b", "450 4.2.0 Mailbox busy"])
    try:
        yield hard.start(), soft.start()
    finally:
        hard.stop()
        soft.stop()


def test_notices_match_postfix_and_postfix_accepts_ours(
    postfix_factory: Callable[..., peers.PostfixInstance],
    certs: peers.TestCerts,
    sinks: tuple[peers.SmtpSink, peers.SmtpSink],
) -> None:
    peers.require_tool("smtp-sink")
    hard, soft = sinks
    inst = postfix_factory(
        "receiver",
        cert=certs.server_cert,
        key=certs.server_key,
        start=False,
        extra={
            "delay_warning_time": "1s",
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
            "smtp_tls_security_level": "none",
        },
    )
    transport = inst.workdir / "transport"
    transport.write_text(
        f"nowhere.test smtp:[127.0.0.1]:{hard.port}\nslow.test smtp:[127.0.0.1]:{soft.port}\n"
    )
    inst.postconf({"transport_maps": f"texthash:{transport}"})
    inst.start()

    with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as s:
        s.ehlo("client.postwall.test")
        s.sendmail(
            "bob@example.test",
            ["x@nowhere.test"],
            message("case full"),
            mail_options=["RET=FULL", "ENVID=env-123"],
            rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;orig@nowhere.test"],
        )
        s.sendmail(
            "bob@example.test",
            ["y@nowhere.test", "z@nowhere.test"],
            message("case hdrs"),
            mail_options=["RET=HDRS"],
        )
        s.sendmail(
            "alice@example.test",
            ["bob@example.test"],
            message("case success"),
            rcpt_options=["NOTIFY=SUCCESS"],
        )
        s.sendmail(
            "alice@example.test",
            ["w@slow.test"],
            message("case delay"),
            rcpt_options=["NOTIFY=DELAY,FAILURE"],
        )

    def detail() -> str:
        return inst.log_text()[-3000:]

    bob = peers.wait_maildir(inst.maildir("bob"), 3, timeout=60, detail=detail)
    alice = peers.wait_maildir(inst.maildir("alice"), 2, timeout=60, detail=detail)
    by_subject: dict[str, tuple[EmailMessage, bytes]] = {}
    for stored in bob + alice:
        raw = stored.replace(b"\n", b"\r\n")  # Maildir files have LF line ends
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if msg.get_content_type() != "multipart/report":
            continue
        returned = msg.get_payload()[2]
        inner = returned.get_payload()
        subject = (
            inner[0]["Subject"]
            if isinstance(inner, list)
            else email.message_from_string(inner, policy=email.policy.default)["Subject"]
        )
        by_subject[subject] = (msg, raw)
    assert set(by_subject) == {"case full", "case hdrs", "case success", "case delay"}

    kinds: dict[str, bounce.Kind] = {
        "case full": "failure",
        "case hdrs": "failure",
        "case success": "success",
        "case delay": "delay",
    }
    ours: list[bytes] = []
    for subject, kind in kinds.items():
        notice, raw = by_subject[subject]
        content = returned_content(notice, raw)
        mine = rebuild(notice, raw, kind, content)
        compare(raw, mine)
        ours.append(mine)

    # Postfix logs the three notices with the wording logfmt uses.
    log = inst.log_text()
    for kind in ("sender non-delivery", "sender delay", "sender delivery status"):
        assert re.search(rf"postfix-pwt-[^/]+/bounce\[\d+\]: \w+: {kind} notification: \w+", log)

    # Our notices are valid mail to a real MTA: Postfix takes each from <> and delivers it.
    before = len(peers.maildir_messages(inst.maildir("bob")))
    with smtplib.SMTP("127.0.0.1", inst.port, timeout=30) as s:
        s.ehlo("client.postwall.test")
        for data in ours:
            refused = s.sendmail("", ["bob@example.test"], data)
            assert refused == {}
    got = peers.wait_maildir(inst.maildir("bob"), before + len(ours), timeout=60, detail=detail)
    for data in ours:  # Maildir names do not sort by arrival within a second: search all
        (raw,) = [m for m in got if m.endswith(data.replace(b"\r\n", b"\n"))]
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["Return-Path"] == "<>"
        assert msg.get_content_type() == "multipart/report"
