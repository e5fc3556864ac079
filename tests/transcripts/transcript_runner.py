"""Runner for SMTP transcripts (tests/transcripts/*.txt).

Format, one directive per line (blank lines and `#` comments ignored):

    @set name=value     ServerSettings field for the core driver (int/bool/str)
    @main name = value  main.cf line for both live servers (restrictions/*.txt only)
    @map file: line     a line of lookup table `file` ({maps}/file in @main values)
    C: text             client line; CRLF is appended
    C> text             raw client bytes, Python escapes allowed (\\r \\n \\x00), no CRLF added
    S: text             the next server reply line, exactly
    S~ regex            the next server reply line matches (re.fullmatch)
    N~ regex            a notice event whose repr matches (core driver only)
    !tls                the STARTTLS handshake happens here
    !closed             the server has closed the connection

Consecutive C lines are sent as one write, so a block of them is a pipelined
group. After the last directive no reply may be left unread. The same file
runs against the core (`CoreDriver`, accepting every event like a permissive
glue) or, with `SocketDriver`, against a live server such as the reference
Postfix on 127.0.0.1:25.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import re
import socket
import ssl
from dataclasses import dataclass, fields
from pathlib import Path

from postwall.smtp.server import CLOSED, NEED_DATA, Message, ServerConnection, ServerSettings


@dataclass
class Step:
    kind: str  # "C", "S:", "S~", "N~", "tls", "closed"
    text: str
    lineno: int
    raw: bool = False


def parse(path: Path) -> tuple[dict[str, object], list[Step]]:
    settings: dict[str, object] = {}
    steps: list[Step] = []
    types = {f.name: f.type for f in fields(ServerSettings)}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith(("#", "@main ", "@map ")):
            continue
        if line.startswith("@set "):
            name, _, value = line[5:].partition("=")
            name = name.strip()
            if name not in types:
                raise ValueError(f"{path}:{lineno}: unknown setting {name}")
            settings[name] = _convert(str(types[name]), value.strip())
        elif line.startswith("C: ") or line == "C:":
            steps.append(Step("C", line[3:] + "\r\n", lineno))
        elif line.startswith("C> "):
            raw_bytes = ast.literal_eval('b"' + line[3:].replace('"', '\\"') + '"')
            steps.append(Step("C", raw_bytes.decode("latin-1"), lineno, raw=True))
        elif line[:3] in ("S: ", "S~ ", "N~ "):
            steps.append(Step(line[:2], line[3:], lineno))
        elif line.strip() == "!tls":
            steps.append(Step("tls", "", lineno))
        elif line.strip() == "!closed":
            steps.append(Step("closed", "", lineno))
        else:
            raise ValueError(f"{path}:{lineno}: cannot parse {line!r}")
    return settings, steps


def _convert(kind: str, value: str) -> object:
    if "bool" in kind:
        return value.lower() in ("yes", "true", "1")
    if "int" in kind:
        return int(value)
    if "tuple" in kind:
        return tuple(v for v in re.split(r"[\s,]+", value) if v)
    return value


class CoreDriver:
    """Drives ServerConnection directly, accepting every event."""

    def __init__(self, settings: ServerSettings) -> None:
        self.conn = ServerConnection(settings)
        self.conn.greeting()
        self.out = bytearray(self.conn.data_to_send())
        self.notices: list[str] = []
        self.is_closed = False
        self._ids = itertools.count(1)

    def send(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        while True:
            ev = self.conn.next_event()
            if ev is NEED_DATA:
                break
            if ev is CLOSED:
                self.is_closed = True
                break
            if not ev.needs_answer:  # type: ignore[union-attr]
                self.notices.append(repr(ev))
            elif isinstance(ev, Message):
                self.conn.accept(queue_id=f"{next(self._ids):011X}")
            else:
                self.conn.accept()
        self.out += self.conn.data_to_send()

    def read_line(self) -> str | None:
        nl = self.out.find(b"\r\n")
        if nl < 0:
            return None
        line = bytes(self.out[:nl]).decode("utf-8", "replace")
        del self.out[: nl + 2]
        return line

    def starttls(self) -> None:
        self.conn.tls_established()
        self._pump()

    def closed(self) -> bool:
        return self.is_closed and not self.out

    def leftover(self) -> bytes:
        return bytes(self.out)


class SocketDriver:
    """Drives a live server over TCP (STARTTLS with an unverified context)."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout)
        self.buf = bytearray()
        self.notices: list[str] = []
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> str | None:
        while b"\r\n" not in self.buf and not self.eof:
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, ConnectionError):
                chunk = b""
            if not chunk:
                self.eof = True
            self.buf += chunk
        nl = self.buf.find(b"\r\n")
        if nl < 0:
            return None
        line = bytes(self.buf[:nl]).decode("utf-8", "replace")
        del self.buf[: nl + 2]
        return line

    def starttls(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)

    def closed(self) -> bool:
        return self.read_line() is None and self.eof

    def leftover(self) -> bytes:
        self.sock.settimeout(0.3)
        with contextlib.suppress(OSError):
            self.buf += self.sock.recv(65536)
        return bytes(self.buf)


def run(steps: list[Step], driver: CoreDriver | SocketDriver, name: str = "") -> None:
    """Play a transcript; raise AssertionError naming file:line on the first mismatch."""
    pending = bytearray()
    for step in steps:
        where = f"{name}:{step.lineno}"
        if step.kind == "C":
            pending += step.text.encode("latin-1" if step.raw else "utf-8")
            continue
        if pending:
            driver.send(bytes(pending))
            pending.clear()
        if step.kind in ("S:", "S~"):
            got = driver.read_line()
            if step.kind == "S:":
                assert got == step.text, f"{where}: expected {step.text!r}, got {got!r}"
            else:
                assert got is not None and re.fullmatch(step.text, got), (
                    f"{where}: expected /{step.text}/, got {got!r}"
                )
        elif step.kind == "N~":
            if isinstance(driver, CoreDriver):
                assert any(re.fullmatch(step.text, n) for n in driver.notices), (
                    f"{where}: no notice matches /{step.text}/ in {driver.notices}"
                )
        elif step.kind == "tls":
            driver.starttls()
        elif step.kind == "closed":
            assert driver.closed(), f"{where}: connection still open"
    if pending:
        driver.send(bytes(pending))
    rest = driver.leftover()
    assert not rest, f"{name}: unexpected server output {rest!r}"
