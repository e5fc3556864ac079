"""The SMTP server state machine, driven the way the smtpd glue drives it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from postwall.smtp import replies
from postwall.smtp.events import (
    Auth,
    AuthAborted,
    AuthResponse,
    DataStart,
    Etrn,
    Event,
    Helo,
    ImproperPipelining,
    LineTooLong,
    MailFrom,
    MailRefused,
    MalformedBdat,
    Message,
    NonSmtpCommand,
    ParameterWarning,
    RcptTo,
    StartTLS,
    Vrfy,
)
from postwall.smtp.replies import Reply
from postwall.smtp.server import (
    CLOSED,
    NEED_DATA,
    ProtocolMisuse,
    ServerConnection,
    ServerSettings,
)

VM = ServerSettings(myhostname="vm", smtpd_banner="vm ESMTP Postfix (Debian/GNU)")
EHLO_REPLY = (
    b"250-vm\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n"
    b"250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n"
    b"250-SMTPUTF8\r\n250 CHUNKING\r\n"
)

Policy = Callable[[ServerConnection, Event], None]


def accept_all(conn: ServerConnection, ev: Event) -> None:
    if isinstance(ev, Message):
        conn.accept(queue_id="QID1")
    else:
        conn.accept()


class Session:
    """A tiny glue: feeds bytes, answers events with `policy`, collects output."""

    def __init__(self, settings: ServerSettings = VM, policy: Policy = accept_all) -> None:
        self.conn = ServerConnection(settings)
        self.policy = policy
        self.events: list[Event] = []
        self.notices: list[Event] = []
        self.conn.greeting()
        self.greeting = self.conn.data_to_send()
        self.closed = False

    def send(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                break
            if ev is CLOSED:
                self.closed = True
                break
            if ev.needs_answer:  # type: ignore[union-attr]
                self.events.append(ev)  # type: ignore[arg-type]
                self.policy(self.conn, ev)  # type: ignore[arg-type]
            else:
                self.notices.append(ev)  # type: ignore[arg-type]
        return self.conn.data_to_send()

    def ehlo(self) -> None:
        self.send(b"EHLO client.example\r\n")


def lines(out: bytes) -> list[bytes]:
    return out.split(b"\r\n")[:-1]


# -- greeting, HELO/EHLO -------------------------------------------------------


def test_greeting() -> None:
    assert Session().greeting == b"220 vm ESMTP Postfix (Debian/GNU)\r\n"


def test_greeting_refusal_closes() -> None:
    conn = ServerConnection(VM)
    conn.greeting(Reply(554, "", "vm ESMTP not accepting connections"))
    assert conn.data_to_send() == b"554 vm ESMTP not accepting connections\r\n"
    assert conn.next_event() is CLOSED


def test_ehlo_keywords_in_postfix_order() -> None:
    s = Session(ServerSettings(myhostname="vm", starttls_offered=True))
    assert s.send(b"EHLO client.example\r\n") == EHLO_REPLY
    assert s.events == [Helo("client.example", True)]


def test_ehlo_keywords_follow_settings() -> None:
    settings = ServerSettings(
        myhostname="vm",
        message_size_limit=0,
        disable_vrfy_command=True,
        smtputf8_enable=False,
        sasl_mechanisms=("PLAIN", "LOGIN"),
        smtpd_discard_ehlo_keywords=("chunking", "etrn"),
    )
    out = Session(settings).send(b"EHLO x\r\n")
    assert out == (
        b"250-vm\r\n250-PIPELINING\r\n250-SIZE\r\n250-AUTH PLAIN LOGIN\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 DSN\r\n"
    )


def test_auth_not_advertised_before_tls_when_tls_auth_only() -> None:
    settings = ServerSettings(
        sasl_mechanisms=("PLAIN",), smtpd_tls_auth_only=True, starttls_offered=True
    )
    s = Session(settings)
    assert b"AUTH" not in s.send(b"EHLO x\r\n")
    assert s.send(b"AUTH PLAIN\r\n") == b"503 5.5.1 Error: authentication not enabled\r\n"


def test_helo_reply_and_syntax() -> None:
    s = Session()
    assert s.send(b"HELO\r\n") == b"501 Syntax: HELO hostname\r\n"
    assert s.send(b"EHLO\r\n") == b"501 Syntax: EHLO hostname\r\n"
    assert s.send(b"HELO  a  b \r\n") == b"250 vm\r\n"
    assert s.events == [Helo("a b", False)]


def test_helo_required() -> None:
    s = Session(ServerSettings(smtpd_helo_required=True))
    assert s.send(b"MAIL FROM:<a@b>\r\n") == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    assert s.send(b"ETRN x\r\n") == b"503 Error: send HELO/EHLO first\r\n"


def test_mail_without_helo_is_allowed_by_default() -> None:
    assert Session().send(b"MAIL FROM:<a@b>\r\n") == b"250 2.1.0 Ok\r\n"


def test_rejected_helo_leaves_no_name() -> None:
    def deny(conn: ServerConnection, ev: Event) -> None:
        if isinstance(ev, Helo):
            conn.reject(Reply(550, "5.7.1", "<x>: Helo command rejected: go away"))
        else:
            accept_all(conn, ev)

    s = Session(policy=deny)
    assert s.send(b"HELO x\r\n") == b"550 5.7.1 <x>: Helo command rejected: go away\r\n"
    assert s.conn.helo_name is None
    assert s.conn.error_count == 1


# -- the mail transaction ----------------------------------------------------------


def test_full_transaction_exposes_the_envelope() -> None:
    s = Session()
    s.ehlo()
    out = s.send(
        b"MAIL FROM:<a@b> BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x+2By\r\n"
        b"RCPT TO:<c@d> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c+40d\r\n"
        b"RCPT TO:<e@f>\r\nDATA\r\n"
    )
    assert lines(out) == [
        b"250 2.1.0 Ok",
        b"250 2.1.5 Ok",
        b"250 2.1.5 Ok",
        b"354 End data with <CR><LF>.<CR><LF>",
    ]
    assert s.send(b"Subject: t\r\n\r\nbody\r\n.\r\n") == b"250 2.0.0 Ok: queued as QID1\r\n"
    msg = s.events[-1]
    assert isinstance(msg, Message)
    assert msg.content == b"Subject: t\r\n\r\nbody\r\n"
    env = msg.envelope
    assert (env.sender, env.helo, env.esmtp) == ("a@b", "client.example", True)
    assert (env.body_type, env.smtputf8, env.ret, env.envid) == ("8BITMIME", True, "HDRS", "x+y")
    assert [r.address for r in env.recipients] == ["c@d", "e@f"]
    assert env.recipients[0].params.notify == ("SUCCESS", "DELAY")
    assert env.recipients[0].params.orcpt == ("rfc822", "c@d")
    assert not s.conn.in_transaction
    assert s.conn.last_command == "END-OF-MESSAGE"


def test_rejected_recipient_is_not_in_the_envelope() -> None:
    def policy(conn: ServerConnection, ev: Event) -> None:
        if isinstance(ev, RcptTo) and ev.address == "bad@x":
            conn.reject(Reply(554, "5.7.1", "<bad@x>: Relay access denied"))
        else:
            accept_all(conn, ev)

    s = Session(policy=policy)
    out = s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<bad@x>\r\nDATA\r\n")
    assert lines(out)[-1] == b"554 5.5.1 Error: no valid recipients"
    out = s.send(b"RCPT TO:<ok@x>\r\nDATA\r\nx\r\n.\r\n")
    msg = s.events[-1]
    assert isinstance(msg, Message)
    assert [r.address for r in msg.envelope.recipients] == ["ok@x"]


def test_sequence_errors() -> None:
    s = Session()
    assert s.send(b"DATA\r\n") == b"503 5.5.1 Error: need RCPT command\r\n"
    assert s.send(b"RCPT TO:<a@b>\r\n") == b"503 5.5.1 Error: need MAIL command\r\n"
    s.send(b"MAIL FROM:<a@b>\r\n")
    assert s.send(b"MAIL FROM:<a@b>\r\n") == b"503 5.5.1 Error: nested MAIL command\r\n"
    assert s.send(b"DATA\r\n") == b"554 5.5.1 Error: no valid recipients\r\n"
    s.send(b"RCPT TO:<c@d>\r\n")
    assert s.send(b"DATA x\r\n") == b"501 5.5.4 Syntax: DATA\r\n"


def test_unknown_and_empty_commands() -> None:
    s = Session()
    assert s.send(b"FOO\r\n") == b"500 5.5.2 Error: command not recognized\r\n"
    assert s.send(b"\r\n") == b"500 5.5.2 Error: bad syntax\r\n"
    assert s.send(b"NOOP \xff\r\n") == b"500 5.5.2 Error: bad UTF-8 syntax\r\n"


def test_too_many_recipients() -> None:
    s = Session(ServerSettings(smtpd_recipient_limit=2))
    out = s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<1@x>\r\nRCPT TO:<2@x>\r\nRCPT TO:<3@x>\r\n")
    assert lines(out)[-1] == b"452 4.5.3 Error: too many recipients"


def test_rset_noop_quit() -> None:
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\n")
    assert s.send(b"RSET\r\n") == b"250 2.0.0 Ok\r\n"
    assert not s.conn.in_transaction
    assert s.send(b"NOOP whatever\r\n") == b"250 2.0.0 Ok\r\n"
    assert s.send(b"QUIT\r\nNOOP\r\n") == b"221 2.0.0 Bye\r\n"
    assert s.closed and s.conn.client_quit


# -- DATA content, size, smuggling -----------------------------------------------


def in_data(settings: ServerSettings = VM) -> Session:
    s = Session(settings)
    s.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    return s


def test_message_too_big_is_drained_then_refused() -> None:
    s = in_data(ServerSettings(message_size_limit=100))
    assert s.send(b"x" * 80 + b"\r\n" + b"y" * 80 + b"\r\n") == b""
    out = s.send(b".\r\nNOOP\r\n")
    assert out == b"552 5.3.4 Error: message file too big\r\n250 2.0.0 Ok\r\n"
    assert not any(isinstance(e, Message) for e in s.events)
    assert "data=0/1" in s.conn.disconnect_summary()


@pytest.mark.parametrize(
    "variant",
    [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\r\n", b"\n.\r", b"\r\n.\r\r\n"],
    ids=["LF.LF", "LF.CRLF", "CR.CR", "CRLF.LF", "CR.CRLF", "LF.CR", "CRLF.CRCRLF"],
)
def test_smuggling_never_starts_a_second_transaction(variant: bytes) -> None:
    s = in_data()
    smuggled = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nforged\r\n"
    out = s.send(b"Subject: a" + variant + smuggled + b".\r\n")
    messages = [e for e in s.events if isinstance(e, Message)]
    assert out == b"250 2.0.0 Ok: queued as QID1\r\n"
    assert len(messages) == 1
    assert b"MAIL FROM:<evil@x>" in messages[0].content
    assert not any(isinstance(e, MailFrom) and e.address == "evil@x" for e in s.events)


def test_bare_lf_in_data_under_reject_closes() -> None:
    s = in_data(ServerSettings(myhostname="vm", smtpd_forbid_bare_newline="reject"))
    out = s.send(b"a\n.\nMAIL FROM:<evil@x>\r\n")
    assert out == b"550 5.5.2 vm Error: bare <LF> received\r\n"
    assert s.closed and s.conn.close_reason == "bare <LF> received"
    assert not any(isinstance(e, Message) for e in s.events)


def test_bare_lf_in_command_under_reject_closes() -> None:
    s = Session(ServerSettings(myhostname="vm", smtpd_forbid_bare_newline="reject"))
    assert s.send(b"EHLO x\n") == b"550 5.5.2 vm Error: bare <LF> received\r\n"
    assert s.closed


def test_bare_lf_command_is_accepted_when_normalising() -> None:
    assert Session().send(b"NOOP\n") == b"250 2.0.0 Ok\r\n"


def test_data_split_at_every_byte() -> None:
    s = in_data()
    for byte in b"Subject: x\r\n\r\n..dot\r\n.\r\n":
        out = s.send(bytes([byte]))
    assert out == b"250 2.0.0 Ok: queued as QID1\r\n"
    msg = s.events[-1]
    assert isinstance(msg, Message) and msg.content == b"Subject: x\r\n\r\n.dot\r\n"


def test_rejected_message_resets_the_transaction() -> None:
    def policy(conn: ServerConnection, ev: Event) -> None:
        if isinstance(ev, Message):
            conn.reject(Reply(451, "4.3.0", "Error: queue file write error"))
        else:
            accept_all(conn, ev)

    s = Session(policy=policy)
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    assert s.send(b"x\r\n.\r\n") == b"451 4.3.0 Error: queue file write error\r\n"
    assert not s.conn.in_transaction


def test_rejected_data_start() -> None:
    def policy(conn: ServerConnection, ev: Event) -> None:
        if isinstance(ev, DataStart):
            conn.reject(Reply(554, "5.5.1", "Error: no valid recipients"))
        else:
            accept_all(conn, ev)

    s = Session(policy=policy)
    out = s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nNOOP\r\n")
    assert lines(out)[-2:] == [b"554 5.5.1 Error: no valid recipients", b"250 2.0.0 Ok"]


# -- BDAT ------------------------------------------------------------------------


def test_bdat_chunks() -> None:
    s = Session()
    s.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    assert s.send(b"BDAT 5\r\nhel") == b""
    assert s.send(b"lo") == b"250 2.0.0 Ok: 5 bytes\r\n"
    assert s.send(b"BDAT 2 LAST\r\nxy") == b"250 2.0.0 Ok: 9 bytes queued as QID1\r\n"
    msg = s.events[-1]
    assert isinstance(msg, Message) and msg.bdat and msg.content == b"helloxy\r\n"
    assert [type(e) for e in s.events].count(DataStart) == 1
    assert s.conn.disconnect_summary() == "ehlo=1 mail=1 rcpt=1 bdat=2 commands=5"


def test_bdat_chunk_may_contain_command_text() -> None:
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    chunk = b"QUIT\r\n.\r\nRSET\r\nxxxxx"
    out = s.send(b"BDAT %d LAST\r\n%bNOOP\r\n" % (len(chunk), chunk))
    assert out == b"250 2.0.0 Ok: 22 bytes queued as QID1\r\n250 2.0.0 Ok\r\n"


def test_bdat_syntax_error_disconnects() -> None:
    for arg in (b"", b" x", b" 3 FOO", b" -1", b" 99999999999999999999"):
        s = Session()
        assert s.send(b"BDAT" + arg + b"\r\n") == b"521 5.5.4 Syntax: BDAT count [LAST]\r\n"
        assert s.closed


def test_bdat_chunk_over_the_limit() -> None:
    s = Session(ServerSettings(message_size_limit=10))
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    out = s.send(b"BDAT 11\r\n" + b"a" * 11 + b"BDAT 3\r\nabcBDAT 3 LAST\r\nabcNOOP\r\n")
    assert lines(out) == [
        b"552 5.3.4 Chunk exceeds message size limit",
        b"551 5.0.0 Discarded 3 bytes after earlier error",
        b"551 5.0.0 Discarded 3 bytes after earlier error",
        b"250 2.0.0 Ok",
    ]
    assert not s.conn.in_transaction


def test_bdat_rejected_by_the_glue_discards_the_chunk() -> None:
    def policy(conn: ServerConnection, ev: Event) -> None:
        if isinstance(ev, DataStart):
            conn.reject(Reply(550, "5.7.1", "Error: data rejected"))
        else:
            accept_all(conn, ev)

    s = Session(policy=policy)
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    out = s.send(b"BDAT 4\r\nNOOPBDAT 1 LAST\r\nxNOOP\r\n")
    assert lines(out) == [
        b"550 5.7.1 Error: data rejected",
        b"551 5.0.0 Discarded 1 bytes after earlier error",
        b"250 2.0.0 Ok",
    ]


# -- STARTTLS --------------------------------------------------------------------


def test_starttls_discards_pipelined_cleartext_and_resets() -> None:
    s = Session(ServerSettings(myhostname="vm", starttls_offered=True))
    s.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\n")
    out = s.send(b"STARTTLS\r\nRCPT TO:<evil@x>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert s.conn.awaiting_tls
    assert s.send(b"more cleartext\r\n") == b""  # ignored until the handshake
    s.conn.tls_established()
    assert s.conn.tls_active and s.conn.helo_name is None and not s.conn.in_transaction
    assert s.send(b"RCPT TO:<c@d>\r\n") == b"503 5.5.1 Error: need MAIL command\r\n"
    assert b"STARTTLS" not in s.send(b"EHLO x\r\n")
    assert s.send(b"STARTTLS\r\n") == b"554 5.5.1 Error: TLS already active\r\n"
    assert not any(isinstance(e, RcptTo) and e.address == "evil@x" for e in s.events)
    assert s.conn.disconnect_summary() == "ehlo=2 starttls=1/2 mail=1 rcpt=0/1 commands=4/6"


def test_starttls_counts_as_done_only_after_the_handshake() -> None:
    """Postfix 3.7's log for a client that leaves after the 220: starttls=0/1."""
    s = Session(ServerSettings(myhostname="vm", starttls_offered=True))
    s.send(b"EHLO x\r\nSTARTTLS\r\n")
    assert s.conn.disconnect_summary() == "ehlo=1 starttls=0/1 commands=1/2"
    s.conn.tls_established()
    assert s.conn.disconnect_summary() == "ehlo=1 starttls=1 commands=2"


