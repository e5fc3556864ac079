"""Queue file records: round trips and every corruption case the reader must catch."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwall.queue.ids import is_queue_id, make_queue_id
from postwall.queue.records import (
    CorruptQueueFile,
    Envelope,
    RcptStatus,
    Recipient,
    encode,
    parse,
)


def full_envelope() -> Envelope:
    return Envelope(
        sender="Sender@Example.ORG",
        recipients=[
            Recipient("a@example.com", "rfc822;a@example.com", frozenset({"SUCCESS", "DELAY"})),
            Recipient("b@example.com", original="alias@example.com"),
            Recipient("c@example.com", notify=frozenset({"NEVER"}), status=RcptStatus.BOUNCED),
        ],
        arrival_time=1795857347.123456,
        ret="HDRS",
        envid="QQ314159",
        client_name="mail.example.org",
        client_addr="192.0.2.7",
        client_port=41234,
        helo="mail.example.org",
        protocol="ESMTPSA",
        sasl_username="alice",
        body_type="8BITMIME",
        smtputf8=True,
        warn_time=1795860000,
        attrs={"tls": "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"},
    )


def blob(env: Envelope, content: bytes) -> bytes:
    return b"".join(bytes(p) for p in encode(env, content))


def test_round_trip_every_field() -> None:
    env = full_envelope()
    content = b"Subject: x\r\n\r\nbody\r\n"
    data = blob(env, content)
    parsed = parse(io.BytesIO(data), "ABCDE12345")
    env.queue_id = "ABCDE12345"
    env.size = len(content)
    assert parsed.envelope == env
    assert data[parsed.content_offset : parsed.content_offset + parsed.content_length] == content
    assert [data[o : o + 1] for o in parsed.status_offsets] == [b"-", b"-", b"B"]
    assert parsed.warn_offset is not None
    assert struct.unpack(">q", data[parsed.warn_offset : parsed.warn_offset + 8]) == (1795860000,)


def test_minimal_envelope_and_null_sender() -> None:
    env = Envelope(sender="", recipients=[Recipient("postmaster@example.com")])
    parsed = parse(io.BytesIO(blob(env, b"")))
    assert parsed.envelope.sender == ""
    assert parsed.envelope.ret is None and parsed.envelope.envid is None
    assert parsed.envelope.client_port is None
    assert parsed.content_length == 0


def test_eight_bit_address_round_trips() -> None:
    raw = "j\udcf6rg@example.com"  # a non-UTF-8 byte, as surrogateescape decodes it
    env = Envelope(sender=raw, recipients=[Recipient("ü@example.com")])
    parsed = parse(io.BytesIO(blob(env, b"x")))
    assert parsed.envelope.sender == raw
    assert parsed.envelope.recipients[0].address == "ü@example.com"


# What the SMTP layer can hand us: bytes without NUL, decoded with surrogateescape.
wire_text = (
    st.binary(max_size=40)
    .filter(lambda b: b"\0" not in b)
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
)


@settings(max_examples=150, deadline=None)
@given(
    sender=wire_text,
    addrs=st.lists(wire_text, min_size=1, max_size=5),
    content=st.binary(max_size=2000),
    t=st.floats(min_value=0, max_value=4e9),
)
def test_round_trip_property(sender: str, addrs: list[str], content: bytes, t: float) -> None:
    env = Envelope(sender=sender, recipients=[Recipient(a) for a in addrs], arrival_time=t)
    data = blob(env, content)
    parsed = parse(io.BytesIO(data))
    assert parsed.envelope.sender == sender
    assert [r.address for r in parsed.envelope.recipients] == addrs
    assert parsed.envelope.arrival_time == t
    assert data[parsed.content_offset :][: parsed.content_length] == content


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="recipient"):
        encode(Envelope(sender="a", recipients=[]), b"")
    with pytest.raises(ValueError, match="NUL"):
        encode(Envelope(sender="a\0b", recipients=[Recipient("x")]), b"")
    with pytest.raises(ValueError):  # a lone surrogate no byte string decodes to
        encode(Envelope(sender="\ud800", recipients=[Recipient("x")]), b"")
    with pytest.raises(ValueError, match="protocol"):
        encode(Envelope(sender="", recipients=[Recipient("x")], protocol="UUCP"), b"")
    with pytest.raises(ValueError, match="ret"):
        encode(Envelope(sender="", recipients=[Recipient("x")], ret="ALL"), b"")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NOTIFY"):
        encode(Envelope(sender="", recipients=[Recipient("x", notify=frozenset({"X"}))]), b"")


GOOD = blob(full_envelope(), b"Subject: x\r\n\r\nbody\r\n")


def rec(rtype: bytes, payload: bytes) -> bytes:
    return struct.pack(">cI", rtype, len(payload)) + payload


HEAD = b"PWQF\x01"
T = rec(b"T", b"1.5")
S = rec(b"S", b"a@b")
R = rec(b"R", b"-x@y\0\0\0")
M = rec(b"M", b"hello\r\n")
E = rec(b"E", b"")


def test_hand_built_file_parses() -> None:
    parsed = parse(io.BytesIO(HEAD + T + S + R + M + E))
    assert parsed.envelope.recipients[0].address == "x@y"


@pytest.mark.parametrize("cut", sorted({0, 1, 4, 5, 6, 9, 10, len(GOOD) // 2, len(GOOD) - 6}))
def test_every_truncation_is_corrupt(cut: int) -> None:
    with pytest.raises(CorruptQueueFile):
        parse(io.BytesIO(GOOD[:cut]))


def test_all_truncations_of_small_file() -> None:
    data = HEAD + T + S + R + M + E
    for cut in range(len(data)):
        with pytest.raises(CorruptQueueFile):
            parse(io.BytesIO(data[:cut]))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"XXXX\x01" + T + S + R + M + E, "magic"),
        (b"PWQF\x07" + T + S + R + M + E, "version"),
        (HEAD + T + S + R + M, "truncated"),  # missing END
        (HEAD + T + S + R + M + E + b"\0", "after the end"),
        (HEAD + T + S + R + M + rec(b"E", b"x"), "payload"),
        (HEAD + T + S + R + rec(b"Q", b"") + M + E, "unknown record"),
        (HEAD + T + S + R + E, "before the content"),
        (HEAD + T + S + R + M + R + E, "after the content"),
        (HEAD + T + S + R + M + M + E, "after the content"),
        (HEAD + S + T + R + M + E, "not first"),
        (HEAD + T + T + S + R + M + E, "duplicate"),
        (HEAD + T + S + S + R + M + E, "duplicate"),
        (HEAD + T + R + M + E, "no sender"),
        (HEAD + T + S + M + E, "no recipient"),
        (HEAD + rec(b"T", b"yesterday") + S + R + M + E, "time"),
        (HEAD + T + S + rec(b"A", b"colour=blue") + R + M + E, "unknown attribute"),
        (HEAD + T + S + rec(b"A", b"novalue") + R + M + E, "="),
        (HEAD + T + S + rec(b"A", b"protocol=UUCP") + R + M + E, "protocol"),
        (HEAD + T + S + rec(b"A", b"client_port=99999") + R + M + E, "client_port"),
        (HEAD + T + S + rec(b"A", b"ret=ALL") + R + M + E, "ret"),
        (HEAD + T + S + rec(b"W", b"1234") + R + M + E, "warn"),
        (HEAD + T + S + rec(b"R", b"?x@y\0\0\0") + M + E, "status byte"),
        (HEAD + T + S + rec(b"R", b"-x@y\0\0") + M + E, "4 fields"),
        (HEAD + T + S + rec(b"R", b"") + M + E, "empty recipient"),
        (HEAD + T + S + rec(b"R", b"-x@y\0\0BOGUS\0") + M + E, "NOTIFY"),
        (HEAD + T + S + R + struct.pack(">cI", b"M", 10_000) + b"short" + E, "past end"),
    ],
)
def test_corruption_cases(data: bytes, message: str) -> None:
    with pytest.raises(CorruptQueueFile, match=message):
        parse(io.BytesIO(data))


def test_queue_id_shape() -> None:
    qid = make_queue_id(0x6563, 0x16000D)
    assert qid == "0656316000D"
    assert is_queue_id(qid)
    assert len(make_queue_id(999_999, 1)) == 10
    assert not is_queue_id("abcdef12345")  # lowercase is not ours
    assert not is_queue_id("123")
    with pytest.raises(ValueError):
        make_queue_id(1_000_000, 1)


@settings(max_examples=400, deadline=None)
@given(
    pos=st.integers(min_value=0, max_value=len(GOOD) - 1),
    byte=st.integers(min_value=0, max_value=255),
    cut=st.integers(min_value=0, max_value=len(GOOD)),
)
def test_damaged_file_parses_or_raises_corrupt_only(pos: int, byte: int, cut: int) -> None:
    damaged = bytearray(GOOD)
    damaged[pos] = byte
    try:
        parse(io.BytesIO(bytes(damaged[:cut])))
    except CorruptQueueFile:
        pass
    else:
        assert cut == len(GOOD)  # only a complete file can parse
