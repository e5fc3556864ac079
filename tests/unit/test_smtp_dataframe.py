"""DATA and BDAT readers: end-of-data, dot-unstuffing, bare line endings, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwall.smtp.dataframe import BdatReader, DataReader


def read_all(data: bytes, **kw: object) -> tuple[DataReader, int]:
    reader = DataReader(**kw)  # type: ignore[arg-type]
    return reader, reader.feed(data)


def test_ends_at_crlf_dot_crlf_and_stops_there() -> None:
    reader, used = read_all(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert reader.done
    assert used == len(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert reader.content == b"Subject: x\r\n\r\nbody\r\n"


def test_immediate_end_gives_empty_content() -> None:
    reader, used = read_all(b".\r\n")
    assert reader.done and used == 3 and reader.content == b""


def test_dot_unstuffing() -> None:
    reader, _ = read_all(b"..one\r\n...two\r\n.\r\n")
    assert reader.content == b".one\r\n..two\r\n"


@pytest.mark.parametrize(
    "variant",
    [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\r\n", b"\n.\r", b"\r\n.\r\r\n"],
)
def test_smuggling_sequences_never_end_the_message(variant: bytes) -> None:
    reader, used = read_all(b"a" + variant + b"MAIL FROM:<evil@x>\r\n")
    assert not reader.done
    assert used <= len(b"a" + variant + b"MAIL FROM:<evil@x>\r\n")
    reader.feed(b".\r\n")
    assert reader.done
    assert b"MAIL FROM:<evil@x>" in reader.content


def test_bare_lf_is_normalised_to_crlf() -> None:
    reader, _ = read_all(b"a\nb\r\n.\r\n")
    assert reader.content == b"a\r\nb\r\n"
    assert reader.bare_lf


def test_bare_cr_is_content() -> None:
    reader, _ = read_all(b"a\rb\r\n.\r\n")
    assert reader.content == b"a\rb\r\n"
    assert not reader.bare_lf


def test_reject_mode_stops_at_first_bare_lf() -> None:
    reader, used = read_all(b"ok\r\nbad\n.\r\n", reject_bare_lf=True)
    assert reader.bare_lf and reader.done
    assert used == len(b"ok\r\nbad\n")


def test_every_split_point_gives_the_same_result() -> None:
    data = b"Subject: s\r\n\r\n..x\r\nline\nmore\r\n.\r\n"
    whole, _ = read_all(data)
    for i in range(len(data) + 1):
        reader = DataReader()
        buf = bytearray(data[:i])
        used = reader.feed(buf)
        del buf[:used]
        buf += data[i:]
        reader.feed(buf)
        assert reader.done and reader.content == whole.content, i


def test_long_line_is_passed_on_in_pieces() -> None:
    line = b"x" * 50000
    reader = DataReader()
    used = reader.feed(line)
    assert 0 < used < len(line)  # memory stays bounded while waiting for LF
    rest = line[used:] + b"\r\n.\r\n"
    reader.feed(rest)
    assert reader.done and reader.content == line + b"\r\n"


def test_size_limit_drains_to_the_end() -> None:
    body = b"y" * 100 + b"\r\n"
    reader, used = read_all(body * 10 + b".\r\nNEXT", size_limit=500)
    assert reader.done and reader.too_big
    assert reader.content == b""
    assert used == len(body * 10 + b".\r\n")


def test_bdat_chunks_and_final_crlf() -> None:
    reader = BdatReader()
    reader.add(b"hello")
    reader.add(b"xy")
    assert reader.finish() == b"helloxy\r\n"
    assert reader.received == 9  # what Postfix reports: 5 + 2 + the added CRLF


def test_bdat_bare_lf_normalised_across_chunks() -> None:
    reader = BdatReader()
    reader.add(b"a\r")
    reader.add(b"\nb\nc\r\n")
    assert reader.finish() == b"a\r\nb\r\nc\r\n"
    assert reader.bare_lf


def test_bdat_empty_message() -> None:
    reader = BdatReader()
    assert reader.finish() == b"" and reader.received == 0


def test_bdat_limit() -> None:
    reader = BdatReader(size_limit=10)
    assert reader.chunk_fits(10)
    assert not reader.chunk_fits(11)
    reader.add(b"x" * 11)
    assert reader.too_big


class _LineByLine(DataReader):
    """The reader with its whole-buffer fast path switched off: the reference."""

    def _feed_clean(self, buf: bytes | bytearray) -> int:
        return 0


def _drive(reader: DataReader, data: bytes, cuts: list[int]) -> tuple[int, bytes, bool, bool]:
    """Feed `data` in pieces the way the server does (unconsumed bytes stay buffered)."""
    buf = bytearray()
    used_total = 0
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        buf += data[start:cut]
        start = cut
        used = reader.feed(buf)
        used_total += used
        del buf[:used]
        if reader.done or (reader.bare_lf and reader._reject_bare_lf):
            break
    return used_total, reader.content, reader.done, reader.too_big


_PIECES = [b"a", b".", b"..", b"\r\n", b"\n", b"\r", b"\r\n.\r\n", b"\n.\r\n", b"\r\n.\n", b"x" * 9]


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(st.sampled_from(_PIECES), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=4),
    reject=st.booleans(),
    limit=st.sampled_from([0, 5, 40]),
)
def test_fast_path_matches_the_line_loop(
    parts: list[bytes], cuts: list[int], reject: bool, limit: int
) -> None:
    data = b"".join(parts)
    cuts = [c for c in cuts if c <= len(data)]
    kw = {"size_limit": limit, "reject_bare_lf": reject}
    fast, slow = DataReader(**kw), _LineByLine(**kw)  # type: ignore[arg-type]
    assert _drive(fast, data, cuts) == _drive(slow, data, cuts)
    assert fast.bare_lf == slow.bare_lf
    assert fast.size == slow.size


def test_fast_path_handles_a_whole_message_in_one_buffer() -> None:
    body = b"".join(b"line %d\r\n" % i for i in range(50)) + b"..dot\r\n"
    reader, used = read_all(body + b".\r\nMAIL FROM:<a@b>\r\n")
    assert reader.done and used == len(body) + 3
    assert reader.content == body.replace(b"\r\n..dot", b"\r\n.dot")
