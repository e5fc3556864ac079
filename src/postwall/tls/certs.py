"""Certificates for postwall's TLS: a small CA, server and client certificates, inspection.

Contract:
- `make_ca`, `make_server_cert`, `make_client_cert`, `make_self_signed` return an `Issued`
  (certificate + private key) built with `cryptography`; nothing touches disk.
- `write_pem` writes the certificate (and chain) and the key. The key file is created with
  mode 0600 from the start (os.open with 0o600 into a temporary name, fsync, rename), so
  it is never readable by others, not even for an instant; the how-to insists on 600.
- `export_pkcs12` writes a client certificate bundle for mail user agents.
- `read_file(path)` is how every TLS file (certificates, keys, CA files) is read; after the
  privilege drop master installs a reader (`set_file_reader`) that asks the root helper
  for files mail_owner may not open, so a reload re-reads a root-only key as Postfix's
  freshly started smtpd processes do.
- `inspect(cert_path, key_path=None, ca_path=None)` reads PEM files and reports subject,
  issuer, validity, fingerprints, whether the key matches and whether the chain verifies;
  unreadable or malformed input raises `CertError` naming the file.
Callers: the `postwall certs` CLI (later) and the tests, which build their PKI here.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class CertError(Exception):
    """A certificate or key file cannot be read, parsed or written."""


@dataclass(frozen=True)
class Issued:
    """A certificate, its private key and the chain above it (issuer first)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise CertError(f"key type {key_type!r} not supported (rsa, rsa4096, ecdsa, ed25519)")


def _sign_hash(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _builder(
    subject: x509.Name, issuer: x509.Name, pub: object, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        # Backdate a little so a peer with a slightly slow clock accepts it.
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def make_ca(cn: str, *, key_type: str = "rsa", days: int = 3650) -> Issued:
    """A self-signed CA that may sign end-entity certificates (pathlen 0)."""
    key = _new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, _sign_hash(key))
    )
    return Issued(cert, key)


def _leaf(
    ca: Issued, cn: str, usage: x509.ObjectIdentifier, san: list[str], key_type: str, days: int
) -> Issued:
    key = _new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        _builder(name, ca.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
        )
    cert = builder.sign(ca.key, _sign_hash(ca.key))
    return Issued(cert, key, (ca.cert, *ca.chain) if ca.chain else (ca.cert,))


def make_server_cert(
    ca: Issued, hostname: str, *, key_type: str = "rsa", days: int = 825
) -> Issued:
    """A server certificate with CN and subjectAltName dNSName = hostname."""
    return _leaf(ca, hostname, ExtendedKeyUsageOID.SERVER_AUTH, [hostname], key_type, days)


def make_client_cert(ca: Issued, name: str, *, key_type: str = "rsa", days: int = 825) -> Issued:
    """A client certificate with CN = name (no SAN: Postfix reports the CN)."""
    return _leaf(ca, name, ExtendedKeyUsageOID.CLIENT_AUTH, [], key_type, days)


def make_self_signed(cn: str, *, key_type: str = "rsa", days: int = 825) -> Issued:
    """A self-signed end-entity certificate: presented, but never trusted."""
    key = _new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = _builder(name, name, key.public_key(), days).sign(key, _sign_hash(key))
    return Issued(cert, key)


def cert_pem(issued: Issued, *, with_chain: bool = True) -> bytes:
    certs = [issued.cert, *(issued.chain if with_chain else ())]
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(issued: Issued) -> bytes:
    return issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_pem(
    issued: Issued,
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str] | None = None,
    *,
    with_chain: bool = True,
) -> None:
    """Write the certificate (plus chain) mode 0644 and the key mode 0600.

    With key_path None the key goes first into cert_path (the smtpd_tls_chain_files
    layout: key, then certificate, then issuers), and that file is 0600.
    """
    try:
        if key_path is None:
            _write_atomic(
                Path(cert_path), key_pem(issued) + cert_pem(issued, with_chain=with_chain), 0o600
            )
        else:
            _write_atomic(Path(key_path), key_pem(issued), 0o600)
            _write_atomic(Path(cert_path), cert_pem(issued, with_chain=with_chain), 0o644)
    except OSError as exc:
        raise CertError(f"cannot write {exc.filename}: {exc.strerror}") from exc


