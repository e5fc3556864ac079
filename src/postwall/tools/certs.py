"""`postwall certs init|show`: the how-to's certificate steps as one command each.

Contract:
- `certs init` creates, with `cryptography` (never by shelling out to openssl), what
  is missing of: a local CA (ca.crt + ca.key), a server certificate whose CN and
  subjectAltName are $myhostname (smtp.pem + smtp.key), and with `--client NAME` a
  client certificate NAME.pem + NAME.key, plus NAME.p12 with `--p12 PASSWORD`. Paths
  are the configured smtpd_tls_CAfile / smtpd_tls_cert_file / smtpd_tls_key_file when
  set, else DIR/certs/. Keys are written mode 0600 from the start (tls.certs.write_pem).
  An existing file is never overwritten: it is kept and reported. Signing with a CA
  whose key is not next to it (ca.key) is a ToolError.
- `certs show` prints what the configured files contain (subject, issuer, validity,
  fingerprints, subjectAltName), whether the key matches, whether the chain verifies
  against smtpd_tls_CAfile, and warns about key modes wider than 0600 and a name that
  does not cover $myhostname. Exit 1 when a file is unreadable, the key does not match
  or the certificate is expired or not yet valid; warnings alone exit 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import stat
from pathlib import Path

from cryptography import x509

from postwall.config import Config
from postwall.tls import certs

from . import ToolError, add_config_option, load_config, warn


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("certs", help="create or inspect the TLS certificates")
    csub = p.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init = csub.add_parser(
        "init",
        help="create a local CA and a server certificate for $myhostname",
        description="Create what is missing of: a local CA, a server certificate and key "
        "(mode 0600) for $myhostname, and optionally a client certificate as PEM and "
        "PKCS#12. Existing files are kept.",
    )
    add_config_option(init)
    init.add_argument("--client", metavar="NAME", help="also issue a client certificate")
    init.add_argument("--p12", metavar="PASSWORD", help="also write NAME.p12 (with --client)")
    init.set_defaults(func=cmd_init)
    show = csub.add_parser(
        "show",
        help="describe the configured certificate, key and CA file",
        description="Describe smtpd_tls_cert_file, smtpd_tls_key_file and smtpd_tls_CAfile.",
    )
    add_config_option(show)
    show.set_defaults(func=cmd_show)


def _paths(config: Config) -> tuple[Path, Path, Path]:
    p = config.params
    default = config.directory / "certs"
    ca = Path(p.smtpd_tls_CAfile) if p.smtpd_tls_CAfile else default / "ca.crt"
    cert = Path(p.smtpd_tls_cert_file) if p.smtpd_tls_cert_file else default / "smtp.pem"
    key = Path(p.smtpd_tls_key_file) if p.smtpd_tls_key_file else cert
    if key == cert:  # key and certificate in one file is legal; init writes them apart
        key = cert.with_suffix(".key")
    return ca, cert, key


def _load_ca(ca_path: Path) -> certs.Issued:
    key_path = ca_path.with_suffix(".key")
    try:
        found, _ = certs.read_pem_file(ca_path)
        _, keys = certs.read_pem_file(key_path)
    except certs.CertError as exc:
        raise ToolError(f"cannot sign with the existing CA: {exc}") from None
    if not found or not keys:
        raise ToolError(f"cannot sign with the existing CA: no certificate or key in {ca_path}")
    return certs.Issued(found[0], keys[0])


def cmd_init(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    if args.p12 is not None and not args.client:
        raise ToolError("--p12 needs --client NAME")
    ca_path, cert_path, key_path = _paths(config)
    hostname = config.params.myhostname
    wanted = [ca_path, cert_path, key_path]
    if args.client:
        if "/" in args.client or args.client.startswith("."):
            raise ToolError(f"bad client name: {args.client!r}")
        wanted.append(ca_path.parent / f"{args.client}.pem")
    for path in {p.parent for p in wanted}:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ToolError(f"mkdir {path}: {exc.strerror}") from None
    created: list[Path] = []
    try:
        if ca_path.exists():
            print(f"postwall: kept {ca_path}")
            ca: certs.Issued | None = None
        else:
            if cert_path.exists():
                raise ToolError(f"{cert_path} exists but {ca_path} does not; not making a CA")
            ca = certs.make_ca(f"postwall local CA for {hostname}")
            certs.write_pem(ca, ca_path, ca_path.with_suffix(".key"), with_chain=False)
            created += [ca_path, ca_path.with_suffix(".key")]
        if cert_path.exists() or key_path.exists():
            print(f"postwall: kept {cert_path} and {key_path}")
        else:
            ca = ca or _load_ca(ca_path)
            server = certs.make_server_cert(ca, hostname)
            certs.write_pem(server, cert_path, key_path, with_chain=False)
            created += [cert_path, key_path]
        if args.client:
            created += _client(ca or _load_ca(ca_path), ca_path.parent, args.client, args.p12)
    except certs.CertError as exc:
        raise ToolError(str(exc)) from None
    for path in created:
        print(f"postwall: created {path} (mode {stat.S_IMODE(os.stat(path).st_mode):04o})")
    return 0


def _client(ca: certs.Issued, directory: Path, name: str, password: str | None) -> list[Path]:
    pem, key, p12 = (directory / f"{name}.{ext}" for ext in ("pem", "key", "p12"))
    for path in (pem, key, p12 if password is not None else pem):
        if path.exists():
            raise ToolError(f"{path} exists; not replacing a client certificate")
    issued = certs.make_client_cert(ca, name)
    certs.write_pem(issued, pem, key)
    made = [pem, key]
    if password is not None:
        certs.export_pkcs12(issued, p12, password.encode() or None, name=name)
        made.append(p12)
    return made


# -- show ----------------------------------------------------------------------------


def _when(t: dt.datetime) -> str:
    return t.strftime("%b %d %H:%M:%S %Y GMT")


def _mode_problem(path: str) -> str | None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if mode & 0o077:
        return f"{path}: mode {mode:04o} lets group or others read the private key; use 0600"
    return None


def _covers(report: certs.CertReport, hostname: str) -> bool:
    names = report.san or (report.subject_cn,)
    for name in names:
        name = name.lower()
        if name == hostname.lower():
            return True
        # RFC 6125 6.4.3: a wildcard matches one whole left-most label.
        if name.startswith("*.") and hostname.lower().partition(".")[2] == name[2:]:
            return True
    return False


def cmd_show(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    p = config.params
    if not p.smtpd_tls_cert_file:
        if p.smtpd_tls_chain_files:
            raise ToolError("certs show: smtpd_tls_chain_files is not supported yet")
        raise ToolError("smtpd_tls_cert_file is not set: no server certificate configured")
    key_file = p.smtpd_tls_key_file or p.smtpd_tls_cert_file
    ca_file = p.smtpd_tls_CAfile or None
    try:
        report = certs.inspect(p.smtpd_tls_cert_file, key_file, ca_file)
    except certs.CertError as exc:
        raise ToolError(str(exc)) from None
    now = dt.datetime.now(dt.UTC)
    days = (report.not_after - now).days
    print(f"smtpd_tls_cert_file = {report.path}")
    print(f"  subject: {report.subject}")
    print(f"  issuer: {report.issuer}")
    print(f"  valid from: {_when(report.not_before)}")
    print(f"  valid until: {_when(report.not_after)} ({days} days left)")
    print(f"  subjectAltName: {', '.join('DNS:' + n for n in report.san) or '(none)'}")
    print(f"  SHA256 fingerprint: {report.sha256}")
    print(f"  SHA1 fingerprint: {report.sha1}")
    print(f"  public key SHA256: {report.pkey_sha256}")
    print(f"  certificates in file: {report.chain_length}")
    matches = {
        True: "matches the certificate",
        False: "DOES NOT match the certificate",
        None: "no key",
    }
    print(f"smtpd_tls_key_file = {key_file}: {matches[report.key_matches]}")
    if ca_file:
        verdict = "verifies" if report.chain_verifies else "does NOT verify"
        print(f"smtpd_tls_CAfile = {ca_file}: the chain {verdict} against it")
        for cert in _ca_certs(ca_file):
            print(f"  CA: {cert.subject.rfc4514_string()}, until {_when(cert.not_valid_after_utc)}")
    warnings = [w for w in (_mode_problem(key_file),) if w]
    if not _covers(report, p.myhostname):
        warnings.append(f"the certificate does not name myhostname ({p.myhostname})")
    if report.chain_verifies is False:
        warnings.append("the server chain does not verify against smtpd_tls_CAfile")
    if 0 <= days < 30:
        warnings.append(f"the certificate expires in {days} days")
    for w in warnings:
        warn(w)
    errors = [x for x in report.problems if "chain does not verify" not in x]
    for e in errors:
        print(f"postwall: error: {report.path}: {e}")
    return 1 if errors else 0


def _ca_certs(path: str) -> list[x509.Certificate]:
    try:
        return certs.read_pem_file(path)[0]
    except certs.CertError as exc:
        raise ToolError(str(exc)) from None
