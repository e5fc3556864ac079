"""SASL mechanisms as sans-I/O server state machines, and Postfix's mechanism filter.

Who calls it: `postwall.sasl` (the password-file backend) drives one `Mechanism` per AUTH
command; smtpd never sees these classes.  Contract: a mechanism gets decoded client bytes
(`start(initial)` with the AUTH command's initial response or None, then `respond(data)` for
each line after a 334) and returns one `Step`:

- `Challenge(data)`: send `334 base64(data)` and wait for the client's next line;
- `CheckPassword(user, password)`: the caller verifies it and calls `verified(ok)`;
- `NeedScramKeys(user)`: the caller looks the user's SCRAM keys up and calls
  `provide(keys or None)` (None: an unknown user gets a made-up, consistent challenge, so
  unknown users cannot be told from wrong passwords);
- `Success(user)` / `Failure(reason, user)`.

Mechanisms: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login), SCRAM-SHA-256 (RFC 5802,
RFC 7677) without channel binding.  Only hashlib/hmac primitives are used.  Nothing here
raises on client input: malformed input is a `Failure`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stringprep
import unicodedata
from dataclasses import dataclass
from typing import Final

# The generic failure text, as Cyrus SASL words it (Postfix's default plug-in), which is
# what administrators and fail2ban know from "SASL ... authentication failed: ...".
AUTH_FAILURE: Final = "authentication failure"
AUTHZ_FAILURE: Final = "authorization failure"


class Step:
    pass


@dataclass(frozen=True, slots=True)
class Challenge(Step):
    data: bytes


@dataclass(frozen=True, slots=True)
class CheckPassword(Step):
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class NeedScramKeys(Step):
    username: str


@dataclass(frozen=True, slots=True)
class Success(Step):
    username: str


@dataclass(frozen=True, slots=True)
class Failure(Step):
    reason: str
    username: str | None = None


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """RFC 5802 3: what the server stores instead of the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def scram_keys(password: str, salt: bytes, iterations: int) -> ScramKeys:
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return ScramKeys(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=hmac.digest(salted, b"Server Key", "sha256"),
    )


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep (stored strings): map, NFKC, refuse prohibited characters.
    ValueError when the string is not allowed."""
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    out = unicodedata.normalize("NFKC", mapped)
    for c in out:
        if (
            stringprep.in_table_c12(c)
            or stringprep.in_table_c21_c22(c)
            or stringprep.in_table_c3(c)
            or stringprep.in_table_c4(c)
            or stringprep.in_table_c5(c)
            or stringprep.in_table_c6(c)
            or stringprep.in_table_c7(c)
            or stringprep.in_table_c8(c)
            or stringprep.in_table_c9(c)
            or stringprep.in_table_a1(c)
        ):
            raise ValueError("prohibited character")
    if any(stringprep.in_table_d1(c) for c in out) and (
        any(stringprep.in_table_d2(c) for c in out)
        or not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1]))
    ):
        raise ValueError("bidirectional rule violated")
    return out


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Mechanism:
    name: str = ""

    def start(self, initial: bytes | None) -> Step:
        raise NotImplementedError

    def respond(self, data: bytes) -> Step:
        raise NotImplementedError

    def verified(self, ok: bool) -> Step:
        raise NotImplementedError

    def provide(self, keys: ScramKeys | None) -> Step:
        raise NotImplementedError


class Plain(Mechanism):
    """RFC 4616: one message `authzid NUL authcid NUL passwd`."""

    name = "PLAIN"

    def __init__(self) -> None:
        self._user: str | None = None

    def start(self, initial: bytes | None) -> Step:
        return Challenge(b"") if initial is None else self.respond(initial)

    def respond(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        fields = [_text(p) for p in parts]
        if len(parts) != 3 or None in fields or not fields[1] or not fields[2]:
            return Failure(AUTH_FAILURE)
        authzid, authcid, password = fields
        assert authzid is not None and authcid is not None and password is not None
        self._user = authcid
        if authzid and authzid != authcid:
            return Failure(AUTHZ_FAILURE, authcid)  # no proxy authorisation
        return CheckPassword(authcid, password)

    def verified(self, ok: bool) -> Step:
        assert self._user is not None
        return Success(self._user) if ok else Failure(AUTH_FAILURE, self._user)


class Login(Mechanism):
    """The LOGIN mechanism: `Username:` then `Password:` challenges."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._user: str | None = None

    def start(self, initial: bytes | None) -> Step:
        if initial is None:
            return Challenge(b"Username:")
        return self.respond(initial)

    def respond(self, data: bytes) -> Step:
        text = _text(data)
        if self._user is None:
            if not text:
                return Failure(AUTH_FAILURE)
            self._user = text
            return Challenge(b"Password:")
        if not text:
            return Failure(AUTH_FAILURE, self._user)
        return CheckPassword(self._user, text)

    def verified(self, ok: bool) -> Step:
        assert self._user is not None
        return Success(self._user) if ok else Failure(AUTH_FAILURE, self._user)