def export_pkcs12(
    issued: Issued, path: str | os.PathLike[str], password: bytes | None, *, name: str | None = None
) -> None:
    """A PKCS#12 bundle (key, certificate, chain) for a client; written mode 0600."""
    enc = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    label = (name or _cn(issued.cert.subject) or "postwall").encode()
    data = pkcs12.serialize_key_and_certificates(
        label, issued.key, issued.cert, list(issued.chain) or None, enc
    )
    try:
        _write_atomic(Path(path), data, 0o600)
    except OSError as exc:
        raise CertError(f"cannot write {exc.filename}: {exc.strerror}") from exc


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def colon_hex(data: bytes) -> str:
    """Postfix's fingerprint notation: upper-case hex bytes joined by colons."""
    return ":".join(f"{b:02X}" for b in data)


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)
_PEM_KEY = re.compile(
    rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----\s*", re.S
)


def _read_plain(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


_reader: Callable[[str], bytes] = _read_plain


def set_file_reader(reader: Callable[[str], bytes] | None) -> None:
    """Route `read_file` through `reader` (None: plain reads again)."""
    global _reader
    _reader = reader or _read_plain


def read_file(path: str | os.PathLike[str]) -> bytes:
    """A TLS file's bytes, through the installed reader; raises OSError."""
    return _reader(os.fspath(path))


def read_pem_file(path: str | os.PathLike[str]) -> tuple[list[x509.Certificate], list[PrivateKey]]:
    """Every certificate and unencrypted private key in a PEM file, in file order."""
    try:
        data = read_file(path)
    except OSError as exc:
        raise CertError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_pem(data, path)


def parse_pem(
    data: bytes, path: str | os.PathLike[str]
) -> tuple[list[x509.Certificate], list[PrivateKey]]:
    """The certificates and unencrypted keys in PEM `data` read from `path`."""
    try:
        certs = [x509.load_pem_x509_certificate(m.group(0)) for m in _PEM_CERT.finditer(data)]
        keys = [
            serialization.load_pem_private_key(m.group(0), None) for m in _PEM_KEY.finditer(data)
        ]
    except (ValueError, TypeError) as exc:
        raise CertError(f"{path}: malformed PEM data: {exc}") from exc
    return certs, keys  # type: ignore[return-value]


def public_key_matches(cert: x509.Certificate, key: object) -> bool:
    pub = key.public_key()  # type: ignore[attr-defined]
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(cert.public_key().public_bytes(der, fmt) == pub.public_bytes(der, fmt))


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class CertReport:
    path: str
    subject: str
    issuer: str
    subject_cn: str
    issuer_cn: str
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str
    sha1: str
    pkey_sha256: str
    san: tuple[str, ...]
    chain_length: int
    key_matches: bool | None  # None: no key given or found
    chain_verifies: bool | None  # None: no CA given
    problems: tuple[str, ...]


def inspect(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str] | None = None,
    ca_path: str | os.PathLike[str] | None = None,
) -> CertReport:
    """Describe the first certificate in cert_path; check it against its key and CA."""
    certs, keys = read_pem_file(cert_path)
    if not certs:
        raise CertError(f"{cert_path}: no certificate found")
    if key_path is not None:
        _, keys = read_pem_file(key_path)
        if not keys:
            raise CertError(f"{key_path}: no private key found")
    leaf = certs[0]
    problems: list[str] = []
    key_matches = public_key_matches(leaf, keys[0]) if keys else None
    if key_matches is False:
        problems.append("private key does not match the certificate")
    chain_ok: bool | None = None
    if ca_path is not None:
        anchors, _ = read_pem_file(ca_path)
        pool = certs[1:] + anchors
        cur, chain_ok = leaf, False
        for _ in range(10):
            if any(cur == a or _issued_by(cur, a) for a in anchors):
                chain_ok = True
                break
            nxt = next((c for c in pool if c != cur and _issued_by(cur, c)), None)
            if nxt is None:
                break
            cur = nxt
        if not chain_ok:
            problems.append("certificate chain does not verify against the CA file")
    now = dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc < now:
        problems.append("certificate has expired")
    if leaf.not_valid_before_utc > now:
        problems.append("certificate not yet valid")
    try:
        san_ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        san = tuple(san_ext.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        san = ()
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return CertReport(
        path=str(cert_path),
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        subject_cn=_cn(leaf.subject),
        issuer_cn=_cn(leaf.issuer),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        sha256=colon_hex(leaf.fingerprint(hashes.SHA256())),
        sha1=colon_hex(leaf.fingerprint(hashes.SHA1())),
        pkey_sha256=colon_hex(digest.finalize()),
        san=san,
        chain_length=len(certs),
        key_matches=key_matches,
        chain_verifies=chain_ok,
        problems=tuple(problems),
    )
