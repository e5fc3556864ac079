"""The SASL server of one smtpd service: mechanisms on offer and AUTH conversations.

Who calls it: master builds one `SaslServer` per smtpd service with
smtpd_sasl_auth_enable = yes; each SMTP session asks it for the mechanisms to announce
(`await mechanisms(tls)`) and opens a `Conversation` per AUTH command, feeding it the
initial response and then each client line; every call returns one `Outcome`:
`More(challenge)` (send 334), `Done(user)` (235) or `Refused(reason, user, temporary)`
(535 5.7.8, or 454 4.7.0 when temporary).

Backends (smtpd_sasl_type):
- `postwall`: the password file of `sasl.passwd` (smtpd_sasl_path, relative to
  config_directory), mechanisms PLAIN, LOGIN and SCRAM-SHA-256 from `smtp.sasl`; scrypt
  runs in a two-thread pool of its own, so password checks never block the event loop
  and a flood of AUTH attempts cannot take more than two cores' worth of work.
- `dovecot`: Dovecot's auth server over smtpd_sasl_path (relative to queue_directory, as
  Postfix resolves `private/auth`); the mechanisms are those Dovecot announces.
- `cyrus` (Postfix's default) is not supported: a clear error at start-up.

Replies and their texts follow Postfix 3.7 with its Dovecot plug-in (checked against a
real one in tests/interop/test_sasl_dovecot.py).  Each failed AUTH is answered after
smtpd_error_sleep_time times the number of failures from that client address in the last
five minutes (at most 15 s), across its sessions (`failure_delay`): a password guesser
slows down, a user who mistyped once waits a second.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from postwall.anvil import ClientList
from postwall.config.params import Params
from postwall.sasl.dovecot import Answer, DovecotAuth, DovecotError
from postwall.sasl.passwd import PasswdError, PasswordFile
from postwall.smtp import sasl as mech

SUPPORTED_TYPES = ("postwall", "dovecot")
_B64_CHARS = re.compile(r"[A-Za-z0-9+/=]*")
# Failures from one address are remembered this long; the delay grows with their number.
_FAILURE_MEMORY = 300.0
_MAX_DELAY = 15.0
_MAX_TRACKED = 10000
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="postwall-sasl")


class SaslNotSupported(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class More:
    challenge: str  # base64, sent as "334 challenge"


@dataclass(frozen=True, slots=True)
class Done:
    username: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str
    username: str | None = None
    temporary: bool = False
    # Dovecot's own verdict (FAIL), as opposed to one postwall reached before asking it.
    # Postfix logs the user name of the last FAIL/OK again with later local refusals.
    from_backend: bool = False


Outcome = More | Done | Refused


class SaslServer:
    """One service's SASL configuration; shared by its sessions, replaced on reload."""

    def __init__(self, params: Params) -> None:
        kind = params.smtpd_sasl_type.lower()
        if kind not in SUPPORTED_TYPES:
            raise SaslNotSupported(
                f"smtpd_sasl_type = {params.smtpd_sasl_type}: not supported "
                f"(postwall supports: {', '.join(SUPPORTED_TYPES)})"
            )
        mech.check_security_options(params.smtpd_sasl_security_options)
        mech.check_security_options(params.smtpd_sasl_tls_security_options)
        self.kind = kind
        self.options = params.smtpd_sasl_security_options
        self.tls_options = params.smtpd_sasl_tls_security_options
        self.service = params.smtpd_sasl_service
        self.realm = params.smtpd_sasl_local_domain
        self.failure_delay_base = params.smtpd_error_sleep_time
        # Clients EHLO does not offer AUTH to (Postfix's sasl_client_exception()).
        self.exceptions = ClientList(params.smtpd_sasl_exceptions_networks)
        self._failures: dict[str, tuple[int, float]] = {}
        self.passwords: PasswordFile | None = None
        self.dovecot: DovecotAuth | None = None
        path = params.smtpd_sasl_path
        if kind == "postwall":
            file = Path(path) if path.startswith("/") else Path(params.config_directory) / path
            try:
                self.passwords = PasswordFile(file)
            except (PasswdError, OSError) as exc:
                raise ValueError(f"smtpd_sasl_path = {path}: {exc}") from None
        else:
            if path.startswith("inet:"):
                raise SaslNotSupported(f"smtpd_sasl_path = {path}: inet: is not supported")
            path = path.removeprefix("unix:")
            if not path.startswith("/"):
                path = str(Path(params.queue_directory) / path)
            self.dovecot = DovecotAuth(path)

    async def mechanisms(self, tls: bool) -> tuple[str, ...]:
        """What EHLO announces; DovecotError (Postfix's warning text) when unreachable."""
        options = self.tls_options if tls else self.options
        if self.dovecot is not None:
            offered = await self.dovecot.connect()
        else:
            offered = [(name, mech.PROPERTIES[name]) for name in mech.MECHANISMS]
        return mech.filter_mechanisms(offered, options)

    def conversation(
        self, mechanism: str, *, tls: bool, offered: tuple[str, ...], client: str, server: str
    ) -> Conversation:
        if self.dovecot is not None:
            return _DovecotConversation(self, mechanism, tls, offered, client, server)
        return _FileConversation(self, mechanism, offered)

    # -- per-client failure delay ----------------------------------------------

    def failure_delay(self, client: str) -> float:
        """Seconds to wait before answering this client's failed AUTH (grows per failure)."""
        count, when = self._failures.get(client, (0, 0.0))
        now = time.monotonic()
        count = count + 1 if now - when < _FAILURE_MEMORY else 1
        if len(self._failures) >= _MAX_TRACKED and client not in self._failures:
            oldest = min(self._failures, key=lambda k: self._failures[k][1])
            del self._failures[oldest]
        self._failures[client] = (count, now)
        return min(self.failure_delay_base * count, _MAX_DELAY)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)

    async def close(self) -> None:
        if self.dovecot is not None:
            await self.dovecot.close()


