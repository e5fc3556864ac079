"""TLS engine: one OpenSSL connection over memory BIOs, server or client side, sans I/O.

Contract:
- The caller owns the socket. It feeds what it reads to `receive(ciphertext)` (b"" means
  the peer closed the TCP connection), writes out whatever `data_to_send()` returns after
  every call, and passes application data through `send(plaintext)`.
- `receive` returns decrypted application bytes (possibly b""). Until `handshake_done`
  it drives the handshake; the moment it completes, `info` (a frozen `TLSInfo`) is ready.
- Every failure is raised as one `TLSError(reason)` whose reason reads like Postfix's log
  ("SSL_accept error from host[addr]: -1", "... lost connection"); `details` holds the
  OpenSSL error strings for "TLS library problem" lines. After a TLSError the caller should
  still flush `data_to_send()` (it may hold an alert) and then close the socket.
- Client certificates never abort the handshake: the verify callback records the result
  and returns success, so smtpd_tls_ask_ccert can go on as "Untrusted" (Postfix does the
  same; Python's `ssl` cannot, which is why this layer uses pyOpenSSL).
- With loglevel >= 2 the optional `log` callable receives the handshake progress lines
  ("SSL_accept:before SSL initialization", ...) and the "depth=N verify=N subject=..."
  lines, worded as Postfix 3.7 logs them.
Sessions are created by `policy.ServerTLS.new_session` / `policy.ClientTLS.new_session`.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from postwall.config.network import is_ip

LogFn = Callable[[str], None]

_READ_CHUNK = 16384
_WANT = (2, 3)  # SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE
_SSL_ERROR_SYSCALL = 5
_SSL_ERROR_ZERO_RETURN = 6
# Read buffers are overwritten before use: no need to clear 16 KiB per read.
_uncleared = _ffi.new_allocator(should_clear_after_alloc=False)
_X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT = 18
_X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN = 19
_X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT = 2
_X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
_X509_V_ERR_CERT_NOT_YET_VALID = 9
_X509_V_ERR_CERT_HAS_EXPIRED = 10

# RFC 8446 section 6 / RFC 5246 section 7.2 alert descriptions, OpenSSL's long names.
_ALERTS = {
    0: "close notify",
    10: "unexpected_message",
    20: "bad record mac",
    21: "decryption failed",
    22: "record overflow",
    30: "decompression failure",
    40: "handshake failure",
    41: "no certificate",
    42: "bad certificate",
    43: "unsupported certificate",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    47: "illegal parameter",
    48: "unknown CA",
    49: "access denied",
    50: "decode error",
    51: "decrypt error",
    60: "export restriction",
    70: "protocol version",
    71: "insufficient security",
    80: "internal error",
    86: "inappropriate fallback",
    90: "user canceled",
    100: "no renegotiation",
    109: "missing extension",
    110: "unsupported extension",
    111: "certificate unobtainable",
    112: "unrecognized name",
    113: "bad certificate status response",
    114: "bad certificate hash value",
    115: "unknown PSK identity",
    116: "certificate required",
    120: "no application protocol",
}

# OpenSSL group names -> Postfix's (kex name, curve) wording in tls_get_signature_params().
_GROUPS = {
    "x25519": ("X25519", ""),
    "x448": ("X448", ""),
    "secp256r1": ("ECDHE", "P-256"),
    "prime256v1": ("ECDHE", "P-256"),
    "secp384r1": ("ECDHE", "P-384"),
    "secp521r1": ("ECDHE", "P-521"),
}


class TLSError(Exception):
    """A TLS handshake or record failure; str() is the Postfix-like log reason."""

    def __init__(self, reason: str, details: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


@dataclass(frozen=True)
class PeerCert:
    subject: str  # X509_NAME_oneline form, "/C=FR/O=Reference/CN=Reference CA"
    issuer: str
    subject_cn: str
    issuer_cn: str
    fingerprint: str  # colon-separated upper-case hex in the configured digest
    pkey_fingerprint: str
    dns_names: tuple[str, ...]
    der: bytes


@dataclass(frozen=True)
class TLSInfo:
    server_side: bool
    peer: str
    protocol: str  # "TLSv1.3"
    cipher_name: str  # OpenSSL naming
    cipher_usebits: int
    cipher_algbits: int
    kex_name: str = ""  # "X25519", "ECDHE", "DHE"; TLS 1.3 only, as Postfix
    kex_curve: str = ""
    kex_bits: int = 0
    server_sig_name: str = ""
    server_sig_curve: str = ""
    server_sig_bits: int = 0
    server_sig_digest: str = ""
    client_sig_name: str = ""
    client_sig_curve: str = ""
    client_sig_bits: int = 0
    client_sig_digest: str = ""
    peer_cert: PeerCert | None = None
    peer_chain: tuple[PeerCert, ...] = ()
    verify_error: int = 0  # first X509_V_ERR_* seen, 0 when none
    verify_message: str = ""
    trust: str = "Anonymous"  # Trusted / Untrusted / Anonymous; client side also Verified
    matched: bool = False  # client side: certificate matched one of the expected names
    reused: bool = False

    @property
    def cert_present(self) -> bool:
        return self.peer_cert is not None

    @property
    def trusted(self) -> bool:
        return self.trust in ("Trusted", "Verified")


def _library_problems() -> tuple[str, ...]:
    """Empty OpenSSL's error queue into Postfix's "TLS library problem" lines, worded as
    OpenSSL 3's ERR_error_string_n() (Postfix adds the source file and line, which these
    bindings do not give)."""
    lines = []
    while code := _lib.ERR_get_error():
        lib = _lib.ERR_lib_error_string(code)
        reason = _lib.ERR_reason_error_string(code)
        lib_text = _ffi.string(lib).decode() if lib != _ffi.NULL else f"lib({(code >> 23) & 0xFF})"
        reason_text = (
            _ffi.string(reason).decode()
            if reason != _ffi.NULL
            else f"reason({_lib.ERR_GET_REASON(code)})"
        )
        lines.append(f"TLS library problem: error:{code:08X}:{lib_text}::{reason_text}")
    return tuple(lines)


def dump_lines(data: bytes) -> list[str]:
    """Postfix's tls_dump_buffer(): 16 bytes a row as hex (a `|` after the eighth) and as
    printable ASCII; trailing spaces and NULs are summarised in one last line."""
    last = len(data)
    while last and data[last - 1] in (0, 0x20):
        last -= 1
    lines = []
    for row in range(0, last, 16):
        chunk = data[row : min(row + 16, last)]
        hexes = "".join(f"{b:02x}{'|' if i == 7 else ' '}" for i, b in enumerate(chunk))
        text = "".join(
            (chr(b) if 0x20 <= b <= 0x7E else ".") + (" " if i == 7 else "")
            for i, b in enumerate(chunk)
        )
        lines.append(f"{row:04x} {hexes}{'   ' * (16 - len(chunk))} {text}")
    if last < len(data):
        lines.append(f"{last:04x} - <SPACES/NULLS>")
    return lines


def _as_read(data: bytes) -> list[bytes]:
    """`data` cut as OpenSSL reads records from a socket: each 5-byte header, then its
    body (an incomplete record as it arrived)."""
    pieces, pos = [], 0
    while pos < len(data):
        header = data[pos : pos + 5]
        pieces.append(header)
        pos += len(header)
        if len(header) == 5:
            body = data[pos : pos + int.from_bytes(header[3:5], "big")]
            if body:
                pieces.append(body)
            pos += len(body)
    return pieces


def _oneline(name_ptr: object) -> str:
    buf = _ffi.new("char[]", 1024)
    out = _lib.X509_NAME_oneline(name_ptr, buf, 1024)
    return _ffi.string(out).decode("utf-8", "replace") if out != _ffi.NULL else ""


def subject_oneline(cert: crypto.X509) -> str:
    """X509_NAME_oneline() of the subject, the "/C=../CN=.." form Postfix logs."""
    return _oneline(_lib.X509_get_subject_name(cert._x509))  # type: ignore[attr-defined]


def issuer_oneline(cert: crypto.X509) -> str:
    return _oneline(_lib.X509_get_issuer_name(cert._x509))  # type: ignore[attr-defined]


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def _fingerprint(data: bytes, digest: str) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.new(digest, data).digest())


def peer_cert_facts(cert: crypto.X509, digest: str) -> PeerCert:
    c = cert.to_cryptography()
    der = c.public_bytes(serialization.Encoding.DER)
    spki = c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = tuple(san.value.get_values_for_type(x509.DNSName))
    except (x509.ExtensionNotFound, ValueError):
        dns = ()
    return PeerCert(
        subject=subject_oneline(cert),
        issuer=issuer_oneline(cert),
        subject_cn=_cn(c.subject),
        issuer_cn=_cn(c.issuer),
        fingerprint=_fingerprint(der, digest),
        pkey_fingerprint=_fingerprint(spki, digest),
        dns_names=dns,
        der=der,
    )


# Our own certificate's facts, per context and certificate (parsing it costs ~50 us a
# handshake); the X509 pointers belong to the context, so they live as long as it does.
_OWN_SIG: weakref.WeakKeyDictionary[SSL.Context, dict[int, tuple[str, str, int, str]]]
_OWN_SIG = weakref.WeakKeyDictionary()


def _own_sig_params(conn: SSL.Connection, reused: bool) -> tuple[str, str, int, str]:
    ptr = _lib.SSL_get_certificate(conn._ssl)  # type: ignore[attr-defined]
    if ptr == _ffi.NULL:
        return "", "", 0, ""
    per_context = _OWN_SIG.setdefault(conn.get_context(), {})
    key = int(_ffi.cast("uintptr_t", ptr))
    if key not in per_context:
        per_context[key] = _sig_params(conn.get_certificate(), False)
    name, curve, bits, digest = per_context[key]
    return name, curve, bits, "" if reused else digest


def _sig_params(cert: crypto.X509 | None, reused: bool) -> tuple[str, str, int, str]:
    """Postfix's (name, curve, bits, digest) for the key that signed a TLS 1.3 handshake.

    pyOpenSSL 26 binds neither SSL_get_signature_nid nor SSL_get_peer_signature_nid, so the
    digest is inferred: TLS 1.3 (RFC 8446 section 4.2.3) ties ECDSA curves to one hash, and
    OpenSSL's default sigalg order puts rsa_pss_rsae_sha256 first for RSA. A resumed
    handshake carries no signature, so, like Postfix, no digest is reported then.
    """
    if cert is None:
        return "", "", 0, ""
    key = cert.to_cryptography().public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA-PSS", "", key.key_size, "" if reused else "SHA256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        dg = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}
        name = key.curve.name
        return "ECDSA", curve.get(name, name), 0, "" if reused else dg.get(name, "")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ED25519", "", 0, ""
    if isinstance(key, ed448.Ed448PublicKey):
        return "ED448", "", 0, ""
    return "", "", 0, ""


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 section 6.4: exact match or a left-most "*" label; ".domain" = subdomains."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if name.startswith("."):  # Postfix's dot-nexthop: any sub-domain of the name
        return pattern.endswith(name) and len(pattern) > len(name) and "*" not in pattern
    if pattern == name:
        return True
    if pattern.startswith("*.") and "." in name:
        return name.split(".", 1)[1] == pattern[2:]
    return False


class TLSSession:
    """One TLS connection driven through memory BIOs."""

    def __init__(
        self,
        context: SSL.Context,
        *,
        server_side: bool,
        peer: str,
        fingerprint_digest: str = "sha256",
        ask_ccert: bool = False,
        loglevel: int = 0,
        log: LogFn | None = None,
        match_names: tuple[str, ...] = (),
        server_name: str | None = None,
        session: SSL.Session | None = None,
    ) -> None:
        self.server_side = server_side
        self.peer = peer
        self.digest = fingerprint_digest
        self.loglevel = loglevel
        self._log = log
        self.match_names = match_names
        self.handshake_done = False
        self.closed = False
        self._info: TLSInfo | None = None
        self._verify_error = 0
        self._verify_message = ""
        self._verify_depth = -1
        self._cert_requested = False
        self._role = "SSL_accept" if server_side else "SSL_connect"
        # Loglevel 3 dumps the handshake's records (its last flight included), 4 all.
        self._dumping = loglevel >= 3
        conn = SSL.Connection(context, None)
        conn.set_app_data(self)
        # The callback runs ~20 times a handshake; the server needs it only for the
        # loglevel 2 lines, the client also to learn whether a certificate was asked.
        if loglevel >= 2 or not server_side:
            conn.set_info_callback(self._info_cb)
        if server_side:
            mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE if ask_ccert else SSL.VERIFY_NONE
            conn.set_verify(mode, self._verify_cb)
            conn.set_accept_state()
        else:
            # Verify to learn the result; never abort, the smtp client decides per level.
            conn.set_verify(SSL.VERIFY_PEER, self._verify_cb)
            if server_name:
                conn.set_tlsext_host_name(server_name.encode("idna"))
            if session is not None:
                conn.set_session(session)
            conn.set_connect_state()
        self._conn = conn
        if not server_side or loglevel >= 2:
            # The client queues its ClientHello; a logging server starts as Postfix's
            # SSL_accept() does, before any byte arrives (its first progress line).
            self._handshake()

    # -- logging callbacks ---------------------------------------------------------

    def _emit(self, line: str) -> None:
        if self._log is not None:
            self._log(line)

    def _info_cb(self, conn: SSL.Connection, where: int, ret: int) -> None:
        state = conn.get_state_string().decode("ascii", "replace")
        if not self.server_side and "read server certificate request" in state:
            self._cert_requested = True
        if self.loglevel < 2:
            return
        if where & SSL.SSL_CB_LOOP:
            self._emit(f"{self._role}:{state}")
        elif where & SSL.SSL_CB_ALERT:
            desc = ret & 0xFF
            if desc != 0:
                direction = "read" if where & SSL.SSL_CB_READ else "write"
                level = {1: "warning", 2: "fatal"}.get(ret >> 8, "unknown")
                self._emit(f"SSL3 alert {direction}:{level}:{_ALERTS.get(desc, 'unknown')}")
        elif where & SSL.SSL_CB_EXIT and ret == 0:
            self._emit(f"{self._role}:failed in {state}")
        elif (
            where & SSL.SSL_CB_EXIT
            and ret < 0
            # As Postfix's tls_info_callback: a handshake waiting for bytes is no error.
            and _lib.SSL_get_error(conn._ssl, ret) not in _WANT  # type: ignore[attr-defined]
        ):
            self._emit(f"{self._role}:error in {state}")

    def _verify_cb(
        self, conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
    ) -> bool:
        try:
            if self.loglevel >= 2:
                self._emit(
                    f"{self.peer}: depth={depth} verify={1 if ok else 0} "
                    f"subject={subject_oneline(cert)}"
                )
            # Postfix's update_error_state(): keep the error at the lowest depth, the first
            # one seen at equal depths.
            if not ok and (not self._verify_error or depth < self._verify_depth):
                self._verify_error = errnum
                self._verify_depth = depth
                self._verify_message = self._describe_verify_error(cert, errnum)
        except Exception:  # never let logging break the handshake
            pass
        return True

    def _describe_verify_error(self, cert: crypto.X509, errnum: int) -> str:
        """Postfix's tls_verify.c wording for the first verification failure."""
        role = "server" if not self.server_side else "client"
        base = f"certificate verification failed for {self.peer}"
        if errnum == _X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
            return f"{base}: self-signed certificate"
        if errnum == _X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
            return f"{base}: untrusted issuer {subject_oneline(cert)}"
        if errnum in (
            _X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
            _X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
        ):
            return f"{base}: untrusted issuer {issuer_oneline(cert)}"
        if errnum == _X509_V_ERR_CERT_NOT_YET_VALID:
            return f"{role} {base}: certificate not yet valid"
        if errnum == _X509_V_ERR_CERT_HAS_EXPIRED:
            return f"{role} {base}: certificate has expired"
        text = _ffi.string(_lib.X509_verify_cert_error_string(errnum)).decode()
        return f"{role} {base}: num={errnum}:{text}"

    # -- the byte pump -------------------------------------------------------------

    def _failure(
        self, exc: SSL.Error | None, lost: bool = False, details: tuple[str, ...] = ()
    ) -> TLSError:
        where = f"from {self.peer}" if self.server_side else f"to {self.peer}"
        if exc is not None and exc.args and isinstance(exc.args[0], list):
            # pyOpenSSL has taken the packed codes off the queue: names only.
            details = tuple(
                f"TLS library problem: error:{lib}:{func}:{reason}"
                for lib, func, reason in (
                    e if len(e) == 3 else ("", "", e[-1]) for e in exc.args[0]
                )
            )
        what = "lost connection" if lost else "-1"
        if not self.handshake_done:
            return TLSError(f"{self._role} error {where}: {what}", details)
        return TLSError(f"TLS read/write error {where}: {what}", details)

    def _ssl_failure(self, error: int) -> TLSError:
        """The TLSError for an SSL_get_error() result that is no WANT_*: the peer gone
        (EOF, or a system call failing with nothing queued), else OpenSSL's errors."""
        problems = _library_problems()
        if error == _SSL_ERROR_ZERO_RETURN or (error == _SSL_ERROR_SYSCALL and not problems):
            return self._failure(None, lost=True)
        return self._failure(None, details=problems)

    def _handshake(self) -> None:
        # SSL_do_handshake itself rather than pyOpenSSL's wrapper, which empties OpenSSL's
        # error queue into names: the packed codes are what Postfix logs.
        ssl = self._conn._ssl  # type: ignore[attr-defined]
        result = _lib.SSL_do_handshake(ssl)
        if result != 1:
            error = _lib.SSL_get_error(ssl, result)
            if error in _WANT:
                return
            raise self._ssl_failure(error)
        self.handshake_done = True
        self._info = self._collect()

    def receive(self, ciphertext: bytes) -> bytes:
        """Feed bytes read from the socket; return decrypted application data."""
        if self.closed:
            return b""
        if not ciphertext:
            self.closed = True
            if not self.handshake_done:
                if self.loglevel >= 2:  # what Postfix's info callback says of the EOF
                    state = self._conn.get_state_string().decode("ascii", "replace")
                    self._emit(f"{self._role}:error in {state}")
                raise self._failure(None, lost=True)
            return b""
        if self._dumping:
            self._dump("read from", _as_read(ciphertext))
        self._conn.bio_write(ciphertext)
        if not self.handshake_done:
            self._handshake()
            if not self.handshake_done:
                return b""
        out = bytearray()
        ssl, into = self._conn._ssl, self._conn._into_ssl  # type: ignore[attr-defined]
        buf = None
        # Read while a record may be complete: decrypted bytes left, or ciphertext not
        # yet consumed (an empty BIO would only report WANT_READ). SSL_read itself, as in
        # _handshake, so that a failure keeps OpenSSL's packed error codes.
        while _lib.SSL_pending(ssl) or _lib.BIO_get_mem_data(into, _ffi.NULL):
            if buf is None:
                buf = _uncleared("char[]", _READ_CHUNK)
            n = _lib.SSL_read(ssl, buf, _READ_CHUNK)
            if n > 0:
                out += _ffi.buffer(buf, n)
                continue
            error = _lib.SSL_get_error(ssl, n)
            if error in _WANT:
                break
            if error == _SSL_ERROR_ZERO_RETURN:
                # Answer the peer's close_notify: OpenSSL drops a session from the server
                # cache when the SSL object is freed without a shutdown having been sent.
                with contextlib.suppress(SSL.Error):
                    self._conn.shutdown()
                self.closed = True
                break
            raise self._ssl_failure(error)
        return bytes(out)

    def send(self, plaintext: bytes) -> None:
        """Encrypt application data; the records appear in data_to_send()."""
        if not self.handshake_done:
            raise TLSError(f"TLS write before handshake completion with {self.peer}")
        if self.closed:
            raise TLSError(f"TLS write after close with {self.peer}")
        view = memoryview(plaintext)
        while view:
            try:
                n = self._conn.send(view[:_READ_CHUNK].tobytes())
            except SSL.Error as exc:
                raise self._failure(exc) from exc
            view = view[n:]

    def data_to_send(self) -> bytes:
        """Every ciphertext byte OpenSSL has queued for the peer."""
        pending = _lib.BIO_get_mem_data(self._conn._from_ssl, _ffi.NULL)  # type: ignore[attr-defined]
        if pending <= 0:
            return b""
        data = self._conn.bio_read(pending)
        if self._dumping:
            self._dump("write to", [data])  # OpenSSL flushes a whole flight at once
            self._dumping = self.loglevel >= 4 or not self.handshake_done
        return data

    def _dump(self, direction: str, pieces: list[bytes]) -> None:
        """Postfix's tls_bio_dump_cb() lines: one per socket read or write (the BIO and
        the buffer addresses are ours), then the bytes."""
        bio = int(_ffi.cast("uintptr_t", self._conn._into_ssl))  # type: ignore[attr-defined]
        for piece in pieces:
            n = len(piece)
            self._emit(f"{direction} {bio:08X} [{id(piece):08X}] ({n} bytes => {n} (0x{n:X}))")
            for line in dump_lines(piece):
                self._emit(line)

    def shutdown(self) -> None:
        """Queue a close_notify (Postfix's tls_fast_shutdown: do not wait for the reply)."""
        if self.handshake_done and not self.closed:
            with contextlib.suppress(SSL.Error):
                self._conn.shutdown()
        self.closed = True

    def get_session(self) -> SSL.Session | None:
        """Client side: the session to offer next time for resumption."""
        return self._conn.get_session()

    @property
    def info(self) -> TLSInfo:
        if self._info is None:
            raise TLSError(f"TLS handshake with {self.peer} not completed")
        return self._info

    # -- facts after the handshake ---------------------------------------------------

    def _collect(self) -> TLSInfo:
        conn = self._conn
        protocol = conn.get_protocol_version_name()
        cipher = _lib.SSL_get_current_cipher(conn._ssl)  # type: ignore[attr-defined]
        algbits = _ffi.new("int *")
        usebits = _lib.SSL_CIPHER_get_bits(cipher, algbits)
        cipher_name = conn.get_cipher_name() or ""
        reused = bool(_lib.SSL_session_reused(conn._ssl))  # type: ignore[attr-defined]

        peer = conn.get_peer_certificate()
        chain = conn.get_peer_cert_chain() or []
        peer_facts = peer_cert_facts(peer, self.digest) if peer is not None else None
        chain_facts = tuple(peer_cert_facts(c, self.digest) for c in chain)

        kex_name = kex_curve = ""
        kex_bits = 0
        ssig: tuple[str, str, int, str] = ("", "", 0, "")
        csig: tuple[str, str, int, str] = ("", "", 0, "")
        if protocol == "TLSv1.3":  # Postfix reports these details for TLS 1.3 only
            group = (conn.get_group_name() or "").lower()
            if group in _GROUPS:
                kex_name, kex_curve = _GROUPS[group]
            elif group.startswith("ffdhe"):
                kex_name, kex_bits = "DHE", int(group[5:] or 0)
            elif group:
                kex_name = group
            if self.server_side:
                ssig = _own_sig_params(conn, reused)
                csig = _sig_params(peer, reused)
            else:
                ssig = _sig_params(peer, reused)
                if self._cert_requested:
                    csig = _own_sig_params(conn, reused)

        if peer_facts is None:
            trust = "Anonymous"
        elif self._verify_error or _lib.SSL_get_verify_result(conn._ssl) != 0:  # type: ignore[attr-defined]
            trust = "Untrusted"
        else:
            trust = "Trusted"
        matched = False
        if not self.server_side and peer_facts is not None and self.match_names:
            names = peer_facts.dns_names or (
                (peer_facts.subject_cn,) if peer_facts.subject_cn else ()
            )
            matched = any(name_matches(p, m) for p in names for m in self.match_names)
            if trust == "Trusted" and matched:
                trust = "Verified"
            elif not matched and (trust == "Trusted" or self._verify_depth > 0):
                # Postfix 3.7 leaves name checks to OpenSSL: a mismatch fails verification
                # (so the session is Untrusted, as posttls-finger shows), and its depth-0
                # error (X509_V_ERR_HOSTNAME_MISMATCH, or IP_ADDRESS_MISMATCH when every
                # name to match is an address) wins over an untrusted issuer further up.
                trust = "Untrusted"
                ip_only = all(is_ip(n) for n in self.match_names)
                self._verify_message = (
                    f"server certificate verification failed for {self.peer}: "
                    + ("num=64:IP address mismatch" if ip_only else "num=62:hostname mismatch")
                )
        # A client's SNI is not reported: Postfix adds "to NAME" to the summary only when
        # tls_server_sni_maps accepted the name, and postwall has no SNI maps.
        return TLSInfo(
            server_side=self.server_side,
            peer=self.peer,
            protocol=protocol,
            cipher_name=cipher_name,
            cipher_usebits=int(usebits),
            cipher_algbits=int(algbits[0]),
            kex_name=kex_name,
            kex_curve=kex_curve,
            kex_bits=kex_bits,
            server_sig_name=ssig[0],
            server_sig_curve=ssig[1],
            server_sig_bits=ssig[2],
            server_sig_digest=ssig[3],
            client_sig_name=csig[0],
            client_sig_curve=csig[1],
            client_sig_bits=csig[2],
            client_sig_digest=csig[3],
            peer_cert=peer_facts,
            peer_chain=chain_facts,
            verify_error=self._verify_error,
            verify_message=self._verify_message,
            trust=trust,
            matched=matched,
            reused=reused,
        )
