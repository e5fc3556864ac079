"""TLS policy: Postfix smtpd_tls_* parameters turned into pyOpenSSL server contexts.

Contract:
- `ServerTLSSettings.from_params(params)` reads the smtpd_tls_* and tls_* parameters by
  their Postfix names (any object with those attributes; missing ones take Postfix 3.7's
  defaults from `postconf -d`).
- `server_tls(settings_or_params) -> ServerTLS` validates everything at load: a missing or
  unreadable certificate or key, a key that does not match its certificate, a bad protocol
  list, cipher grade or exclusion, an unknown digest all raise `TLSConfigError` whose
  `parameter` names the offending parameter (the config layer prepends file:line). Soft
  problems (key file readable by group/other, unsupported session cache database,
  smtpd_tls_req_ccert without mandatory TLS) land in `ServerTLS.warnings`.
- `ServerTLS.new_session(peer)` returns an engine `TLSSession` for one connection;
  `ServerTLS.reload()` re-reads the certificates into a fresh context, so sessions already
  running keep the context they started with (SIGHUP semantics).
- The outbound client's counterpart is `tls.client` (it reuses the helpers here).
- `seed_prng(source)` implements tls_random_source and reports what it did.

Postfix behaviour matched: mandatory protocol/cipher settings apply when TLS is enforced
(security level encrypt or wrapper mode), the others at "may" (smtpd.c); cipher exclusions
are appended as ":!X" to the grade's list, and "aNULL" is excluded whenever a client
certificate is requested (observed on 3.7: `TLS cipher list "...:!aNULL"`); SSLv2/SSLv3
are never enabled whatever the protocol list says (tls_protocol_mask()).

Session resumption: the server keeps OpenSSL's in-memory session cache (session id
context set, smtpd_tls_session_cache_timeout applied) and issues TLS 1.3 / RFC 5077
tickets whose lifetime is the same timeout; a timeout of 0 disables both. Resumption
cannot survive a restart with pyOpenSSL 26: persisting sessions needs
SSL_CTX_sess_set_new_cb/get_cb and persisting ticket keys needs
SSL_CTX_set_tlsext_ticket_key_evp_cb or SSL_CTX_ctrl(SSL_CTRL_SET_TLSEXT_TICKET_KEYS);
none of them is bound in `OpenSSL._util.lib`, and cryptography's OpenSSL is linked
statically without exported symbols, so ctypes cannot reach them either. Hence
smtpd_tls_session_cache_database is accepted but only produces a warning, and a reload()
(new context) also starts a new cache and new ticket keys.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from postwall import fsutil
from postwall.tls import certs as _certs
from postwall.tls.engine import LogFn, TLSSession

# Postfix 3.7 defaults (postconf -d) for the grade lists and curves.
DEFAULT_CIPHERLISTS = {
    "high": "aNULL:-aNULL:HIGH:@STRENGTH",
    "medium": "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH",
    "low": "aNULL:-aNULL:HIGH:MEDIUM:LOW:+RC4:@STRENGTH",
    "export": "aNULL:-aNULL:HIGH:MEDIUM:LOW:EXPORT:+RC4:@STRENGTH",
    "null": "eNULL:!aNULL",
}
DEFAULT_AUTO_CURVES = ("X25519", "X448", "prime256v1", "secp521r1", "secp384r1")
SESSION_ID_CONTEXT = b"postwall/smtpd"

_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_PROTO_VERSION = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}
_PROTO_NO_OP = {
    "TLSv1": SSL.OP_NO_TLSv1,
    "TLSv1.1": SSL.OP_NO_TLSv1_1,
    "TLSv1.2": SSL.OP_NO_TLSv1_2,
    "TLSv1.3": SSL.OP_NO_TLSv1_3,
}
_DIGESTS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


class TLSConfigError(Exception):
    """A TLS parameter cannot be used; `parameter` names it, `message` says why."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


# -- parameter parsing -------------------------------------------------------------


def _split_list(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t for t in value.replace(",", " ").replace(":", " ").split() if t)
    return tuple(str(v) for v in value)  # type: ignore[attr-defined]


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "1", "on"):
        return True
    if text in ("no", "false", "0", "off", ""):
        return False
    raise TLSConfigError(name, f'bad boolean value: "{value}"')


