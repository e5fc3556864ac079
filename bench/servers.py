"""Servers under test for the benchmark, and how to measure them from outside.

Contract: a `Server` can be started, stopped and asked for the process ids that
make it up (the root process and every descendant). CPU time is read from
/proc/PID/stat (utime+stime of each live process plus cutime+cstime, so children
that already exited and were reaped still count); memory is the PSS from
/proc/PID/smaps_rollup summed over the tree. Both are taken before and after a
run and reported as deltas, so a long-lived server is fine.

Two kinds exist: `PostfixBench`, a private postmulti instance named
`postfix-bench` (never the system instance on port 25), and `PostwallServer`,
started with a configurable command. Both get an equivalent main.cf: loopback
only, mynetworks=127.0.0.0/8, TLS offered (level may) with a generated
certificate, ticket/session cache as in Postfix's TLS how-to, and every
recipient delivered by the `discard` transport (no mailbox writes), so the
figures compare SMTP, TLS, queue and logging work, not mailbox writing.

Failures raise `BenchError` with a one-line message; nothing here retries
forever: every wait has a time limit. Called by bench/run.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from loadgen import percentile

CLK_TCK = os.sysconf("SC_CLK_TCK")
POSTFIX_INSTANCE = "postfix-bench"
POSTFIX_CONFIG = Path("/etc/postfix-bench")


class BenchError(Exception):
    """A server could not be set up, started, stopped or measured."""


# ---------------------------------------------------------------- /proc readers


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces or parentheses; the fields after the last ')' are fixed.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """The root pid and all its live descendants (empty if root is gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    if not Path(f"/proc/{root}").exists():
        return []
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime+cutime+cstime summed over pids (seconds).

    cutime/cstime hold the CPU of reaped children: Postfix's master waits for
    its smtpd processes, so a process that exits mid-run moves its CPU into
    master's counters and the sum stays continuous.
    """
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # stat(5): fields 14-17 are utime stime cutime cstime; index 0 here is field 3.
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLK_TCK


def pss_kib(pids: list[int]) -> int:
    """Proportional set size summed over pids, in KiB."""
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("Pss:"):
                total += int(line.split()[1])
                break
    return total


def listener_pids(port: int, host: str = "127.0.0.1") -> list[int]:
    """Pids holding a listening TCP socket on host:port (via /proc/net/tcp inodes)."""
    want = f"{socket.htonl(int(ipaddress.IPv4Address(host))):08X}:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == want and cols[3] == "0A":  # 0A = LISTEN
            inodes.add(f"socket:[{cols[9]}]")
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
            if any(os.readlink(f"/proc/{entry.name}/fd/{fd}") in inodes for fd in fds):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def wait_port(host: str, port: int, up: bool, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.1)
    raise BenchError(f"{host}:{port} still {'down' if up else 'up'} after {limit:.0f}s")


def wait_quiescent(
    pids_of: Callable[[], list[int]], limit: float = 20.0, idle: float = 0.6
) -> float:
    """Wait until the server tree uses under 2% of a CPU for `idle` seconds.

    After the last 250 the queue manager and delivery agents still work on
    the accepted mail; their CPU belongs to the messages, so the "after"
    sample is taken only once the server has gone quiet. Returns seconds waited.
    """
    start = time.monotonic()
    last = cpu_seconds(pids_of())
    quiet_since = time.monotonic()
    while time.monotonic() - start < limit:
        time.sleep(0.2)
        now = cpu_seconds(pids_of())
        if now - last > 0.02 * 0.2 + 1 / CLK_TCK:
            quiet_since = time.monotonic()
        last = now
        if time.monotonic() - quiet_since >= idle:
            break
    return time.monotonic() - start


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class CertSet:
    directory: Path
    ca: Path
    cert: Path
    key: Path


def _new_key(key_type: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec256":
        return ec.generate_private_key(ec.SECP256R1())
    raise BenchError(f"key type {key_type!r} not supported (rsa2048, ec256)")


def make_certs(directory: Path, key_type: str = "rsa2048") -> CertSet:
    """A throw-away CA and a server certificate for localhost / 127.0.0.1.

    RSA 2048 by default, like the how-to's `openssl req` certificates: the
    server's signature per full handshake is a large share of its TLS CPU, so
    the key type must be the same for both servers and is recorded.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = _new_key(key_type)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postwall bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = _new_key(key_type)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = CertSet(
        directory, directory / "ca.crt", directory / "server.pem", directory / "server.key"
    )
    out.ca.write_bytes(ca.public_bytes(pem))
    out.cert.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    out.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(out.key, 0o600)
    return out


def common_params(certs: CertSet, process_limit: int) -> dict[str, str]:
    """main.cf settings shared by both servers (the comparison's fixed point)."""
    return {
        # postmulti writes 3.7; below level 1 the relay defaults are empty.
        "compatibility_level": "3.7",
        "myhostname": "bench.localdomain",
        "mydestination": "localhost",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "local_transport": "discard",
        "default_transport": "discard",
        "local_recipient_maps": "",
        "alias_maps": "",
        "default_process_limit": str(process_limit),
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(certs.cert),
        "smtpd_tls_key_file": str(certs.key),
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_received_header": "yes",
        "smtpd_tls_session_cache_database": "btree:${data_directory}/smtpd_scache",
        "smtpd_tls_session_cache_timeout": "3600s",
    }


# ------------------------------------------------------------------------ servers


@dataclass
class Server:
    """Common shape: name, address, root pid once started."""

    name: str
    host: str
    port: int
    root: int | None = None
    notes: list[str] = field(default_factory=list)
    log_file: Path | None = None

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size if self.log_file else 0
        except OSError:
            return 0

    def delivery_counts(self, offset: int) -> dict[str, int]:
        """Delivery outcomes logged since `offset`: a cross-check that every
        250 became a delivery (`status=sent`) and nothing else was logged."""
        counts: dict[str, int] = {}
        if self.log_file is None:
            return counts
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                for line in fh:
                    at = line.find(b" status=")
                    if at >= 0:
                        status = line[at + 8 :].split(b" ", 1)[0].decode(errors="replace")
                        counts[status] = counts.get(status, 0) + 1
        except OSError:
            pass
        return counts

    def pids(self) -> list[int]:
        return process_tree(self.root) if self.root else []

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def pss(self) -> int:
        return pss_kib(self.pids())

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()


def _run(argv: list[str], limit: float = 60.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{shlex.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class PostfixBench(Server):
    """The `postfix-bench` postmulti instance, listening on 127.0.0.1:port."""

    def __init__(self, port: int, certs: CertSet, process_limit: int) -> None:
        super().__init__("postfix", "127.0.0.1", port)
        self.certs = certs
        self.process_limit = process_limit
        self.queue = Path("/var/spool") / POSTFIX_INSTANCE

    def configure(self) -> None:
        """Create the instance once; (re)apply settings every run (idempotent)."""
        if not (POSTFIX_CONFIG / "main.cf").exists():
            _run(["postmulti", "-I", POSTFIX_INSTANCE, "-e", "create"])
        cf = ["postconf", "-c", str(POSTFIX_CONFIG)]
        params = common_params(self.certs, self.process_limit)
        params["maillog_file"] = f"/var/log/{POSTFIX_INSTANCE}.log"
        self.log_file = Path(params["maillog_file"])
        params["master_service_disable"] = ""  # `postmulti create` disables inet
        _run([*cf, "-e", *(f"{k}={v}" for k, v in params.items())])
        # One smtpd listener on our loopback port, nothing on port 25; no
        # chroot anywhere because postwall does not chroot either.
        listen = f"{self.host}:{self.port}"
        for line in _run([*cf, "-M"]).splitlines():
            name, kind = line.split()[:2]
            if kind == "inet" and name != listen:
                _run([*cf, "-M#", f"{name}/inet"])
        _run([*cf, "-Me", f"{listen}/inet={listen} inet n - n - - smtpd"])
        _run([*cf, "-F", "*/*/chroot=n"])
        self.notes.append(f"postfix {_run(['postconf', '-h', 'mail_version']).strip()}")

    def _master_pid(self) -> int | None:
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            alive = Path(f"/proc/{pid}/comm").read_text().strip() == "master"
        except OSError:
            alive = False
        return pid if alive else None  # a stale pid file survives `postfix stop`

    def start(self) -> None:
        if self._master_pid() is not None:
            self.stop()
        _run(["postmulti", "-i", POSTFIX_INSTANCE, "-e", "enable"])
        _run(["postmulti", "-i", POSTFIX_INSTANCE, "-p", "start"])
        try:
            wait_port(self.host, self.port, up=True, limit=20)
        except BenchError:
            self.stop()
            raise
        self.root = self._master_pid()
        if self.root is None:
            raise BenchError("postfix-bench started but master.pid is missing")
        # Let the start-up processes (qmgr, pickup, tlsmgr) settle before measuring.
        wait_quiescent(self.pids, limit=10)

    def reap_check(self, limit: float = 10.0) -> dict[str, float | int | bool]:
        """Check that CPU of exited children lands in master's cutime/cstime.

        `postfix reload` makes every child exit once idle and master reaps
        them; master's child counters must grow by at least what those
        children had used, or the CPU figures would undercount.
        """
        assert self.root is not None
        before = {pid: _stat_fields(pid) for pid in self.pids()}
        master0 = sum(int(v) for v in (before[self.root] or [])[13:15])
        spent = {
            pid: sum(int(v) for v in f[11:13])
            for pid, f in before.items()
            if f and pid != self.root
        }
        tree0 = self.cpu()
        _run(["postmulti", "-i", POSTFIX_INSTANCE, "-p", "reload"])
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if not set(spent) & set(self.pids()):
                break
        gone = [pid for pid in spent if pid not in self.pids()]
        master1 = sum(int(v) for v in (_stat_fields(self.root) or [])[13:15])
        exited = sum(spent[pid] for pid in gone) / CLK_TCK
        growth = (master1 - master0) / CLK_TCK
        return {
            "children_exited": len(gone),
            "their_cpu_s": exited,
            "master_child_cpu_growth_s": growth,
            "tree_cpu_before_s": tree0,
            "tree_cpu_after_s": self.cpu(),
            "ok": growth + 1 / CLK_TCK >= exited,
        }

    def stop(self) -> None:
        if self._master_pid() is not None:
            _run(["postmulti", "-i", POSTFIX_INSTANCE, "-p", "stop"])
        deadline = time.monotonic() + 20
        while self._master_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._master_pid() is not None:
            raise BenchError("postfix-bench master did not exit within 20s")
        # Disabled again so a system-wide `postfix start` never brings it up.
        _run(["postmulti", "-i", POSTFIX_INSTANCE, "-e", "disable"])
        self.root = None


POSTWALL_MASTER_CF = """\
# written by bench/servers.py
{listen} inet n - n - - smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
"""


class PostwallServer(Server):
    """postwall started by a command line; `{config}` in it is the config dir.

    If the command stays in the foreground its process is the root; if it
    daemonizes, the root is the top-most ancestor of the listening process
    below init, and `stop_cmd` (or SIGTERM to the root) stops it.
    """

    def __init__(
        self,
        port: int,
        certs: CertSet,
        process_limit: int,
        command: str,
        stop_command: str,
        config_dir: Path | None,
        workdir: Path,
        env: dict[str, str],
    ) -> None:
        super().__init__("postwall", "127.0.0.1", port)
        self.command = command
        self.stop_command = stop_command
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.given_config = config_dir is not None
        self.config_dir = config_dir or workdir / "postwall-etc"
        if not self.given_config:
            self._write_config(workdir, certs, process_limit)
        else:
            self.log_file = self._given_log_file()

    def _given_log_file(self) -> Path | None:
        """maillog_file from a given main.cf (last setting wins, as in Postfix)."""
        found = None
        try:
            for line in (self.config_dir / "main.cf").read_text().splitlines():
                name, eq, value = line.partition("=")
                if eq and name.strip() == "maillog_file" and not line[:1].isspace():
                    found = Path(value.strip()) if value.strip() else None
        except OSError:
            return None
        return found

    def _write_config(self, workdir: Path, certs: CertSet, process_limit: int) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        params = common_params(certs, process_limit)
        # Postfix keeps TLS <= 1.2 session ids in this btree cache; TLS 1.3
        # resumption uses tickets (enabled by the timeout), which is what the
        # benchmark exercises, so postwall is not asked to open a btree map.
        del params["smtpd_tls_session_cache_database"]
        params["queue_directory"] = str(workdir / "postwall-spool")
        params["data_directory"] = str(workdir / "postwall-data")
        params["maillog_file"] = str(workdir / "postwall.log")
        self.log_file = Path(params["maillog_file"])
        for key in ("queue_directory", "data_directory"):
            Path(params[key]).mkdir(parents=True, exist_ok=True)
        main = "".join(f"{k} = {v}\n" for k, v in params.items())
        (self.config_dir / "main.cf").write_text("# written by bench/servers.py\n" + main)
        master = POSTWALL_MASTER_CF.format(listen=f"{self.host}:{self.port}")
        (self.config_dir / "master.cf").write_text(master)

    def _argv(self, template: str) -> list[str]:
        return shlex.split(template.format(config=self.config_dir))

    def start(self) -> None:
        if listener_pids(self.port, self.host):
            raise BenchError(f"port {self.port} is already in use before starting postwall")
        log = open(self.config_dir / "postwall-stdio.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self._argv(self.command),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        try:
            wait_port(self.host, self.port, up=True, limit=30)
        except BenchError:
            code = self.proc.poll()
            tail = (self.config_dir / "postwall-stdio.log").read_text(errors="replace")[-400:]
            self._kill()
            raise BenchError(f"postwall did not listen (exit {code}): {tail.strip()}") from None
        if self.proc.poll() is None:
            self.root = self.proc.pid
        else:
            self.root = self._daemon_root()
        wait_quiescent(self.pids, limit=10)

    def _daemon_root(self) -> int:
        pids = listener_pids(self.port, self.host)
        if not pids:
            raise BenchError("postwall listens but no process owns the socket")
        pid = min(pids)
        while True:
            fields = _stat_fields(pid)
            parent = int(fields[1]) if fields else 1
            if parent in (0, 1, os.getpid()):
                return pid
            pid = parent

    def _kill(self) -> None:
        if self.root and Path(f"/proc/{self.root}").exists():
            os.kill(self.root, signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.root is None:
            return
        if self.proc is not None and self.proc.poll() is None:
            self._kill()
        elif self.stop_command:
            _run(self._argv(self.stop_command))
        else:
            self._kill()
        wait_port(self.host, self.port, up=False, limit=20)
        self.root = None
        self.proc = None


# ------------------------------------------------------------- disk reference


def save_results(results: dict[str, Any], directory: Path, name: str) -> Path:
    """Add the load average at the end and write `results` as `directory/name` (JSON)."""
    results["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / name
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return out


def durable_commit_rate(directory: Path, count: int = 300, limit: float = 5.0) -> dict[str, Any]:
    """Sequential durable commits: write 1 KiB, fsync, rename, fsync the directory.

    This is the floor under any queue that promises durability before its 250
    (Postfix's cleanup fsyncs every queue file); reported for reference only.
    """
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(dir=directory, prefix="bench-fsync-") as tmp:
        base = Path(tmp)
        (base / "in").mkdir()
        dir_fd = os.open(base / "in", os.O_RDONLY | os.O_DIRECTORY)
        payload = os.urandom(1024)
        deadline = time.monotonic() + limit
        try:
            for i in range(count):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                temp = base / f"t{i}"
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, payload)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(temp, base / "in" / f"q{i}")
                os.fsync(dir_fd)
                latencies.append(time.perf_counter() - t0)
        finally:
            os.close(dir_fd)
    total = sum(latencies)
    return {
        "directory": str(directory),
        "commits": len(latencies),
        "commits_per_s": len(latencies) / total if total else 0.0,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else None,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else None,
    }
