"""check_policy_service: Postfix's SMTPD access policy delegation (SMTPD_POLICY_README).

Who calls it: `smtpd.restrictions`, once per `check_policy_service ENDPOINT` in a
restriction list (`PolicyService.parse` at start-up, `await query(...)` per check).
What it does: sends Postfix 3.7's request (`name=value` lines, then an empty line) to
`inet:host:port` or `unix:path` (a relative path is under $queue_directory, as Postfix's
smtpd sees `private/policy` from its chroot) and returns the reply's `action=` value, or
None when the server could not be asked; the caller then uses the default action.

Semantics of Postfix's attr_clnt: a request is tried up to try_limit times,
retry_delay apart; each failure is logged with Postfix's warnings (`connect to X: ...`,
`timeout on X while reading input attribute name`, `premature end-of-input on X ...`,
`missing attribute action in input from X`, `problem talking to server X: ...`).
Connections are kept for reuse up to max_idle idle, max_ttl old and request_limit
requests.  One process serves every session here, so each endpoint has a small pool
and a connection carries one request at a time (never interleaved).  Differences:
`timeout` bounds a whole attempt (Postfix: each read and write), and a connection
found closed by the server before use is replaced at once instead of costing a
retry_delay.  The `{ endpoint, name=value, ... }` form of Postfix 3.0 overrides
timeout, max_idle, max_ttl, request_limit, try_limit, retry_delay, default_action
and policy_context for one endpoint.
"""

from __future__ import annotations

import asyncio
import errno as errnos
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postwall.config.params import Params, parse_int, parse_time, split_list

if TYPE_CHECKING:
    from postwall.smtpd.restrictions import ClientState

_POOL_MAX = 16  # connections per endpoint at once (Postfix: one per smtpd process)
_LINE_MAX = 64 * 1024  # a reply line longer than this is garbage, not a policy reply
# Errors attr_clnt does not warn about on a first failure (the retry usually cures them).
_QUIET = {0, errnos.EPIPE, errnos.ENOENT, errnos.ECONNRESET}
_TIME_OVERRIDES = ("timeout", "max_idle", "max_ttl", "retry_delay")
_INT_OVERRIDES = {"request_limit": 0, "try_limit": 1}
_STR_OVERRIDES = ("default_action", "policy_context")


class PolicyError(ValueError):
    """A malformed check_policy_service argument (start-up stops with it)."""


@dataclass(frozen=True, slots=True)
class PolicySettings:
    name: str  # the argument as written (Postfix names the "access table" with it)
    transport: str  # "inet" or "unix"
    endpoint: str  # "host:port" or the path as written: what the warnings show
    timeout: float
    max_idle: float
    max_ttl: float
    request_limit: int
    try_limit: int
    retry_delay: float
    default_action: str
    policy_context: str


def parse_service(spec: str, params: Params) -> PolicySettings:
    """`inet:host:port`, `unix:path` or `{ endpoint, name=value, ... }`."""
    base = PolicySettings(
        name=spec,
        transport="",
        endpoint="",
        timeout=params.smtpd_policy_service_timeout,
        max_idle=params.smtpd_policy_service_max_idle,
        max_ttl=params.smtpd_policy_service_max_ttl,
        request_limit=params.smtpd_policy_service_request_limit,
        try_limit=params.smtpd_policy_service_try_limit,
        retry_delay=params.smtpd_policy_service_retry_delay,
        default_action=params.smtpd_policy_service_default_action,
        policy_context=params.smtpd_policy_service_policy_context,
    )
    overrides: list[str] = []
    target = spec.strip()
    if target.startswith("{"):
        if not target.endswith("}"):
            raise PolicyError(f"policy service syntax error: {spec}")
        items = split_list(target[1:-1])
        if not items:
            raise PolicyError(f'empty policy service: "{spec}"')
        target, overrides = items[0], list(items[1:])
    transport, _, endpoint = target.partition(":")
    if transport not in ("inet", "unix") or not endpoint:
        raise PolicyError(f'need service transport:endpoint instead of "{target}"')
    values: dict[str, object] = {"transport": transport, "endpoint": endpoint}
    for item in overrides:
        if item.startswith("{") and item.endswith("}"):
            item = item[1:-1].strip()
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise PolicyError(f'missing "=" after attribute name: "{item}"')
        try:
            if key in _TIME_OVERRIDES:
                seconds = parse_time(value, "s")
                if seconds < 1:
                    raise ValueError(f'time value "{value}" below minimum 1s')
                values[key] = seconds
            elif key in _INT_OVERRIDES:
                values[key] = parse_int(value, _INT_OVERRIDES[key], None)
            elif key in _STR_OVERRIDES:
                values[key] = value
            else:
                raise ValueError(f'unknown attribute name: "{key}"')
        except ValueError as err:
            raise PolicyError(f"check_policy_service {spec}: {err}") from None
    return replace(base, **values)  # type: ignore[arg-type]


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    born: float
    buf: bytearray = field(default_factory=bytearray)
    requests: int = 0
    idle_timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.sock.close()

    def stale(self) -> bool:
        """Readable before a request was sent: the server closed it, or sent junk."""
        if self.buf:
            return True
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) is not None
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True