# A secret per process, so an unknown user's made-up salt is stable within a run but
# tells nothing across servers.
_FAKE_SALT_KEY: Final = os.urandom(32)


class ScramSha256(Mechanism):
    """RFC 5802 with SHA-256 (RFC 7677), no channel binding (gs2 flags n or y only)."""

    name = "SCRAM-SHA-256"

    def __init__(self, *, nonce: bytes | None = None, default_iterations: int = 4096) -> None:
        self._nonce = nonce  # tests pass RFC 7677's server nonce
        self._default_iterations = default_iterations
        self._state = "first"
        self._user: str | None = None
        self._gs2 = b""
        self._client_first_bare = b""
        self._server_first = b""
        self._combined_nonce = b""
        self._keys: ScramKeys | None = None
        self._known = False

    def start(self, initial: bytes | None) -> Step:
        if initial is None or initial == b"":
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, data: bytes) -> Step:
        if self._state == "first":
            return self._client_first(data)
        if self._state == "final":
            return self._client_final(data)
        if self._state == "done":
            # RFC 4954 4: the client's empty answer to our server-final message.
            assert self._user is not None
            self._state = "over"
            return Success(self._user) if data == b"" else Failure(AUTH_FAILURE, self._user)
        return Failure(AUTH_FAILURE, self._user)

    def _client_first(self, data: bytes) -> Step:
        # gs2-header = gs2-cbind-flag "," [authzid] "," ; then client-first-message-bare.
        parts = data.split(b",", 2)
        if len(parts) != 3 or parts[0] not in (b"n", b"y"):
            return Failure(AUTH_FAILURE)  # "p=" (channel binding) is not offered
        if parts[1] and not parts[1].startswith(b"a="):
            return Failure(AUTH_FAILURE)
        self._gs2 = parts[0] + b"," + parts[1] + b","
        bare = parts[2]
        attrs = bare.split(b",")
        if len(attrs) < 2 or not attrs[0].startswith(b"n=") or not attrs[1].startswith(b"r="):
            return Failure(AUTH_FAILURE)
        user = _saslname(attrs[0][2:])
        nonce = attrs[1][2:]
        if not user or not nonce or not _printable_nonce(nonce):
            return Failure(AUTH_FAILURE)
        if parts[1] and _saslname(parts[1][2:]) != user:
            return Failure(AUTHZ_FAILURE, user)
        self._user = user
        self._client_first_bare = bare
        server_nonce = self._nonce or base64.b64encode(os.urandom(24))
        self._combined_nonce = nonce + server_nonce
        self._state = "keys"
        return NeedScramKeys(user)

    def provide(self, keys: ScramKeys | None) -> Step:
        if self._state != "keys" or self._user is None:
            return Failure(AUTH_FAILURE, self._user)
        self._known = keys is not None
        if keys is None:
            salt = hmac.digest(_FAKE_SALT_KEY, self._user.encode(), "sha256")[:16]
            keys = ScramKeys(salt, self._default_iterations, os.urandom(32), os.urandom(32))
        self._keys = keys
        self._server_first = b"r=%s,s=%s,i=%d" % (
            self._combined_nonce,
            base64.b64encode(keys.salt),
            keys.iterations,
        )
        self._state = "final"
        return Challenge(self._server_first)

    def _client_final(self, data: bytes) -> Step:
        assert self._keys is not None and self._user is not None
        self._state = "over"
        without_proof, sep, proof_b64 = data.rpartition(b",p=")
        attrs = without_proof.split(b",")
        if not sep or len(attrs) < 2:
            return Failure(AUTH_FAILURE, self._user)
        if attrs[0] != b"c=" + base64.b64encode(self._gs2):
            return Failure(AUTH_FAILURE, self._user)
        if attrs[1] != b"r=" + self._combined_nonce:
            return Failure(AUTH_FAILURE, self._user)
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except binascii.Error:
            return Failure(AUTH_FAILURE, self._user)
        auth_message = self._client_first_bare + b"," + self._server_first + b"," + without_proof
        keys = self._keys
        client_signature = hmac.digest(keys.stored_key, auth_message, "sha256")
        if len(proof) != len(client_signature):
            return Failure(AUTH_FAILURE, self._user)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        good = hmac.compare_digest(hashlib.sha256(client_key).digest(), keys.stored_key)
        if not (good and self._known):
            return Failure(AUTH_FAILURE, self._user)
        server_signature = hmac.digest(keys.server_key, auth_message, "sha256")
        self._state = "done"
        return Challenge(b"v=" + base64.b64encode(server_signature))


