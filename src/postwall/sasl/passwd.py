"""postwall's SASL password file: salted slow hashes, never a password.

Who calls it: `sasl.server` (smtpd_sasl_type = postwall) to verify, and the
`postwall saslpasswd` tool to add, delete and list users.  One line per user:

    user:$scrypt$ln=15,r=8,p=1$SALT$HASH:$scram-sha-256$i=65536$SALT$STOREDKEY$SERVERKEY

(base64 without padding, PHC-string style).  The scrypt verifier checks PLAIN and LOGIN;
the SCRAM one (RFC 5802's StoredKey/ServerKey, with its own salt) lets SCRAM-SHA-256 work
without the password.  Cost figures: scrypt N = 2^15, r = 8, p = 1 (32 MiB, about 0.1 s per
check on a 2020s core; RFC 7914's interactive figure), PBKDF2-SHA-256 65,536 iterations
for SCRAM (RFC 7677 asks for at least 4096; Cyrus SASL's client, which Postfix and many
mail programs use, refuses more than 65,536: "iteration-count is too big, refusing to
compute").  A stolen file then costs an attacker the
PBKDF2 work per guess, which is the weaker of the two: `--no-scram` leaves it out.

Writes are atomic (temporary file, fsync, rename) and the file is mode 0600.  Readers
re-read it when its modification time changes, so added users work without a reload.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from postwall.smtp.sasl import ScramKeys, saslprep, scram_keys

SCRYPT_LN = 15
SCRYPT_R = 8
SCRYPT_P = 1
SCRAM_ITERATIONS = 65_536  # Cyrus's client limit (MAX_ITERATION_COUNTER)
SALT_BYTES = 16
# scrypt needs 128 * r * N bytes; leave room above it (hashlib's default cap is 32 MiB).
_MAXMEM = 256 * 1024 * 1024
_USER = re.compile(r"[^\s:\x00-\x1f\x7f]{1,255}")


class PasswdError(ValueError):
    """A malformed file line or a refused user name/password."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise PasswdError(f"bad base64 {text!r}") from exc


@dataclass(frozen=True, slots=True)
class ScryptHash:
    ln: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def format(self) -> str:
        params = f"ln={self.ln},r={self.r},p={self.p}"
        return f"$scrypt${params}${_b64(self.salt)}${_b64(self.digest)}"

    @classmethod
    def parse(cls, text: str) -> ScryptHash:
        m = re.fullmatch(r"\$scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([^$]+)\$([^$]+)", text)
        if not m:
            raise PasswdError("not a $scrypt$ hash")
        ln, r, p = int(m[1]), int(m[2]), int(m[3])
        if not (1 <= ln <= 24 and 1 <= r <= 64 and 1 <= p <= 16):
            raise PasswdError("scrypt parameters out of range")
        return cls(ln, r, p, _unb64(m[4]), _unb64(m[5]))

    @classmethod
    def make(cls, password: str, salt: bytes | None = None) -> ScryptHash:
        salt = salt or os.urandom(SALT_BYTES)
        return cls(SCRYPT_LN, SCRYPT_R, SCRYPT_P, salt, _scrypt(password, salt, SCRYPT_LN))

    def verify(self, password: str) -> bool:
        """Slow on purpose: run it off the event loop."""
        computed = _scrypt(password, self.salt, self.ln, self.r, self.p, len(self.digest))
        return hmac.compare_digest(computed, self.digest)


def _scrypt(
    password: str, salt: bytes, ln: int, r: int = SCRYPT_R, p: int = SCRYPT_P, n: int = 32
) -> bytes:
    return hashlib.scrypt(
        _normalise(password).encode(), salt=salt, n=1 << ln, r=r, p=p, maxmem=_MAXMEM, dklen=n
    )


def _normalise(password: str) -> str:
    # The same bytes whichever way the client composed the characters (RFC 4013).
    try:
        return saslprep(password)
    except ValueError:
        return password


def format_scram(keys: ScramKeys) -> str:
    return (
        f"$scram-sha-256$i={keys.iterations}${_b64(keys.salt)}"
        f"${_b64(keys.stored_key)}${_b64(keys.server_key)}"
    )


def parse_scram(text: str) -> ScramKeys:
    m = re.fullmatch(r"\$scram-sha-256\$i=(\d+)\$([^$]+)\$([^$]+)\$([^$]+)", text)
    if not m:
        raise PasswdError("not a $scram-sha-256$ verifier")
    stored, server = _unb64(m[3]), _unb64(m[4])
    if len(stored) != 32 or len(server) != 32 or int(m[1]) < 1:
        raise PasswdError("bad SCRAM-SHA-256 verifier")
    return ScramKeys(_unb64(m[2]), int(m[1]), stored, server)


@dataclass(frozen=True, slots=True)
class Entry:
    user: str
    password: ScryptHash
    scram: ScramKeys | None

    def format(self) -> str:
        scram = format_scram(self.scram) if self.scram else ""
        return f"{self.user}:{self.password.format()}:{scram}"


def make_entry(user: str, password: str, *, scram: bool = True) -> Entry:
    check_user(user)
    if not password:
        raise PasswdError("empty password")
    if "\0" in password or "\n" in password or "\r" in password:
        raise PasswdError("the password contains NUL, CR or LF")
    keys = scram_keys(password, os.urandom(SALT_BYTES), SCRAM_ITERATIONS) if scram else None
    return Entry(user, ScryptHash.make(password), keys)


def check_user(user: str) -> None:
    if not _USER.fullmatch(user):
        raise PasswdError(f"invalid user name {user!r} (no white space, ':' or control chars)")


def parse_line(line: str, where: str) -> Entry:
    user, sep, rest = line.partition(":")
    hashed, _, scram = rest.partition(":")
    try:
        if not sep:
            raise PasswdError("expected user:hash:scram")
        check_user(user)
        return Entry(user, ScryptHash.parse(hashed), parse_scram(scram) if scram else None)
    except PasswdError as exc:
        raise PasswdError(f"{where}: {exc}") from None


def read_entries(path: Path) -> dict[str, Entry]:
    """Every entry of the file; a missing file has none; PasswdError names file:line."""
    entries: dict[str, Entry] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return entries
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        entry = parse_line(line.strip(), f"{path}:{number}")
        entries[entry.user] = entry
    return entries


def write_entries(path: Path, entries: dict[str, Entry]) -> None:
    """Replace the file atomically, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(entries[u].format() + "\n" for u in sorted(entries))
    header = "# postwall SASL password file: `postwall saslpasswd` manages it.\n"
    fd, tmp = tempfile.mkstemp(prefix=".saslpasswd.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(header + body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


# Verifying an unknown user costs what a known one does, so timing tells nothing.
_DUMMY = ScryptHash.parse(
    "$scrypt$ln=15,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
)


class PasswordFile:
    """The file as the server sees it: re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, Entry] = {}
        self.load()

    def load(self) -> None:
        """Read the file now; PasswdError on a malformed line (the old entries stay)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp == self._stamp:
            return
        self._entries = read_entries(self.path)
        self._stamp = stamp

    def lookup(self, user: str) -> Entry | None:
        self.load()
        return self._entries.get(user)

    def verify(self, user: str, password: str) -> bool:
        """Blocking (scrypt): call it in a thread."""
        entry = self.lookup(user)
        if entry is None:
            _DUMMY.verify(password)
            return False
        return entry.password.verify(password)