class Conversation:
    async def first(self, initial: str | None) -> Outcome:
        raise NotImplementedError

    async def next(self, line: str) -> Outcome:
        raise NotImplementedError


def _valid_b64(text: str) -> bool:
    return _B64_CHARS.fullmatch(text) is not None


class _FileConversation(Conversation):
    def __init__(self, server: SaslServer, mechanism: str, offered: tuple[str, ...]) -> None:
        self.server = server
        self.name = mechanism.upper()
        self.mech = mech.MECHANISMS[self.name]() if self.name in offered else None

    async def first(self, initial: str | None) -> Outcome:
        if self.mech is None:
            return Refused("Invalid authentication mechanism")
        data = None
        if initial is not None:
            data = _decode(initial)
            if data is None:
                return Refused("Invalid base64 data in initial response")
        return await self._drive(self.mech.start(data))

    async def next(self, line: str) -> Outcome:
        assert self.mech is not None
        data = _decode(line)
        if data is None:
            return Refused("Invalid base64 data in continued response")
        return await self._drive(self.mech.respond(data))

    async def _drive(self, step: mech.Step) -> Outcome:
        passwords = self.server.passwords
        assert passwords is not None and self.mech is not None
        while True:
            match step:
                case mech.Challenge(data=data):
                    return More(base64.b64encode(data).decode())
                case mech.CheckPassword(username=user, password=password):
                    key = self._key(user)
                    loop = asyncio.get_running_loop()
                    try:
                        ok = await loop.run_in_executor(_POOL, passwords.verify, key, password)
                    except (PasswdError, OSError) as exc:
                        return Refused(f"password file: {exc}", user, temporary=True)
                    step = self.mech.verified(ok)
                case mech.NeedScramKeys(username=user):
                    try:
                        entry = passwords.lookup(self._key(user))
                    except (PasswdError, OSError) as exc:
                        return Refused(f"password file: {exc}", user, temporary=True)
                    step = self.mech.provide(entry.scram if entry else None)
                case mech.Success(username=user):
                    return Done(self._key(user))
                case mech.Failure(reason=reason, username=user):
                    return Refused(reason, user)
                case _:
                    return Refused(mech.AUTH_FAILURE)

    def _key(self, user: str) -> str:
        realm = self.server.realm
        return f"{user}@{realm}" if realm and "@" not in user else user


def _decode(text: str) -> bytes | None:
    if not _valid_b64(text):
        return None
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None


class _DovecotConversation(Conversation):
    def __init__(
        self,
        server: SaslServer,
        mechanism: str,
        tls: bool,
        offered: tuple[str, ...],
        client: str,
        local: str,
    ) -> None:
        self.server = server
        self.mechanism = mechanism
        self.tls = tls
        self.offered = offered
        self.client = client
        self.local = local
        self.rid = 0

    async def first(self, initial: str | None) -> Outcome:
        dovecot = self.server.dovecot
        assert dovecot is not None
        if self.mechanism.upper() not in self.offered:
            return Refused("Invalid authentication mechanism")
        if initial is not None:
            initial = initial or "="  # what the client sent for an empty response
            if not _valid_b64(initial):
                return Refused("Invalid base64 data in initial response")
        try:
            self.rid, answer = await dovecot.auth(
                self.mechanism,
                service=self.server.service,
                local_addr=self.local,
                remote_addr=self.client,
                secured=self.tls,
                initial=initial,
            )
        except DovecotError as exc:
            return Refused(str(exc), temporary=True)
        return _outcome(answer)

    async def next(self, line: str) -> Outcome:
        dovecot = self.server.dovecot
        assert dovecot is not None
        if not _valid_b64(line):
            return Refused("Invalid base64 data in continued response")
        try:
            return _outcome(await dovecot.cont(self.rid, line))
        except DovecotError as exc:
            return Refused(str(exc), temporary=True)


def _outcome(answer: Answer) -> Outcome:
    if answer.kind == "CONT":
        return More(answer.data)
    if answer.kind == "OK":
        if not answer.user:
            return Refused("Authentication backend error", from_backend=True)
        return Done(answer.user)
    return Refused(answer.reason or "", answer.user, from_backend=True)
