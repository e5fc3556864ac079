"""Message content readers for DATA (dot-terminated) and BDAT (counted chunks).

Contract: `DataReader.feed(buf)` consumes bytes of a DATA body and says how
many it used and whether the end-of-data line was seen; `BdatReader` does the
same for one BDAT chunk at a time. Both deliver content with every line ended
by CRLF, never hold more than `size_limit` bytes of content (past the limit
they keep reading to the end and only report `too_big`), and never raise on
any input. Called by `smtp.server` only.

Smuggling (CVE-2023-51764): the only end of DATA is <CR><LF>.<CR><LF> (RFC
5321 4.1.1.4, 4.5.2). `<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR><LF>.<LF>`,
`<CR>.<CR>` and friends are content. A bare LF ends a content line and is
written as CRLF (Postfix 3.9 `smtpd_forbid_bare_newline=normalize`); under
`reject` the reader stops at the first bare LF and reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Longest run kept waiting for a line end before it is passed on as a partial
# line; bounds memory against a client that never sends LF.
_PARTIAL = 8192


@dataclass
class _Content:
    """Collected content with a size limit (0 = none)."""

    size_limit: int
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    too_big: bool = False

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size_limit and self.size > self.size_limit:
            self.too_big = True
            self.parts.clear()
        elif not self.too_big:
            self.parts.append(data)

    def value(self) -> bytes:
        return b"".join(self.parts)


class DataReader:
    """Reader of one DATA body, from after the 354 to the final dot."""

    def __init__(self, size_limit: int = 0, reject_bare_lf: bool = False) -> None:
        self._content = _Content(size_limit)
        self._reject_bare_lf = reject_bare_lf
        self._line_start = True
        # The end is CRLF "." CRLF: the line before the dot must have ended in
        # CRLF too, or "<LF>.<CR><LF>" would end the message (CVE-2023-51764).
        self._after_crlf = True
        self.done = False
        self.bare_lf = False  # a bare LF was seen (and, under reject, reading stopped)

    @property
    def too_big(self) -> bool:
        return self._content.too_big

    @property
    def size(self) -> int:
        return self._content.size

    @property
    def content(self) -> bytes:
        return self._content.value()

    def feed(self, buf: bytes | bytearray) -> int:
        """Consume DATA bytes from `buf`; return how many were used.

        Stops right after the end-of-data line (`done`), or after a bare LF under
        reject (`bare_lf`); what follows belongs to the command reader.
        """
        pos = 0
        if self._line_start and self._after_crlf and not self.done:
            pos = self._feed_clean(buf)
        n = len(buf)
        while pos < n and not self.done:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                # No line end yet: keep a short tail (it may be "." or end in CR),
                # pass on the rest of a long line.
                if n - pos <= _PARTIAL:
                    break
                cut = n - 2
                self._emit(bytes(buf[pos:cut]))
                self._line_start = False
                pos = cut
                break
            line = bytes(buf[pos:nl])
            pos = nl + 1
            bare = not line.endswith(b"\r")
            if bare:
                self.bare_lf = True
                if self._reject_bare_lf:
                    self.done = True
                    break
            else:
                line = line[:-1]
            if self._line_start and self._after_crlf and line == b"." and not bare:
                self.done = True
                break
            self._emit(line)
            self._content.add(b"\r\n")
            self._line_start = True
            self._after_crlf = not bare
        return pos

    def _feed_clean(self, buf: bytes | bytearray) -> int:
        """Fast path over whole buffers: the complete lines at the front of `buf`, if
        they all end in CRLF, are unstuffed and kept in one step; else nothing is
        consumed and `feed`'s line loop takes over.  Called only at a line start that
        follows a CRLF, so "." CRLF at the front or the first CRLF "." CRLF is the end
        of the data, exactly as the line loop would find it."""
        if buf[:3] == b".\r\n":
            self.done = True
            return 3
        end = buf.find(b"\r\n.\r\n")
        if end >= 0:
            stop, used = end + 2, end + 5  # content keeps the CRLF before the dot
        else:
            stop = used = buf.rfind(b"\n") + 1
            if stop == 0:
                return 0
        segment = bytes(buf[:stop])
        if segment.count(b"\n") != segment.count(b"\r\n"):
            return 0  # a bare LF: normalised (or rejected) line by line
        # RFC 5321 4.5.2: drop the first "." of every line.
        if segment[:1] == b".":
            segment = segment[1:]
        self._content.add(segment.replace(b"\r\n.", b"\r\n"))
        self.done = end >= 0
        return used

    def _emit(self, data: bytes) -> None:
        if self._line_start and data.startswith(b"."):
            data = data[1:]  # RFC 5321 4.5.2 dot-unstuffing
        self._content.add(data)


class BdatReader:
    """Collects the chunks of one BDAT transaction (RFC 3030 2)."""

    def __init__(self, size_limit: int = 0, reject_bare_lf: bool = False) -> None:
        self._content = _Content(size_limit)
        self._reject_bare_lf = reject_bare_lf
        self._last_cr = False
        self.received = 0  # raw chunk bytes, what Postfix reports in "Ok: N bytes"
        self.bare_lf = False
        self.failed = False  # an earlier chunk was refused; the rest is discarded

    @property
    def too_big(self) -> bool:
        return self._content.too_big

    @property
    def size(self) -> int:
        return self._content.size

    def chunk_fits(self, size: int) -> bool:
        """Whether a declared chunk keeps the message within the limit."""
        limit = self._content.size_limit
        return not limit or self.received + size <= limit

    def add(self, data: bytes) -> None:
        """Add chunk bytes; bare LF becomes CRLF (or is flagged under reject)."""
        self.received += len(data)
        if self.failed or not data:
            return
        out = bytearray()
        prev_cr = self._last_cr
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                out += data[start:]
                break
            is_bare = not (data[nl - 1 : nl] == b"\r" if nl > 0 else prev_cr)
            out += data[start:nl]
            if is_bare:
                self.bare_lf = True
                out += b"\r\n"
            else:
                out += b"\n"
            start = nl + 1
        self._last_cr = data.endswith(b"\r")
        self._content.add(bytes(out))

    def finish(self) -> bytes:
        """The whole message; a last line without CRLF gets one, as Postfix does."""
        content = self._content.value()
        if self.size and not content.endswith(b"\n") and not self.too_big:
            self.received += 2
            content += b"\r\n"
        return content