def _as_seconds(name: str, value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    mult = units.get(text[-1:].lower(), 0) if text else 0
    num = text[:-1] if mult else text
    try:
        return float(int(num)) * (mult or 1)
    except ValueError:
        raise TLSConfigError(name, f'bad time value: "{value}"') from None


def parse_protocols(name: str, value: str | tuple[str, ...]) -> list[str]:
    """Enabled protocol names for a Postfix protocol list, lowest first.

    Both syntaxes of tls_protocol_mask(): exclusions ("!SSLv2, !SSLv3"), inclusions
    ("TLSv1.2 TLSv1.3") and bounds (">=TLSv1.2", "<=TLSv1.3"). SSLv2/SSLv3 are dropped
    unconditionally, as Postfix does with current OpenSSL.
    """
    tokens = _split_list(value)
    include: set[str] = set()
    exclude: set[str] = set()
    lo, hi = 0, len(_PROTOCOLS) - 1
    for tok in tokens:
        for prefix in (">=", "<=", "!", ""):
            if tok.startswith(prefix):
                proto = tok[len(prefix) :]
                break
        if proto not in _PROTOCOLS:
            raise TLSConfigError(name, f'Invalid TLS protocol list: "{" ".join(tokens)}"')
        idx = _PROTOCOLS.index(proto)
        if prefix == ">=":
            lo = max(lo, idx)
        elif prefix == "<=":
            hi = min(hi, idx)
        elif prefix == "!":
            exclude.add(proto)
        else:
            include.add(proto)
    enabled = [
        p
        for i, p in enumerate(_PROTOCOLS)
        if lo <= i <= hi
        and p not in exclude
        and (not include or p in include)
        and p not in ("SSLv2", "SSLv3")
    ]
    if not enabled:
        raise TLSConfigError(name, f'no TLS protocol left enabled by "{" ".join(tokens)}"')
    return enabled


def cipher_list(
    grade_param: str, grade: str, exclusions: tuple[str, ...], lists: dict[str, str]
) -> str:
    """The OpenSSL cipher string Postfix's tls_set_ciphers() builds for a grade."""
    base = lists.get(grade.strip().lower())
    if base is None:
        raise TLSConfigError(grade_param, f'invalid cipher grade: "{grade}"')
    out = base
    for tok in exclusions:
        if tok[:1] in "!+-@":
            raise TLSConfigError(
                grade_param, f"invalid unary '!+-@' in cipher exclusion: \"{tok}\""
            )
        out += f":!{tok}"
    return out


# -- random seeding -----------------------------------------------------------------


@dataclass(frozen=True)
class SeedReport:
    source: str
    kind: str  # dev, egd, file
    nbytes: int
    seeded: bool  # True when the bytes reached RAND_add

    def describe(self) -> str:
        where = "RAND_add" if self.seeded else "nowhere (RAND_add unavailable)"
        return (
            f"read {self.nbytes} bytes from {self.kind} entropy source {self.source}, "
            f"fed to {where}"
        )


def seed_prng(source: str, nbytes: int = 32, *, param: str = "tls_random_source") -> SeedReport:
    """tls_random_source: "dev:/dev/urandom", "egd:/path/socket" or "/path/file".

    OpenSSL 3 seeds itself from the OS; like Postfix we still mix the configured source in
    (RAND_add), and the report lets the log say what happened.
    """
    if source.startswith("dev:"):
        kind, path = "dev", source[4:]
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read(nbytes)
        except OSError as exc:
            raise TLSConfigError(
                param, f"cannot open entropy device {path}: {exc.strerror}"
            ) from exc
    elif source.startswith("egd:"):
        kind, path = "egd", source[4:]
        data = _egd_read(param, path, nbytes)
    else:
        kind, path = "file", source
        try:
            with open(path, "rb") as f:
                data = f.read(nbytes)
        except OSError as exc:
            raise TLSConfigError(param, f"cannot open entropy file {path}: {exc.strerror}") from exc
    seeded = hasattr(_lib, "RAND_add") and bool(data)
    if seeded:
        buf = _ffi.new("unsigned char[]", data)
        _lib.RAND_add(buf, len(data), float(len(data)))
    return SeedReport(source, kind, len(data), seeded)


def _egd_read(param: str, path: str, nbytes: int) -> bytes:
    # EGD protocol: command 0x01 <count> asks for up to count bytes without blocking;
    # the reply is one length byte followed by that many bytes.
    count = min(nbytes, 255)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(bytes([0x01, count]))
            head = s.recv(1)
            if not head:
                raise OSError(0, "EOF from EGD server")
            want, data = head[0], b""
            while len(data) < want:
                chunk = s.recv(want - len(data))
                if not chunk:
                    break
                data += chunk
            return data
    except OSError as exc:
        raise TLSConfigError(
            param, f"cannot connect to EGD server {path}: {exc.strerror or exc}"
        ) from exc


# -- settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTLSSettings:
    """The smtpd-side TLS parameters, named as in Postfix, with Postfix 3.7 defaults."""

    smtpd_tls_security_level: str = ""
    smtpd_use_tls: bool = False
    smtpd_enforce_tls: bool = False
    smtpd_tls_wrappermode: bool = False
    smtpd_tls_cert_file: str = ""
    smtpd_tls_key_file: str = ""  # "" means $smtpd_tls_cert_file
    smtpd_tls_eccert_file: str = ""
    smtpd_tls_eckey_file: str = ""
    smtpd_tls_chain_files: tuple[str, ...] = ()
    smtpd_tls_CAfile: str = ""
    smtpd_tls_CApath: str = ""
    smtpd_tls_ask_ccert: bool = False
    smtpd_tls_req_ccert: bool = False
    smtpd_tls_ccert_verifydepth: int = 9
    smtpd_tls_protocols: str = ">=TLSv1"
    smtpd_tls_mandatory_protocols: str = ">=TLSv1"
    smtpd_tls_ciphers: str = "medium"
    smtpd_tls_mandatory_ciphers: str = "medium"
    smtpd_tls_exclude_ciphers: tuple[str, ...] = ()
    smtpd_tls_mandatory_exclude_ciphers: tuple[str, ...] = ()
    smtpd_tls_eecdh_grade: str = "auto"
    smtpd_tls_dh1024_param_file: str = ""
    smtpd_tls_fingerprint_digest: str = "sha256"
    smtpd_tls_loglevel: int = 0
    smtpd_tls_session_cache_timeout: float = 3600.0
    smtpd_tls_session_cache_database: str = ""
    smtpd_tls_received_header: bool = False
    tls_preempt_cipherlist: bool = False
    tls_high_cipherlist: str = DEFAULT_CIPHERLISTS["high"]
    tls_medium_cipherlist: str = DEFAULT_CIPHERLISTS["medium"]
    tls_low_cipherlist: str = DEFAULT_CIPHERLISTS["low"]
    tls_export_cipherlist: str = DEFAULT_CIPHERLISTS["export"]
    tls_null_cipherlist: str = DEFAULT_CIPHERLISTS["null"]
    tls_eecdh_auto_curves: tuple[str, ...] = DEFAULT_AUTO_CURVES
    tls_eecdh_strong_curve: str = "prime256v1"
    tls_eecdh_ultra_curve: str = "secp384r1"
    tls_random_source: str = "dev:/dev/urandom"
    tls_daemon_random_bytes: int = 32

    @classmethod
    def from_params(cls, params: object) -> ServerTLSSettings:
        return _from_params(cls, params)

    @property
    def level(self) -> str:
        """Effective smtpd security level, legacy smtpd_use_tls/smtpd_enforce_tls folded in."""
        level = self.smtpd_tls_security_level.strip().lower()
        if level:
            return level
        if self.smtpd_enforce_tls:
            return "encrypt"
        return "may" if self.smtpd_use_tls else "none"


def _from_params(cls: Any, params: object) -> Any:
    values: dict[str, Any] = {}
    for f in fields(cls):
        if not hasattr(params, f.name):
            continue
        raw = getattr(params, f.name)
        default = f.default
        if isinstance(default, bool):
            values[f.name] = _as_bool(f.name, raw)
        elif isinstance(default, float):
            values[f.name] = _as_seconds(f.name, raw)
        elif isinstance(default, int):
            try:
                values[f.name] = int(raw)
            except (TypeError, ValueError):
                raise TLSConfigError(f.name, f'bad numerical value: "{raw}"') from None
        elif isinstance(default, tuple):
            values[f.name] = _split_list(raw)
        elif isinstance(raw, tuple | list):
            values[f.name] = " ".join(raw)
        else:
            values[f.name] = "" if raw is None else str(raw)
    return cls(**values)


# -- context building ------------------------------------------------------------


def _read(param: str, path: str) -> bytes:
    try:
        return _certs.read_file(path)
    except OSError as exc:
        raise TLSConfigError(param, f'cannot read file "{path}": {exc.strerror}') from exc


def _check_readable(param: str, path: str) -> None:
    _read(param, path)


@contextlib.contextmanager
def _as_path(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open for `data`: a memory file, so what the root helper read
    for us never lands on disk and its owner's permissions do not apply."""
    fd = os.memfd_create("postwall-tls", os.MFD_CLOEXEC)
    try:
        fsutil.write_all(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def load_verify(ctx: SSL.Context, param: str, cafile: str, capath: str) -> None:
    """load_verify_locations with the CA file read through `certs.read_file`."""
    data = _read(param, cafile) if cafile else None
    try:
        if data is None:
            ctx.load_verify_locations(None, capath or None)
        else:
            with _as_path(data) as path:
                ctx.load_verify_locations(path, capath or None)
    except SSL.Error as exc:
        param = param if cafile else param.replace("CAfile", "CApath")
        raise TLSConfigError(
            param, f"cannot load Certification Authority data: {_err(exc)}"
        ) from exc


def _key_mode_warning(param: str, path: str) -> str | None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if mode & 0o077:
        return (
            f'{param}: private key file "{path}" is accessible by group or other '
            f"(mode {mode:04o}); it should be mode 0600"
        )
    return None


def _load_cert_key(
    ctx: SSL.Context, cert_param: str, cert_file: str, key_param: str, key_file: str, what: str
) -> list[str]:
    """Load a certificate (chain in the same file) and its key; return warnings."""
    cert_data = _read(cert_param, cert_file)
    key_data = _read(key_param, key_file)
    try:
        certs, _ = _certs.parse_pem(cert_data, cert_file)
    except _certs.CertError as exc:
        raise TLSConfigError(cert_param, str(exc)) from exc
    if not certs:
        raise TLSConfigError(
            cert_param, f'cannot get {what} certificate from file "{cert_file}": no certificate'
        )
    try:
        _, keys = _certs.parse_pem(key_data, key_file)
    except _certs.CertError as exc:
        raise TLSConfigError(key_param, str(exc)) from exc
    if not keys:
        raise TLSConfigError(
            key_param, f'cannot get {what} private key from file "{key_file}": no private key'
        )
    if not _certs.public_key_matches(certs[0], keys[0]):
        raise TLSConfigError(
            key_param,
            f'{what} private key in "{key_file}" does not match the certificate in "{cert_file}"',
        )
    try:
        with _as_path(cert_data) as path:
            ctx.use_certificate_chain_file(path)
        ctx.use_privatekey(keys[0])  # type: ignore[arg-type]
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise TLSConfigError(
            cert_param, f'cannot use {what} certificate from file "{cert_file}": {_err(exc)}'
        ) from exc
    warning = _key_mode_warning(key_param, key_file)
    return [warning] if warning else []


def _load_chain_file(ctx: SSL.Context, param: str, path: str) -> list[str]:
    """One smtpd_tls_chain_files entry: private key, then its certificate and issuers."""
    data = _read(param, path)
    try:
        certs, keys = _certs.parse_pem(data, path)
    except _certs.CertError as exc:
        raise TLSConfigError(param, str(exc)) from exc
    if not keys or not certs:
        raise TLSConfigError(param, f'"{path}" must hold a private key and its certificate')
    if not _certs.public_key_matches(certs[0], keys[0]):
        raise TLSConfigError(param, f'private key in "{path}" does not match its certificate')
    ctx.use_certificate(certs[0])
    ctx.use_privatekey(keys[0])  # type: ignore[arg-type]
    for extra in certs[1:]:
        ctx.add_extra_chain_cert(extra)  # type: ignore[arg-type]
    warning = _key_mode_warning(param, path)
    return [warning] if warning else []


def _err(exc: SSL.Error) -> str:
    args = exc.args[0] if exc.args else None
    if isinstance(args, list) and args:
        return "; ".join(str(e[-1]) for e in args)
    return str(exc) or exc.__class__.__name__


def _apply_protocols(ctx: SSL.Context, param: str, value: str) -> list[str]:
    enabled = parse_protocols(param, value)
    versions = [p for p in _PROTOCOLS if p in _PROTO_VERSION]
    lo = versions.index(enabled[0])
    hi = versions.index(enabled[-1])
    ctx.set_min_proto_version(_PROTO_VERSION[versions[lo]])
    ctx.set_max_proto_version(_PROTO_VERSION[versions[hi]])
    for p in versions[lo : hi + 1]:
        if p not in enabled:  # a hole in the range, e.g. "!TLSv1.2"
            ctx.set_options(_PROTO_NO_OP[p])
    return enabled


def _apply_ciphers(ctx: SSL.Context, param: str, clist: str, protocols: Sequence[str] = ()) -> None:
    """The cipher list, at OpenSSL security level 0 when TLS 1.0 or 1.1 is enabled:
    from OpenSSL 3 on, higher levels refuse those versions and SHA-1 signatures, which
    Postfix 3.7 still accepts with its defaults (checked: TLSv1 and `-sigalgs RSA+SHA1`
    handshakes with Debian's Postfix; anonymous suites then come back too, as in
    Postfix unless ask_ccert), and for opportunistic TLS the alternative is plaintext.
    With `>=TLSv1.2` OpenSSL's default level stays."""
    legacy = any(p in ("TLSv1", "TLSv1.1") for p in protocols) and "@SECLEVEL" not in clist
    # The bundled OpenSSL still has IDEA and SEED, which the reference's (Debian's
    # OpenSSL 3.0) lacks: left out, so the accepted suites are the reference's.
    effective = clist + ":!IDEA:!SEED" + (":@SECLEVEL=0" if legacy else "")
    try:
        ctx.set_cipher_list(effective.encode())
    except SSL.Error as exc:
        raise TLSConfigError(param, f'invalid cipher list "{clist}": {_err(exc)}') from exc


# RFC 7919's ffdhe2048 group: DHE suites for clients without ECDHE when no
# smtpd_tls_dh1024_param_file is set (Postfix 3.7 has its own built-in 2048-bit group).
FFDHE2048 = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def _apply_dh(ctx: SSL.Context, param: str, pem: bytes) -> None:
    """DH parameters from PEM (pyOpenSSL's load_tmp_dh wants a file name)."""
    bio = _lib.BIO_new_mem_buf(pem, len(pem))
    try:
        dh = _lib.PEM_read_bio_DHparams(bio, _ffi.NULL, _ffi.NULL, _ffi.NULL)
    finally:
        _lib.BIO_free(bio)
    if dh == _ffi.NULL:
        _lib.ERR_clear_error()
        raise TLSConfigError(param, "no DH parameters (BEGIN DH PARAMETERS) found")
    try:
        if not _lib.SSL_CTX_set_tmp_dh(ctx._context, dh):
            _lib.ERR_clear_error()
            raise TLSConfigError(param, "OpenSSL refused the DH parameters")
    finally:
        _lib.DH_free(dh)


def _apply_curves(ctx: SSL.Context, param: str, names: tuple[str, ...]) -> list[str]:
    # Postfix tries each configured curve and silently skips the ones OpenSSL lacks.
    usable = []
    for name in names:
        if _lib.SSL_CTX_set1_curves_list(ctx._context, name.encode()) == 1:  # type: ignore[attr-defined]
            usable.append(name)
    if not usable:
        raise TLSConfigError(param, f'no supported curve in "{" ".join(names)}"')
    ok = _lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(usable).encode())  # type: ignore[attr-defined]
    if ok != 1:
        raise TLSConfigError(param, f'cannot set curves "{":".join(usable)}"')
    return usable


def _validate_digest(param: str, digest: str) -> str:
    d = digest.strip().lower()
    if d not in _DIGESTS:
        raise TLSConfigError(param, f'Digest algorithm "{digest}" not found')
    return d


def _level_lists(s: Any) -> dict[str, str]:
    return {
        "high": s.tls_high_cipherlist,
        "medium": s.tls_medium_cipherlist,
        "low": s.tls_low_cipherlist,
        "export": s.tls_export_cipherlist,
        "null": s.tls_null_cipherlist,
    }


class ServerTLS:
    """Everything one smtpd service needs to offer STARTTLS (or run in wrapper mode)."""

    def __init__(self, settings: ServerTLSSettings) -> None:
        self.settings = settings
        self._warnings: list[str] = []
        level = settings.level
        if level not in ("none", "may", "encrypt"):
            raise TLSConfigError(
                "smtpd_tls_security_level",
                f'invalid security level "{level}" (smtpd supports none, may, encrypt)',
            )
        self.level = level
        self.wrappermode = settings.smtpd_tls_wrappermode
        self.offered = level != "none" or self.wrappermode
        # Wrapper mode is TLS or nothing, so the mandatory settings apply (smtpd.c).
        self.required = level == "encrypt" or self.wrappermode
        self.ask_ccert = settings.smtpd_tls_ask_ccert
        self.req_ccert = settings.smtpd_tls_req_ccert
        if self.req_ccert and not self.required:
            self._warnings.append(
                "smtpd_tls_req_ccert: ignored: requires smtpd_tls_security_level = encrypt"
            )
            self.req_ccert = False
        if self.req_ccert:
            self.ask_ccert = True
        self.fingerprint_digest = _validate_digest(
            "smtpd_tls_fingerprint_digest", settings.smtpd_tls_fingerprint_digest
        )
        self.loglevel = settings.smtpd_tls_loglevel
        self.cipher_list = ""
        self.protocols: list[str] = []
        self.curves: list[str] = []
        self.session_timeout = int(settings.smtpd_tls_session_cache_timeout)
        if settings.smtpd_tls_session_cache_database:
            self._warnings.append(
                "smtpd_tls_session_cache_database: not supported: sessions are cached in "
                "memory only and do not survive a restart"
            )
        self.load_warnings: list[str] = []
        self.seed: SeedReport | None = None
        self._context: SSL.Context | None = None
        if self.offered:
            # Postfix mixes tls_daemon_random_bytes from the source in at TLS start-up and
            # only warns when the source fails; OpenSSL seeds itself from the OS anyway.
            try:
                self.seed = seed_prng(settings.tls_random_source, settings.tls_daemon_random_bytes)
            except TLSConfigError as exc:
                self._warnings.append(str(exc))
            self._context = self._build()

    @classmethod
    def from_params(cls, params: object) -> ServerTLS:
        return cls(ServerTLSSettings.from_params(params))

    def _build(self) -> SSL.Context:
        s = self.settings
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        warnings: list[str] = []
        opts = SSL.OP_NO_COMPRESSION | SSL.OP_SINGLE_ECDH_USE | SSL.OP_SINGLE_DH_USE
        opts |= SSL.OP_NO_RENEGOTIATION
        if s.tls_preempt_cipherlist:
            opts |= SSL.OP_CIPHER_SERVER_PREFERENCE
        ctx.set_options(opts)

        if s.smtpd_tls_chain_files:
            for path in s.smtpd_tls_chain_files:
                warnings += _load_chain_file(ctx, "smtpd_tls_chain_files", path)
        elif s.smtpd_tls_cert_file or s.smtpd_tls_eccert_file:
            if s.smtpd_tls_cert_file:
                warnings += _load_cert_key(
                    ctx,
                    "smtpd_tls_cert_file",
                    s.smtpd_tls_cert_file,
                    "smtpd_tls_key_file",
                    s.smtpd_tls_key_file or s.smtpd_tls_cert_file,
                    "RSA",
                )
            if s.smtpd_tls_eccert_file:
                warnings += _load_cert_key(
                    ctx,
                    "smtpd_tls_eccert_file",
                    s.smtpd_tls_eccert_file,
                    "smtpd_tls_eckey_file",
                    s.smtpd_tls_eckey_file or s.smtpd_tls_eccert_file,
                    "ECDSA",
                )
        else:
            # Postfix 3.7 would only allow anonymous ciphers here; nobody wants that.
            raise TLSConfigError(
                "smtpd_tls_cert_file",
                "no server certificate configured: set smtpd_tls_cert_file or "
                "smtpd_tls_chain_files (anonymous-only TLS is not supported)",
            )

        if s.smtpd_tls_CAfile or s.smtpd_tls_CApath:
            load_verify(ctx, "smtpd_tls_CAfile", s.smtpd_tls_CAfile, s.smtpd_tls_CApath)
            if self.ask_ccert and s.smtpd_tls_CAfile:
                # The CertificateRequest names these CAs so clients pick a fitting cert.
                with _as_path(_read("smtpd_tls_CAfile", s.smtpd_tls_CAfile)) as path:
                    ctx.load_client_ca(path.encode())
        ctx.set_verify_depth(s.smtpd_tls_ccert_verifydepth)

        if self.required:
            proto_param, grade_param = (
                "smtpd_tls_mandatory_protocols",
                "smtpd_tls_mandatory_ciphers",
            )
            proto, grade = s.smtpd_tls_mandatory_protocols, s.smtpd_tls_mandatory_ciphers
            excl = s.smtpd_tls_mandatory_exclude_ciphers + s.smtpd_tls_exclude_ciphers
        else:
            proto_param, grade_param = "smtpd_tls_protocols", "smtpd_tls_ciphers"
            proto, grade = s.smtpd_tls_protocols, s.smtpd_tls_ciphers
            excl = s.smtpd_tls_exclude_ciphers
        if self.ask_ccert:
            excl = (*excl, "aNULL")
        protocols = _apply_protocols(ctx, proto_param, proto)
        clist = cipher_list(grade_param, grade, excl, _level_lists(s))
        _apply_ciphers(ctx, grade_param, clist, protocols)

        grade_e = s.smtpd_tls_eecdh_grade.strip().lower()
        if grade_e == "auto":
            curves = s.tls_eecdh_auto_curves
        elif grade_e == "strong":
            curves = (s.tls_eecdh_strong_curve,)
        elif grade_e == "ultra":
            curves = (s.tls_eecdh_ultra_curve,)
        elif grade_e == "none":
            raise TLSConfigError("smtpd_tls_eecdh_grade", '"none" is not supported')
        else:
            raise TLSConfigError("smtpd_tls_eecdh_grade", f'invalid value: "{grade_e}"')
        usable_curves = _apply_curves(ctx, "smtpd_tls_eecdh_grade", curves)
        dh_file = s.smtpd_tls_dh1024_param_file
        _apply_dh(
            ctx,
            "smtpd_tls_dh1024_param_file",
            _read("smtpd_tls_dh1024_param_file", dh_file) if dh_file else FFDHE2048,
        )

        if self.session_timeout > 0:
            ctx.set_session_id(SESSION_ID_CONTEXT)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
            ctx.set_timeout(self.session_timeout)
        else:
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
            ctx.set_options(SSL.OP_NO_TICKET)
        # Only a complete build replaces what reload() callers and the log see.
        self.protocols, self.cipher_list, self.curves = protocols, clist, usable_curves
        self.load_warnings = warnings
        return ctx

    @property
    def warnings(self) -> list[str]:
        """Soft problems: ignored settings, then those found loading the current files."""
        return self._warnings + self.load_warnings

    @property
    def context(self) -> SSL.Context:
        if self._context is None:
            raise TLSConfigError("smtpd_tls_security_level", "TLS is not enabled for this service")
        return self._context

    def reload(self) -> None:
        """Re-read certificates and keys (SIGHUP). Running sessions keep the old context.

        On error the old context stays in use and the TLSConfigError propagates.
        """
        if self.offered:
            self._context = self._build()

    def new_session(self, peer: str, log: LogFn | None = None) -> TLSSession:
        """A server-side session for one client; peer is "host[addr]" for log lines."""
        return TLSSession(
            self.context,
            server_side=True,
            peer=peer,
            fingerprint_digest=self.fingerprint_digest,
            ask_ccert=self.ask_ccert,
            loglevel=self.loglevel,
            log=log,
        )


def server_tls(settings: ServerTLSSettings | object) -> ServerTLS:
    """ServerTLS from a ServerTLSSettings or from any Params-like object."""
    if not isinstance(settings, ServerTLSSettings):
        settings = ServerTLSSettings.from_params(settings)
    return ServerTLS(settings)


__all__ = [
    "DEFAULT_CIPHERLISTS",
    "SeedReport",
    "ServerTLS",
    "ServerTLSSettings",
    "TLSConfigError",
    "cipher_list",
    "parse_protocols",
    "seed_prng",
    "server_tls",
]
