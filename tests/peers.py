"""Real peers for tests: certificates, private Postfix instances, postwall, smtp-sink, tools.

Contract: every helper drives a real program (Postfix via postmulti, swaks, openssl, smtp-sink,
`python -m postwall start`) and waits with a deadline, never a bare sleep. A missing tool
skips the test, or fails it when the CI environment variable is set (`require_tool`). A peer
that misbehaves raises `PeerError` with the program's output or log tail, so a failing test
says why. Every process or Postfix instance a helper starts is ended by that helper's
`stop()`/`destroy()`; the pytest fixtures in tests/conftest.py and tests/interop/conftest.py
call those at teardown. Test-only code: nothing in src/ imports it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import itertools
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from postwall.fsutil import pid_alive

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
T = TypeVar("T")

# Debian package that ships each tool, for the message when one is missing.
TOOL_PACKAGES = {
    "postfix": "postfix",
    "postconf": "postfix",
    "postmulti": "postfix",
    "postqueue": "postfix",
    "postsuper": "postfix",
    "sendmail": "postfix",
    "smtp-sink": "postfix",
    "posttls-finger": "postfix",
    "swaks": "swaks",
    "openssl": "openssl",
    "pflogsumm": "pflogsumm",
    "fail2ban-regex": "fail2ban",
    "unbound": "unbound",
    "sslscan": "sslscan",
    "nc": "netcat-openbsd",
}
# Postfix keeps some programs outside PATH.
EXTRA_TOOL_DIRS = ("/usr/sbin", "/usr/lib/postfix/sbin")


class PeerError(RuntimeError):
    """A real peer did not do what the test infrastructure asked of it."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_tool(name: str) -> str:
    """Return the tool's path; skip the test if it is missing, or fail it under CI."""
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(EXTRA_TOOL_DIRS))
    if path:
        return path
    why = f"{name} not installed (Debian package {TOOL_PACKAGES.get(name, name)})"
    if in_ci():
        pytest.fail(f"CI requires every peer: {why}", pytrace=False)
    pytest.skip(why)


def require_root(what: str = "private Postfix instances (postmulti)") -> None:
    if os.geteuid() != 0:
        msg = f"{what} need root"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