class _Failure(Exception):
    def __init__(self, err: int, warning: str | None = None) -> None:
        super().__init__(warning)
        self.errno = err
        self.warning = warning


class PolicyService:
    """One endpoint's connections; shared by every session of a service."""

    def __init__(self, settings: PolicySettings, queue_directory: str) -> None:
        self.s = settings
        self._queue_directory = queue_directory
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(_POOL_MAX)

    async def query(
        self, attributes: list[tuple[str, str]], warn: Callable[[str], None]
    ) -> str | None:
        """The action the server answered, or None (every warning already given)."""
        request = "".join(f"{k}={_one_line(v)}\n" for k, v in attributes) + "\n"
        data = request.encode("utf-8", "surrogateescape")
        count = 0
        async with self._slots:
            while True:
                conn: _Conn | None = None
                try:
                    conn = await self._acquire()
                    action = await asyncio.wait_for(self._exchange(conn, data), self.s.timeout)
                except _Failure as fail:
                    err = fail.errno
                    if fail.warning:
                        warn(fail.warning)
                except TimeoutError:
                    err = errnos.ETIMEDOUT
                    warn(f"timeout on {self.s.endpoint} while reading input attribute name")
                except OSError as exc:
                    err = exc.errno or 0
                else:
                    assert conn is not None
                    self._release(conn)
                    return action
                if conn is not None:
                    conn.close()
                count += 1
                if count >= self.s.try_limit or err not in _QUIET:
                    reason = os.strerror(err) if err else "Success"
                    warn(f"problem talking to server {self.s.endpoint}: {reason}")
                if count >= self.s.try_limit:
                    return None
                await asyncio.sleep(self.s.retry_delay)

    # -- connections ---------------------------------------------------------

    async def _acquire(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if now - conn.born < self.s.max_ttl and not conn.stale():
                return conn
            conn.close()
        return await self._connect()

    def _release(self, conn: _Conn) -> None:
        conn.requests += 1
        limit = self.s.request_limit
        if (limit and conn.requests >= limit) or conn.buf:
            conn.close()  # used up, or the server said more than one reply
            return
        loop = asyncio.get_running_loop()
        conn.idle_timer = loop.call_later(self.s.max_idle, self._expire, conn)
        self._idle.append(conn)

    def _expire(self, conn: _Conn) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
            conn.idle_timer = None
            conn.close()

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        where = self.s.endpoint
        try:
            if self.s.transport == "unix":
                path = Path(self._queue_directory, where)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                address: Any = str(path)
            else:
                host, port = _host_port(where)
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                family, _, proto, _, address = infos[0]
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise _Failure(getattr(exc, "errno", 0) or 0, f"connect to {where}: {reason}") from None
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), self.s.timeout)
        except TimeoutError:
            sock.close()
            err = errnos.ETIMEDOUT
            raise _Failure(err, f"connect to {where}: {os.strerror(err)}") from None
        except OSError as exc:
            sock.close()
            # asyncio words a refusal "Connect call failed (...)": say what errno says.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise _Failure(exc.errno or 0, f"connect to {where}: {reason}") from None
        return _Conn(sock, time.monotonic())

    async def _exchange(self, conn: _Conn, request: bytes) -> str:
        """Send one request, read one reply; the action, or _Failure as attr_scan_plain."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(conn.sock, request)
        action: str | None = None
        while True:
            line = await self._line(loop, conn)
            if not line:
                break
            name, eq, value = line.partition(b"=")
            if action is None and name == b"action":
                if not eq:
                    raise _Failure(
                        0, f"missing value for string attribute action from {self.s.endpoint}"
                    )
                action = value.decode("utf-8", "surrogateescape")
        if action is None:
            raise _Failure(0, f"missing attribute action in input from {self.s.endpoint}")
        return action

    async def _line(self, loop: asyncio.AbstractEventLoop, conn: _Conn) -> bytes:
        while True:
            end = conn.buf.find(b"\n")
            if end >= 0:
                line = bytes(conn.buf[:end])
                del conn.buf[: end + 1]
                return line
            if len(conn.buf) > _LINE_MAX:
                raise _Failure(0, f"string length > {_LINE_MAX} characters from {self.s.endpoint}")
            chunk = await loop.sock_recv(conn.sock, 4096)
            if not chunk:
                raise _Failure(
                    0,
                    f"premature end-of-input on {self.s.endpoint} "
                    "while reading input attribute name",
                )
            conn.buf += chunk


def request_attributes(
    c: ClientState,
    where: str,
    recipient: str | None,
    etrn: str | None,
    settings: PolicySettings,
    params: Params,
) -> list[tuple[str, str]]:
    """Postfix 3.7's policy request, in its order (smtpd_check.c check_policy_service).

    `c.extra` carries what only the session knows (client_port, server_address,
    server_port, reverse_client_name, protocol_name, queue_id, instance, size,
    sasl_method, sasl_sender, encryption_*, ccert_issuer_cn)."""
    x = c.extra
    data_stage = where in ("DATA", "BDAT", "END-OF-MESSAGE")
    attrs = [
        ("request", "smtpd_access_policy"),
        ("protocol_state", "DATA" if where == "BDAT" else where),
        ("protocol_name", x.get("protocol_name", c.protocol)),
        ("client_address", c.addr),
        ("client_name", c.name),
        ("client_port", x.get("client_port", "")),
        ("reverse_client_name", x.get("reverse_client_name", c.name)),
        ("server_address", x.get("server_address", "")),
        ("server_port", x.get("server_port", "")),
        ("helo_name", c.helo or ""),
        ("sender", c.sender or ""),
        ("recipient", recipient or ""),
        ("recipient_count", str(c.rcpt_count if data_stage else 0)),
        ("queue_id", x.get("queue_id", "")),
        ("instance", x.get("instance", "")),
        ("size", x.get("size", "0")),
        ("etrn_domain", etrn or ""),
        ("stress", ""),
        ("sasl_method", x.get("sasl_method", "") if c.sasl_username else ""),
        ("sasl_username", c.sasl_username or ""),
        ("sasl_sender", x.get("sasl_sender", "")),
        # Subject and issuer only for a verified certificate, as Postfix (xtext).
        ("ccert_subject", xtext(c.cert_cn) if c.tls_trusted_cert else ""),
        ("ccert_issuer", xtext(x.get("ccert_issuer_cn", "")) if c.tls_trusted_cert else ""),
        ("ccert_fingerprint", c.cert_fingerprint if c.tls else ""),
        ("ccert_pubkey_fingerprint", c.cert_pkey_fingerprint if c.tls else ""),
        ("encryption_protocol", x.get("encryption_protocol", "") if c.tls else ""),
        ("encryption_cipher", x.get("encryption_cipher", "") if c.tls else ""),
        ("encryption_keysize", x.get("encryption_keysize", "0") if c.tls else "0"),
        ("policy_context", settings.policy_context),
        ("compatibility_level", params.compatibility_level),
        ("mail_version", params.mail_version),
    ]
    return attrs


def valid_action(action: str) -> bool:
    """Postfix valid_utf8_action(): the reply must be UTF-8 (with smtputf8_enable)."""
    try:
        action.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _host_port(text: str) -> tuple[str, str]:
    """ "host:port" or "[v6addr]:port"."""
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not rest.startswith(":") or not rest[1:]:
            raise ValueError(f"bad host:port: {text}")
        return host, rest[1:]
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port:
        raise ValueError(f"bad host:port: {text}")
    return host, port


def _one_line(value: str) -> str:
    # A value never spans lines (attr_print_plain has no quoting).
    return value.replace("\n", " ").replace("\r", " ")


def xtext(text: str) -> str:
    """RFC 3461 xtext, as Postfix quotes ccert_subject and ccert_issuer."""
    return "".join(
        ch if 33 <= ord(ch) <= 126 and ch not in "+=" else "".join(f"+{b:02X}" for b in ch.encode())
        for ch in text
    )