def test_starttls_not_offered_and_syntax() -> None:
    s = Session()
    assert s.send(b"STARTTLS\r\n") == b"502 5.5.1 Error: command not implemented\r\n"
    assert s.send(b"STARTTLS x\r\n") == b"501 5.5.4 Syntax: STARTTLS\r\n"


def test_starttls_refused_by_the_glue() -> None:
    def policy(conn: ServerConnection, ev: Event) -> None:
        if isinstance(ev, StartTLS):
            conn.reject(replies.TLS_UNAVAILABLE)
        else:
            accept_all(conn, ev)

    s = Session(ServerSettings(starttls_offered=True), policy=policy)
    assert s.send(b"STARTTLS\r\nNOOP\r\n") == (
        b"454 4.7.0 TLS not available due to local problem\r\n250 2.0.0 Ok\r\n"
    )


def test_tls_required() -> None:
    s = Session(ServerSettings(starttls_offered=True, tls_required=True))
    for cmd in (b"MAIL FROM:<a@b>", b"RCPT TO:<a@b>", b"DATA", b"RSET", b"VRFY x", b"ETRN x"):
        assert s.send(cmd + b"\r\n") == b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    assert s.send(b"BDAT 3\r\nabc") == b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    assert s.send(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
    assert s.send(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
    s.conn.tls_established()
    assert s.send(b"MAIL FROM:<a@b>\r\n") == b"250 2.1.0 Ok\r\n"


def test_wrappermode_tls_before_greeting() -> None:
    conn = ServerConnection(ServerSettings(starttls_offered=True))
    conn.tls_established()
    conn.greeting()
    conn.data_to_send()
    conn.receive_data(b"EHLO x\r\n")
    assert isinstance(conn.next_event(), Helo)
    conn.accept()
    assert b"STARTTLS" not in conn.data_to_send()


# -- VRFY, ETRN, AUTH ------------------------------------------------------------------


def test_vrfy_and_etrn() -> None:
    s = Session()
    assert s.send(b"VRFY root\r\n") == b"252 2.0.0 root\r\n"
    assert s.send(b"VRFY\r\n") == b"501 5.5.4 Syntax: VRFY address [SMTPUTF8]\r\n"
    assert s.send(b"VRFY a b\r\n") == b"501 5.1.3 Bad recipient address syntax\r\n"
    assert s.send(b"ETRN @example.com\r\n") == b"250 Queuing started\r\n"
    assert s.send(b"ETRN\r\n") == b"500 Syntax: ETRN domain\r\n"
    assert s.send(b"ETRN a!b\r\n") == b"501 Error: invalid parameter syntax\r\n"
    assert Vrfy("root") in s.events and Etrn("example.com") in s.events
    assert Session(ServerSettings(disable_vrfy_command=True)).send(b"VRFY root\r\n") == (
        b"502 5.5.1 VRFY command is disabled\r\n"
    )


def test_auth_exchange() -> None:
    def policy(conn: ServerConnection, ev: Event) -> None:
        if isinstance(ev, Auth):
            conn.challenge("VXNlcm5hbWU6")
        elif isinstance(ev, AuthResponse) and ev.line == "dXNlcg==":
            conn.challenge("UGFzc3dvcmQ6")
        elif isinstance(ev, AuthResponse):
            conn.accept()
        else:
            accept_all(conn, ev)

    s = Session(ServerSettings(sasl_mechanisms=("LOGIN",)), policy=policy)
    assert s.send(b"AUTH login\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert s.send(b"dXNlcg==\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert s.send(b"cGFzcw==\r\n") == b"235 2.7.0 Authentication successful\r\n"
    assert s.conn.authenticated
    assert s.send(b"AUTH PLAIN\r\n") == b"503 5.5.1 Error: already authenticated\r\n"
    assert Auth("LOGIN", None) in s.events
    assert "auth=1/2" in s.conn.disconnect_summary()


def test_auth_abort() -> None:
    def policy(conn: ServerConnection, ev: Event) -> None:
        conn.challenge("") if isinstance(ev, Auth) else accept_all(conn, ev)

    s = Session(ServerSettings(sasl_mechanisms=("PLAIN",)), policy=policy)
    assert s.send(b"AUTH PLAIN\r\n*\r\nNOOP\r\n") == (
        b"334 \r\n501 5.7.0 Authentication aborted\r\n250 2.0.0 Ok\r\n"
    )
    assert AuthAborted() in s.notices


def _challenge_all(conn: ServerConnection, ev: Event) -> None:
    conn.challenge("") if isinstance(ev, Auth | AuthResponse) else accept_all(conn, ev)


def test_auth_response_longer_than_the_sasl_limit() -> None:
    # Reference (Postfix 3.7.11 with Dovecot): a 12280-byte response (under
    # smtpd_sasl_response_limit, 12288) reaches the plug-in even though it is longer
    # than line_length_limit; a longer one gets "500 5.5.6 SASL response limit
    # exceeded" and its tail is thrown away.
    s = Session(ServerSettings(sasl_mechanisms=("PLAIN",)), policy=_challenge_all)
    s.send(b"AUTH PLAIN\r\n")
    assert s.send(b"A" * 12280 + b"\r\n") == b"334 \r\n"
    assert AuthResponse("A" * 12280) in s.events
    out = s.send(b"*\r\nAUTH PLAIN\r\n" + b"B" * 12300 + b"\r\nNOOP\r\n")
    assert out == (
        b"501 5.7.0 Authentication aborted\r\n334 \r\n"
        b"500 5.5.6 SASL response limit exceeded\r\n250 2.0.0 Ok\r\n"
    )
    assert LineTooLong(12288, b"B" * 30) in s.notices
    assert "auth=0/2" in s.conn.disconnect_summary()


def test_broken_sasl_auth_clients_and_per_session_mechanisms() -> None:
    s = Session(ServerSettings(myhostname="vm", broken_sasl_auth_clients=True))
    assert b"AUTH" not in s.send(b"EHLO x\r\n")
    s.conn.sasl_mechanisms = ("PLAIN", "SCRAM-SHA-256")
    assert lines(s.send(b"EHLO x\r\n"))[5:7] == [
        b"250-AUTH PLAIN SCRAM-SHA-256",
        b"250-AUTH=PLAIN SCRAM-SHA-256",
    ]


def test_auth_needs_helo_when_required() -> None:
    s = Session(ServerSettings(sasl_mechanisms=("PLAIN",), smtpd_helo_required=True))
    assert s.send(b"AUTH PLAIN\r\n") == b"503 5.5.1 Error: send HELO/EHLO first\r\n"


def test_auth_in_transaction_and_equals_initial_response() -> None:
    s = Session(ServerSettings(sasl_mechanisms=("PLAIN",)), policy=_challenge_all)
    s.ehlo()
    s.send(b"MAIL FROM:<a@b>\r\n")
    assert s.send(b"AUTH PLAIN\r\n") == b"503 5.5.1 Error: MAIL transaction in progress\r\n"
    s.send(b"RSET\r\n")
    s.send(b"AUTH PLAIN =\r\n")
    assert s.events[-1] == Auth("PLAIN", "")


# -- error limits, long lines, non-SMTP, pipelining ----------------------------------


def test_hard_error_limit() -> None:
    s = Session(ServerSettings(myhostname="vm", smtpd_hard_error_limit=3))
    out = s.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert lines(out) == [
        b"500 5.5.2 Error: command not recognized",
        b"500 5.5.2 Error: command not recognized",
        b"500 5.5.2 Error: command not recognized",
        b"421 4.7.0 vm Error: too many errors",
    ]
    assert s.closed and s.conn.close_reason == "too many errors"


def test_junk_commands_count_as_errors_past_the_limit() -> None:
    s = Session(ServerSettings(smtpd_junk_command_limit=2, smtpd_hard_error_limit=2))
    out = s.send(b"NOOP\r\n" * 5)
    assert lines(out)[-1].startswith(b"421 4.7.0")


def test_long_line_is_truncated() -> None:
    s = Session(ServerSettings(line_length_limit=20))
    out = s.send(b"NOOP " + b"a" * 100 + b"\r\nNOOP\r\n")
    assert out == b"250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
    assert s.notices[0] == LineTooLong(20, b"NOOP " + b"a" * 15)


def test_long_line_arriving_in_pieces() -> None:
    s = Session(ServerSettings(line_length_limit=20))
    assert s.send(b"MAIL FROM:<" + b"a" * 30) == b"501 5.1.7 Bad sender address syntax\r\n"
    assert s.send(b"b" * 30) == b""
    assert s.send(b"@c>\r\nNOOP\r\n") == b"250 2.0.0 Ok\r\n"


def test_non_smtp_command() -> None:
    s = Session()
    out = s.send(b"GET / HTTP/1.0\r\nHost: x\r\n")
    assert out == b"221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
    assert s.closed and s.notices == [NonSmtpCommand("GET / HTTP/1.0")]


def test_whole_session_in_one_write() -> None:
    s = Session()
    out = s.send(
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<>\r\nDATA\r\n"
        b"hi\r\n.\r\nMAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nBDAT 2 LAST\r\nokQUIT\r\n"
    )
    assert lines(out)[10:] == [
        b"250 2.1.0 Ok",
        b"250 2.1.5 Ok",
        b"501 5.1.3 Bad recipient address syntax",
        b"354 End data with <CR><LF>.<CR><LF>",
        b"250 2.0.0 Ok: queued as QID1",
        b"250 2.1.0 Ok",
        b"250 2.1.5 Ok",
        b"250 2.0.0 Ok: 4 bytes queued as QID1",
        b"221 2.0.0 Bye",
    ]
    assert s.notices[0] == ImproperPipelining(
        "EHLO",
        b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<>\r\nDATA\r\nhi\r\n.\r\n"
        b"MAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\nBDAT 2 LAST\r\nokQUIT\r\n",
    )
    assert s.conn.disconnect_summary() == (
        "ehlo=1 mail=2 rcpt=2/3 data=1 bdat=1 quit=1 commands=8/9"
    )


def test_pipelining_before_greeting() -> None:
    conn = ServerConnection(VM)
    conn.greeting()
    conn.receive_data(b"EHLO x\r\n")
    assert conn.next_event() == ImproperPipelining("CONNECT", b"EHLO x\r\n")
    assert isinstance(conn.next_event(), Helo)


def test_pipelining_is_reported_once() -> None:
    s = Session()
    s.send(b"NOOP\r\nNOOP\r\nNOOP\r\n")
    assert s.notices == [ImproperPipelining("NOOP", b"NOOP\r\nNOOP\r\n")]


@pytest.mark.parametrize("cmd", [b"RSET", b"MAIL FROM:<a@b>", b"ETRN x", b"FOO"])
def test_pipelinable_commands_are_not_reported(cmd: bytes) -> None:
    s = Session()
    s.send(cmd + b"\r\nNOOP\r\n")
    assert s.notices == []


def test_forbid_unauth_pipelining() -> None:
    s = Session(ServerSettings(smtpd_forbid_unauth_pipelining=True))
    out = s.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\n")
    assert lines(out)[-1] == b"554 5.5.0 Error: SMTP protocol synchronization"
    assert s.closed and not any(isinstance(e, MailFrom) for e in s.events)


# -- counters, EOF, API misuse ---------------------------------------------------------


def test_counts_format() -> None:
    s = Session()
    assert s.conn.disconnect_summary() == "commands=0/0"
    s.send(b"HELO x\r\nFOO\r\nMAIL FROM:<a,b>\r\nMAIL FROM:<a@b>\r\nRSET\r\n")
    assert s.conn.disconnect_summary() == "helo=1 mail=1/2 rset=1 unknown=0/1 commands=3/5"


def test_log_details_as_the_reference_postfix_logs_them() -> None:
    """Each checked against Postfix 3.7's log for the same bytes: XCLIENT and XFORWARD
    in command-table order, a non-SMTP command counted as unknown, an empty command
    not counted, the declared SIZE refusal and an unknown NOTIFY word reported."""
    s = Session()
    s.send(b"EHLO x\r\nXCLIENT NAME=a\r\nXFORWARD NAME=a\r\n\x00\r\n")
    assert s.conn.disconnect_summary() == "ehlo=1 xclient=0/1 xforward=0/1 commands=1/3"
    s.send(b"MAIL FROM:<a@b> SIZE=99999999\r\nMAIL FROM:<a@b>\r\n")
    assert MailRefused("a@b", replies.SIZE_EXCEEDS) in s.notices
    s.send(b"RCPT TO:<c@d> NOTIFY=NEVER,BOGUS\r\n")
    assert ParameterWarning('unknown DSN NOTIFY command value "BOGUS" in "NEVER,BOGUS"') in (
        s.notices
    )
    s.send(b"RCPT TO:<c@d> NOTIFY=NEVER,SUCCESS\r\n")  # known words: no warning
    assert sum(isinstance(n, ParameterWarning) for n in s.notices) == 1
    s.send(b"<html>\r\n")
    assert s.closed
    assert s.conn.disconnect_summary() == (
        "ehlo=1 xclient=0/1 xforward=0/1 mail=1/2 rcpt=0/2 unknown=0/1 commands=2/8"
    )


def test_a_malformed_bdat_is_reported_before_the_connection_closes() -> None:
    s = Session()
    out = s.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nbdat 1x\r\n")
    assert lines(out)[-1] == b"521 5.5.4 Syntax: BDAT count [LAST]" and s.closed
    assert MalformedBdat("bdat 1x") in s.notices


def test_bytes_inside_message_content_and_the_end_of_a_chunked_message() -> None:
    s = Session()
    s.send(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3\r\nabc")
    assert (s.conn.last_command, s.conn.content_bytes) == ("BDAT", 3)
    s.send(b"BDAT 2 LAST\r\nde")
    # Queued: a client leaving now gets no "lost connection after" line.
    assert (s.conn.last_command, s.conn.content_bytes) == ("END-OF-MESSAGE", None)
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: x\r\n\r\nhello\r\n")
    assert (s.conn.last_command, s.conn.content_bytes) == ("DATA", 21)


def test_eof_mid_session() -> None:
    s = Session()
    s.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\npartial")
    s.send(b"")
    assert s.closed and s.conn.close_reason == "lost connection"
    assert s.conn.last_command == "DATA"


def test_api_misuse_is_caught() -> None:
    conn = ServerConnection(VM)
    with pytest.raises(ProtocolMisuse):
        conn.next_event()
    conn.greeting()
    conn.data_to_send()
    with pytest.raises(ProtocolMisuse):
        conn.accept()
    conn.receive_data(b"MAIL FROM:<a@b>\r\nNOOP\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    with pytest.raises(ProtocolMisuse):
        conn.next_event()
    with pytest.raises(ProtocolMisuse):
        conn.reject(replies.OK)
    conn.accept()
    conn.receive_data(b"RCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n")
    while not isinstance(ev := conn.next_event(), Message):
        if ev.needs_answer:  # type: ignore[union-attr]
            conn.accept()
    with pytest.raises(ProtocolMisuse):
        conn.accept()  # a Message needs its queue id
    conn.accept(queue_id="Q")
    assert conn.data_to_send().endswith(b"250 2.0.0 Ok: queued as Q\r\n")


def test_glue_close_with_timeout_reply() -> None:
    s = Session()
    s.conn.close(replies.timeout_exceeded("vm"), reason="timeout")
    assert s.conn.data_to_send() == b"421 4.4.2 vm Error: timeout exceeded\r\n"
    assert s.conn.next_event() is CLOSED


def test_discarded_keywords_disable_their_commands() -> None:
    settings = ServerSettings(
        starttls_offered=True, smtpd_discard_ehlo_keywords=("starttls", "etrn", "chunking")
    )
    s = Session(settings)
    out = s.send(b"EHLO x\r\n")
    assert b"STARTTLS" not in out and b"ETRN" not in out and b"CHUNKING" not in out
    assert s.send(b"STARTTLS\r\n") == b"502 5.5.1 Error: command not implemented\r\n"
    assert s.send(b"ETRN x\r\n") == b"502 5.5.1 Error: command not implemented\r\n"
    assert s.send(b"BDAT 1 LAST\r\nx") == b"521 5.5.1 Error: command not implemented\r\n"
    assert s.closed


def test_soft_error_limit_flag() -> None:
    s = Session(ServerSettings(smtpd_soft_error_limit=2))
    s.send(b"FOO\r\n")
    assert not s.conn.over_soft_error_limit
    s.send(b"FOO\r\n")
    assert s.conn.over_soft_error_limit
