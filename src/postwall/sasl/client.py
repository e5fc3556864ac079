"""SASL for postwall's smtp client (Postfix's smtp_sasl_*): choosing a mechanism and
running its client side, sans I/O.

Who calls it: `delivery.smtp` after EHLO, when smtp_sasl_auth_enable = yes and
smtp_sasl_password_maps has an entry for the server.  Contract: `choose()` returns the
mechanism the client will use, given what the server offers, smtp_sasl_mechanism_filter
and the security options for the session's TLS state, or None; a `ClientMechanism` gives
the AUTH command's initial response (`initial()`) and answers each decoded 334
challenge (`step()`), raising `SaslClientError` (with Cyrus's wording, which Postfix
logs) when the server's challenge cannot be answered or its proof is wrong.

Postfix's Debian package uses Cyrus SASL, whose client plug-ins postwall implements
natively: SCRAM-SHA-256, SCRAM-SHA-1 (RFC 5802, RFC 7677; no channel binding),
CRAM-MD5 (RFC 2195), PLAIN (RFC 4616) and LOGIN, preferred in that order (Cyrus also
prefers the mechanisms that resist more attacks).  Their security properties are
Cyrus's, so smtp_sasl_security_options means the same: its default `noplaintext,
noanonymous` rules out PLAIN and LOGIN, which is why smarthost set-ups say
`smtp_sasl_security_options = noanonymous`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Final

from postwall.smtp.sasl import filter_mechanisms, saslprep

# Cyrus's security flags per mechanism, as the attacks each one is open to.
PROPERTIES: Final = {
    "SCRAM-SHA-256": frozenset({"dictionary", "mutual_auth"}),
    "SCRAM-SHA-1": frozenset({"dictionary", "mutual_auth"}),
    "CRAM-MD5": frozenset({"dictionary", "active"}),
    "PLAIN": frozenset({"plaintext", "dictionary", "active"}),
    "LOGIN": frozenset({"plaintext", "dictionary", "active"}),
}
# SCRAM servers choose the iteration count; a hostile one must not make us spin.  Cyrus's
# client limit (MAX_ITERATION_COUNTER), so a server works with both or with neither.
_MAX_ITERATIONS: Final = 0x10000
# Cyrus's sasl_errstring() texts, which Postfix puts in its status line.
BAD_PROTOCOL: Final = "bad protocol / cancel"
BAD_SERVER: Final = "server failed mutual authentication step"


class SaslClientError(Exception):
    """The exchange cannot go on.  `detail` is the plug-in's own message (Postfix logs it
    as "warning: SASL authentication failure: DETAIL"), `reason` Cyrus's error text
    that ends the status line ("cannot authenticate to server X: REASON")."""

    def __init__(self, detail: str, reason: str = BAD_PROTOCOL) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


def choose(
    offered: tuple[str, ...], mechanism_filter: tuple[str, ...], options: tuple[str, ...]
) -> str | None:
    """The mechanism to use: offered by the server, let through by the filter (Postfix's
    smtp_sasl_mechanism_filter, matched without case; empty: all), allowed by the
    security options, and ours; the strongest first."""
    wanted = {m.upper() for m in offered}
    if mechanism_filter:
        wanted &= {m.upper() for m in mechanism_filter}
    ours = [(name, props) for name, props in PROPERTIES.items() if name in wanted]
    allowed = filter_mechanisms(ours, options)
    return allowed[0] if allowed else None


class ClientMechanism:
    name: str = ""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.done = False  # the server's proof was checked (SCRAM) or none is expected

    def initial(self) -> bytes | None:
        """The initial response sent with AUTH, or None to wait for a challenge."""
        return None

    def step(self, challenge: bytes) -> bytes:
        raise SaslClientError(f"unexpected challenge from the {self.name} server")


class Plain(ClientMechanism):
    name = "PLAIN"

    def initial(self) -> bytes:
        self.done = True
        return b"\0" + self.username.encode() + b"\0" + self.password.encode()


class Login(ClientMechanism):
    """The server prompts (Username:, Password:); the answers go in that order, whatever
    the prompts say, as Cyrus's LOGIN plug-in does."""

    name = "LOGIN"

    def __init__(self, username: str, password: str) -> None:
        super().__init__(username, password)
        self._answers = [username.encode(), password.encode()]

    def step(self, challenge: bytes) -> bytes:
        if not self._answers:
            raise SaslClientError("LOGIN server asked for more than a user name and password")
        answer = self._answers.pop(0)
        self.done = not self._answers
        return answer