# --- waiting ---------------------------------------------------------------------------------


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll `probe` until it returns something truthy; raise PeerError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail else ""
            raise PeerError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; a process already gone is left alone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_listening(port: int, host: str = "127.0.0.1") -> bool:
    """A socket listens on host:port, judged from /proc/net/tcp without connecting: a probe
    connection would show up in the server's log as a connect/lost connection pair."""
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return port_open(host, port)
    for line in lines:
        fields = line.split()
        # fields[3] is the state; 0A is TCP_LISTEN. 0.0.0.0 listeners serve host too.
        if fields[3] == "0A" and fields[1] in (want, f"00000000:{port:04X}"):
            return True
    return False


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run(argv: Sequence[str], timeout: float = 60, check: bool = True, **kw: object) -> str:
    """Run a command to completion; on failure raise PeerError with its output."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerError(f"{' '.join(argv)} did not finish within {timeout:g}s") from exc
    if check and proc.returncode != 0:
        raise PeerError(
            f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}".rstrip()
        )
    return proc.stdout


# --- Maildir ---------------------------------------------------------------------------------


def maildir_messages(maildir: Path) -> list[bytes]:
    """Messages in a Maildir's new/ and cur/, oldest first (by file name: Maildir names start
    with the delivery time)."""
    found: list[Path] = []
    for sub in ("new", "cur"):
        d = maildir / sub
        if d.is_dir():
            found.extend(p for p in d.iterdir() if p.is_file())
    return [p.read_bytes() for p in sorted(found, key=lambda p: p.name)]


def wait_maildir(
    maildir: Path,
    count: int = 1,
    timeout: float = 30,
    detail: Callable[[], str] | None = None,
) -> list[bytes]:
    """`detail` (e.g. the logs of the peers involved) goes into the timeout message."""
    return wait_for(
        lambda: (m := maildir_messages(maildir)) and len(m) >= count and m,
        timeout,
        f"{count} message(s) in {maildir}",
        detail=detail,
    )


# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TestCerts:
    """PEM files for one test session, made with postwall.tls.certs. Certificate files carry
    the CA after the leaf (what Postfix's *_cert_file accepts as a chain)."""

    __test__ = False  # not a test class, despite the name

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path  # CN and DNS SAN "localhost"
    server_key: Path
    mx_cert: Path  # CN and DNS SAN MX_NAME, for verify/secure-level tests by name
    mx_key: Path
    client_cert: Path  # CN CLIENT_CN, signed by the CA
    client_key: Path
    selfsigned_cert: Path  # CN SELFSIGNED_CN, signed by nobody
    selfsigned_key: Path

    MX_NAME = "mx.postwall.test"
    CLIENT_CN = "client.postwall.test"
    SELFSIGNED_CN = "rogue.postwall.test"


def make_test_certs(directory: Path) -> TestCerts:
    """Write the session's CA, server, client and self-signed certificates into `directory`."""
    from postwall.tls import certs as pki

    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca("postwall test CA")
    issued = {
        "server": pki.make_server_cert(ca, "localhost"),
        "mx": pki.make_server_cert(ca, TestCerts.MX_NAME),
        "client": pki.make_client_cert(ca, TestCerts.CLIENT_CN),
        "selfsigned": pki.make_self_signed(TestCerts.SELFSIGNED_CN),
    }
    paths: dict[str, Path] = {}
    pki.write_pem(ca, directory / "ca.pem", directory / "ca.key")
    for stem, item in issued.items():
        pki.write_pem(item, directory / f"{stem}.pem", directory / f"{stem}.key")
    for stem in ("ca", *issued):
        paths[f"{stem}_cert"] = directory / f"{stem}.pem"
        paths[f"{stem}_key"] = directory / f"{stem}.key"
    return TestCerts(directory=directory, **paths)


def cert_fingerprint(cert_pem: Path, algorithm: hashes.HashAlgorithm | None = None) -> str:
    """Colon-separated upper-case digest, the form Postfix logs (sha256 by default, as
    smtpd_tls_fingerprint_digest in Postfix 3.7)."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    digest = cert.fingerprint(algorithm or hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


# --- command-line tools ----------------------------------------------------------------------


@dataclass(frozen=True)
class ToolResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def transcript(self) -> str:
        return self.stdout + self.stderr


def run_tool(argv: Sequence[str], input: bytes | None = None, timeout: float = 60) -> ToolResult:
    """Run a tool and return its output whatever its exit code; PeerError only on timeout."""
    require_tool(argv[0])
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace")
        raise PeerError(f"{' '.join(argv)} did not finish within {timeout:g}s:\n{out}") from exc
    return ToolResult(
        tuple(argv),
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        proc.stderr.decode(errors="replace"),
    )


def swaks(
    server: str,
    *args: str,
    to: str = "bob@example.test",
    sender: str = "alice@postwall.test",
    timeout: float = 60,
) -> ToolResult:
    """swaks against host:port; `args` are further swaks options (e.g. "-tls", "--tls-cert",
    path). swaks exits 0 on success and 2x-series codes on protocol failures (its man page)."""
    argv = ["swaks", "--server", server, "--to", to, "--from", sender, "--timeout", "20", *args]
    return run_tool(argv, timeout=timeout)


def openssl_s_client_starttls(
    host: str,
    port: int,
    extra: Sequence[str] = (),
    input: bytes = b"QUIT\r\n",
    timeout: float = 30,
) -> ToolResult:
    """`openssl s_client -starttls smtp`; stdin is `input` (its default ends the session),
    and -ign_eof keeps s_client reading until the server closes, so the replies are captured."""
    argv = [
        "openssl",
        "s_client",
        "-connect",
        f"{host}:{port}",
        "-starttls",
        "smtp",
        "-ign_eof",
        *extra,
    ]
    return run_tool(argv, input=input, timeout=timeout)


def smtp_send(
    host: str,
    port: int,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    starttls: bool = False,
    timeout: float = 30,
) -> None:
    with smtplib.SMTP(host, port, timeout=timeout) as s:
        s.ehlo("client.postwall.test")
        if starttls:
            import ssl

            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo("client.postwall.test")
        s.sendmail(sender, list(recipients), message)


def simple_message(subject: str, sender: str, to: str, body: str = "hello\r\n") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@postwall.test>\r\n\r\n{body}"
    ).encode()


class ScriptedPeer:
    """A hostile or broken SMTP server on a free loopback port, for failure paths no real
    server produces on demand. Each connection runs `script(conn, n)` in a thread (n
    counts connections from 0); `conn.lines` records what the client sent. Helpers:
    `conn.reply(text)`, `conn.read_line()`, `conn.read_data()`, `conn.starttls(cert,
    key)` (real OpenSSL through the ssl module)."""

    def __init__(
        self,
        script: Callable[[ScriptedConnection, int], None],
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.script = script
        self.port = port or free_port()
        self.connections: list[ScriptedConnection] = []
        self.errors: list[BaseException] = []
        self._sock = socket.create_server((host, self.port))
        self._sock.settimeout(0.2)
        self._stop = False
        import threading

        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> ScriptedPeer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        import threading

        while not self._stop:
            try:
                sock, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn = ScriptedConnection(sock)
            n = len(self.connections)
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn, n), daemon=True).start()

    def _run(self, conn: ScriptedConnection, n: int) -> None:
        try:
            self.script(conn, n)
        except (OSError, EOFError):
            pass
        except BaseException as exc:  # reported by the test through `errors`
            self.errors.append(exc)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop = True
        self._sock.close()
        for conn in self.connections:
            conn.close()


class ScriptedConnection:
    def __init__(self, sock: socket.socket) -> None:
        import ssl

        self.sock: socket.socket | ssl.SSLSocket = sock
        self.sock.settimeout(30)
        self.lines: list[bytes] = []
        self.data: list[bytes] = []  # raw DATA bodies, up to and including CRLF.CRLF
        self._buf = b""

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def reply(self, *lines: str) -> None:
        self.send("".join(f"{ln}\r\n" for ln in lines).encode())

    def read_line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        self.lines.append(line)
        return line

    def read_data(self) -> bytes:
        while b"\r\n.\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self._buf += chunk
        end = self._buf.index(b"\r\n.\r\n") + 5
        body, self._buf = self._buf[:end], self._buf[end:]
        self.data.append(body)
        return body

    def ehlo(self, *extensions: str) -> None:
        """Read the client's EHLO and answer with `extensions`."""
        line = self.read_line()
        assert line.upper().startswith(b"EHLO "), line
        self.reply(*(f"250-{e}" for e in ("scripted.test", *extensions[:-1])))
        self.reply(f"250 {extensions[-1]}" if extensions else "250 scripted.test")

    def starttls(self, cert: Path, key: Path) -> None:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.sock = ctx.wrap_socket(self.sock, server_side=True)
        self._buf = b""

    def accept_mail(self, final: str = "250 2.0.0 Ok: queued as SCRIPTED") -> None:
        """MAIL, RCPT..., DATA, content: the usual answers (pipelined or not)."""
        while True:
            line = self.read_line().upper()
            if line.startswith(b"MAIL") or line.startswith(b"RCPT"):
                self.reply("250 2.1.0 Ok")
            elif line == b"DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                self.read_data()
                self.reply(final)
            elif line == b"QUIT":
                self.reply("221 2.0.0 Bye")
                return
            elif line == b"RSET":
                self.reply("250 2.0.0 Ok")
            else:
                self.reply("502 5.5.2 Error: command not recognized")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# Instance names carry the creating pid so a later run can destroy what a killed run left.
INSTANCE_PREFIX = "postfix-pwt-"
_INSTANCE_RE = re.compile(rf"^{INSTANCE_PREFIX}(\d+)-(\d+)$")
WORK_ROOT = Path("/var/tmp/postwall-peers")
_LOCK = Path("/run/lock/postwall-postmulti.lock")
_counter = itertools.count(1)
_swept = False  # once per process is enough


# --- smtp-sink -------------------------------------------------------------------------------


class SmtpSink:
    """Postfix's smtp-sink on a free loopback port, dumping each transaction to a file.

    As root smtp-sink must drop privileges (-u nobody), so its dump directory lives under
    /var/tmp/postwall-peers where nobody can write; `stop()` removes it."""

    def __init__(self, port: int | None = None, options: Sequence[str] = ()):
        self.port = port or free_port()
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        WORK_ROOT.chmod(0o755)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"sink-{os.getpid()}-", dir=WORK_ROOT))
        self.workdir.chmod(0o755)
        self.dump_dir = self.workdir / "dump"
        self.dump_dir.mkdir()
        self._options = list(options)
        self._proc: subprocess.Popen[bytes] | None = None
        self._out = self.workdir / "sink.out"

    def start(self) -> SmtpSink:
        exe = require_tool("smtp-sink")
        argv = [exe, "-d", f"{self.dump_dir}/msg.", *self._options]
        if os.geteuid() == 0:
            shutil.chown(self.dump_dir, "nobody")
            argv += ["-u", "nobody"]
        argv += [f"127.0.0.1:{self.port}", "10"]
        with self._out.open("wb") as out:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        wait_for(
            lambda: self._alive_check() and port_open("127.0.0.1", self.port),
            10,
            f"smtp-sink on port {self.port}",
            detail=lambda: read_text(self._out),
        )
        return self

    def _alive_check(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise PeerError(f"smtp-sink exited {self._proc.returncode}: {read_text(self._out)}")
        return True

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dump_dir.glob("msg.*"))]

    def wait_messages(self, count: int = 1, timeout: float = 60) -> list[bytes]:
        return wait_for(
            lambda: (m := self.messages()) and len(m) >= count and m,
            timeout,
            f"{count} message(s) at smtp-sink port {self.port}",
        )

    def stop(self) -> None:
        stop_process(self._proc, 10)
        self._proc = None
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- unbound: a real name server on loopback --------------------------------------------------


