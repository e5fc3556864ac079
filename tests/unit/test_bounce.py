"""bounce.py: notices parsed back with Python's email package (a reader we did not write).

The structure mirrors Postfix 3.7's bounce(8) output; tests/interop/test_bounce_postfix.py
compares it with a live Postfix notice.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import time
from email.message import EmailMessage, Message

import pytest

from postwall import bounce, logfmt
from postwall.bounce import RecipientNotice
from postwall.config.params import Params
from postwall.queue.records import Envelope, Recipient

ARRIVAL = 1_795_867_150.0
NOW = ARRIVAL + 3600
PARAMS = dataclasses.replace(
    Params(), myhostname="mx.example.test", myorigin="example.test", mail_name="postwall"
)
BODY = b"first body line\r\nsecond line\r\n"
CONTENT = (
    b"Received: from client.test (localhost [127.0.0.1])\r\n"
    b"\tby mx.example.test (postwall) with ESMTP id 4B1C0D2E3F\r\n"
    b"From: Bob <bob@example.test>\r\n"
    b"To: <x@nowhere.test>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"\r\n" + BODY
)
REPLY = "550 5.1.1 <x@nowhere.test>: Recipient address rejected: User unknown"
REASON = f"host mx.nowhere.test[192.0.2.25] said: {REPLY} (in reply to RCPT TO command)"


def envelope(**kw: object) -> Envelope:
    base: dict[str, object] = {
        "sender": "bob@example.test",
        "recipients": [Recipient("x@nowhere.test", original="x@nowhere.test")],
        "queue_id": "4B1C0D2E3F",
        "arrival_time": ARRIVAL,
    }
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


def failed(rcpt: Recipient, **kw: object) -> RecipientNotice:
    base: dict[str, object] = {
        "action": "failed",
        "status": "5.1.1",
        "diagnostic": REASON,
        "remote_mta": "mx.nowhere.test",
        "smtp_reply": REPLY,
    }
    base.update(kw)
    return RecipientNotice(rcpt, **base)  # type: ignore[arg-type]


def make(
    kind: bounce.Kind = "failure",
    env: Envelope | None = None,
    notices: list[RecipientNotice] | None = None,
    content: bytes = CONTENT,
    params: Params = PARAMS,
    **kw: object,
) -> bytes:
    env = env or envelope()
    if notices is None:
        notices = [failed(r) for r in env.recipients]
    mid = bounce.message_id("5D6E7F8A9B", NOW, params.myhostname)
    return bounce.compose(kind, env, content, notices, params=params, now=NOW, message_id=mid, **kw)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def dsn_blocks(msg: Message) -> list[Message]:
    """The delivery-status part as email parses it: one Message per field block."""
    part = msg.get_payload()[1]
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return blocks


def unfold(text: str) -> str:
    """A wrapped line or folded field read back as one line of single spaces."""
    return re.sub(r"\s+", " ", text)


def field_names(block: Message) -> list[str]:
    return list(block.keys())


# -- structure -----------------------------------------------------------------------------


def test_failure_notice_structure_and_headers() -> None:
    data = make()
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    msg = parse(data)
    assert not msg.defects
    assert list(msg.keys()) == [
        "Date",
        "From",
        "Subject",
        "To",
        "Auto-Submitted",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Message-Id",
    ]
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@example.test>"
    assert msg["To"] == "bob@example.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-Id"] == "<20261128125910.5D6E7F8A9B@mx.example.test>"
    assert msg["Date"].datetime.timestamp() == NOW
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg.get_boundary() == f"4B1C0D2E3F.{int(NOW)}/mx.example.test"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert [p["Content-Description"] for p in parts] == [
        "Notification",
        "Delivery report",
        "Undelivered Message",
    ]
    text = parts[0].get_content()
    assert "This is the mail system at host mx.example.test." in text
    assert "<x@nowhere.test>: host mx.nowhere.test[192.0.2.25] said: 550 5.1.1" in text


def test_delivery_status_fields() -> None:
    rcpt = Recipient("x@nowhere.test", orcpt="rfc822;orig@nowhere.test", original="x@nowhere.test")
    msg = parse(make(env=envelope(envid="env-123", recipients=[rcpt])))
    per_message, per_rcpt = dsn_blocks(msg)
    assert field_names(per_message) == [
        "Reporting-MTA",
        "Original-Envelope-Id",
        "X-postwall-Queue-ID",
        "X-postwall-Sender",
        "Arrival-Date",
    ]
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_message["Original-Envelope-Id"] == "env-123"
    assert per_message["X-postwall-Queue-ID"] == "4B1C0D2E3F"
    assert per_message["X-postwall-Sender"] == "rfc822; bob@example.test"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == ARRIVAL
    assert field_names(per_rcpt) == [
        "Final-Recipient",
        "Original-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Diagnostic-Code",
    ]
    assert per_rcpt["Final-Recipient"] == "rfc822; x@nowhere.test"
    assert per_rcpt["Original-Recipient"] == "rfc822;orig@nowhere.test"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "5.1.1"
    assert per_rcpt["Remote-MTA"] == "dns; mx.nowhere.test"
    assert unfold(per_rcpt["Diagnostic-Code"]) == f"smtp; {REPLY}"


def test_without_orcpt_or_envid_or_remote_server() -> None:
    rcpt = Recipient("root@mx.example.test", original="postmaster@mx.example.test")
    notice = RecipientNotice(rcpt, "failed", "5.2.2", "mailbox full")
    msg = parse(make(env=envelope(recipients=[rcpt]), notices=[notice]))
    per_message, per_rcpt = dsn_blocks(msg)
    assert "Original-Envelope-Id" not in per_message
    assert per_rcpt["Original-Recipient"] == "rfc822;postmaster@mx.example.test"
    assert "Remote-MTA" not in per_rcpt
    assert per_rcpt["Diagnostic-Code"] == "X-postwall; mailbox full"
    text = unfold(msg.get_payload()[0].get_content())
    assert (
        "<root@mx.example.test> (expanded from <postmaster@mx.example.test>): mailbox full" in text
    )


def test_several_recipients_each_get_a_block_in_order() -> None:
    rcpts = [Recipient(f"u{i}@nowhere.test", original=f"u{i}@nowhere.test") for i in range(3)]
    msg = parse(make(env=envelope(recipients=rcpts)))
    blocks = dsn_blocks(msg)
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        f"rfc822; u{i}@nowhere.test" for i in range(3)
    ]
    text = msg.get_payload()[0].get_content()
    assert text.index("<u0@") < text.index("<u1@") < text.index("<u2@")


def test_mail_name_with_specials_is_an_atom() -> None:
    params = dataclasses.replace(PARAMS, mail_name="My Mail.System")
    notice = RecipientNotice(Recipient("a@b.test"), "failed", "5.0.0", "no")
    per_message, per_rcpt = dsn_blocks(parse(make(params=params, notices=[notice])))
    assert "X-My-Mail-System-Queue-ID" in per_message
    assert per_rcpt["Diagnostic-Code"] == "X-My-Mail-System; no"


# -- what is returned ----------------------------------------------------------------------


@pytest.mark.parametrize("ret", [None, "FULL"])
def test_full_message_returned_when_it_fits(ret: str | None) -> None:
    msg = parse(make(env=envelope(ret=ret)))
    returned = msg.get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Return-Path"] == "<bob@example.test>"
    assert inner["Message-ID"] == "<m1@example.test>"
    assert inner.get_payload().encode() == BODY
    assert make(env=envelope(ret=ret)).endswith(
        b"\r\n" + BODY + b"\r\n--" + f"4B1C0D2E3F.{int(NOW)}/mx.example.test--\r\n".encode()
    )


def _returned_headers_only(data: bytes) -> Message:
    msg = parse(data)
    part = msg.get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert part["Content-Description"] == "Undelivered Message Headers"
    assert b"first body line" not in data
    headers = email.message_from_string(part.get_payload(), policy=email.policy.default)
    assert headers["Subject"] == "hello"
    assert headers["Return-Path"] == "<bob@example.test>"
    return part


def test_ret_hdrs_returns_headers_only() -> None:
    _returned_headers_only(make(env=envelope(ret="HDRS")))


def test_over_bounce_size_limit_returns_headers_only() -> None:
    limit = len(CONTENT)
    params = dataclasses.replace(PARAMS, bounce_size_limit=limit)
    assert parse(make(params=params)).get_payload()[2].get_content_type() == "message/rfc822"
    params = dataclasses.replace(PARAMS, bounce_size_limit=limit - 1)
    _returned_headers_only(make(params=params, env=envelope(ret="FULL")))
    # 0 means no limit, as in Postfix.
    big = CONTENT + b"x" * 100_000 + b"\r\n"
    params = dataclasses.replace(PARAMS, bounce_size_limit=0)
    assert parse(make(params=params, content=big)).get_payload()[2].get_content_type() == (
        "message/rfc822"
    )


def test_default_bounce_size_limit_is_postfix_50000() -> None:
    assert Params().bounce_size_limit == 50000
    near = CONTENT + b"y" * (50000 - len(CONTENT) - 2) + b"\r\n"
    assert len(near) == 50000
    assert parse(make(content=near, params=Params())).get_payload()[2].get_content_type() == (
        "message/rfc822"
    )
    over = near + b"z\r\n"
    assert b"z\r\n" not in make(content=over, params=Params())


def test_headers_only_stops_at_the_first_non_header_line() -> None:
    content = b"Subject: a\r\n folded\r\nX-Y: z\r\nnot a header line\r\nMore: after\r\n\r\nbody\r\n"
    data = make(env=envelope(ret="HDRS"), content=content)
    assert b"Subject: a\r\n folded\r\nX-Y: z\r\n\r\n--" in data
    assert b"not a header" not in data and b"More: after" not in data


# -- delay and success ---------------------------------------------------------------------


def test_delay_warning() -> None:
    params = dataclasses.replace(PARAMS, delay_warning_time=4 * 3600.0)
    rcpt = Recipient("w@slow.test", notify=frozenset({"DELAY", "FAILURE"}), original="w@slow.test")
    notice = RecipientNotice(
        rcpt,
        "delayed",
        "4.2.0",
        "host mx.slow.test[192.0.2.9] said: 450 4.2.0 Mailbox busy (in reply to RCPT TO command)",
        "mx.slow.test",
        "450 4.2.0 Mailbox busy",
    )
    msg = parse(make("delay", env=envelope(recipients=[rcpt]), notices=[notice], params=params))
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    text = msg.get_payload()[0].get_content()
    assert "4 hours" in text and "5 days" in text
    _, per_rcpt = dsn_blocks(msg)
    assert field_names(per_rcpt)[-1] == "Will-Retry-Until"
    assert per_rcpt["Action"] == "delayed"
    until = email.utils.parsedate_to_datetime(per_rcpt["Will-Retry-Until"]).timestamp()
    assert until == ARRIVAL + 5 * 86400
    part = msg.get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert part["Content-Description"] == "Undelivered Message Headers"


def test_success_report() -> None:
    rcpt = Recipient("bob@example.test", notify=frozenset({"SUCCESS"}), original="bob@example.test")
    notice = RecipientNotice(rcpt, "delivered", "2.0.0", "delivered to maildir")
    msg = parse(make("success", env=envelope(recipients=[rcpt]), notices=[notice]))
    assert msg["Subject"] == "Successful Mail Delivery Report"
    _, per_rcpt = dsn_blocks(msg)
    assert per_rcpt["Action"] == "delivered"
    assert per_rcpt["Diagnostic-Code"] == "X-postwall; delivered to maildir"
    assert "Will-Retry-Until" not in per_rcpt
    part = msg.get_payload()[2]
    assert (part.get_content_type(), part["Content-Description"]) == (
        "text/rfc822-headers",
        "Message Headers",
    )


def test_expiry_reports_the_last_deferral_as_failed() -> None:
    # Postfix: an expired message's notice lists Action: failed with the 4.x.x status.
    notice = failed(envelope().recipients[0], status="4.4.1", smtp_reply=None, remote_mta=None)
    notice = dataclasses.replace(notice, diagnostic="connect to mx[192.0.2.1]:25: timed out")
    _, per_rcpt = dsn_blocks(parse(make(notices=[notice])))
    assert (per_rcpt["Action"], per_rcpt["Status"]) == ("failed", "4.4.1")


@pytest.mark.parametrize(
    ("kind", "action"),
    [("failure", "delayed"), ("delay", "failed"), ("success", "failed"), ("failure", "delivered")],
)
def test_action_must_fit_the_kind(kind: bounce.Kind, action: str) -> None:
    notice = dataclasses.replace(failed(envelope().recipients[0]), action=action)
    with pytest.raises(ValueError, match="action"):
        make(kind, notices=[notice])


# -- who gets a notice ---------------------------------------------------------------------

N = frozenset
NOTIFY_MATRIX = [
    # notify, delay_warning_time, (failure, delay, success)
    (N(), 0.0, (True, False, False)),
    (N(), 3600.0, (True, True, False)),
    (N({"NEVER"}), 3600.0, (False, False, False)),
    (N({"FAILURE"}), 3600.0, (True, False, False)),
    (N({"DELAY"}), 3600.0, (False, True, False)),
    (N({"DELAY"}), 0.0, (False, False, False)),
    (N({"SUCCESS"}), 3600.0, (False, False, True)),
    (N({"SUCCESS", "FAILURE"}), 0.0, (True, False, True)),
    (N({"SUCCESS", "DELAY", "FAILURE"}), 3600.0, (True, True, True)),
]


@pytest.mark.parametrize(("notify", "warn", "expected"), NOTIFY_MATRIX)
def test_notify_matrix(notify: frozenset[str], warn: float, expected: tuple[bool, ...]) -> None:
    rcpt = Recipient("x@nowhere.test", notify=notify)
    env = envelope(recipients=[rcpt])
    got = tuple(
        bounce.wants_notice(k, env, rcpt, delay_warning_time=warn)  # type: ignore[arg-type]
        for k in ("failure", "delay", "success")
    )
    assert got == expected


def test_null_sender_never_gets_a_notice() -> None:
    rcpt = Recipient("x@nowhere.test", notify=frozenset({"SUCCESS", "DELAY", "FAILURE"}))
    env = envelope(sender="", recipients=[rcpt])
    for kind in ("failure", "delay", "success"):
        assert not bounce.wants_notice(kind, env, rcpt, delay_warning_time=3600)  # type: ignore[arg-type]
        assert bounce.audiences(kind, env, PARAMS) == []  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="null-sender"):
        make(env=env)
    with pytest.raises(ValueError, match="at least one"):
        make(notices=[])


def test_no_notice_about_a_postmaster_notice() -> None:
    for sender in ("double-bounce@example.test", "Double-Bounce@mx.example.test", "double-bounce"):
        assert bounce.is_double_bounce(sender, PARAMS)
        assert bounce.audiences("failure", envelope(sender=sender), PARAMS) == []
    for sender in ("double-bounce@elsewhere.test", "bob@example.test"):
        assert not bounce.is_double_bounce(sender, PARAMS)


def test_audiences_and_postmaster_copy() -> None:
    env = envelope()
    (sender,) = bounce.audiences("failure", env, PARAMS)
    assert (sender.recipient, sender.sender, sender.postmaster) == ("bob@example.test", "", False)
    assert logfmt.notification("4B1C0D2E3F", sender.log_kind, "5D6E7F8A9B") == (
        "4B1C0D2E3F: sender non-delivery notification: 5D6E7F8A9B"
    )
    assert bounce.audiences("success", env, PARAMS)[0].log_kind == "sender delivery status"
    params = dataclasses.replace(PARAMS, notify_classes=("bounce", "delay", "resource"))
    _, copy = bounce.audiences("failure", env, params)
    assert (copy.recipient, copy.sender, copy.log_kind) == (
        "postmaster",
        "double-bounce@example.test",
        "postmaster non-delivery",
    )
    assert bounce.audiences("delay", env, params)[1].log_kind == "postmaster delay"
    assert len(bounce.audiences("success", env, params)) == 1
    msg = parse(make(params=params, audience=copy, env=envelope(ret="FULL")))
    assert msg["To"] == "postmaster"
    assert msg["Subject"] == "Postmaster Copy: Undelivered Mail"
    assert msg["Auto-Submitted"] == "auto-generated"
    # The postmaster sees the headers, never the sender's message body.
    assert msg.get_payload()[2].get_content_type() == "text/rfc822-headers"


# -- hostile text, 8-bit and SMTPUTF8 --------------------------------------------------------


def test_control_characters_in_reasons_cannot_inject_fields() -> None:
    evil = "550 oops\r\nX-Injected: yes\r\n\r\n--4B1C0D2E3F"
    notice = failed(envelope().recipients[0], smtp_reply=evil, diagnostic=evil)
    data = make(notices=[notice])
    assert b"\r\nX-Injected" not in data
    _, per_rcpt = dsn_blocks(parse(data))
    assert "X-Injected" not in per_rcpt
    assert per_rcpt["Diagnostic-Code"].startswith("smtp; 550 oops??X-Injected: yes????--")


def test_boundary_never_occurs_in_the_returned_message() -> None:
    mark = f"4B1C0D2E3F.{int(NOW)}/mx.example.test"
    content = CONTENT + f"--{mark}--\r\nfake\r\n".encode()
    msg = parse(make(content=content))
    assert msg.get_boundary() != mark
    assert len(msg.get_payload()) == 3
    assert b"fake" in msg.get_payload()[2].get_payload()[0].as_bytes()


def test_long_reasons_are_wrapped_as_postfix_does() -> None:
    reason = "host mx[192.0.2.1] said: 550 " + " ".join(["word"] * 40)
    notice = failed(envelope().recipients[0], diagnostic=reason, smtp_reply="550 " + reason)
    data = make(notices=[notice]).decode()
    text_part = data.split("\r\n\r\n", 3)[3]
    for line in text_part.split("\r\n"):
        assert len(line) <= 79, line
    lines = data.split("\r\n")
    start = lines.index(next(x for x in lines if x.startswith("<x@nowhere.test>: ")))
    assert lines[start + 1].startswith("    word")
    _, per_rcpt = dsn_blocks(parse(data.encode()))
    assert unfold(per_rcpt["Diagnostic-Code"]) == "smtp; 550 " + reason


def test_smtputf8_message_gets_global_types() -> None:
    rcpt = Recipient("jürgen@exämple.test", original="jürgen@exämple.test")
    env = envelope(sender="björn@example.test", recipients=[rcpt], smtputf8=True)
    data = make(env=env, notices=[failed(rcpt)])
    msg = parse(data)
    assert msg["To"] == "björn@example.test"
    parts = msg.get_payload()
    assert parts[1].get_content_type() == "message/global-delivery-status"
    assert parts[1]["Content-Transfer-Encoding"] == "8bit"
    assert parts[2].get_content_type() == "message/global"
    assert "Final-Recipient: utf-8; jürgen@exämple.test\r\n".encode() in data
    assert "Original-Recipient: utf-8;jürgen@exämple.test\r\n".encode() in data
    assert "X-postwall-Sender: utf-8; björn@example.test\r\n".encode() in data
    assert "<jürgen@exämple.test>: host".encode() in data
    (aud,) = bounce.audiences("failure", env, PARAMS)
    assert aud.smtputf8


def test_ascii_address_in_smtputf8_message_stays_rfc822() -> None:
    env = envelope(smtputf8=True)
    data = make(env=env)
    assert b"Final-Recipient: rfc822; x@nowhere.test\r\n" in data
    assert b"Content-Type: message/global\r\n" in data
    assert b"Content-Type: message/global-headers\r\n" in make(
        env=envelope(smtputf8=True, ret="HDRS")
    )


def test_eight_bit_content_returned_verbatim() -> None:
    content = CONTENT.replace(b"hello", "héllo".encode()) + "ünïcode body\r\n".encode()
    data = make(content=content, env=envelope(body_type="8BITMIME"))
    assert content in data
    assert parse(data).get_payload()[2]["Content-Transfer-Encoding"] == "8bit"


def test_seven_bit_notice_without_smtputf8_enable() -> None:
    params = dataclasses.replace(PARAMS, smtputf8_enable=False)
    notice = failed(envelope().recipients[0], diagnostic="caf\u00e9 closed")
    data = make(params=params, env=envelope(body_type="7BIT"), notices=[notice])
    assert max(data) < 128  # nothing 8-bit leaks into a 7-bit notice
    msg = parse(data)
    assert msg["Content-Transfer-Encoding"] == "7bit"
    parts = msg.get_payload()
    assert parts[0].get_content_charset() == "us-ascii"
    assert all("Content-Transfer-Encoding" not in p for p in parts)
    assert "caf? closed" in parts[0].get_content()
    # Undeclared body: no Content-Transfer-Encoding at all, as Postfix.
    data = make(params=params, env=envelope(body_type=None))
    assert b"Content-Transfer-Encoding" not in data


def test_mail_date_is_rfc5322_in_english() -> None:
    text = bounce.mail_date(ARRIVAL)
    assert email.utils.parsedate_to_datetime(text).timestamp() == ARRIVAL
    tm = time.localtime(ARRIVAL)
    assert text.endswith(f"({tm.tm_zone})")