class CramMd5(ClientMechanism):
    name = "CRAM-MD5"

    def step(self, challenge: bytes) -> bytes:
        if self.done:
            raise SaslClientError("CRAM-MD5 server sent a second challenge")
        self.done = True
        digest = hmac.new(self.password.encode(), challenge, "md5").hexdigest()
        return f"{self.username} {digest}".encode()


class Scram(ClientMechanism):
    """RFC 5802 client, gs2 header "n,," (no channel binding, no authorization id)."""

    def __init__(
        self, username: str, password: str, hash_name: str, *, nonce: str | None = None
    ) -> None:
        super().__init__(username, password)
        self.hash_name = hash_name
        self.name = "SCRAM-SHA-256" if hash_name == "sha256" else "SCRAM-SHA-1"
        name = saslprep(username).replace("=", "=3D").replace(",", "=2C")
        self._nonce = nonce or base64.b64encode(os.urandom(18)).decode()
        self._first_bare = f"n={name},r={self._nonce}"
        self._server_signature: bytes | None = None

    def initial(self) -> bytes:
        return b"n,," + self._first_bare.encode()

    def step(self, challenge: bytes) -> bytes:
        try:
            text = challenge.decode("ascii")
        except UnicodeDecodeError:
            raise SaslClientError(f"{self.name}: server message is not ASCII") from None
        if self._server_signature is None:
            return self._client_final(text)
        return self._verify_server(text)

    def _client_final(self, server_first: str) -> bytes:
        attrs = _attributes(server_first)
        nonce, salt_b64, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "")
        if "e" in attrs:
            raise SaslClientError(f"{self.name}: server error {attrs['e']}")
        if not iterations.isdigit() or int(iterations) < 1:
            raise SaslClientError(f"Invalid iteration-count in {self.name} input")
        if int(iterations) > _MAX_ITERATIONS:
            raise SaslClientError("iteration-count is too big, refusing to compute")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise SaslClientError(
                "The nonce received from the server doesn't start from the nonce sent by the client"
            )
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            password = saslprep(self.password).encode()
        except (binascii.Error, ValueError) as exc:
            raise SaslClientError(f"{self.name}: {exc}") from None
        salted = hashlib.pbkdf2_hmac(self.hash_name, password, salt, int(iterations))
        client_key = hmac.digest(salted, b"Client Key", self.hash_name)
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        message = f"{self._first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, message, self.hash_name)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self.hash_name)
        self._server_signature = hmac.digest(server_key, message, self.hash_name)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def _verify_server(self, server_final: str) -> bytes:
        if self.done:
            raise SaslClientError(f"{self.name}: server sent another message after its proof")
        attrs = _attributes(server_final)
        if "e" in attrs:
            raise SaslClientError(f"{self.name}: server error {attrs['e']}")
        try:
            given = base64.b64decode(attrs.get("v", ""), validate=True)
        except binascii.Error:
            given = b""
        assert self._server_signature is not None
        if not hmac.compare_digest(given, self._server_signature):
            # The server does not know the password: it is not the server we meant.
            raise SaslClientError(f"{self.name}: server signature is wrong", BAD_SERVER)
        self.done = True
        return b""


def _attributes(message: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in message.split(","):
        key, eq, value = part.partition("=")
        if eq and len(key) == 1 and key not in out:
            out[key] = value
    return out


def mechanism(name: str, username: str, password: str) -> ClientMechanism:
    """A fresh client for one of the names `choose()` returns."""
    if name == "SCRAM-SHA-256":
        return Scram(username, password, "sha256")
    if name == "SCRAM-SHA-1":
        return Scram(username, password, "sha1")
    if name == "CRAM-MD5":
        return CramMd5(username, password)
    if name == "PLAIN":
        return Plain(username, password)
    if name == "LOGIN":
        return Login(username, password)
    raise ValueError(f"no client for SASL mechanism {name}")
