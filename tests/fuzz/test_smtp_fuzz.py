"""Property tests for the SMTP core: arbitrary input never breaks it.

CI runs a few hundred examples; a longer run multiplies them, e.g.
`POSTWALL_FUZZ_SCALE=200 python3 -m pytest tests/fuzz` (about 40,000 examples).

Invariants checked on random bytes and on random command sequences split at
random points: no exception escapes, every byte sent is a well-formed SMTP
reply line, nothing is sent after the session closed, the counters stay
consistent, and the replies do not depend on how the input was split.
"""

from __future__ import annotations

import itertools
import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from postwall.smtp import address
from postwall.smtp.events import Message
from postwall.smtp.replies import Reply
from postwall.smtp.server import CLOSED, NEED_DATA, ServerConnection, ServerSettings

SCALE = int(os.environ.get("POSTWALL_FUZZ_SCALE", "1"))
REPLY_LINE = re.compile(rb"[2-5]\d\d[ -][^\r\n]*\r\n")
SETTINGS = ServerSettings(
    myhostname="vm",
    smtpd_banner="vm ESMTP",
    starttls_offered=True,
    message_size_limit=200,
    smtpd_recipient_limit=3,
    line_length_limit=64,
    smtpd_hard_error_limit=8,
    sasl_mechanisms=("PLAIN",),
)


def drive(pieces: list[bytes], verdicts: list[bool]) -> tuple[bytes, ServerConnection]:
    """Feed `pieces` one by one; answer events by cycling through `verdicts`."""
    conn = ServerConnection(SETTINGS)
    conn.greeting()
    out = bytearray(conn.data_to_send())
    n = 0
    closed = False
    for piece in pieces:
        conn.receive_data(piece)
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                break
            if ev is CLOSED:
                closed = True
                break
            if not ev.needs_answer:  # type: ignore[union-attr]
                continue
            ok = verdicts[n % len(verdicts)] if verdicts else True
            n += 1
            if ok and isinstance(ev, Message):
                conn.accept(queue_id="Q1")
            elif ok:
                conn.accept()
            else:
                conn.reject(Reply(550, "5.7.1", "Error: refused by policy"))
        sent = conn.data_to_send()
        out += sent
        if closed:
            break
    if closed:
        conn.receive_data(b"NOOP\r\n")
        assert conn.next_event() is CLOSED
        assert conn.data_to_send() == b""
    return bytes(out), conn


def check_invariants(out: bytes, conn: ServerConnection) -> None:
    pos = 0
    while pos < len(out):
        m = REPLY_LINE.match(out, pos)
        assert m, f"malformed reply at {pos}: {out[pos : pos + 80]!r}"
        pos = m.end()
    # Multi-line replies keep one code and end with a space-separated line.
    lines = out.split(b"\r\n")[:-1]
    for prev, cur in itertools.pairwise(lines):
        if prev[3:4] == b"-":
            assert cur[:3] == prev[:3]
    assert not lines or lines[-1][3:4] == b" "
    for name, total in conn.counts.total.items():
        assert 0 <= conn.counts.ok.get(name, 0) <= total
    summary = conn.disconnect_summary()
    assert re.fullmatch(r"([a-z]+=\d+(/\d+)? )*commands=\d+(/\d+)?", summary)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return [p for p in pieces if p]


@settings(max_examples=80 * SCALE, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 10**6), max_size=8))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    out, conn = drive(split(data, cuts), [True])
    check_invariants(out, conn)


COMMANDS = st.sampled_from(
    [
        b"EHLO client.example\r\n",
        b"HELO x\r\n",
        b"EHLO\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n",
        b"MAIL FROM:<a,b>\r\n",
        b"MAIL FROM:<a@b> SIZE=999\r\n",
        b"RCPT TO:<c@d>\r\n",
        b"RCPT TO:<c@d> NOTIFY=NEVER\r\n",
        b"RCPT TO:<>\r\n",
        b"DATA\r\n",
        b"Subject: x\r\n\r\nbody\r\n.\r\n",
        b"a\n.\nb\r\n.\r\n",
        b"..dot\r\n.\r\n",
        b"BDAT 4\r\nabcd",
        b"BDAT 3 LAST\r\nxyz",
        b"BDAT 0 LAST\r\n",
        b"BDAT 300\r\n" + b"z" * 300,
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY root\r\n",
        b"ETRN example.com\r\n",
        b"AUTH PLAIN dGVzdAB0ZXN0AHBhc3M=\r\n",
        b"STARTTLS\r\n",
        b"QUIT\r\n",
        b"FOO\r\n",
        b"\r\n",
        b"NOOP " + b"x" * 100 + b"\r\n",
        b"x" * 40,
        b"\r",
        b"\n",
        b".\r\n",
    ]
)


@settings(max_examples=120 * SCALE, deadline=None)
@given(
    st.lists(COMMANDS, max_size=25),
    st.lists(st.integers(0, 10**6), max_size=10),
    st.lists(st.booleans(), min_size=1, max_size=6),
)
def test_random_sessions_are_split_independent(
    commands: list[bytes], cuts: list[int], verdicts: list[bool]
) -> None:
    data = b"".join(commands)
    whole, conn = drive([data] if data else [], verdicts)
    check_invariants(whole, conn)
    pieces, conn2 = drive(split(data, cuts), verdicts)
    check_invariants(pieces, conn2)
    assert pieces == whole
    assert conn2.disconnect_summary() == conn.disconnect_summary()
    assert conn2.in_transaction == conn.in_transaction


_ADDRESS_TEXT = st.text(alphabet='<>"\\() \t@a.b,:;[]\x00', max_size=40)


@settings(max_examples=300 * SCALE, deadline=None)
@given(_ADDRESS_TEXT)
def test_address_fast_paths_agree_with_the_general_scanners(text: str) -> None:
    """The shortcuts for text without quotes, escapes or comments give what the
    character-by-character scanners give, for any text."""
    assert address.split_args(text) == address._split_args_general(text)
    assert address._strip_comments(text) == address._strip_comments_general(text)
    assert address._last_at(text) == address._last_at_general(text)
