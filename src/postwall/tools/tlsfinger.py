"""`postwall tls-finger`: probe the TLS of an SMTP server, as Postfix's posttls-finger does.

Contract: `postwall tls-finger [options] destination [match ...]` takes posttls-finger's
destination syntax (`domain[:port]` with an MX lookup, `[host][:port]` without) and its
options (-a -c -C -d -F -g -h -k -K -l -L -m -o -p -P -r -s -t -T -v -w; the DANE, LMTP,
trust-anchor and tlsproxy ones say "not supported"). It connects to the first address
that answers, shows the SMTP chat (`< ` / `> ` lines, off with -c), EHLO, STARTTLS and the
handshake, and prints posttls-finger's lines with the prefix `tls-finger: ` on standard
output (the wording comes from `tls.describe`, as Postfix's comes from its TLS library).
Then a report, postwall's addition: extensions, protocol, cipher, key exchange, every
certificate of the chain with subject, issuer, validity, names and SHA-256 fingerprints,
whether the chain verifies against -F/-P and against the system CA store, the name match,
whether a second connection (-r) resumed the session, and the verdict for the level.

Exit status (posttls-finger always exits 0; postwall's is meant for scripts):
0 the session meets the security level; 1 no session (name lookup, connection, greeting,
lost connection: one `postwall: fatal: ...` line on standard error); 2 usage error;
3 the session does not meet the level (no STARTTLS, STARTTLS refused or a failed
handshake, an untrusted or unmatched certificate at verify/secure: one
`postwall: tls-finger: ...` line on standard error).

Configuration: main.cf of --config-dir, $MAIL_CONFIG or the embedded default, if it
exists (smtp_helo_name, smtp_tls_fingerprint_digest, tls_*_cipherlist, inet_protocols,
postwall_dns_servers), plus -o overrides; like posttls-finger it never uses
smtp_tls_CAfile: only -F/-P decide trust. Name servers: --nameserver, else
postwall_dns_servers, else /etc/resolv.conf. Layer 4, called by cli.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from postwall import embedded
from postwall.config import ConfigError, default_params, load
from postwall.config.network import is_ip
from postwall.config.params import Params
from postwall.dns import MxHost, NexthopError, make_resolver, parse_nexthop, resolve_nexthop
from postwall.smtp.client import (
    CLOSED,
    NEED_DATA,
    ClientConnection,
    ClientSettings,
    ConnectionFailed,
    Extensions,
    Ready,
    Refused,
    ServerReply,
    StartTLSReady,
    StartTLSRefused,
)
from postwall.tls import describe
from postwall.tls.client import ClientTLS, ClientTLSSettings
from postwall.tls.engine import PeerCert, TLSError, TLSInfo, TLSSession, name_matches
from postwall.tls.policy import TLSConfigError

from . import ToolError

EXIT_OK, EXIT_NO_SESSION, EXIT_USAGE, EXIT_POLICY = 0, 1, 2, 3
PREFIX = "tls-finger: "
LEVELS = ("none", "may", "encrypt", "verify", "secure")

# posttls-finger -L: each word's flags (Postfix tls_misc.c log_mask names; "verbose"
# includes peercert..cache, "debug" is routine + ssl-debug + cache + verbose; neither
# turns on "untrusted", which the verify and secure levels add: seen with posttls-finger).
_VERBOSE = {"verbose", "peercert", "certmatch", "cache"}
LOGOPTS: dict[str, set[str]] = {
    "0": set(),
    "none": set(),
    "1": {"summary"},
    "routine": {"summary"},
    "summary": {"summary"},
    "2": {"summary", "ssl-debug", *_VERBOSE},
    "debug": {"summary", "ssl-debug", *_VERBOSE},
    "ssl-debug": {"ssl-debug"},
    "untrusted": {"untrusted"},
    "peercert": {"peercert"},
    "certmatch": {"certmatch"},
    "cache": {"cache"},
    "verbose": set(_VERBOSE),
}
_UNSUPPORTED_LOGOPTS = (
    "3",
    "ssl-expert",
    "4",
    "ssl-developer",
    "ssl-handshake-packet-dump",
    "ssl-session-packet-dump",
)


def parse_logopts(text: str) -> set[str]:
    flags: set[str] = set()
    for word in text.replace(",", " ").replace(":", " ").split():
        w = word.lower()
        if w in _UNSUPPORTED_LOGOPTS:
            raise ToolError(f'-L {word}: packet dumps are not supported (use "debug" or tcpdump)')
        if w not in LOGOPTS:
            raise ToolError(f"-L {word}: unknown TLS log option")
        flags |= LOGOPTS[w]
    return flags


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tls-finger",
        help="probe the TLS of an SMTP server (Postfix's posttls-finger)",
        add_help=False,  # -h is posttls-finger's host_lookup
        description=(
            "Connect to an SMTP server, show EHLO, STARTTLS and the TLS handshake as "
            "posttls-finger does, then a report: protocol, cipher, key exchange, the "
            "certificate chain, verification against -F/-P and the system CA store, the "
            "name match and session resumption (-r). Exit 0 when the session meets the "
            "security level, 1 when no session could be made, 3 when it does not meet it."
        ),
        epilog=(
            "destination: domain[:port] (MX lookup) or [host][:port] (no MX lookup); "
            "match: names the certificate must match at verify/secure (default: the "
            "hostname at verify, nexthop and dot-nexthop at secure)."
        ),
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("destination", help="domain[:port] or [host][:port]")
    p.add_argument("match", nargs="*", help="certificate names to match (verify, secure)")
    p.add_argument("-a", dest="family", default="any", choices=("ipv4", "ipv6", "any"))
    p.add_argument("-c", dest="nochat", action="store_true", help="do not show the SMTP chat")
    p.add_argument(
        "-C", dest="print_chain", action="store_true", help="print the chain in PEM form"
    )
    p.add_argument("-d", dest="digest", metavar="MDALG", help="fingerprint digest")
    p.add_argument("-F", dest="cafile", metavar="CAFILE", help="trusted CAs (PEM)")
    p.add_argument("-P", dest="capath", metavar="CAPATH", help="trusted CA directory")
    p.add_argument("-g", dest="grade", default="medium", help="cipher grade (medium)")
    p.add_argument("-p", dest="protocols", default=">=TLSv1", help="TLS protocols (>=TLSv1)")
    p.add_argument("-h", dest="host_lookup", default="dns", help="dns, native or both")
    p.add_argument("-k", dest="certfile", help="client certificate chain file")
    p.add_argument("-K", dest="keyfile", help="client private key file")
    p.add_argument("-l", dest="level", default="secure", help="security level (secure)")
    p.add_argument("-L", dest="logopts", default="routine,certmatch", help="TLS log options")
    p.add_argument("-m", dest="max_reconnect", type=int, default=5, help="reconnects (5)")
    p.add_argument("-o", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("-r", dest="reconnect", type=int, default=0, metavar="DELAY")
    p.add_argument("-s", dest="servername", help="SNI server name")
    p.add_argument("-t", dest="conn_timeout", type=int, default=30, metavar="SECONDS")
    p.add_argument("-T", dest="cmd_timeout", type=int, default=30, metavar="SECONDS")
    p.add_argument("-v", dest="verbose", action="count", default=0)
    p.add_argument("-w", dest="wrapper", action="store_true", help="TLS wrapper mode (465)")
    for flag in ("-A", "-H", "-M"):
        p.add_argument(flag, dest=f"unsupported_{flag[1]}", action="append", default=[])
    for flag in ("-f", "-S", "-X"):
        p.add_argument(flag, dest=f"unsupported_{flag[1]}", action="store_true")
    p.add_argument(
        "--nameserver",
        dest="nameservers",
        action="append",
        default=[],
        metavar="ADDR[:PORT]",
        help="ask this name server (repeatable; default postwall_dns_servers, resolv.conf)",
    )
    p.add_argument("--config-dir", dest="config_dir", metavar="DIR", help="main.cf to read")
    p.set_defaults(func=cmd_tls_finger)


# -- options -------------------------------------------------------------------------


@dataclass
class Options:
    destination: str
    matches: tuple[str, ...]
    level: str
    flags: set[str]
    chat: bool
    print_chain: bool
    cafile: str
    capath: str
    digest: str
    grade: str
    protocols: str
    lookups: tuple[str, ...]
    families: tuple[str, ...]
    conn_timeout: float
    cmd_timeout: float
    reconnect: int
    max_reconnect: int
    servername: str
    wrapper: bool
    certfile: str
    keyfile: str
    nameservers: list[str]
    helo_name: str
    verbose: int
    params: Params


def _params(args: argparse.Namespace) -> Params:
    overrides: dict[str, str] = {}
    for item in args.overrides:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ToolError(f"-o {item}: expected name=value")
        overrides[name.strip()] = value
    chosen = args.config_dir or os.environ.get("MAIL_CONFIG")
    directory = Path(chosen) if chosen else embedded.default_layout().config_dir
    try:
        if (directory / "main.cf").exists():
            return load(directory, extra=overrides).params
        if chosen:
            raise ToolError(f"{directory / 'main.cf'}: no such file")
        return default_params(**overrides)
    except ConfigError as exc:
        raise ToolError(exc.problems[0]) from None


def options(args: argparse.Namespace) -> Options:
    for flag, what in (
        ("A", "trust anchor files (-A)"),
        ("H", "client chain files (-H); use -k and -K"),
        ("M", "DANE (-M)"),
        ("f", "DANE (-f)"),
        ("S", "LMTP (-S)"),
        ("X", "tlsproxy mode (-X)"),
    ):
        if getattr(args, f"unsupported_{flag}"):
            raise ToolError(f"{what}: not supported")
    level = args.level.strip().lower()
    if level in ("dane", "dane-only", "fingerprint"):
        raise ToolError(f'-l {level}: security level "{level}" is not supported')
    if level not in LEVELS:
        raise ToolError(f"-l {args.level}: invalid security level (none, may, encrypt, ...)")
    lookups = tuple(w for w in args.host_lookup.replace(",", " ").lower().split())
    if not lookups or any(w not in ("dns", "native") for w in lookups):
        raise ToolError(f"-h {args.host_lookup}: expected dns, native or both")
    if args.reconnect < 0 or args.max_reconnect < 1:
        raise ToolError("-r needs a delay >= 0 and -m a count >= 1")
    if args.conn_timeout < 1 or args.cmd_timeout < 1:
        raise ToolError("-t and -T need at least 1 second")
    params = _params(args)
    try:
        ClientSettings(helo_name=params.smtp_helo_name)
    except ValueError as exc:
        raise ToolError(f"smtp_helo_name: {exc}") from None
    if args.servername:
        try:
            args.servername.encode("idna")
        except UnicodeError:
            raise ToolError(f"-s {args.servername}: not a valid server name") from None
    flags = parse_logopts(args.logopts)
    if level in ("verify", "secure"):
        flags.add("untrusted")  # posttls-finger: automatic where CA trust matters
    families = params.inet_protocols
    if "all" in families:
        families = ("ipv4", "ipv6")
    if args.family != "any":
        families = (args.family,)
    nameservers = args.nameservers or list(params.postwall_dns_servers)
    return Options(
        destination=args.destination,
        matches=tuple(args.match),
        level=level,
        flags=flags,
        chat=not args.nochat,
        print_chain=args.print_chain,
        cafile=args.cafile or "",
        capath=args.capath or "",
        digest=(args.digest or params.smtp_tls_fingerprint_digest).lower(),
        grade=args.grade.lower(),
        protocols=args.protocols,
        lookups=lookups,
        families=tuple(families),
        conn_timeout=float(args.conn_timeout),
        cmd_timeout=float(args.cmd_timeout),
        reconnect=args.reconnect,
        max_reconnect=args.max_reconnect,
        servername=args.servername or "",
        wrapper=args.wrapper,
        certfile=args.certfile or args.keyfile or "",
        keyfile=args.keyfile or args.certfile or "",
        nameservers=nameservers,
        helo_name=params.smtp_helo_name,
        verbose=args.verbose,
        params=params,
    )


def client_tls(opts: Options) -> ClientTLS:
    p = opts.params
    settings = ClientTLSSettings(
        smtp_tls_security_level=opts.level,
        smtp_tls_cert_file=opts.certfile,
        smtp_tls_key_file=opts.keyfile,
        smtp_tls_CAfile=opts.cafile,
        smtp_tls_CApath=opts.capath,
        smtp_tls_protocols=opts.protocols,
        smtp_tls_mandatory_protocols=opts.protocols,
        smtp_tls_ciphers=opts.grade,
        smtp_tls_mandatory_ciphers=opts.grade,
        smtp_tls_fingerprint_digest=opts.digest,
        # Engine level 2 produces the handshake and depth lines; we pick what -L asks for.
        smtp_tls_loglevel=2,
        # posttls-finger: the match arguments, else its compiled-in strategies.
        smtp_tls_verify_cert_match=opts.matches or ("hostname",),
        smtp_tls_secure_cert_match=opts.matches or ("nexthop", "dot-nexthop"),
        smtp_tls_servername=opts.servername,
        tls_high_cipherlist=p.tls_high_cipherlist,
        tls_medium_cipherlist=p.tls_medium_cipherlist,
        tls_low_cipherlist=p.tls_low_cipherlist,
        tls_export_cipherlist=p.tls_export_cipherlist,
        tls_null_cipherlist=p.tls_null_cipherlist,
    )
    try:
        return ClientTLS(settings)
    except TLSConfigError as exc:
        raise ToolError(_option_error(exc)) from None


def _option_error(exc: TLSConfigError) -> str:
    flag = {
        "smtp_tls_CAfile": "-F",
        "smtp_tls_CApath": "-P",
        "smtp_tls_cert_file": "-k",
        "smtp_tls_key_file": "-K",
        "smtp_tls_mandatory_protocols": "-p",
        "smtp_tls_protocols": "-p",
        "smtp_tls_ciphers": "-g",
        "smtp_tls_mandatory_ciphers": "-g",
        "smtp_tls_fingerprint_digest": "-d",
    }.get(exc.parameter, exc.parameter)
    return f"{flag}: {exc}"


# -- results ---------------------------------------------------------------------------


class NoSession(Exception):
    """No SMTP session with this address: exit 1 unless another address answers."""


@dataclass
class Attempt:
    """What one connection showed."""

    peer: str
    hostname: str
    greeting: ServerReply | None = None
    ehlo: ServerReply | None = None
    esmtp: bool = False
    extensions: Extensions = field(default_factory=Extensions)
    tls_extensions: Extensions | None = None
    starttls: str = ""  # "offered", "not offered", "refused: ...", "not tried (level none)"
    info: TLSInfo | None = None
    session: SSL.Session | None = None
    cipher_list: str = ""
    failure: str = ""  # the policy failure, Postfix's words
    error: str = ""  # the session broke (exit 1)


class Printer:
    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def log(self, line: str) -> None:
        self.write(PREFIX + line)


# -- one SMTP session ----------------------------------------------------------------


class Session:
    """One connection: greeting, EHLO, STARTTLS, handshake, EHLO again, QUIT."""

    def __init__(
        self,
        opts: Options,
        tls: ClientTLS,
        out: Printer,
        flags: set[str],
        host: MxHost,
        address: str,
        nexthop: str,
        reconnect: bool = False,
    ) -> None:
        self.opts = opts
        # posttls-finger's reconnect shows only the greeting and QUIT, and sends no EHLO
        # after the handshake.
        self.reconnect = reconnect
        self.chat_middle = opts.chat and not reconnect
        self.ctls = tls
        self.out = out
        self.flags = flags
        self.nexthop = nexthop
        self.host = host
        self.address = address
        self.peer = f"{host.hostname}[{address}]:{host.port}"
        self.result = Attempt(self.peer, host.hostname)
        self.sock: socket.socket | None = None
        self.tls: TLSSession | None = None
        self.conn = ClientConnection(ClientSettings(helo_name=opts.helo_name))

    # I/O helpers

    def connect(self) -> None:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.opts.conn_timeout)
        try:
            sock.connect((self.address, self.host.port))
        except TimeoutError:
            sock.close()
            raise NoSession(f"connect to {self.peer}: Connection timed out") from None
        except OSError as exc:
            sock.close()
            raise NoSession(f"connect to {self.peer}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        if self.chat_middle:
            self.out.log(f"Connected to {self.peer}")

    def _recv(self, what: str) -> bytes:
        assert self.sock is not None
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise NoSession(f"conversation with {self.peer} timed out while {what}") from None
        except OSError as exc:
            raise NoSession(f"lost connection with {self.peer} while {what}: {exc}") from None

    def _send(self, data: bytes) -> None:
        if not data:
            return
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise NoSession(f"lost connection with {self.peer}: {exc.strerror or exc}") from None

    def _send_plain(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.send(data)
            self._send(self.tls.data_to_send())
        else:
            self._send(data)

    def _read_plain(self, what: str) -> bytes:
        """Application bytes from the server; b"" at end of file."""
        while True:
            data = self._recv(what)
            if self.tls is None:
                return data
            plain = self.tls.receive(data)
            self._send(self.tls.data_to_send())
            if plain or not data or self.tls.closed:
                return plain

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # the session

    def run(self, offer: SSL.Session | None) -> Attempt:
        self.connect()
        if self.opts.wrapper:
            self.result.starttls = "not used: TLS from the first byte (-w)"
        try:
            if self.opts.wrapper and not self._handshake(offer):
                return self.result
            self._chat(offer)
            if self.opts.print_chain and not self.reconnect and self.result.info is not None:
                for line in chain_pem(self.result.info):
                    self.out.write(line)
        except TLSError as exc:
            # A broken record after the handshake: the session is gone.
            self.result.error = exc.reason
        finally:
            self.close()
        return self.result

    def _chat(self, offer: SSL.Session | None) -> None:
        conn = self.conn
        stage = "receiving the initial server greeting"
        greeted = False
        assert self.sock is not None
        while True:
            ev = conn.next_event()
            if not greeted and conn.greeting is not None:
                greeted = True
                self._show_reply(conn.greeting, always=True)
                self.result.greeting = conn.greeting
                self.sock.settimeout(self.opts.cmd_timeout)
                stage = "performing the EHLO handshake"
            if isinstance(ev, Ready):
                self._show_reply(ev.reply)
                self.result.esmtp = ev.esmtp
                if conn.tls_active:
                    self.result.tls_extensions = ev.extensions
                    self._quit()
                    return
                self.result.ehlo = ev.reply
                self.result.extensions = ev.extensions
                if self.opts.wrapper:
                    self._quit()
                    return
                if self.opts.level == "none":
                    self.result.starttls = "not tried (level none)"
                elif ev.extensions.starttls:
                    self.result.starttls = "offered"
                    conn.starttls()
                    stage = "receiving the STARTTLS response"
                else:
                    self.result.starttls = "not offered"
                    if self.opts.level != "may":
                        self.result.failure = (
                            f"TLS is required, but was not offered by host {self.peer}"
                        )
                    self._quit()
                    return
            elif isinstance(ev, StartTLSReady):
                self._show_reply(ev.reply)
                if ev.discarded:
                    self.out.log(
                        f"{self.peer}: discarded {ev.discarded} bytes of cleartext after the "
                        "220 to STARTTLS (response injection)"
                    )
                self._flush()
                if not self._handshake(offer):
                    return
                if self.reconnect:
                    self._quit(raw=True)
                    return
                conn.tls_established()
                stage = "performing the EHLO handshake"
            elif isinstance(ev, StartTLSRefused):
                self._show_reply(ev.reply)
                self.result.starttls = f"refused: {ev.reply}"
                if self.opts.level != "may":
                    self.result.failure = (
                        f"TLS is required, but host {self.peer} refused to start TLS: {ev.reply}"
                    )
                self._quit()
                return
            elif isinstance(ev, Refused):
                self._show_reply(ev.reply)
                self._quit()
                raise NoSession(ev.reason(self.peer))
            elif isinstance(ev, ConnectionFailed):
                raise NoSession(ev.reason(self.peer))
            elif ev is CLOSED:
                return
            self._flush()
            if ev is NEED_DATA:
                conn.receive_data(self._read_plain(stage))

    def _flush(self, always: bool = False) -> None:
        data = self.conn.data_to_send()
        if not data:
            return
        if self.opts.chat if always else self.chat_middle:
            for line in data.decode("utf-8", "replace").splitlines():
                self.out.log(f"> {line}")
        self._send_plain(data)

    def _show_reply(self, reply: ServerReply, always: bool = False) -> None:
        if self.opts.chat if always else self.chat_middle:
            for line in reply.raw:
                self.out.log(f"< {line}")

    def _quit(self, raw: bool = False) -> None:
        """QUIT, and show the reply as posttls-finger does (a broken peer is no error now).

        `raw`: the client core is waiting for TLS; QUIT goes out without it.
        """
        try:
            if raw:
                if self.opts.chat:
                    self.out.log("> QUIT")
                self._send_plain(b"QUIT\r\n")
            else:
                self.conn.quit()
                self._flush(always=True)
            buf = b""
            while True:
                data = self._read_plain("sending QUIT")
                if not data:
                    break
                buf += data
                lines = buf.split(b"\r\n")
                if any(len(ln) >= 4 and ln[3:4] == b" " for ln in lines[:-1]):
                    break
            for line in buf.decode("utf-8", "replace").splitlines():
                if self.opts.chat:
                    self.out.log(f"< {line}")
            if self.tls is not None:
                # TLS 1.3 tickets come after the handshake: take the session only now.
                self.result.session = self.tls.get_session()
                self.tls.shutdown()
                self._send(self.tls.data_to_send())
        except (NoSession, TLSError):
            pass

    def _handshake(self, offer: SSL.Session | None) -> bool:
        """The TLS handshake; False (with the policy failure recorded) when it failed."""
        level = "encrypt" if self.opts.level == "none" else self.opts.level
        verbose = "verbose" in self.flags
        if verbose:
            self.out.log(describe.setting_up(self.peer, server_side=False))
            # The cipher list line comes before the ClientHello's progress lines.
            self.ctls.context_for(level)
            self.out.log(describe.cipher_list_line(self.peer, self.ctls.cipher_lists[level]))
        self.tls = self.ctls.new_session(
            self.peer,
            nexthop=self.nexthop,
            mx_hostname=self.host.hostname,
            level=level,
            log=self._engine_line,
            session=offer,
        )
        self.result.cipher_list = self.ctls.cipher_lists.get(level, "")
        assert self.sock is not None
        self.sock.settimeout(self.opts.cmd_timeout)
        try:
            while not self.tls.handshake_done:
                self._send(self.tls.data_to_send())
                data = self._recv("performing the TLS handshake")
                plain = self.tls.receive(data)
                if plain:
                    self.conn.receive_data(plain)
            self._send(self.tls.data_to_send())
        except TLSError as exc:
            self.out.log(exc.reason)
            for line in exc.details:
                self.out.log(f"warning: {line}")
            if self.sock is not None and self.tls is not None:
                with contextlib.suppress(NoSession):
                    self._send(self.tls.data_to_send())
            if not self.opts.wrapper:
                self.result.starttls = "offered, but the handshake failed"
            self.result.failure = "Cannot start TLS: handshake failure"
            self.tls = None
            return False
        self.result.info = info = self.tls.info
        self._after_handshake(info)
        return True

    def _engine_line(self, line: str) -> None:
        if ": depth=" in line:
            if "verbose" in self.flags:
                self.out.log(line)
        elif "ssl-debug" in self.flags:
            self.out.log(line)

    def _after_handshake(self, info: TLSInfo) -> None:
        """posttls-finger's lines after the handshake, in tls_client.c's order."""
        f = self.flags
        if info.reused and f & {"cache", "verbose"}:
            line = describe.reuse_line(info)
            if line:
                self.out.log(line)
        if info.trust == "Verified":
            if f & {"certmatch", "verbose"}:
                name = matched_name(info.peer_cert, self.tls.match_names if self.tls else ())
                self.out.log(f"{self.peer}: matched peername: {name}")
        elif "untrusted" in f and info.verify_message and info.peer_cert is not None:
            self.out.log(info.verify_message)
        if f & {"peercert", "certmatch", "verbose"}:
            for line in describe.peer_cert_lines(info)[:1]:
                self.out.log(line)
        if "summary" in f:
            self.out.log(describe.established(info))
        self.result.failure = policy_failure(self.opts.level, info)


def matched_name(cert: PeerCert | None, match_names: tuple[str, ...]) -> str:
    if cert is None:
        return ""
    names = cert.dns_names or ((cert.subject_cn,) if cert.subject_cn else ())
    return next((n for n in names for m in match_names if name_matches(n, m)), "")


def policy_failure(level: str, info: TLSInfo) -> str:
    """Postfix smtp(8)'s reason for refusing this session at `level`, "" when it is fine.

    Postfix 3.7's smtp has one wording for an untrusted chain and a name mismatch alike.
    """
    if level in ("verify", "secure") and info.trust != "Verified":
        return "Server certificate not verified"
    return ""


# -- destinations ------------------------------------------------------------------


def _numeric_port(destination: str) -> str:
    """posttls-finger takes service names too ("example.com:submission")."""
    head, colon, port = destination.rpartition(":")
    if not colon or port.isdigit() or (not destination.startswith("[") and ":" in head):
        return destination
    if destination.startswith("[") and not head.endswith("]"):
        return destination
    try:
        return f"{head}:{socket.getservbyname(port, 'tcp')}"
    except OSError:
        raise ToolError(f"{destination}: unknown service {port}") from None


def _native(host: str, port: int, families: tuple[str, ...]) -> list[MxHost]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NexthopError(True, "4.4.3", f"{host}: {exc.strerror}") from None
    wanted = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
    fams = {wanted[f] for f in families}
    addrs: list[str] = []
    for fam, _, _, _, sa in infos:
        if fam in fams and sa[0] not in addrs:
            addrs.append(str(sa[0]))
    if not addrs:
        raise NexthopError(False, "5.4.4", f"{host}: no address of the requested family")
    return [MxHost(host, 0, tuple(addrs), port)]


def resolve(opts: Options, destination: str) -> tuple[str, list[MxHost]]:
    """(nexthop name for certificate matching, hosts to try) or NexthopError."""
    try:
        host, port, _ = parse_nexthop(destination)
    except ValueError as exc:
        raise ToolError(f"bad destination {destination!r}: {exc}") from None
    try:
        resolver = make_resolver(opts.nameservers or None, timeout=opts.conn_timeout)
    except ValueError as exc:
        raise ToolError(f"{exc} (--nameserver or postwall_dns_servers)") from None
    if is_ip(host):
        return host, [MxHost(host, 0, (host,), port)]
    error: NexthopError | None = None
    for method in opts.lookups:
        try:
            if method == "dns":
                hosts = asyncio.run(
                    resolve_nexthop(destination, resolver=resolver, inet_protocols=opts.families)
                )
            else:
                hosts = _native(host, port, opts.families)
            return host, hosts
        except NexthopError as exc:
            error = error or exc
    assert error is not None
    raise error


# -- the report ----------------------------------------------------------------------


def _store_verdict(chain: tuple[PeerCert, ...], cafile: str, capath: str) -> str:
    """Does the chain the server sent verify against these CAs (no name check)?"""
    if not chain:
        return "no certificate"
    store = crypto.X509Store()
    try:
        store.load_locations(cafile or None, capath or None)
    except crypto.Error as exc:
        return f"cannot load CA data: {exc}"
    certs = [crypto.X509.from_cryptography(x509.load_der_x509_certificate(c.der)) for c in chain]
    ctx = crypto.X509StoreContext(store, certs[0], certs[1:])
    try:
        ctx.verify_certificate()
    except crypto.X509StoreContextError as exc:
        return f"does not verify: {exc}"
    return "verifies"


def _system_store() -> tuple[str, str]:
    paths = ssl.get_default_verify_paths()
    cafile = paths.cafile or ""
    capath = paths.capath or ""
    return (
        cafile if cafile and os.path.exists(cafile) else "",
        capath if capath and os.path.isdir(capath) else "",
    )


Row = tuple[int, str, str]  # (indent level, key, value)


def _cert_rows(index: int, cert: PeerCert, digest_name: str) -> list[Row]:
    c = x509.load_der_x509_certificate(cert.der)
    now = dt.datetime.now(dt.UTC)
    before, after = c.not_valid_before_utc, c.not_valid_after_utc
    if now > after:
        state = "EXPIRED"
    elif now < before:
        state = "NOT YET VALID"
    else:
        state = f"{(after - now).days} days left"
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
    except (x509.ExtensionNotFound, ValueError):
        names = []
    spki = c.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fmt = "%Y-%m-%d %H:%M:%S UTC"
    rows: list[Row] = [
        (1, f"certificate {index}", "(server)" if index == 0 else ""),
        (2, "subject", cert.subject),
        (2, "issuer", cert.issuer),
        (2, "valid from", before.strftime(fmt)),
        (2, "valid until", f"{after.strftime(fmt)} ({state})"),
        (2, "names", ", ".join(names) or f"(no subjectAltName; CN {cert.subject_cn})"),
        (2, "SHA-256", _hex(hashlib.sha256(cert.der).digest())),
        (2, "public key SHA-256", _hex(hashlib.sha256(spki).digest())),
    ]
    if digest_name != "sha256":
        rows.append((2, digest_name, cert.fingerprint))
    return rows


def _hex(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def _kex(info: TLSInfo) -> str:
    if not info.kex_name:
        return "(Postfix reports it for TLSv1.3 only)" if info.protocol != "TLSv1.3" else ""
    if info.kex_curve:
        return f"{info.kex_name} ({info.kex_curve})"
    return f"{info.kex_name} ({info.kex_bits} bits)" if info.kex_bits else info.kex_name


def _signature(info: TLSInfo) -> str:
    sig = info.server_sig_name
    if info.server_sig_curve:
        sig += f" ({info.server_sig_curve})"
    elif info.server_sig_bits:
        sig += f" ({info.server_sig_bits} bits)"
    if info.server_sig_digest:
        sig += f", digest {info.server_sig_digest}"
    return sig


def _extensions(ext: Extensions) -> str:
    return ", ".join(f"{k} {p}".strip() for k, p in ext.keywords) or "(none)"


def report(
    opts: Options, first: Attempt, resumption: str, verdict: str, match_names: tuple[str, ...]
) -> list[str]:
    """postwall's summary after posttls-finger's lines, one `key: value` per line."""
    rows: list[Row] = [(1, "server", first.peer)]
    if first.greeting is not None:
        rows.append((1, "greeting", str(first.greeting)))
    if first.ehlo is not None:
        ext = _extensions(first.extensions) if first.esmtp else "(no ESMTP: HELO only)"
        rows.append((1, "extensions", ext))
    rows.append((1, "STARTTLS", first.starttls or "(not reached)"))
    info = first.info
    if info is not None:
        if first.tls_extensions is not None:
            rows.append((1, "extensions in TLS", _extensions(first.tls_extensions)))
        rows += [
            (1, "protocol", info.protocol),
            (1, "cipher", f"{info.cipher_name} ({info.cipher_usebits}/{info.cipher_algbits} bits)"),
            (1, "key exchange", _kex(info)),
            (1, "server signature", _signature(info)),
        ]
        chain = info.peer_chain or ((info.peer_cert,) if info.peer_cert else ())
        for i, cert in enumerate(chain):
            rows += _cert_rows(i, cert, opts.digest)
        if opts.cafile or opts.capath:
            given = " and ".join(x for x in (opts.cafile, opts.capath) if x)
            rows.append(
                (1, "chain vs -F/-P", f"{given}: {_store_verdict(chain, opts.cafile, opts.capath)}")
            )
        else:
            rows.append(
                (1, "chain vs -F/-P", "no CA given, so nothing is trusted (posttls-finger)")
            )
        sys_file, sys_dir = _system_store()
        if sys_file or sys_dir:
            verdict_sys = _store_verdict(chain, sys_file, sys_dir)
            rows.append((1, "chain vs system CAs", f"{sys_file or sys_dir}: {verdict_sys}"))
        else:
            rows.append((1, "chain vs system CAs", "no system CA store found"))
        if match_names and info.peer_cert is not None:
            got = matched_name(info.peer_cert, match_names)
            have = info.peer_cert.dns_names or (info.peer_cert.subject_cn,)
            rows.append((1, "names to match", ", ".join(match_names)))
            rows.append(
                (
                    1,
                    "name match",
                    f"{'yes: ' + got if got else 'no'} (certificate: {', '.join(have)})",
                )
            )
        else:
            rows.append((1, "name match", f"not checked at level {opts.level}"))
        rows.append((1, "trust", info.trust))
    rows.append((1, "resumption", resumption))
    rows.append((1, "verdict", verdict))
    width = max(len(k) + 2 * lvl for lvl, k, _ in rows) + 2
    lines = [f"postwall tls-finger report for {opts.destination}"]
    for lvl, key, value in rows:
        label = f"{'  ' * lvl}{key}:"
        lines.append(f"{label:<{width}}{value}".rstrip())
    return lines


def chain_pem(info: TLSInfo) -> list[str]:
    """posttls-finger -C: the chain as sent, with names and digests above each PEM block."""
    lines = ["", "---", "Certificate chain"]
    for i, cert in enumerate(info.peer_chain):
        lines += [
            f"{i:2d} subject: {cert.subject}",
            f"    issuer: {cert.issuer}",
            f"   cert digest={cert.fingerprint}",
            f"   pkey digest={cert.pkey_fingerprint}",
        ]
        pem = x509.load_der_x509_certificate(cert.der).public_bytes(serialization.Encoding.PEM)
        lines += pem.decode().rstrip("\n").splitlines()
    return lines


# -- the command -------------------------------------------------------------------


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def cmd_tls_finger(args: argparse.Namespace) -> int:
    opts = options(args)
    out = Printer(_write)
    ctls = client_tls(opts)
    destination = _numeric_port(opts.destination)
    try:
        nexthop, hosts = resolve(opts, destination)
    except NexthopError as exc:
        out.log(f"Destination address lookup failed: {exc.reason}")
        raise ToolError(f"{opts.destination}: {exc.reason}") from None
    if "verbose" in opts.flags:
        out.log("initializing the client-side TLS engine")
    if opts.verbose:
        for h in hosts:
            out.log(f"host {h.hostname} preference {h.preference}: {', '.join(h.addresses)}")

    first: Attempt | None = None
    last_error = ""
    chosen: tuple[MxHost, str] | None = None
    for host in hosts:
        for address in host.addresses:
            sess = Session(opts, ctls, out, set(opts.flags), host, address, nexthop)
            try:
                first = sess.run(None)
            except NoSession as exc:
                last_error = str(exc)
                out.log(
                    f"Failed to establish session to {opts.destination} via "
                    f"{host.hostname}: {last_error}"
                )
                continue
            chosen = (host, address)
            break
        if chosen:
            break
    if first is None or chosen is None:
        raise ToolError(f"no session with {opts.destination}: {last_error}")
    if first.error:
        raise ToolError(first.error)

    resumption = _reconnect(opts, ctls, out, chosen, nexthop, first)
    level = opts.level
    failure = first.failure
    if level in ("encrypt", "verify", "secure") and first.info is None and not failure:
        failure = "TLS is required, but was not used"
    verdict = (
        f"security level {level} not satisfied: {failure}"
        if failure
        else f"security level {level} satisfied"
    )
    match_names = ctls.match_names(nexthop, chosen[0].hostname, level)
    for line in report(opts, first, resumption, verdict, match_names):
        _write(line)
    if failure:
        print(f"postwall: tls-finger: {verdict}", file=sys.stderr)
        return EXIT_POLICY
    return EXIT_OK


def _reconnect(
    opts: Options,
    ctls: ClientTLS,
    out: Printer,
    chosen: tuple[MxHost, str],
    nexthop: str,
    first: Attempt,
) -> str:
    """posttls-finger -r: reconnect after a delay and tell whether the session resumed."""
    if first.info is None:
        return "(no TLS session)"
    if opts.reconnect <= 0:
        return "not tested (use -r DELAY)"
    # After a reconnect posttls-finger logs the cache and summary, not the certificate.
    flags = (set(opts.flags) - {"peercert", "certmatch", "verbose"}) | {"cache", "summary"}
    host, address = chosen
    server = _server_name(first)
    sessions = {server: first.session}
    seen = {server}
    outcome = ""
    for _ in range(opts.max_reconnect):
        offer = sessions.get(server) or first.session
        if offer is None:
            return "no session to offer (the server gave neither a session id nor a ticket)"
        out.log(f"Reconnecting after {opts.reconnect} seconds")
        time.sleep(opts.reconnect)
        sess = Session(opts, ctls, out, flags, host, address, nexthop, reconnect=True)
        try:
            again = sess.run(offer)
        except NoSession as exc:
            return f"reconnect failed: {exc}"
        if again.info is None:
            return "no TLS on the second connection"
        outcome = (
            "session reused on the second connection"
            if again.info.reused
            else "not reused: the second connection did a full handshake"
        )
        server = _server_name(again)
        if server in seen:
            out.log("Found a previously used server.  Done reconnecting.")
            return outcome
        seen.add(server)
        sessions[server] = again.session
    out.log("Maximum number of reconnects reached.")
    return outcome


def _server_name(a: Attempt) -> str:
    reply = a.ehlo or a.greeting
    return reply.lines[0].split(" ")[0] if reply is not None and reply.lines else ""
