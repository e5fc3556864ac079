"""The sans-I/O SMTP client core (postwall.smtp.client), byte for byte.

Scripted server replies go in, the exact command bytes and events coming out are checked:
the EHLO/HELO handshake, pipelined and one-by-one transactions, per-recipient outcomes,
Postfix's course corrections (RSET after a refused MAIL, all RCPTs refused or DATA
refused), the security cases (STARTTLS response injection, over-long and never-ending
replies, mixed codes, early replies, CR/LF in envelope data), DATA encoding, and a
loop-back run against postwall's own server core.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postwall.smtp.client import (
    CLOSED,
    NEED_DATA,
    AuthChallenge,
    AuthDone,
    ClientConnection,
    ClientSettings,
    ConnectionFailed,
    Event,
    Extensions,
    OutMessage,
    OutRecipient,
    ProtocolMisuse,
    Ready,
    Refused,
    RsetDone,
    StartTLSReady,
    StartTLSRefused,
    TransactionDone,
    encode_content,
)
from postwall.smtp.events import DataStart, Helo, MailFrom, Message, RcptTo
from postwall.smtp.replies import Reply
from postwall.smtp.server import ServerConnection, ServerSettings

EHLO_FULL = (
    b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
)
EHLO_PLAIN = b"250-mx.example.test\r\n250 8BITMIME\r\n"


def step(conn: ClientConnection, incoming: bytes = b"") -> tuple[list[Event], bytes]:
    """Feed server bytes; return the events up to NEED_DATA/CLOSED and the bytes to send."""
    if incoming:
        conn.receive_data(incoming)
    events: list[Event] = []
    while (ev := conn.next_event()) is not NEED_DATA and ev is not CLOSED:
        events.append(ev)  # type: ignore[arg-type]
    return events, conn.data_to_send()


def session(ehlo: bytes = EHLO_FULL, **settings: object) -> ClientConnection:
    conn = ClientConnection(ClientSettings(helo_name="client.example.org", **settings))  # type: ignore[arg-type]
    events, out = step(conn, b"220 mx.example.test ESMTP\r\n")
    assert (events, out) == ([], b"EHLO client.example.org\r\n")
    events, out = step(conn, ehlo)
    assert isinstance(events[0], Ready) and out == b""
    return conn


def msg(*rcpts: str, content: bytes = b"Subject: t\r\n\r\nhi\r\n", **kw: object) -> OutMessage:
    recipients = tuple(OutRecipient(r) for r in rcpts)
    return OutMessage("sender@example.org", recipients, content, **kw)  # type: ignore[arg-type]


def only(events: list[Event]) -> Event:
    assert len(events) == 1, events
    return events[0]


# -- handshake ---------------------------------------------------------------------------


def test_greeting_and_ehlo_keywords() -> None:
    conn = ClientConnection(ClientSettings(helo_name="client.example.org"))
    assert step(conn, b"220-mx.example.test ESMTP\r\n220 second line\r\n") == (
        [],
        b"EHLO client.example.org\r\n",
    )
    ready = only(step(conn, EHLO_FULL)[0])
    assert isinstance(ready, Ready) and ready.esmtp and not ready.tls
    ext = ready.extensions
    assert ext.pipelining and ext.starttls and ext.dsn and ext.smtputf8 and ext.chunking
    assert ext.size == 10240000 and ext.eightbitmime
    assert conn.greeting is not None and conn.greeting.lines == (
        "mx.example.test ESMTP",
        "second line",
    )


def test_extension_parsing_details() -> None:
    conn = session(
        b"250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250-size\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n",
        discard_ehlo_keywords=("pipelining",),
    )
    ext = conn.extensions
    assert ext.auth == ("LOGIN", "PLAIN")
    assert ext.size == 0  # offered without a limit
    assert not ext.pipelining  # discarded by smtp_discard_ehlo_keywords
    assert ext.eightbitmime  # Postfix: SMTPUTF8 implies 8BITMIME
    assert Extensions().size is None


def test_ehlo_refused_falls_back_to_helo() -> None:
    conn = ClientConnection(ClientSettings(helo_name="client.example.org"))
    step(conn, b"220 old.example.test\r\n")
    assert step(conn, b"502 5.5.1 Error: command not implemented\r\n") == (
        [],
        b"HELO client.example.org\r\n",
    )
    ready = only(step(conn, b"250 old.example.test\r\n")[0])
    assert isinstance(ready, Ready) and not ready.esmtp and ready.extensions == Extensions()
    # No ESMTP parameters towards a HELO-only server, whatever the message asks for.
    conn.send_mail(msg("a@example.test", ret="FULL", envid="x", body="8BITMIME"))
    assert conn.data_to_send() == b"MAIL FROM:<sender@example.org>\r\n"


def test_never_send_ehlo() -> None:
    conn = ClientConnection(ClientSettings(helo_name="c.example", never_send_ehlo=True))
    assert step(conn, b"220 mx ESMTP\r\n")[1] == b"HELO c.example\r\n"


@pytest.mark.parametrize(
    ("script", "command", "code"),
    [
        ([b"554 5.3.2 go away\r\n"], "CONNECT", 554),
        ([b"220 mx\r\n", b"421 4.3.2 shutting down\r\n"], "EHLO", 421),
        ([b"220 mx\r\n", b"500 no\r\n", b"550 5.7.1 not you\r\n"], "HELO", 550),
    ],
)
def test_refusals(script: list[bytes], command: str, code: int) -> None:
    conn = ClientConnection(ClientSettings(helo_name="c.example"))
    events: list[Event] = []
    for chunk in script:
        events, _ = step(conn, chunk)
    refused = only(events)
    assert isinstance(refused, Refused)
    assert (refused.command, refused.reply.code) == (command, code)
    assert refused.reason("mx[192.0.2.1]").startswith("host mx[192.0.2.1] refused to talk to me: ")
    with pytest.raises(ProtocolMisuse):
        conn.send_mail(msg("a@example.test"))
    conn.quit()
    assert conn.data_to_send() == b"QUIT\r\n"
    assert conn.next_event() is CLOSED


# -- transactions --------------------------------------------------------------------------


def test_one_by_one_without_pipelining() -> None:
    conn = session(EHLO_PLAIN)
    conn.send_mail(msg("a@example.test", "b@example.test"))
    assert conn.data_to_send() == b"MAIL FROM:<sender@example.org>\r\n"
    assert step(conn, b"250 2.1.0 Ok\r\n") == ([], b"RCPT TO:<a@example.test>\r\n")
    assert step(conn, b"250 2.1.5 Ok\r\n") == ([], b"RCPT TO:<b@example.test>\r\n")
    assert step(conn, b"550 5.1.1 <b@example.test>: unknown\r\n") == ([], b"DATA\r\n")
    assert step(conn, b"354 End data with <CR><LF>.<CR><LF>\r\n") == (
        [],
        b"Subject: t\r\n\r\nhi\r\n.\r\n",
    )
    done = only(step(conn, b"250 2.0.0 Ok: queued as 4Xyz\r\n")[0])
    assert isinstance(done, TransactionDone) and done.reusable
    sent, bounced = done.results
    assert (sent.status, sent.dsn, sent.in_reply_to) == ("sent", "2.0.0", "end of DATA command")
    assert sent.reason("mx[192.0.2.1]") == "250 2.0.0 Ok: queued as 4Xyz"
    assert (bounced.status, bounced.dsn) == ("bounced", "5.1.1")
    assert bounced.reason("mx[192.0.2.1]") == (
        "host mx[192.0.2.1] said: 550 5.1.1 <b@example.test>: unknown (in reply to RCPT TO command)"
    )
    assert conn.ready


def test_pipelined_group_and_mixed_outcomes() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test", "b@x.test", "c@x.test", content=b"x"))
    assert conn.data_to_send() == (
        b"MAIL FROM:<sender@example.org> SIZE=1\r\nRCPT TO:<a@x.test>\r\n"
        b"RCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n"
    )
    # The replies may arrive in any split; here, all at once and then byte by byte.
    conn.receive_data(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.1 busy\r\n")
    assert step(conn) == ([], b"")
    out = b""
    for byte in b"550 5.1.1 no\r\n354 go ahead\r\n":
        out += step(conn, bytes([byte]))[1]
    assert out == b"x\r\n.\r\n"
    done = only(step(conn, b"250 2.0.0 Ok: queued as A1\r\n")[0])
    assert isinstance(done, TransactionDone)
    assert [(r.recipient.address, r.status, r.dsn) for r in done.results] == [
        ("a@x.test", "sent", "2.0.0"),
        ("b@x.test", "deferred", "4.2.1"),
        ("c@x.test", "bounced", "5.1.1"),
    ]
    assert done.results[1].reply is not None and done.results[1].reply.text == "busy"


def test_pipelined_mail_refused_then_rset() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test", "b@x.test"))
    conn.data_to_send()
    events, out = step(
        conn,
        b"553 5.7.1 <sender@example.org>: Sender address rejected\r\n"
        b"503 5.5.1 Error: need MAIL command\r\n503 5.5.1 Error: need MAIL command\r\n"
        b"503 5.5.1 Error: need RCPT command\r\n",
    )
    assert (events, out) == ([], b"RSET\r\n")
    done = only(step(conn, b"250 2.0.0 Ok\r\n")[0])
    assert isinstance(done, TransactionDone) and done.reusable
    assert {(r.status, r.dsn, r.in_reply_to) for r in done.results} == {
        ("bounced", "5.7.1", "MAIL FROM command")
    }


def test_unpipelined_mail_deferred_sends_no_rcpt() -> None:
    conn = session(EHLO_PLAIN)
    conn.send_mail(msg("a@x.test"))
    conn.data_to_send()
    assert step(conn, b"451 4.3.0 try later\r\n") == ([], b"RSET\r\n")
    done = only(step(conn, b"250 Ok\r\n")[0])
    assert isinstance(done, TransactionDone)
    assert done.results[0].status == "deferred" and done.results[0].dsn == "4.3.0"


def test_all_recipients_refused_means_no_data() -> None:
    conn = session(EHLO_PLAIN)
    conn.send_mail(msg("a@x.test"))
    conn.data_to_send()
    step(conn, b"250 Ok\r\n")
    assert step(conn, b"550 5.1.1 unknown\r\n") == ([], b"RSET\r\n")
    # A refused RSET: results stand, but the session must not be reused.
    done = only(step(conn, b"500 5.5.2 what\r\n")[0])
    assert isinstance(done, TransactionDone) and not done.reusable
    assert done.results[0].status == "bounced"


def test_pipelined_all_refused_but_data_accepted_sends_only_the_dot() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test", content=b"secret body\r\n"))
    conn.data_to_send()
    events, out = step(conn, b"250 Ok\r\n550 5.1.1 unknown\r\n354 go\r\n")
    assert (events, out) == ([], b".\r\n")  # RFC 2197: never the content
    done = only(step(conn, b"554 5.5.1 Error: no valid recipients\r\n")[0])
    assert isinstance(done, TransactionDone)
    assert done.results[0].in_reply_to == "RCPT TO command"


def test_data_refused() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test"))
    conn.data_to_send()
    assert step(conn, b"250 Ok\r\n250 Ok\r\n554 5.7.0 no data today\r\n") == ([], b"RSET\r\n")
    done = only(step(conn, b"250 Ok\r\n")[0])
    assert isinstance(done, TransactionDone)
    r = done.results[0]
    assert (r.status, r.dsn, r.in_reply_to) == ("bounced", "5.7.0", "DATA command")


def test_end_of_data_deferred_and_reply_without_status() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test"))
    conn.data_to_send()
    step(conn, b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    done = only(step(conn, b"451 local error in processing\r\n")[0])
    assert isinstance(done, TransactionDone)
    r = done.results[0]
    assert (r.status, r.dsn, r.in_reply_to) == ("deferred", "4.0.0", "end of DATA command")


def test_second_transaction_on_same_session_and_rset_probe() -> None:
    conn = session()
    for n in range(2):
        conn.send_mail(msg("a@x.test"))
        conn.data_to_send()
        step(conn, b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        done = only(step(conn, f"250 2.0.0 Ok: queued as Q{n}\r\n".encode())[0])
        assert isinstance(done, TransactionDone) and done.results[0].status == "sent"
    conn.rset()
    assert conn.data_to_send() == b"RSET\r\n"
    probe = only(step(conn, b"250 2.0.0 Ok\r\n")[0])
    assert isinstance(probe, RsetDone) and probe.reply.code == 250


def test_quit_pipelined_after_the_dot() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test", content=b"x"))
    conn.data_to_send()
    step(conn, b"250 Ok\r\n250 Ok\r\n")
    assert step(conn, b"354 go\r\n")[1] == b"x\r\n.\r\n"
    conn.quit()
    assert conn.data_to_send() == b"QUIT\r\n"
    events, _ = step(conn, b"250 2.0.0 Ok: queued as Z\r\n221 2.0.0 Bye\r\n")
    assert isinstance(only(events), TransactionDone)
    assert conn.next_event() is CLOSED


def test_mail_and_rcpt_parameters() -> None:
    conn = session()
    m = OutMessage(
        "sender@example.org",
        (
            OutRecipient("a@x.test", ("SUCCESS", "DELAY"), ("rfc822", "a+tag=1@x.test")),
            OutRecipient("b@x.test", ("NEVER",), ("rfc822", "übel@x.test")),
        ),
        b"8bit \xc3\xa9\r\n",
        body="8BITMIME",
        smtputf8=True,
        ret="HDRS",
        envid="Q1 id+x",
    )
    conn.send_mail(m)
    assert conn.data_to_send() == (
        b"MAIL FROM:<sender@example.org> SIZE=9 BODY=8BITMIME ENVID=Q1+20id+2Bx RET=HDRS"
        b" SMTPUTF8\r\n"
        b"RCPT TO:<a@x.test> ORCPT=rfc822;a+2Btag+3D1@x.test NOTIFY=SUCCESS,DELAY\r\n"
        b"RCPT TO:<b@x.test> ORCPT=utf-8;\\x{FC}bel@x.test NOTIFY=NEVER\r\n"
        b"DATA\r\n"
    )


def test_dsn_parameters_only_when_offered() -> None:
    conn = session(b"250-mx\r\n250 PIPELINING\r\n")
    conn.send_mail(
        OutMessage(
            "", (OutRecipient("a@x.test", ("FAILURE",), ("rfc822", "a@x.test")),), b"", ret="FULL"
        )
    )
    assert conn.data_to_send() == b"MAIL FROM:<>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n"


def test_local_part_needing_quotes_is_quoted() -> None:
    conn = session()
    conn.send_mail(msg("john smith@x.test", '"already quoted"@x.test'))
    out = conn.data_to_send()
    assert b'RCPT TO:<"john smith"@x.test>\r\n' in out
    assert b'RCPT TO:<"already quoted"@x.test>\r\n' in out


@pytest.mark.parametrize(
    "bad",
    [
        msg("a@x.test\r\nRCPT TO:<evil@y.test>"),
        OutMessage("s@x.test\nDATA", (OutRecipient("a@x.test"),), b""),
        msg("a@x.test", envid="id\r\nQUIT"),
        OutMessage("s@x.test", (OutRecipient("a@x.test", (), ("rfc822", "o@x\rQUIT")),), b""),
        OutMessage("s@x.test", (OutRecipient("a@x.test", ("SUCCESS\r\nQUIT",)),), b""),
        msg("a@x.test", ret="FULL\r\nQUIT"),
        msg("a@x.test>\tSIZE=1"),
        msg("a@x.test", body="BINARYMIME"),
    ],
)
def test_unsafe_envelope_data_never_reaches_the_wire(bad: OutMessage) -> None:
    conn = session()
    with pytest.raises(ValueError):
        conn.send_mail(bad)
    assert conn.data_to_send() == b""
    assert conn.ready  # the session is still good for the next message
    conn.send_mail(msg("ok@x.test"))
    assert conn.data_to_send().startswith(b"MAIL FROM:<sender@example.org>")


def test_bad_helo_name_refused() -> None:
    with pytest.raises(ValueError):
        ClientSettings(helo_name="host\r\nMAIL FROM:<x>")


def test_size_over_server_limit_bounces_locally() -> None:
    conn = session(b"250-mx\r\n250 SIZE 10\r\n")
    conn.send_mail(msg("a@x.test", content=b"x" * 11))
    assert conn.data_to_send() == b""
    done = only(step(conn)[0])
    assert isinstance(done, TransactionDone)
    r = done.results[0]
    assert (r.status, r.dsn, r.reply) == ("bounced", "5.3.4", None)
    assert (
        r.reason("mx[192.0.2.1]") == "message size 11 exceeds size limit 10 of server mx[192.0.2.1]"
    )
    assert conn.ready


def test_utf8_address_needs_smtputf8() -> None:
    conn = session(b"250-mx\r\n250 8BITMIME\r\n")
    conn.send_mail(msg("jörg@x.test", smtputf8=True))
    assert conn.data_to_send() == b""
    done = only(step(conn)[0])
    assert isinstance(done, TransactionDone) and done.results[0].dsn == "5.6.7"


# -- STARTTLS --------------------------------------------------------------------------


def test_starttls_discards_injected_cleartext() -> None:
    conn = session()
    conn.starttls()
    assert conn.data_to_send() == b"STARTTLS\r\n"
    # A man in the middle appends a fake EHLO reply without STARTTLS/with an extra keyword.
    injected = b"250-evil\r\n250 AUTH PLAIN\r\n"
    events, out = step(conn, b"220 2.0.0 Ready to start TLS\r\n" + injected)
    ready = only(events)
    assert isinstance(ready, StartTLSReady) and ready.discarded == len(injected)
    assert out == b"" and conn.awaiting_tls
    # Cleartext arriving later, before the handshake is done, is dropped as well.
    conn.receive_data(b"250 more injection\r\n")
    assert conn.next_event() is NEED_DATA
    conn.tls_established()
    assert conn.data_to_send() == b"EHLO client.example.org\r\n"
    ready2 = only(step(conn, b"250-mx.example.test\r\n250 PIPELINING\r\n")[0])
    assert isinstance(ready2, Ready) and ready2.tls
    assert ready2.extensions.keywords == (("PIPELINING", ""),)
    assert conn.discarded == len(injected) + len(b"250 more injection\r\n")


def test_starttls_refused_keeps_plaintext_session() -> None:
    conn = session()
    conn.starttls()
    conn.data_to_send()
    refused = only(step(conn, b"454 4.7.0 TLS not available due to local problem\r\n")[0])
    assert isinstance(refused, StartTLSRefused) and refused.reply.dsn == "4.7.0"
    conn.send_mail(msg("a@x.test"))
    assert conn.data_to_send().startswith(b"MAIL FROM:")


def test_implicit_tls_session_never_sends_starttls() -> None:
    conn = ClientConnection(ClientSettings(helo_name="client.example.org"))
    conn.tls_from_start()  # the caller made the handshake first (SMTPS)
    assert step(conn, b"220 mx.example.test ESMTP\r\n") == ([], b"EHLO client.example.org\r\n")
    ready = only(step(conn, EHLO_FULL)[0])
    assert isinstance(ready, Ready) and ready.tls and conn.tls_active
    with pytest.raises(ProtocolMisuse):
        conn.starttls()
    with pytest.raises(ProtocolMisuse):
        conn.tls_from_start()  # only before the greeting


def test_tls_established_without_starttls_is_misuse() -> None:
    conn = session()
    with pytest.raises(ProtocolMisuse):
        conn.tls_established()


# -- AUTH (RFC 4954) -------------------------------------------------------------------------


def test_auth_with_challenges_then_235() -> None:
    conn = session(EHLO_FULL.replace(b"250 CHUNKING", b"250-CHUNKING\r\n250 AUTH LOGIN PLAIN"))
    assert conn.extensions.auth == ("LOGIN", "PLAIN")
    conn.authenticate("LOGIN", None)
    assert conn.data_to_send() == b"AUTH LOGIN\r\n"
    assert conn.stage == "performing the EHLO handshake"  # Postfix's words during AUTH
    challenge = only(step(conn, b"334 VXNlcm5hbWU6\r\n")[0])
    assert isinstance(challenge, AuthChallenge) and challenge.data == b"Username:"
    conn.auth_respond(b"alice")
    assert conn.data_to_send() == b"YWxpY2U=\r\n"
    with pytest.raises(ProtocolMisuse):
        conn.auth_respond(b"too early")  # the next challenge has not come yet
    challenge = only(step(conn, b"334 UGFzc3dvcmQ6\r\n")[0])
    assert isinstance(challenge, AuthChallenge) and challenge.data == b"Password:"
    conn.auth_respond(b"")
    assert conn.data_to_send() == b"\r\n"
    done = only(step(conn, b"235 2.7.0 Authentication successful\r\n")[0])
    assert isinstance(done, AuthDone) and done.ok and conn.ready
    conn.send_mail(msg("a@x.test"))
    assert conn.data_to_send().startswith(b"MAIL FROM:<sender@example.org>")


def test_dummy_auth_on_mail_only_when_the_server_offers_auth() -> None:
    auth_ehlo = EHLO_FULL.replace(b"250 CHUNKING", b"250-CHUNKING\r\n250 AUTH PLAIN")
    for ehlo, expected in ((auth_ehlo, b" AUTH=<>\r\n"), (EHLO_FULL, b" SMTPUTF8\r\n")):
        conn = session(ehlo, dummy_mail_auth=True)
        conn.send_mail(msg("a@x.test", smtputf8=True))
        mail = conn.data_to_send().split(b"\r\n")[0] + b"\r\n"
        assert mail.startswith(b"MAIL FROM:<sender@example.org> SIZE=") and mail.endswith(expected)


def test_auth_initial_response_refusal_and_cancel() -> None:
    conn = session()
    conn.authenticate("PLAIN", b"\0alice\0secret")
    assert conn.data_to_send() == b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"
    refused = only(step(conn, b"535 5.7.8 Error: authentication failed: bad\r\n")[0])
    assert isinstance(refused, AuthDone) and not refused.ok and refused.reply.dsn == "5.7.8"
    assert conn.ready
    conn.authenticate("SCRAM-SHA-256", b"")
    assert conn.data_to_send() == b"AUTH SCRAM-SHA-256 =\r\n"  # an empty initial response
    bad = only(step(conn, b"334 not*base64\r\n")[0])
    assert isinstance(bad, AuthChallenge) and bad.data is None
    conn.auth_cancel()
    assert conn.data_to_send() == b"*\r\n"
    done = only(step(conn, b"501 5.7.0 Authentication aborted\r\n")[0])
    assert isinstance(done, AuthDone) and not done.ok
    with pytest.raises(ValueError):
        conn.authenticate("PLAIN\r\nRSET", None)  # never a second command on the wire
    conn.quit()
    assert conn.data_to_send() == b"QUIT\r\n"


def test_auth_connection_lost_is_reported_as_postfix() -> None:
    conn = session()
    conn.authenticate("PLAIN", b"\0a\0b")
    conn.data_to_send()
    conn.receive_data(b"")
    failed = only(step(conn)[0])
    assert isinstance(failed, ConnectionFailed)
    assert failed.reason("mx[192.0.2.1]") == (
        "lost connection with mx[192.0.2.1] while performing the EHLO handshake"
    )


# -- hostile or broken servers -------------------------------------------------------------


def failed(events: list[Event]) -> ConnectionFailed:
    ev = only(events)
    assert isinstance(ev, ConnectionFailed), ev
    return ev


def test_overlong_reply_line_is_an_error_with_bounded_memory() -> None:
    conn = ClientConnection(ClientSettings(helo_name="c.example"))
    events: list[Event] = []
    for _ in range(1000):  # 1000 * 1 KiB without a line end
        new, _ = step(conn, b"2" * 1024)
        events += new
        assert len(conn._buf) <= 4096
    ev = failed(events)
    assert ev.kind == "protocol" and "response longer than 2048" in ev.detail
    assert ev.stage == "receiving the initial server greeting"
    assert conn.next_event() is CLOSED


def test_never_ending_multiline_reply() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test"))
    conn.data_to_send()
    ev = failed(step(conn, b"250-more\r\n" * 150)[0])
    assert "multi-line response longer than 100 lines" in ev.detail
    assert ev.stage == "sending MAIL FROM"


def test_mixed_codes_in_one_reply() -> None:
    conn = ClientConnection(ClientSettings(helo_name="c.example"))
    step(conn, b"220 mx\r\n")
    ev = failed(step(conn, b"250-mx\r\n550 PIPELINING\r\n")[0])
    assert ev.detail == "mixed reply codes 250 and 550"
    assert ev.reason("mx[192.0.2.1]").startswith(
        "remote protocol error with mx[192.0.2.1] while performing the EHLO handshake"
    )


@pytest.mark.parametrize("garbage", [b"hello\r\n", b"25 short\r\n", b"2500 x\r\n", b"099 x\r\n"])
def test_non_smtp_response(garbage: bytes) -> None:
    conn = ClientConnection(ClientSettings(helo_name="c.example"))
    ev = failed(step(conn, garbage)[0])
    assert ev.detail.startswith("non-SMTP response")


def test_early_reply_when_idle_is_an_error() -> None:
    conn = session()
    ev = failed(step(conn, b"250 2.1.0 Ok\r\n")[0])
    assert ev.kind == "protocol" and ev.detail.startswith("unexpected server reply")


def test_extra_pipelined_reply_is_an_error() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test"))
    conn.data_to_send()
    step(conn, b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    events, _ = step(conn, b"250 2.0.0 Ok: queued as A\r\n250 2.0.0 Ok: queued as B\r\n")
    assert isinstance(events[0], TransactionDone)
    assert isinstance(events[1], ConnectionFailed)


def test_lost_connection_keeps_decided_recipients() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test", "b@x.test"))
    conn.data_to_send()
    conn.receive_data(b"250 Ok\r\n550 5.1.1 unknown\r\n")
    conn.receive_data(b"")
    ev = failed(step(conn)[0])
    assert ev.kind == "lost" and ev.dsn == "4.4.2"
    assert ev.reason("mx[192.0.2.1]") == "lost connection with mx[192.0.2.1] while sending RCPT TO"
    assert [(r.recipient.address, r.status) for r in ev.results] == [("a@x.test", "bounced")]


def test_lost_connection_after_the_dot() -> None:
    conn = session()
    conn.send_mail(msg("a@x.test"))
    conn.data_to_send()
    step(conn, b"250 Ok\r\n250 Ok\r\n354 go\r\n")
    conn.receive_data(b"")
    ev = failed(step(conn)[0])
    assert ev.stage == "sending end of data -- message may be sent more than once"
    assert ev.results == ()


def test_non_printable_reply_text_is_censored() -> None:
    conn = session()
    conn.rset()
    conn.data_to_send()
    probe = only(step(conn, b"250 ok\x1b[31m \xff\tdone\r\n")[0])
    assert isinstance(probe, RsetDone) and probe.reply.text == "ok?[31m ??done"


# -- DATA encoding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".\r\n..x\r\n", b"..\r\n...x\r\n.\r\n"),
        (b"a\nb\rc\r\r\nd", b"a\r\nb\r\nc\r\n\r\nd\r\n.\r\n"),
        # SMTP smuggling attempts become harmless content lines (CVE-2023-51764).
        (b"x\n.\nMAIL FROM:<e>\r\n", b"x\r\n..\r\nMAIL FROM:<e>\r\n.\r\n"),
        (b"x\r.\r\ny", b"x\r\n..\r\ny\r\n.\r\n"),
        (b"x\r\n.\ry", b"x\r\n..\r\ny\r\n.\r\n"),
    ],
)
def test_encode_content(content: bytes, wire: bytes) -> None:
    assert encode_content(content) == wire


def test_long_lines_are_broken_like_postfix() -> None:
    wire = encode_content(b"a" * 2000 + b"\r\n")
    lines = wire.split(b"\r\n")
    # No line longer than 998 (RFC 5322 2.1.1); each continuation starts with a space.
    assert [len(x) for x in lines] == [998, 998, 6, 1, 0]
    assert lines[1].startswith(b" ") and lines[2] == b" " + b"a" * 5
    assert encode_content(b"a" * 2000, line_limit=0) == b"a" * 2000 + b"\r\n.\r\n"


@given(st.binary(max_size=300))
def test_encoded_content_has_one_end_and_no_bare_newlines(content: bytes) -> None:
    wire = encode_content(content, line_limit=0)
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", wire) is None
    assert not body.startswith(b".\r\n") and b"\r\n.\r\n" not in body
    # Un-stuffing gives back the content with normalised line endings.
    lines = body.split(b"\r\n")[:-1] if body else []
    unstuffed = [x[1:] if x.startswith(b".") else x for x in lines]
    expected = re.split(rb"\r\n|\r|\n", content)
    if expected and expected[-1] == b"":
        expected.pop()
    assert unstuffed == expected


# -- loop-back with the server core ------------------------------------------------------------


def test_loopback_with_server_core() -> None:
    server = ServerConnection(
        ServerSettings(myhostname="mx.example.test", smtpd_banner="mx.example.test ESMTP")
    )
    client = ClientConnection(ClientSettings(helo_name="client.example.org"))
    server.greeting()
    content = b"Subject: loop\nX-Dots: yes\n.leading dot\r\nbare\rcr\n"
    message = OutMessage(
        "sender@example.org",
        (
            OutRecipient(
                "a@example.test", ("SUCCESS", "FAILURE"), ("rfc822", "orig+a@example.test")
            ),
            OutRecipient("nobody@example.test"),
            OutRecipient("b@example.test", ("NEVER",)),
        ),
        content,
        body="8BITMIME",
        ret="HDRS",
        envid="ENV 42",
    )
    received: list[Message] = []
    client_events: list[Event] = []
    to_client = server.data_to_send()
    for _ in range(50):
        client.receive_data(to_client)
        while (ev := client.next_event()) is not NEED_DATA and ev is not CLOSED:
            client_events.append(ev)  # type: ignore[arg-type]
            if isinstance(ev, Ready):
                client.send_mail(message)
            elif isinstance(ev, TransactionDone):
                client.quit()
        to_server = client.data_to_send()
        if to_server:
            server.receive_data(to_server)
        while (sev := server.next_event()) not in (NEED_DATA, CLOSED):
            if isinstance(sev, RcptTo) and sev.address.startswith("nobody"):
                server.reject(Reply(550, "5.1.1", "<nobody@example.test>: unknown"))
            elif isinstance(sev, Message):
                received.append(sev)
                server.accept(queue_id="4ABC")
            elif isinstance(sev, Helo | MailFrom | RcptTo | DataStart):
                server.accept()
        to_client = server.data_to_send()
        if server.closed:
            break
    assert server.client_quit
    assert [type(e) for e in client_events] == [Ready, TransactionDone]
    done = client_events[1]
    assert isinstance(done, TransactionDone)
    assert [(r.recipient.address, r.status) for r in done.results] == [
        ("a@example.test", "sent"),
        ("nobody@example.test", "bounced"),
        ("b@example.test", "sent"),
    ]
    assert done.results[0].reason("mx") == "250 2.0.0 Ok: queued as 4ABC"
    (got,) = received
    env = got.envelope
    assert env.helo == "client.example.org" and env.esmtp
    assert env.sender == "sender@example.org"
    assert env.mail_params.size == len(content)
    assert (env.body_type, env.ret, env.envid) == ("8BITMIME", "HDRS", "ENV 42")
    assert [(r.address, r.params.notify, r.params.orcpt) for r in env.recipients] == [
        ("a@example.test", ("SUCCESS", "FAILURE"), ("rfc822", "orig+a@example.test")),
        ("b@example.test", ("NEVER",), None),
    ]
    assert got.content == b"Subject: loop\r\nX-Dots: yes\r\n.leading dot\r\nbare\r\ncr\r\n"


@given(st.lists(st.binary(max_size=64), max_size=20), st.booleans())
def test_any_server_bytes_give_events_never_exceptions(
    chunks: list[bytes], pipelining: bool
) -> None:
    conn = session(EHLO_FULL if pipelining else EHLO_PLAIN)
    conn.send_mail(msg("a@x.test", "b@x.test"))
    conn.data_to_send()
    for chunk in [*chunks, b""]:
        events, _ = step(conn, chunk) if chunk else (None, None)
        if not chunk:
            conn.receive_data(b"")
            events, _ = step(conn)
        for ev in events or []:
            if isinstance(ev, TransactionDone) and conn.ready:
                conn.quit()
    assert conn.next_event() is CLOSED


def test_settings_from_params() -> None:
    from postwall.config.params import Params

    params = Params()
    settings = ClientSettings.from_params(params, helo_name="out.example.org")
    assert settings.helo_name == "out.example.org"
    assert settings.line_length_limit == params.smtp_line_length_limit == 998
    assert settings.reply_line_limit == params.line_length_limit == 2048


def test_idle_session_closed_by_server() -> None:
    conn = session()
    conn.receive_data(b"")
    ev = failed(step(conn)[0])
    assert ev.kind == "lost" and ev.stage == "waiting for the next command"
