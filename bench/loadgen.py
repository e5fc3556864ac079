"""Asyncio SMTP load generator for the benchmark scenarios.

Contract: each scenario drives a server on a loopback address with raw SMTP over
asyncio streams (no smtplib, so the generator stays cheap) and returns a
`LoadResult`. A message counts as accepted only when the reply after the final
dot is 250; everything else is tallied in `errors` by kind (for example
`reply:MAIL:451`, `timeout:greeting`, `connect:ConnectionRefusedError`), never
raised. Every loop is bounded by a message/connection count and a wall-clock
limit, and every read has a timeout.

Scenarios (called by bench/run.py):
- `run_plain`: persistent plaintext sessions, N messages per connection;
- `run_tls`: STARTTLS, one message per connection, full handshake each time or
  resuming the previous connection's session/ticket; also records the
  post-handshake latency (handshake end -> reply to the EHLO that follows),
  which exposes a server whose reply waits on Nagle behind its session ticket;
- `hold_idle`: N connections that read the greeting and EHLO reply, then stay
  idle until released (memory per connection, cold-burst acceptance).

MAIL, RCPT and DATA are sent in one write when the server offers PIPELINING
(RFC 2920 section 3.1 allows grouping them), as Postfix's own client does.
"""

from __future__ import annotations

