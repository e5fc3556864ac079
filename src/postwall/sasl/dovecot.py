"""A client for Dovecot's authentication protocol (version 1), as Postfix's xsasl_dovecot.

Who calls it: `sasl.server` for smtpd_sasl_type = dovecot.  One `DovecotAuth` per smtpd
service keeps one UNIX-socket connection to Dovecot's auth-client listener, opened on first
use and again after a loss, and multiplexes every session's requests over it by request id
(Dovecot allows that; Postfix has one connection per smtpd process).

Protocol (doc.dovecot.org, "Authentication protocol"): we send `VERSION\\t1\\t0` and
`CPID\\tpid`; the server answers VERSION, one `MECH\\tname\\tprops...` per mechanism, SPID,
CUID, COOKIE and DONE.  Then `AUTH\\tid\\tmech\\tservice=smtp\\tnologin\\tlip=..\\trip=..`
[`\\tsecured`] [`\\tresp=base64`] and `CONT\\tid\\tbase64`, answered by `OK\\tid\\tuser=..`,
`CONT\\tid\\tbase64` or `FAIL\\tid\\t[reason=..]\\t[user=..]`.  Every wait is bounded
(Postfix's AUTH_TIMEOUT, 10 s); a lost or silent server is a `DovecotError`, which smtpd
reports as Postfix does (454 4.7.0 Temporary authentication failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

TIMEOUT = 10.0
_PROPS = {
    "plaintext": "plaintext",
    "active": "active",
    "dictionary": "dictionary",
    "anonymous": "anonymous",
    "forward-secrecy": "forward_secrecy",
    "mutual-auth": "mutual_auth",
    "private": "private",
}


class DovecotError(Exception):
    """The auth server cannot be reached or broke the protocol; str() is Postfix's wording."""


@dataclass(frozen=True, slots=True)
class Answer:
    kind: str  # OK, CONT or FAIL
    data: str = ""  # CONT: the base64 challenge
    user: str | None = None
    reason: str | None = None


class DovecotAuth:
    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.mechanisms: list[tuple[str, frozenset[str]]] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._next_id = 0
        self._lock = asyncio.Lock()

    async def connect(self) -> list[tuple[str, frozenset[str]]]:
        """Open the connection if needed and return the mechanisms Dovecot announced."""
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                assert self.mechanisms is not None
                return self.mechanisms
            try:
                async with asyncio.timeout(self.timeout):
                    reader, writer = await asyncio.open_unix_connection(self.path, limit=65536)
                    writer.write(f"VERSION\t1\t0\nCPID\t{os.getpid()}\n".encode())
                    mechs = await _handshake(reader)
            except (OSError, TimeoutError, ValueError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise DovecotError(
                    f"SASL: Connect to Dovecot auth socket '{self.path}' failed: "
                    f"{why or 'timed out'}"
                ) from None
            self._reader, self._writer = reader, writer
            self.mechanisms = mechs
            self._task = asyncio.get_running_loop().create_task(self._read_replies(reader))
            return mechs

    async def auth(
        self,
        mechanism: str,
        *,
        service: str,
        local_addr: str,
        remote_addr: str,
        secured: bool,
        initial: str | None,
    ) -> tuple[int, Answer]:
        """Start a conversation; returns its request id and Dovecot's first answer."""
        try:
            await self.connect()
        except DovecotError:
            raise DovecotError("Can't connect to authentication server") from None
        self._next_id += 1
        rid = self._next_id
        line = (
            f"AUTH\t{rid}\t{mechanism}\tservice={service}\tnologin"
            f"\tlip={local_addr}\trip={remote_addr}"
        )
        if secured:
            line += "\tsecured"
        if initial is not None:
            line += f"\tresp={initial}"
        return rid, await self._ask(rid, line)

    async def cont(self, rid: int, data: str) -> Answer:
        return await self._ask(rid, f"CONT\t{rid}\t{data}")

    async def _ask(self, rid: int, line: str) -> Answer:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise DovecotError("Connection lost to authentication server")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            writer.write(line.encode() + b"\n")
            async with asyncio.timeout(self.timeout):
                return await future
        except (OSError, TimeoutError):
            self._drop()
            raise DovecotError("Connection lost to authentication server") from None
        finally:
            self._pending.pop(rid, None)

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                raw = await reader.readline()
                if not raw.endswith(b"\n"):
                    break
                answer = _parse_answer(raw.decode("utf-8", "replace").rstrip("\n"))
                if answer is None:
                    continue
                rid, reply = answer
                future = self._pending.get(rid)
                if future is not None and not future.done():
                    future.set_result(reply)
        except (OSError, ValueError):
            pass
        finally:
            self._drop()

    def _drop(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DovecotError("Connection lost to authentication server"))
        self._pending.clear()

    async def close(self) -> None:
        self._drop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def _handshake(reader: asyncio.StreamReader) -> list[tuple[str, frozenset[str]]]:
    mechs: list[tuple[str, frozenset[str]]] = []
    while True:
        raw = await reader.readline()
        if not raw.endswith(b"\n"):
            raise ValueError("connection closed during the handshake")
        fields = raw.decode("utf-8", "replace").rstrip("\n").split("\t")
        match fields[0]:
            case "VERSION":
                if len(fields) < 3 or fields[1] != "1":
                    raise ValueError(f"Protocol version mismatch ({fields[1:2]} vs. 1)")
            case "MECH" if len(fields) > 1:
                props = frozenset(_PROPS[p.lower()] for p in fields[2:] if p.lower() in _PROPS)
                if "private" not in props:
                    mechs.append((fields[1].upper(), props))
            case "SPID" if not mechs:
                raise ValueError("Connected to wrong auth socket (auth-master?)")
            case "DONE":
                return mechs


def _parse_answer(line: str) -> tuple[int, Answer] | None:
    fields = line.split("\t")
    if len(fields) < 2 or fields[0] not in ("OK", "CONT", "FAIL") or not fields[1].isdigit():
        return None
    kind, rid, args = fields[0], int(fields[1]), fields[2:]
    if kind == "CONT":
        return rid, Answer("CONT", data=args[0] if args else "")
    user = reason = None
    for arg in args:
        if arg.startswith("user="):
            user = arg[5:]
        elif arg.startswith("reason="):
            reason = arg[7:]
    return rid, Answer(kind, user=user, reason=reason)