def _saslname(raw: bytes) -> str | None:
    """RFC 5802 5.1: `=2C` is `,` and `=3D` is `=`; any other `=` is invalid."""
    text = _text(raw)
    if text is None:
        return None
    out = []
    i = 0
    while i < len(text):
        if text[i] == "=":
            code = text[i : i + 3]
            if code not in ("=2C", "=3D"):
                return None
            out.append("," if code == "=2C" else "=")
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _printable_nonce(nonce: bytes) -> bool:
    return all(0x21 <= b <= 0x7E and b != 0x2C for b in nonce)


# Security properties, as Postfix's Dovecot plug-in names them (the ones that apply).
PROPERTIES: Final = {
    "PLAIN": frozenset({"plaintext"}),
    "LOGIN": frozenset({"plaintext"}),
    "SCRAM-SHA-256": frozenset({"mutual_auth"}),
}
MECHANISMS: Final = {"PLAIN": Plain, "LOGIN": Login, "SCRAM-SHA-256": ScramSha256}
# smtpd_sasl_security_options: "noX" drops mechanisms that have property X; the others
# keep only mechanisms that have it (Postfix xsasl_dovecot_server_mech_filter).
_NEGATIVE: Final = {
    "noplaintext": "plaintext",
    "noactive": "active",
    "nodictionary": "dictionary",
    "noanonymous": "anonymous",
}
_POSITIVE: Final = {"mutual_auth": "mutual_auth", "forward_secrecy": "forward_secrecy"}


def check_security_options(options: tuple[str, ...]) -> None:
    """ValueError for an option Postfix does not know (it refuses them at start-up too)."""
    for option in options:
        if option.lower() not in _NEGATIVE and option.lower() not in _POSITIVE:
            known = ", ".join([*_NEGATIVE, *_POSITIVE])
            raise ValueError(f'unknown SASL security option "{option}" (known: {known})')


def filter_mechanisms(
    offered: list[tuple[str, frozenset[str]]], options: tuple[str, ...]
) -> tuple[str, ...]:
    """The names in `offered` (name, properties) that the security options allow, in order."""
    check_security_options(options)
    lowered = [o.lower() for o in options]
    banned = {_NEGATIVE[o] for o in lowered if o in _NEGATIVE}
    wanted = {_POSITIVE[o] for o in lowered if o in _POSITIVE}
    return tuple(name for name, props in offered if wanted <= props and not (banned & props))