import asyncio
import math
import os
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is optional
    uvloop = None


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class SMTPFailure(Exception):
    """One session step failed; `kind` is the error-tally key."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class LoadResult:
    scenario: str
    clients: int
    accepted: int = 0
    connections: int = 0
    elapsed: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    stall: list[float] = field(default_factory=list)
    handshakes: int = 0
    resumed: int = 0
    client_cpu: float = 0.0
    latency_name: str = "stall_ms"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "clients": self.clients,
            "accepted": self.accepted,
            "connections": self.connections,
            "elapsed_s": round(self.elapsed, 3),
            "msgs_per_s": self.accepted / self.elapsed if self.elapsed else 0.0,
            "errors": dict(self.errors),
            "handshakes": self.handshakes,
            "resumed": self.resumed,
            "client_cpu_s": round(self.client_cpu, 3),
        }
        if self.stall:
            out[self.latency_name] = {
                "n": len(self.stall),
                "p50": percentile(self.stall, 50) * 1000,
                "p90": percentile(self.stall, 90) * 1000,
                "p99": percentile(self.stall, 99) * 1000,
                "max": max(self.stall) * 1000,
                # share of sessions that waited at least one delayed-ACK period
                "over_30ms": sum(v >= 0.030 for v in self.stall) / len(self.stall),
            }
        return out


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    sender: str = "bench@bench.invalid"
    recipient: str = "bench@localhost"
    helo: str = "loadgen.bench.invalid"
    timeout: float = 30.0


class Session:
    """One SMTP client connection over asyncio streams."""

    def __init__(self, target: Target) -> None:
        self.t = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.extensions: set[str] = set()

    async def connect(self) -> None:
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.t.host, self.t.port), self.t.timeout
            )
        except TimeoutError:
            raise SMTPFailure("timeout:connect") from None
        except OSError as exc:
            raise SMTPFailure(f"connect:{type(exc).__name__}") from None

    async def reply(self, step: str) -> tuple[int, list[bytes]]:
        assert self.reader is not None
        lines: list[bytes] = []
        try:
            while True:
                line = await asyncio.wait_for(self.reader.readline(), self.t.timeout)
                if not line.endswith(b"\n"):
                    raise SMTPFailure(f"eof:{step}")
                lines.append(line.rstrip(b"\r\n"))
                if len(line) < 4 or line[3:4] != b"-":
                    break
        except TimeoutError:
            raise SMTPFailure(f"timeout:{step}") from None
        except (OSError, ssl.SSLError) as exc:
            raise SMTPFailure(f"io:{step}:{type(exc).__name__}") from None
        try:
            return int(lines[-1][:3]), lines
        except ValueError:
            raise SMTPFailure(f"garbled:{step}") from None

    async def expect(self, step: str, code: int) -> list[bytes]:
        got, lines = await self.reply(step)
        if got != code:
            raise SMTPFailure(f"reply:{step}:{got}")
        return lines

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def flush(self, step: str) -> None:
        assert self.writer is not None
        try:
            await asyncio.wait_for(self.writer.drain(), self.t.timeout)
        except TimeoutError:
            raise SMTPFailure(f"timeout:send:{step}") from None
        except (OSError, ssl.SSLError) as exc:
            raise SMTPFailure(f"io:send:{step}:{type(exc).__name__}") from None

    async def ehlo(self, step: str = "EHLO") -> None:
        self.send(b"EHLO " + self.t.helo.encode() + b"\r\n")
        await self.flush(step)
        lines = await self.expect(step, 250)
        self.extensions = {ln[4:].split(b" ")[0].decode().upper() for ln in lines[1:]}

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        if "STARTTLS" not in self.extensions:
            raise SMTPFailure("no-starttls")
        self.send(b"STARTTLS\r\n")
        await self.flush("STARTTLS")
        await self.expect("STARTTLS", 220)
        assert self.writer is not None
        try:
            await asyncio.wait_for(
                self.writer.start_tls(ctx, server_hostname="localhost"), self.t.timeout
            )
        except TimeoutError:
            raise SMTPFailure("timeout:handshake") from None
        except (OSError, ssl.SSLError) as exc:
            raise SMTPFailure(f"tls:{type(exc).__name__}") from None

    async def message(self, body: bytes) -> None:
        """Send one message; returns only if the reply after the dot is 250."""
        envelope = [
            b"MAIL FROM:<" + self.t.sender.encode() + b">\r\n",
            b"RCPT TO:<" + self.t.recipient.encode() + b">\r\n",
            b"DATA\r\n",
        ]
        steps = (("MAIL", 250), ("RCPT", 250), ("DATA", 354))
        if "PIPELINING" in self.extensions:
            self.send(b"".join(envelope))
            await self.flush("MAIL")
            for step, code in steps:
                await self.expect(step, code)
        else:
            for line, (step, code) in zip(envelope, steps, strict=True):
                self.send(line)
                await self.flush(step)
                await self.expect(step, code)
        self.send(body)
        await self.flush("DATA-END")
        await self.expect("DATA-END", 250)

    async def quit(self) -> None:
        try:
            self.send(b"QUIT\r\n")
            await self.flush("QUIT")
            await self.reply("QUIT")
        except SMTPFailure:
            pass  # the messages are already counted; a lost 221 changes nothing
        self.close(abort=False)

    def close(self, abort: bool = True) -> None:
        if self.writer is not None:
            if abort:
                self.writer.transport.abort()
            else:
                self.writer.close()
            self.writer = None


def make_body(size: int, message_id: str, sender: str, recipient: str) -> bytes:
    """A message of exactly `size` bytes before the dot, ending in CRLF.CRLF."""
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    head = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: postwall bench\r\n"
        f"Message-ID: <{message_id}>\r\nDate: {date}\r\n\r\n"
    ).encode()
    filler = max(0, size - len(head))
    line = b"x" * 70 + b"\r\n"
    body = (line * (filler // len(line) + 1))[:filler]
    if not body.endswith(b"\r\n"):
        body = body[: max(0, len(body) - 2)] + b"\r\n"
    return head + body + b".\r\n"


class Driver:
    """Runs N concurrent workers until a message count or a time limit is reached."""

    def __init__(self, result: LoadResult, max_messages: int, duration: float, size: int) -> None:
        self.result = result
        self.max_messages = max_messages
        self.deadline = 0.0
        self.duration = duration
        self.size = size
        self.issued = 0
        self.run_id = f"{int(time.time())}.{os.getpid()}"

    def more(self) -> bool:
        # A server that fails every session (no STARTTLS, refused) would
        # otherwise be hammered for the whole duration; stop early instead.
        if self.result.accepted == 0 and self.result.errors.total() >= 100:
            return False
        return self.issued < self.max_messages and time.monotonic() < self.deadline

    def take(self) -> bool:
        """Reserve one message slot, or say the run is over."""
        if not self.more():
            return False
        self.issued += 1
        return True

    def body(self, target: Target) -> bytes:
        mid = f"{self.run_id}.{self.issued}@bench.invalid"
        return make_body(self.size, mid, target.sender, target.recipient)

    async def run(self, worker: Callable[[int], Awaitable[None]]) -> LoadResult:
        cpu0 = time.process_time()
        t0 = time.monotonic()
        self.deadline = t0 + self.duration
        await asyncio.gather(*(worker(i) for i in range(self.result.clients)))
        self.result.elapsed = time.monotonic() - t0
        self.result.client_cpu = time.process_time() - cpu0
        return self.result


async def run_plain(
    target: Target,
    clients: int = 10,
    per_connection: int = 20,
    size: int = 1024,
    duration: float = 10.0,
    max_messages: int = 100_000,
) -> LoadResult:
    """Scenario (a): persistent plaintext sessions, `per_connection` messages each."""
    drv = Driver(LoadResult("plain", clients), max_messages, duration, size)

    async def worker(_: int) -> None:
        while drv.more():
            s = Session(target)
            drv.result.connections += 1
            try:
                await s.connect()
                await s.expect("greeting", 220)
                await s.ehlo()
                for _n in range(per_connection):
                    if not drv.take():
                        break
                    await s.message(drv.body(target))
                    drv.result.accepted += 1
                await s.quit()
            except SMTPFailure as exc:
                drv.result.errors[exc.kind] += 1
                s.close()

    return await drv.run(worker)


def client_context(cafile: str | None, tls_max: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls_max == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class ResumingContext(ssl.SSLContext):
    """asyncio's start_tls has no `session` argument; this context supplies it.

    wrap_bio runs synchronously inside start_tls, so setting `next_session`
    right before the call is race-free on a single event loop.
    """

    next_session: ssl.SSLSession | None = None

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        kwargs["session"] = self.next_session
        return super().wrap_bio(*args, **kwargs)


def resuming_context(cafile: str | None, tls_max: str | None = None) -> ResumingContext:
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    if tls_max == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def run_tls(
    target: Target,
    cafile: str | None,
    resume: bool,
    clients: int = 10,
    size: int = 1024,
    duration: float = 10.0,
    max_messages: int = 100_000,
    tls_max: str | None = None,
) -> LoadResult:
    """Scenarios (b) and (c): STARTTLS, a new connection per message."""
    name = "tls-resume" if resume else "tls-full"
    drv = Driver(LoadResult(name, clients), max_messages, duration, size)
    shared = client_context(cafile, tls_max)

    async def worker(_: int) -> None:
        ctx = resuming_context(cafile, tls_max) if resume else shared
        session: ssl.SSLSession | None = None
        while drv.take():
            s = Session(target)
            drv.result.connections += 1
            try:
                await s.connect()
                await s.expect("greeting", 220)
                await s.ehlo()
                if isinstance(ctx, ResumingContext):
                    ctx.next_session = session
                await s.starttls(ctx)
                done = time.perf_counter()
                drv.result.handshakes += 1
                assert s.writer is not None
                sslobj = s.writer.get_extra_info("ssl_object")
                if sslobj is not None and sslobj.session_reused:
                    drv.result.resumed += 1
                await s.ehlo("EHLO-TLS")
                drv.result.stall.append(time.perf_counter() - done)
                await s.message(drv.body(target))
                drv.result.accepted += 1
                # TLS 1.3 tickets arrive after the handshake; by now it is in.
                if sslobj is not None and resume:
                    session = sslobj.session
                await s.quit()
            except SMTPFailure as exc:
                drv.result.errors[exc.kind] += 1
                s.close()

    return await drv.run(worker)


@dataclass
class IdleHold:
    """Connections opened by `hold_idle`; close them with `release()`."""

    sessions: list[Session]
    result: LoadResult
    greeting_latency: list[float]

    def release(self) -> None:
        for s in self.sessions:
            s.close()
        self.sessions.clear()


async def hold_idle(target: Target, count: int, concurrency: int, timeout: float) -> IdleHold:
    """Open `count` connections, `concurrency` at a time (count = all at once,
    cold); each reads the greeting and the EHLO reply within `timeout`, then
    stays open and idle. Failures are tallied, not raised."""
    result = LoadResult(f"idle-{count}", count)
    held: list[Session] = []
    latency: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    short = Target(target.host, target.port, helo=target.helo, timeout=timeout)

    async def one(_: int) -> None:
        async with gate:
            s = Session(short)
            t0 = time.perf_counter()
            try:
                await s.connect()
                await s.expect("greeting", 220)
                await s.ehlo()
            except SMTPFailure as exc:
                result.errors[exc.kind] += 1
                s.close()
                return
            latency.append(time.perf_counter() - t0)
            result.connections += 1
            held.append(s)

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    result.elapsed = time.monotonic() - t0
    result.stall = latency
    result.latency_name = "ready_ms"  # connect -> EHLO reply, per connection
    return IdleHold(held, result, latency)


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (lower generator CPU), else the default loop."""
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
