"""Reply serialisation, byte for byte as the reference Postfix 3.7 sends it."""

from __future__ import annotations

import pytest

from postwall.smtp import replies
from postwall.smtp.replies import Reply


def test_single_line_with_status() -> None:
    assert replies.OK.to_bytes() == b"250 2.0.0 Ok\r\n"


def test_multi_line_without_status() -> None:
    reply = Reply(250, "", "vm\nPIPELINING\nCHUNKING")
    assert reply.to_bytes() == b"250-vm\r\n250-PIPELINING\r\n250 CHUNKING\r\n"


def test_multi_line_repeats_status_on_every_line() -> None:
    reply = Reply(550, "5.7.1", "first\nsecond")
    assert reply.to_bytes() == b"550-5.7.1 first\r\n550 5.7.1 second\r\n"


def test_str_is_the_log_form() -> None:
    assert str(replies.NESTED_MAIL) == "503 5.5.1 Error: nested MAIL command"


def test_empty_challenge_keeps_the_space() -> None:
    # RFC 4954 4: continue-req = "334" SP [base64] CRLF
    assert replies.auth_challenge("").to_bytes() == b"334 \r\n"


@pytest.mark.parametrize(
    ("code", "status", "text"),
    [(199, "", "x"), (600, "", "x"), (250, "5.0.0", "x"), (250, "2.0", "x"), (250, "", "a\rb")],
)
def test_malformed_replies_are_refused(code: int, status: str, text: str) -> None:
    with pytest.raises(ValueError):
        Reply(code, status, text)


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        (replies.greeting("vm ESMTP Postfix (Debian/GNU)"), b"220 vm ESMTP Postfix (Debian/GNU)"),
        (replies.BYE, b"221 2.0.0 Bye"),
        (replies.too_many_errors("vm"), b"421 4.7.0 vm Error: too many errors"),
        (replies.bare_newline(550, "vm"), b"550 5.5.2 vm Error: bare <LF> received"),
        (replies.UNRECOGNIZED, b"500 5.5.2 Error: command not recognized"),
        (replies.BAD_SYNTAX, b"500 5.5.2 Error: bad syntax"),
        (replies.NOT_IMPLEMENTED, b"502 5.5.1 Error: command not implemented"),
        (replies.SEND_HELO_FIRST, b"503 5.5.1 Error: send HELO/EHLO first"),
        (replies.MUST_STARTTLS, b"530 5.7.0 Must issue a STARTTLS command first"),
        (replies.HELO_SYNTAX, b"501 Syntax: HELO hostname"),
        (replies.EHLO_SYNTAX, b"501 Syntax: EHLO hostname"),
        (replies.MAIL_OK, b"250 2.1.0 Ok"),
        (replies.MAIL_SYNTAX, b"501 5.5.4 Syntax: MAIL FROM:<address>"),
        (replies.NESTED_MAIL, b"503 5.5.1 Error: nested MAIL command"),
        (replies.MAIL_AFTER_BDAT, b"503 5.5.1 Error: MAIL after BDAT"),
        (replies.BAD_SENDER, b"501 5.1.7 Bad sender address syntax"),
        (replies.BAD_SIZE, b"501 5.5.4 Bad message size syntax"),
        (replies.SIZE_EXCEEDS, b"552 5.3.4 Message size exceeds fixed limit"),
        (replies.BAD_RET, b"501 5.5.4 Bad RET parameter syntax"),
        (replies.BAD_ENVID, b"501 5.5.4 Bad ENVID parameter syntax"),
        (replies.unsupported_option("FOO=bar"), b"555 5.5.4 Unsupported option: FOO=bar"),
        (replies.RCPT_OK, b"250 2.1.5 Ok"),
        (replies.RCPT_SYNTAX, b"501 5.5.4 Syntax: RCPT TO:<address>"),
        (replies.NEED_MAIL, b"503 5.5.1 Error: need MAIL command"),
        (replies.RCPT_AFTER_BDAT, b"503 5.5.1 Error: RCPT after BDAT"),
        (replies.BAD_RECIPIENT, b"501 5.1.3 Bad recipient address syntax"),
        (replies.BAD_NOTIFY, b"501 5.5.4 Error: Bad NOTIFY parameter syntax"),
        (replies.BAD_ORCPT, b"501 5.5.4 Error: Bad ORCPT parameter syntax"),
        (replies.TOO_MANY_RECIPIENTS, b"452 4.5.3 Error: too many recipients"),
        (replies.START_DATA, b"354 End data with <CR><LF>.<CR><LF>"),
        (replies.DATA_SYNTAX, b"501 5.5.4 Syntax: DATA"),
        (replies.NEED_RCPT, b"503 5.5.1 Error: need RCPT command"),
        (replies.NO_VALID_RECIPIENTS, b"554 5.5.1 Error: no valid recipients"),
        (replies.DATA_AFTER_BDAT, b"503 5.5.1 Error: DATA after BDAT"),
        (replies.MESSAGE_TOO_BIG, b"552 5.3.4 Error: message file too big"),
        (replies.CHUNK_TOO_BIG, b"552 5.3.4 Chunk exceeds message size limit"),
        (replies.BDAT_SYNTAX, b"521 5.5.4 Syntax: BDAT count [LAST]"),
        (replies.queued("D5C12160015"), b"250 2.0.0 Ok: queued as D5C12160015"),
        (replies.chunk_ok(5), b"250 2.0.0 Ok: 5 bytes"),
        (replies.chunk_queued(9, "D7291160016"), b"250 2.0.0 Ok: 9 bytes queued as D7291160016"),
        (replies.chunk_discarded(3), b"551 5.0.0 Discarded 3 bytes after earlier error"),
        (replies.RSET_SYNTAX, b"501 5.5.4 Syntax: RSET"),
        (replies.READY_TLS, b"220 2.0.0 Ready to start TLS"),
        (replies.STARTTLS_SYNTAX, b"501 5.5.4 Syntax: STARTTLS"),
        (replies.TLS_ACTIVE, b"554 5.5.1 Error: TLS already active"),
        (replies.VRFY_DISABLED, b"502 5.5.1 VRFY command is disabled"),
        (replies.vrfy_syntax(True), b"501 5.5.4 Syntax: VRFY address [SMTPUTF8]"),
        (replies.cannot_verify("root"), b"252 2.0.0 root"),
        (replies.ETRN_SYNTAX, b"500 Syntax: ETRN domain"),
        (replies.ETRN_BAD_PARAM, b"501 Error: invalid parameter syntax"),
        (replies.ETRN_IN_TRANSACTION, b"503 Error: MAIL transaction in progress"),
        (replies.QUEUING_STARTED, b"250 Queuing started"),
        (replies.etrn_unavailable("foo"), b"459 <foo>: service unavailable"),
        (replies.SYNC_ERROR, b"554 5.5.0 Error: SMTP protocol synchronization"),
    ],
)
def test_postfix_reply_bytes(reply: Reply, wire: bytes) -> None:
    assert reply.to_bytes() == wire + b"\r\n"


def test_client_text_in_replies_cannot_carry_control_characters() -> None:
    # Found by a random-session load: "MAIL FROM:<a@b> X=1\rY" echoed a CR.
    assert (
        replies.unsupported_option("X=1\rY").to_bytes()
        == b"555 5.5.4 Unsupported option: X=1?Y\r\n"
    )
    assert replies.cannot_verify("a\x00b").to_bytes() == b"252 2.0.0 a?b\r\n"