# postwall.test with one MX, mx.postwall.test (TestCerts.MX_NAME) at 127.0.0.1.
POSTWALL_TEST_ZONE = """\
$ORIGIN postwall.test.
$TTL 300
@ IN SOA ns.postwall.test. hostmaster.postwall.test. 1 3600 600 86400 300
@ IN NS ns.postwall.test.
ns IN A 127.0.0.1
@ IN MX 10 mx.postwall.test.
mx IN A 127.0.0.1
"""


class Unbound:
    """A private unbound on 127.0.0.1:`port` serving `zones` ({origin: zone file text}) as
    authoritative auth-zones (so CNAME chains are answered as a real server does), refusing
    refused.test. Ask it with `postwall.dns.make_resolver([f"127.0.0.1:{port}"])`; `stop()`
    ends it."""

    def __init__(self, directory: Path, zones: Mapping[str, str]) -> None:
        self.directory = directory
        self.zones = dict(zones)
        self.port = free_port()
        self.conf = directory / "unbound.conf"
        self.log = directory / "unbound.log"
        self._out = directory / "unbound.out"
        auth = "".join(
            "auth-zone:\n"
            f'    name: "{origin}."\n'
            f'    zonefile: "{directory}/{origin}.zone"\n'
            "    for-downstream: yes\n"
            "    for-upstream: yes\n"
            for origin in self.zones
        )
        self.conf.write_text(
            "server:\n"
            "    interface: 127.0.0.1\n"
            f"    port: {self.port}\n"
            "    do-daemonize: no\n"
            '    username: ""\n'
            '    chroot: ""\n'
            f'    directory: "{directory}"\n'
            f'    pidfile: "{directory}/unbound.pid"\n'
            f'    logfile: "{self.log}"\n'
            "    use-syslog: no\n"
            "    do-ip6: no\n"
            "    access-control: 127.0.0.0/8 allow\n"
            "    module-config: iterator\n"
            # RFC 6761 names are built-in local zones; let the auth-zones answer instead.
            '    local-zone: "test." nodefault\n'
            '    local-zone: "refused.test." always_refuse\n'
            # Reverse zones (127.in-addr.arpa...) are built in too.
            + "".join(
                f'    local-zone: "{o}." nodefault\n' for o in self.zones if o.endswith(".arpa")
            )
            + f"{auth}"
            "remote-control:\n"
            "    control-enable: no\n"
        )
        for origin, text in self.zones.items():
            (directory / f"{origin}.zone").write_text(text)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Unbound:
        exe = require_tool("unbound")
        _run([exe + "-checkconf", str(self.conf)], timeout=30)
        with self._out.open("wb") as out:
            self.proc = subprocess.Popen(
                [exe, "-d", "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT
            )
        wait_for(self._answers, 10, f"unbound on 127.0.0.1:{self.port}", detail=self._tail)
        return self

    def _answers(self) -> bool:
        import dns.exception
        import dns.message
        import dns.query

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise PeerError(f"unbound exited {self.proc.returncode}: {self._tail()}")
        try:
            q = dns.message.make_query(f"{next(iter(self.zones))}.", "SOA")
            r = dns.query.udp(q, "127.0.0.1", timeout=0.3, port=self.port)
        except (dns.exception.Timeout, OSError):
            return False
        return bool(r.answer)

    def _tail(self) -> str:
        return tail(read_text(self.log) + read_text(self._out))

    def stop(self) -> None:
        stop_process(self.proc, 10)


# --- Exim ------------------------------------------------------------------------------------

# Debian's exim4-daemon-light conflicts with postfix (both are the mail-transport-agent), so
# scripts/test unpacks the package here instead of installing it, and creates its user.
EXIM_ROOT = Path(os.environ.get("POSTWALL_EXIM_ROOT", "/opt/postwall-peers/exim4"))
EXIM_USER = "Debian-exim"  # compiled into Debian's binary


def require_unpacked(exe: Path, users: Sequence[str], name: str) -> str:
    """An MTA binary scripts/test unpacked (with the users it was built for); skip the
    test if it is missing, or fail it under CI."""
    try:
        for user in users:
            pwd.getpwnam(user)
        usable = os.access(exe, os.X_OK)
    except KeyError:
        usable = False
    if usable:
        return str(exe)
    why = f"{name} not unpacked at {exe} with user(s) {', '.join(users)} (scripts/test, as root)"
    if in_ci():
        pytest.fail(f"CI requires every peer: {why}", pytrace=False)
    pytest.skip(why)


def require_exim() -> str:
    return require_unpacked(EXIM_ROOT / "usr/sbin/exim4", (EXIM_USER,), "Exim")


class Exim:
    """Debian's Exim 4.96 from a private directory, with its own configuration (`-C`).

    `serve(domain)` runs a daemon on 127.0.0.1:`port` (STARTTLS with the test server
    certificate, CHUNKING and PIPELINING offered, as Exim does by default) that accepts
    mail for `domain` into one Maildir; `send(...)` submits a message that Exim delivers
    at once (`-odf`) to 127.0.0.1:PORT, STARTTLS required, presenting the test client
    certificate and verifying the server's against the test CA. Exim gives up root for a
    `-C` configuration, so its spool, log and key copies belong to Debian-exim.
    """

    def __init__(self, certs: TestCerts) -> None:
        self.exe = require_exim()
        # Out of pytest's root-only tmp_path: Exim works as Debian-exim here.
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        WORK_ROOT.chmod(0o755)
        directory = Path(tempfile.mkdtemp(prefix="exim-", dir=WORK_ROOT))
        self.directory = directory
        self.port = free_port()
        self.maildir = directory / "Maildir"
        self.mainlog = directory / "log" / "mainlog"
        self.proc: subprocess.Popen[bytes] | None = None
        tls = directory / "tls"
        for sub in ("spool", "log", "tls"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        for src, name in (
            (certs.server_cert, "server.pem"),
            (certs.server_key, "server.key"),
            (certs.client_cert, "client.pem"),
            (certs.client_key, "client.key"),
            (certs.ca_cert, "ca.pem"),
        ):
            shutil.copyfile(src, tls / name)
        user = pwd.getpwnam(EXIM_USER)
        directory.chmod(0o755)
        for path in (directory, *directory.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.tls = tls

    def _common(self) -> str:
        d = self.directory
        return (
            "keep_environment =\n"
            f"spool_directory = {d}/spool\n"
            f"log_file_path = {d}/log/%slog\n"
            f"exim_path = {self.exe}\n"
            "trusted_users = root\n"
        )

    def serve(self, domain: str, *, implicit_tls: bool = False) -> Exim:
        """`implicit_tls`: TLS from the first byte on the port (SMTPS), no STARTTLS."""
        d, conf = self.directory, self.directory / "server.conf"
        conf.write_text(
            self._common() + f"primary_hostname = exim.{domain}\n"
            f"daemon_smtp_ports = {self.port}\n"
            + (f"tls_on_connect_ports = {self.port}\n" if implicit_tls else "")
            + "local_interfaces = 127.0.0.1\n"
            f"domainlist local_domains = {domain}\n"
            "tls_advertise_hosts = *\n"
            f"tls_certificate = {self.tls}/server.pem\n"
            f"tls_privatekey = {self.tls}/server.key\n"
            "acl_smtp_rcpt = acl_rcpt\n"
            "begin acl\n"
            "acl_rcpt:\n"
            "  accept domains = +local_domains\n"
            "  deny message = relay not permitted\n"
            "begin routers\n"
            "local:\n"
            "  driver = accept\n"
            "  domains = +local_domains\n"
            "  transport = to_maildir\n"
            "begin transports\n"
            "to_maildir:\n"
            "  driver = appendfile\n"
            f"  directory = {d}/Maildir\n"
            "  maildir_format\n"
            "  create_directory\n"
            "  return_path_add\n"
            "  envelope_to_add\n"
        )
        out = (d / "daemon.out").open("wb")
        self.proc = subprocess.Popen(
            [self.exe, "-C", str(conf), "-bdf", "-oP", str(d / "exim.pid")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        wait_for(lambda: port_open("127.0.0.1", self.port), 15, "Exim's daemon", detail=self._tail)
        return self

    def send(self, sender: str, recipient: str, message: bytes, port: int) -> str:
        """Submit and deliver now; returns Exim's main log line for the delivery."""
        conf = self.directory / "client.conf"
        conf.write_text(
            self._common() + "primary_hostname = exim-client.postwall.test\n"
            "begin routers\n"
            "out:\n"
            "  driver = manualroute\n"
            "  route_list = * 127.0.0.1\n"
            "  self = send\n"
            "  transport = out\n"
            "begin transports\n"
            "out:\n"
            "  driver = smtp\n"
            f"  port = {port}\n"
            "  allow_localhost\n"
            "  hosts_require_tls = *\n"
            f"  tls_certificate = {self.tls}/client.pem\n"
            f"  tls_privatekey = {self.tls}/client.key\n"
            f"  tls_verify_certificates = {self.tls}/ca.pem\n"
            "  tls_verify_hosts = *\n"
            "  tls_verify_cert_hostnames =\n"  # the certificate names localhost
        )
        res = subprocess.run(
            [self.exe, "-C", str(conf), "-odf", "-oi", "-f", sender, recipient],
            input=message,
            capture_output=True,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise PeerError(f"exim exited {res.returncode}: {res.stderr!r}\n{self._tail()}")
        for line in read_text(self.mainlog).splitlines():
            if " => " in line and recipient in line:
                return line
        raise PeerError(f"exim did not deliver to {recipient}:\n{self._tail()}")

    def _tail(self) -> str:
        return tail(read_text(self.mainlog) + read_text(self.directory / "daemon.out"))

    def wait_log(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        rx = re.compile(pattern)
        return wait_for(
            lambda: rx.search(read_text(self.mainlog)), timeout, pattern, detail=self._tail
        )

    def stop(self) -> None:
        stop_process(self.proc, 10)
        shutil.rmtree(self.directory, ignore_errors=True)


# --- OpenSMTPD -------------------------------------------------------------------------------

# Debian 12's opensmtpd package conflicts with postfix too: scripts/test unpacks it here and
# creates the users, chroot directory and queue directory compiled into its binary.
OPENSMTPD_ROOT = Path(os.environ.get("POSTWALL_OPENSMTPD_ROOT", "/opt/postwall-peers/opensmtpd"))
OPENSMTPD_USERS = ("opensmtpd", "opensmtpq")


def require_opensmtpd() -> str:
    return require_unpacked(OPENSMTPD_ROOT / "usr/sbin/smtpd", OPENSMTPD_USERS, "OpenSMTPD")


class OpenSMTPD:
    """Debian 12's OpenSMTPD 6.8 in the foreground (`-d`) with a private smtpd.conf. Its
    queue (/var/spool/smtpd) and control socket are compiled in, so only one runs at a
    time. It listens in plaintext on 127.0.0.1:`port`, or with STARTTLS (`serve`)."""

    def __init__(self, directory: Path) -> None:
        require_root("OpenSMTPD instances")  # it drops to its own users itself
        self.exe = require_opensmtpd()
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.log = directory / "smtpd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def relay_to(self, port: int, proto: str) -> OpenSMTPD:
        """Relay every message to 127.0.0.1:`port`: `smtp` with mandatory STARTTLS, or
        `smtps` (TLS from the first byte); certificates are not verified."""
        return self._start(
            f'action "out" relay host {proto}://127.0.0.1:{port} tls no-verify\n'
            'match from any for any action "out"\n'
        )

    def serve(self, cert: Path, key: Path, onward: int) -> OpenSMTPD:
        """Offer STARTTLS with `cert` and relay what arrives, in plaintext, to
        127.0.0.1:`onward`."""
        return self._start(
            f'action "onward" relay host smtp+notls://127.0.0.1:{onward}\n'
            'match from any for any action "onward"\n',
            pki=f'pki localhost cert "{cert}"\npki localhost key "{key}"\n',
            listen="tls pki localhost",
        )

    def _start(self, rules: str, *, pki: str = "", listen: str = "") -> OpenSMTPD:
        conf = self.directory / "smtpd.conf"
        conf.write_text(
            f"{pki}listen on 127.0.0.1 port {self.port} {listen} hostname opensmtpd.test\n" + rules
        )
        conf.chmod(0o600)
        check = subprocess.run(
            [self.exe, "-n", "-f", str(conf)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise PeerError(f"smtpd -n: {check.stderr}")
        out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [self.exe, "-d", "-f", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        wait_for(self._listening, 15, "OpenSMTPD", detail=self._tail)
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise PeerError(f"smtpd exited {self.proc.returncode}: {self._tail()}")
        return port_open("127.0.0.1", self.port)

    def _tail(self) -> str:
        return tail(read_text(self.log))

    def wait_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(read_text(self.log)), timeout, pattern, detail=self._tail)

    def stop(self) -> None:
        stop_process(self.proc, 10)


# --- private Postfix instances ---------------------------------------------------------------


@contextlib.contextmanager
def _postmulti_lock() -> Iterator[None]:
    """postmulti edits the default main.cf (multi_instance_directories); serialize our calls
    so concurrent pytest processes on one machine do not lose each other's edits."""
    _LOCK.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_multi_instance() -> None:
    """`postmulti -e init` once per machine (it sets multi_instance_wrapper and _enable in the
    default instance's main.cf; nothing else)."""
    require_root()
    require_tool("postmulti")
    with _postmulti_lock():
        enabled = _run(["postconf", "-h", "multi_instance_enable"]).strip()
        wrapper = _run(["postconf", "-h", "multi_instance_wrapper"]).strip()
        if enabled != "yes" or not wrapper:
            _run(["postmulti", "-e", "init"])


def run_as_nobody(work: Callable[[], object]) -> str:
    """Run `work` in a forked child that became nobody (as the unprivileged side of the
    server after its privilege drop, or a local user); its return value (repr) or the
    exception it raised, as text.  Forked, not exec'ed: the interpreter stays the test's,
    which an unprivileged user may not be able to start."""
    nobody = pwd.getpwnam("nobody")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            result = repr(work())
        except BaseException as exc:  # reported to the parent, never raised in the child
            result = f"error {exc!r}"
        os.write(writer, result.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as f:
        answer = f.read().decode()
    os.waitpid(pid, 0)
    return answer


def list_instances() -> list[str]:
    out = _run(["postmulti", "-l", "-a"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep_stale_instances() -> list[str]:
    """Destroy test instances whose creating process is gone (a killed earlier run)."""
    removed = []
    # A test instance whose directory is gone (a run killed mid-destroy) makes every
    # postmulti command fail, `postmulti -l` included: unregister it first.
    with _postmulti_lock():
        out = _run(["postconf", "-h", "multi_instance_directories"], check=False)
        dirs = [d for d in re.split(r"[\s,]+", out.strip()) if d]
        gone = [
            d
            for d in dirs
            if _INSTANCE_RE.match(Path(d).name) and not (Path(d) / "main.cf").exists()
        ]
        if gone:
            keep = " ".join(d for d in dirs if d not in gone)
            _run(["postconf", "-e", f"multi_instance_directories={keep}"])
            removed += [Path(d).name for d in gone]
    for name in list_instances():
        m = _INSTANCE_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            PostfixInstance(name, port=None).destroy()
            removed.append(name)
    return removed


class PostfixInstance:
    """A private Postfix instance made with postmulti: /etc/NAME, /var/spool/NAME,
    /var/lib/NAME, a log at /var/log/NAME.log (maillog_file must sit under
    maillog_file_prefixes, /var by default), and a work dir /var/tmp/postwall-peers/NAME for
    maps and Maildirs (reachable by the unprivileged users Postfix runs as). Certificates may
    stay in root-only directories: Postfix reads them as root, before dropping privileges.

    Use the `relay_client` or `receiver` constructors; always `destroy()`.
    """

    def __init__(self, name: str, port: int | None):
        self.name = name
        self.port = port
        self.config_dir = Path("/etc") / name
        self.queue_dir = Path("/var/spool") / name
        self.data_dir = Path("/var/lib") / name
        self.log_path = Path("/var/log") / f"{name}.log"
        self.workdir = WORK_ROOT / name
        self.maildir_base = self.workdir / "mail"

    # construction

    @classmethod
    def create(
        cls,
        params: Mapping[str, str] | None = None,
        port: int | None = None,
        smtpd_options: Mapping[str, str] | None = None,
    ) -> PostfixInstance:
        """Create (not start) an instance listening on 127.0.0.1:`port` when a port is given."""
        global _swept
        ensure_multi_instance()
        if not _swept:
            sweep_stale_instances()
            _swept = True
        inst = cls(f"{INSTANCE_PREFIX}{os.getpid()}-{next(_counter)}", port)
        for path in (inst.config_dir, inst.queue_dir, inst.data_dir, inst.workdir):
            if path.exists():  # leftovers of a name reused after a crash
                shutil.rmtree(path)
        with _postmulti_lock():
            _run(["postmulti", "-I", inst.name, "-e", "create"])
        try:
            inst._configure(params or {}, smtpd_options or {})
        except BaseException:
            inst.destroy()
            raise
        return inst

    def _configure(self, params: Mapping[str, str], smtpd_options: Mapping[str, str]) -> None:
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        WORK_ROOT.chmod(0o755)
        self.workdir.mkdir(mode=0o755)
        short = self.name.removeprefix("postfix-")
        base = {
            "master_service_disable": "",  # postmulti create disables inet services
            "authorized_submit_users": "static:anyone",  # create sets it empty
            "inet_interfaces": "127.0.0.1",
            "myhostname": f"{short}.postwall.test",
            "mydomain": "postwall.test",
            "mydestination": "",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.log_path),
            "smtpd_tls_loglevel": "1",
            "smtp_tls_loglevel": "1",
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
        }
        base.update(params)
        self.postconf(base)
        self._write_master_cf(smtpd_options)

    def _write_master_cf(self, smtpd_options: Mapping[str, str]) -> None:
        """Replace the stock `smtp inet` listener with 127.0.0.1:port (or none) and turn chroot
        off everywhere: a chroot would need copies of resolv.conf, certificates and maps."""
        path = self.config_dir / "master.cf"
        out: list[str] = []
        skipping = False
        for line in path.read_text().splitlines():
            if line[:1].isspace() and line.strip():
                if not skipping:
                    out.append(line)
                continue
            fields = line.split()
            skipping = False
            if line.startswith("#") or len(fields) < 8:
                out.append(line)
            elif fields[:2] == ["smtp", "inet"]:
                skipping = True
            else:
                fields[4] = "n"
                out.append(" ".join(fields))
        if self.port is not None:
            out.append(f"127.0.0.1:{self.port} inet n - n - - smtpd")
            out.extend(f"  -o {k}={v}" for k, v in smtpd_options.items())
        path.write_text("\n".join(out) + "\n")

    @classmethod
    def relay_client(
        cls,
        relay_port: int,
        *,
        tls_level: str = "may",
        ca_file: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
        listen: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> PostfixInstance:
        """(a) Relays every message to [127.0.0.1]:relay_port with smtp_tls_security_level
        `tls_level`, optionally presenting `client_cert` (cert, key)."""
        params = {
            "relayhost": f"[127.0.0.1]:{relay_port}",
            "smtp_tls_security_level": tls_level,
            "smtp_host_lookup": "native",
        }
        if ca_file:
            params["smtp_tls_CAfile"] = str(ca_file)
        if client_cert:
            params["smtp_tls_cert_file"] = str(client_cert[0])
            params["smtp_tls_key_file"] = str(client_cert[1])
        params.update(extra or {})
        return cls.create(params, port=free_port() if listen else None)

    @classmethod
    def receiver(
        cls,
        *,
        cert: Path,
        key: Path,
        ca_file: Path | None = None,
        tls_level: str = "may",
        domain: str = "example.test",
        users: Iterable[str] = ("bob", "alice", "postmaster"),
        extra: Mapping[str, str] | None = None,
    ) -> PostfixInstance:
        """(b) An SMTP server with STARTTLS on a free port that delivers USER@`domain` to the
        Maildir `maildir(USER)` through the virtual agent (as nobody); no outbound mail."""
        inst_port = free_port()
        params = {
            "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key),
            "smtpd_tls_security_level": tls_level,
            "smtpd_tls_received_header": "yes",
            "virtual_mailbox_domains": domain,
            "virtual_mailbox_base": "",  # set in _configure_maildirs
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
            "default_transport": "error:postwall test receiver: no outbound mail",
            "relay_transport": "error:postwall test receiver: no outbound mail",
        }
        if ca_file:
            params["smtpd_tls_CAfile"] = str(ca_file)
            params["smtpd_tls_ask_ccert"] = "yes"
        params.update(extra or {})
        inst = cls.create(params, port=inst_port)
        try:
            inst._configure_maildirs(domain, users)
        except BaseException:
            inst.destroy()
            raise
        return inst

    @classmethod
    def reference(cls, cert: Path, key: Path, ca_file: Path) -> PostfixInstance:
        """A copy of the reference Postfix on the dev machine (127.0.0.1:25: the how-to's TLS
        block, myhostname vm) on a free port, so reference comparisons also run in CI, where
        the system instance is a fresh install. Differences: the test certificates, IPv4
        only, aliases as texthash, and local mail is discarded, not written to /root/Maildir."""
        params = {
            "myhostname": "vm",
            "mydestination": "$myhostname, vm, localhost.localdomain, , localhost",
            "mynetworks": "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128",
            "compatibility_level": "3.6",
            "append_dot_mydomain": "no",
            "biff": "no",
            "recipient_delimiter": "+",
            "mailbox_size_limit": "0",
            "home_mailbox": "Maildir/",
            "local_transport": "discard:reference copy",
            "default_transport": "error:reference instance: no outbound mail",
            "smtpd_banner": "$myhostname ESMTP $mail_name (Debian/GNU)",
            "smtpd_relay_restrictions": (
                "permit_mynetworks permit_sasl_authenticated defer_unauth_destination"
            ),
            "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key),
            "smtpd_tls_CAfile": str(ca_file),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_req_ccert": "no",
            "smtpd_tls_auth_only": "yes",
            "smtpd_tls_loglevel": "2",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_mandatory_ciphers": "high",
            "smtpd_tls_mandatory_exclude_ciphers": "aNULL, MD5",
            "smtpd_tls_mandatory_protocols": "!SSLv2",
            "smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_tls_session_cache",
            "smtpd_tls_session_cache_timeout": "3600s",
            "smtp_tls_loglevel": "1",
            "smtp_tls_note_starttls_offer": "yes",
            "smtp_use_tls": "yes",
            "smtp_host_lookup": "native",
            "tls_random_source": "dev:/dev/urandom",
        }
        inst = cls.create(params, port=free_port())
        try:
            inst._copy_aliases()
        except BaseException:
            inst.destroy()
            raise
        return inst

    def _copy_aliases(self) -> None:
        # The reference uses hash:/etc/aliases; a texthash copy gives the same lookups without
        # depending on /etc/aliases.db existing on a fresh install.
        system = Path("/etc/aliases")
        aliases = self.workdir / "aliases"
        aliases.write_text(system.read_text() if system.exists() else "postmaster: root\n")
        self.postconf({"alias_maps": f"texthash:{aliases}", "alias_database": ""})

    def _configure_maildirs(self, domain: str, users: Iterable[str]) -> None:
        self.maildir_base.mkdir(mode=0o755)
        os.chown(self.maildir_base, 65534, 65534)
        table = self.workdir / "vmailbox"
        # virtual(8) refuses regexp substitution in mailbox maps, so list users explicitly.
        table.write_text("".join(f"{u}@{domain} {u}/\n" for u in users))
        self.postconf(
            {
                "virtual_mailbox_base": str(self.maildir_base),
                "virtual_mailbox_maps": f"texthash:{table}",
            }
        )

    # control

    def postconf(self, params: Mapping[str, str]) -> None:
        args = [f"{k}={v}" for k, v in params.items()]
        _run(["postconf", "-c", str(self.config_dir), "-e", *args])

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def start(self) -> PostfixInstance:
        """Start master directly: `master -w` returns once the daemon is initialized, and skips
        postfix-script's slow `postfix check` on an instance postmulti has just set up. The
        instance stays disabled, so the system's `postfix start/stop/reload` leaves it alone."""
        daemon_dir = _run(["postconf", "-h", "daemon_directory"]).strip()
        try:
            _run([f"{daemon_dir}/master", "-c", str(self.config_dir), "-w"], timeout=30)
        except PeerError as exc:
            # Fatal start errors go to the log, not to the command's stderr.
            raise PeerError(f"{exc}\n{self._log_tail()}") from exc
        wait_for(self.master_pid, 20, f"{self.name} master", detail=self._log_tail)
        if self.port is not None:
            wait_for(
                lambda: port_listening(self.port),  # type: ignore[arg-type]
                20,
                f"{self.name} listening on port {self.port}",
                detail=self._log_tail,
            )
        return self

    def reload(self) -> None:
        _run(["postfix", "-c", str(self.config_dir), "reload"])

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to master (what `postfix stop` sends); SIGKILL its group if it lingers."""
        pid = self.master_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not pid_alive(pid), timeout, f"{self.name} master to exit")
        except PeerError:
            # master calls setsid(): its group is exactly this instance's processes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), 5, f"{self.name} master to die")

    def destroy(self) -> None:
        """Stop, purge the queue, disable and destroy the instance, remove its files. Safe to
        call twice and on half-made instances."""
        errors: list[str] = []
        if self.config_dir.is_dir():
            with contextlib.suppress(PeerError):
                self.stop()
            if self.queue_dir.is_dir():
                # postmulti -e destroy refuses a non-empty queue.
                _run(["postsuper", "-c", str(self.config_dir), "-d", "ALL"], check=False)
                for sub in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt"):
                    d = self.queue_dir / sub
                    if d.is_dir():
                        for p in d.rglob("*"):
                            if p.is_file():
                                p.unlink()
            enabled = _run(
                ["postconf", "-c", str(self.config_dir), "-h", "multi_instance_enable"],
                check=False,
            ).strip()
            with _postmulti_lock():
                for cmd in ("disable", "destroy") if enabled == "yes" else ("destroy",):
                    try:
                        _run(["postmulti", "-i", self.name, "-e", cmd])
                    except PeerError as exc:
                        errors.append(str(exc))
        # destroy leaves files it did not create; and a failed destroy must not block reruns.
        for path in (self.config_dir, self.queue_dir, self.data_dir, self.workdir):
            shutil.rmtree(path, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)
        if self.name in list_instances():
            # postmulti could not unregister it; drop it from multi_instance_directories.
            with _postmulti_lock():
                out = _run(["postconf", "-h", "multi_instance_directories"])
                dirs = re.split(r"[\s,]+", out.strip())
                keep = " ".join(d for d in dirs if d != str(self.config_dir))
                _run(["postconf", "-e", f"multi_instance_directories={keep}"])
            if errors:
                raise PeerError(f"destroying {self.name}: " + "\n".join(errors))

    # observation

    def log_text(self) -> str:
        return read_text(self.log_path)

    def _log_tail(self) -> str:
        return f"--- {self.log_path}:\n{tail(self.log_text())}"

    def wait_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        rx = re.compile(pattern, re.MULTILINE)
        return wait_for(
            lambda: rx.search(self.log_text()),
            timeout,
            f"/{pattern}/ in {self.log_path}",
            detail=self._log_tail,
        )

    def queue_listing(self) -> str:
        return _run(["postqueue", "-c", str(self.config_dir), "-p"])

    def queue_empty(self) -> bool:
        return "Mail queue is empty" in self.queue_listing()

    def wait_queue_empty(self, timeout: float = 60) -> None:
        wait_for(
            self.queue_empty,
            timeout,
            f"{self.name} queue to drain",
            interval=0.2,
            detail=lambda: self.queue_listing() + "\n" + self._log_tail(),
        )

    def flush(self) -> None:
        _run(["postqueue", "-c", str(self.config_dir), "-f"])

    def maildir(self, user: str) -> Path:
        return self.maildir_base / user

    # submission

    def sendmail(self, sender: str, recipients: Sequence[str], message: bytes) -> None:
        """Submit through this instance's sendmail(1) (postdrop → pickup)."""
        exe = require_tool("sendmail")
        argv = [exe, "-C", str(self.config_dir), "-f", sender, "-i", "--", *recipients]
        proc = subprocess.run(argv, input=message, capture_output=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise PeerError(f"sendmail exited {proc.returncode}: {proc.stderr.decode()}")

    def smtp_send(
        self, sender: str, recipients: Sequence[str], message: bytes, starttls: bool = False
    ) -> None:
        if self.port is None:
            raise PeerError(f"{self.name} has no SMTP listener")
        smtp_send("127.0.0.1", self.port, sender, recipients, message, starttls=starttls)


# --- postwall under test ---------------------------------------------------------------------


@dataclass
class PostwallServer:
    """`python3 -m postwall start -c DIR` in the foreground, with a main.cf from `params` and
    a master.cf whose smtpd listens on 127.0.0.1:`port`.

    Defaults put the queue, Maildirs (mail_spool_directory with a trailing slash: Maildir per
    user) and maillog_file under `config_dir`, and set compatibility_level = 3.6 as Debian's
    main.cf does; a test's `params` override them. `command`
    replaces the postwall command line (only the helper's own tests use that).
    """

    config_dir: Path
    params: dict[str, str] = field(default_factory=dict)
    port: int = 0
    smtpd_options: dict[str, str] = field(default_factory=dict)
    extra_services: list[str] = field(default_factory=list)
    command: list[str] | None = None
    start_timeout: float = 20
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _runs: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        base = {
            "queue_directory": str(self.config_dir / "queue"),
            "mail_spool_directory": str(self.config_dir / "mail") + "/",
            "maillog_file": str(self.config_dir / "maillog"),
            "myhostname": "postwall.test",
            # Its own pid file, not Postfix's /var/lib/postfix.
            "data_directory": str(self.config_dir / "data"),
            # What Debian's main.cf (and the reference instance) sets; Postfix's built-in
            # default is 0, which turns on backwards-compatible, open-relay-prone defaults.
            "compatibility_level": "3.6",
            # Tests run as root with everything under a root-only tmp_path, out of reach
            # of an unprivileged mail_owner: stay root (tests/integration/test_privileges.py
            # covers the drop).
            "mail_owner": "root",
        }
        base.update(self.params)
        self.params = base

    @property
    def stderr_path(self) -> Path:
        return self.config_dir / "stderr.log"

    @property
    def maillog_path(self) -> Path | None:
        value = self.params.get("maillog_file")
        return Path(value) if value and value.startswith("/") else None

    def write_config(self) -> None:
        main = "".join(f"{k} = {v}\n" for k, v in self.params.items())
        (self.config_dir / "main.cf").write_text(main)
        opts = "".join(f"\n  -o {k}={v}" for k, v in self.smtpd_options.items())
        master = f"127.0.0.1:{self.port} inet n - n - - smtpd{opts}\n"
        master += "".join(line.rstrip("\n") + "\n" for line in self.extra_services)
        (self.config_dir / "master.cf").write_text(master)

    def argv(self) -> list[str]:
        if self.command is not None:
            return [*self.command, "-c", str(self.config_dir)]
        return [sys.executable, "-m", "postwall", "start", "-c", str(self.config_dir)]

    def start(self) -> PostwallServer:
        if self.running:
            raise PeerError("postwall is already running")
        self.write_config()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
        self._runs += 1
        with self.stderr_path.open("ab") as err:
            err.write(f"--- start #{self._runs}\n".encode())
            err.flush()
            self._proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                cwd=self.config_dir,
                start_new_session=True,  # its own group: stop()/kill() reach its children too
            )
        wait_for(
            self._ready,
            self.start_timeout,
            f"postwall to accept connections on 127.0.0.1:{self.port}",
            detail=lambda: f"--- postwall stderr:\n{tail(read_text(self.stderr_path))}",
        )
        return self

    def _ready(self) -> bool:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            raise PeerError(
                f"postwall exited with status {proc.returncode} before listening:\n"
                f"{tail(read_text(self.stderr_path))}"
            )
        return port_listening(self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def _signal(self, sig: int, timeout: float, group: bool) -> int:
        proc = self._proc
        if proc is None:
            raise PeerError("postwall was never started")
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                (os.killpg if group else os.kill)(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                proc.wait(10)
                raise PeerError(
                    f"postwall ignored signal {sig} for {timeout:g}s; killed:\n"
                    f"{tail(read_text(self.stderr_path))}"
                ) from None
        return proc.returncode

    def _kill_group(self) -> None:
        # start_new_session made the pid the group id; it outlives the leader while any
        # child (a worker postwall forked) is left.
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM to the main process, as an administrator would, and wait for it to exit;
        returns the exit status (PeerError if it hangs: it is then killed)."""
        return self._signal(signal.SIGTERM, timeout, group=False)

    def kill(self) -> int:
        """SIGKILL the whole process group: a crash, nothing gets to clean up."""
        return self._signal(signal.SIGKILL, 10, group=True)

    def reload(self) -> None:
        """SIGHUP (after `write_config`); returns once the reload is logged."""
        before = self.log_text().count(": reload -- version")
        assert self.pid is not None
        os.kill(self.pid, signal.SIGHUP)
        wait_for(
            lambda: self.log_text().count(": reload -- version") > before,
            15,
            "postwall to log its reload",
            detail=lambda: tail(self.log_text()),
        )

    def restart(self) -> PostwallServer:
        if self.running:
            self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Fixture teardown: whatever state it is in, leave nothing running."""
        if self.running:
            with contextlib.suppress(PeerError):
                self.stop()
        self._kill_group()

    def log_text(self) -> str:
        """The mail log: maillog_file when set, else what the process wrote to stderr."""
        path = self.maillog_path
        return read_text(path) if path else read_text(self.stderr_path)

    def stderr_text(self) -> str:
        return read_text(self.stderr_path)

    def wait_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        rx = re.compile(pattern, re.MULTILINE)
        return wait_for(
            lambda: rx.search(self.log_text()),
            timeout,
            f"/{pattern}/ in postwall's log",
            detail=lambda: tail(self.log_text()) + "\n--- stderr:\n" + tail(self.stderr_text()),
        )

    @property
    def mail_spool(self) -> Path:
        return Path(self.params["mail_spool_directory"].rstrip("/"))

    def maildir(self, user: str) -> Path:
        return self.mail_spool / user

    @property
    def queue_dir(self) -> Path:
        return Path(self.params["queue_directory"])


# --- SASL --------------------------------------------------------------------------------


class ScramClient:
    """RFC 5802 client side, SHA-256, no channel binding."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n={user},r={self.nonce}"

    def first(self) -> str:
        return base64.b64encode(f"n,,{self.first_bare}".encode()).decode()

    def final(self, challenge: str) -> str:
        server_first = base64.b64decode(challenge).decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        assert attrs["r"].startswith(self.nonce)
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        without_proof = f"c=biws,r={attrs['r']}"
        self.auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), self.auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_key = hmac.digest(salted, b"Server Key", "sha256")
        final = f"{without_proof},p={base64.b64encode(proof).decode()}"
        return base64.b64encode(final.encode()).decode()

    def check_server(self, challenge: str) -> bool:
        expected = hmac.digest(self.server_key, self.auth_message, "sha256")
        return base64.b64decode(challenge) == b"v=" + base64.b64encode(expected)


DOVECOT_CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
protocols =
ssl = no
log_path = {dir}/dovecot.log
disable_plaintext_auth = no
auth_failure_delay = 0
auth_mechanisms = plain login scram-sha-256 cram-md5
passdb {{
  driver = passwd-file
  args = {dir}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={dir}/home
}}
service auth {{
  unix_listener {dir}/auth {{
    mode = 0666
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0666
  }}
}}
"""


@dataclass
class DovecotAuthServer:
    """`dovecot -F -c CONF` with only its auth service: a passwd-file passdb of `users`
    ({PLAIN} passwords, so every mechanism works), its auth-client socket at `socket`
    (mode 0666 under WORK_ROOT, so Postfix's unprivileged smtpd reaches it too), no
    protocols, no SSL, no failure delay.  Always `stop()`."""

    users: Mapping[str, str]
    directory: Path = field(init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def socket(self) -> Path:
        return self.directory / "auth"

    def start(self) -> DovecotAuthServer:
        exe = require_tool("dovecot")
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix="dovecot-", dir=WORK_ROOT))
        self.directory.chmod(0o755)
        (self.directory / "users").write_text(
            "".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self.users.items())
        )
        conf = self.directory / "dovecot.conf"
        conf.write_text(DOVECOT_CONF.format(dir=self.directory))
        self._proc = subprocess.Popen(
            [exe, "-F", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: self.socket.exists() or self._proc.poll() is not None,  # type: ignore[union-attr]
            20,
            "dovecot's auth socket",
        )
        if self._proc.poll() is not None:
            raise PeerError(f"dovecot exited: {read_text(self.directory / 'dovecot.log')}")
        return self

    def stop(self) -> None:
        stop_process(self._proc, 15)
        shutil.rmtree(self.directory, ignore_errors=True)


# --- postwall's own command line and the how-to's configuration -----------------------------


SASL_PASSWORD = "correct horse"  # alice's, at the sasl_receiver fixture


def run_postwall(
    *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python3 -m postwall ARGS` from this checkout, as an administrator would run it."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run(
        [sys.executable, "-m", "postwall", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=timeout,
    )


DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.debian")
PROTO_MAIN_CF = Path("/etc/postfix/main.cf.proto")
MASTER_PROTO = Path("/etc/postfix/master.cf.proto")

# The how-to's TLS block, parameter by parameter (trailing blank after !SSLv2 included).
HOWTO_TLS_BLOCK = """
# TLS server options
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_key_file = /etc/postfix/certs/smtp.key
smtpd_tls_cert_file = /etc/postfix/certs/smtp.pem
smtpd_tls_CAfile = /etc/postfix/certs/ca.crt
smtpd_tls_loglevel = 2
smtpd_tls_received_header = yes
smtpd_tls_session_cache_timeout = 3600s
smtpd_tls_session_cache_database = btree:/var/lib/postfix/smtpd_tls_session_cache
tls_random_source = dev:/dev/urandom
smtpd_tls_ask_ccert = yes
smtpd_tls_req_ccert = no
smtpd_tls_mandatory_protocols = !SSLv2\x20
smtpd_tls_mandatory_ciphers = high
smtpd_tls_mandatory_exclude_ciphers = aNULL, MD5

# TLS client options
smtp_use_tls = yes
smtp_tls_note_starttls_offer = yes
smtp_tls_loglevel = 1
"""
