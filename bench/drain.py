#!/usr/bin/env python3
"""Outbound drain benchmark: time to empty a queue of N messages into a local sink.

Contract: for each mode (`plain`: Postfix's smtp-sink, no STARTTLS offered; `tls`: a
receiving Postfix instance with STARTTLS that discards everything) and each repeat, it
fills the queue of each MTA with N (default 2,000) 1 KiB messages for one remote
recipient each, lets the MTA relay them all to the sink (relayhost =
[127.0.0.1]:SINKPORT, smtp_tls_security_level = may, every concurrency setting at its
default) and records the wall time from "start delivering" to "queue empty", the CPU of
the MTA's whole process tree over that time, the delivery statuses the MTA logged and
the messages the sink counted. It prints one table (medians, postwall/Postfix ratios)
and writes every raw figure to bench/results/drain-<UTC>.json. Every wait has a time
limit; every process and instance it starts is stopped on exit, on error and on
Ctrl-C or SIGTERM. Exit status 0 when every run delivered exactly N messages.

How each queue is filled (see bench/README.md, "Outbound drain"):
- postwall: stopped; N queue files are written with QueueStore.commit_sync into an empty
  queue directory; postwall is started; the clock and the CPU sample start when its log
  says `daemon started` and stop when incoming/, active/ and deferred/ are empty.
- Postfix (the postmulti instance `postfix-drain`): started with defer_transports = smtp,
  N messages are submitted over SMTP to its smtpd, all wait in deferred/; then
  defer_transports is removed, `postfix reload`, and once the old qmgr has exited the
  clock and CPU sample start and `postqueue -f` is sent; the clock stops when maildrop/,
  incoming/, active/ and deferred/ are empty.

Without Postfix (no postconf or smtp-sink) the sink is a second postwall that discards
everything (plaintext or STARTTLS), and only postwall is measured; the report says so.

Not a test: run it by hand (`python3 bench/drain.py --help`), as root.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

import loadgen  # noqa: E402
import servers  # noqa: E402
from run import machine_info  # noqa: E402
from servers import BenchError  # noqa: E402

from postwall.queue.records import Envelope, Recipient  # noqa: E402
from postwall.queue.store import QueueStore  # noqa: E402

SENDER_INSTANCE = "postfix-drain"
SINK_INSTANCE = "postfix-drainsink"
SENDER = "bench@bench.invalid"
RECIPIENT = "drain@sink.bench.invalid"  # not local: relayed to the relayhost
MODES = ("plain", "tls")
STATUS_RE = re.compile(rb"/(smtp|relay)\[\d+\]: \w+: to=<[^>]*>.*? status=(\w+)")
T = TypeVar("T")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Drain N queued messages to a local sink: postwall and Postfix side "
        "by side, plaintext and STARTTLS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--messages", "-n", type=int, default=2000, help="queued messages per run")
    p.add_argument("--size", type=int, default=1024, help="message size in bytes (before headers)")
    p.add_argument("--repeat", type=int, default=3, help="runs per MTA and mode (median shown)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of plain,tls")
    p.add_argument("--only", choices=("both", "postfix", "postwall"), default="both")
    p.add_argument("--key-type", choices=("rsa2048", "ec256"), default="rsa2048")
    p.add_argument("--limit", type=float, default=600.0, help="seconds allowed for one drain")
    p.add_argument(
        "--profile",
        type=Path,
        help="run postwall under cProfile and write one .prof file per run into this "
        "directory (its figures are then inflated by the profiler)",
    )
    p.add_argument("--results", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in args.modes if m not in MODES]:
        p.error(f"unknown mode(s): {','.join(bad)}")
    if args.messages < 1:
        p.error("--messages must be at least 1")
    return args


# ------------------------------------------------------------------------- helpers


def wait_until(pred: Callable[[], T], limit: float, what: str, interval: float = 0.05) -> T:
    """Poll `pred` until it returns something true; BenchError after `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise BenchError(f"gave up after {limit:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(argv: list[str], limit: float = 60.0) -> str:
    return servers._run(argv, limit)


def count_files(top: Path, subdirs: tuple[str, ...]) -> int:
    """Regular files below top/SUB for each SUB (Postfix hashes deferred/ one level)."""
    total = 0
    todo = [top / s for s in subdirs]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except FileNotFoundError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                todo.append(Path(e.path))
            else:
                total += 1
    return total


def thread_cpu(pid: int, tid: int) -> float:
    """utime+stime of one thread (seconds); 0.0 if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / servers.CLK_TCK


def read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read()
    except FileNotFoundError:
        return b""


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def statuses(log: Path, offset: int) -> Counter[str]:
    """`status=` outcomes of the smtp/relay transport logged since `offset`."""
    return Counter(m.group(2).decode() for m in STATUS_RE.finditer(read_from(log, offset)))


def wait_quiet(pids_of: Callable[[], list[int]]) -> None:
    servers.wait_quiescent(pids_of, limit=30, idle=0.6)


def message(size: int, n: int, run_id: str) -> bytes:
    """The client's message (headers and body, CRLF, no final dot)."""
    body = loadgen.make_body(size, f"{run_id}.{n}@bench.invalid", SENDER, RECIPIENT)
    return body[: -len(b".\r\n")]


class LogCounter:
    """Counts lines matching named patterns in a growing log, reading only new lines."""

    def __init__(self, path: Path, patterns: dict[str, re.Pattern[bytes]]) -> None:
        self.path = path
        self.patterns = patterns
        self.offset = 0
        self.counts: Counter[str] = Counter()

    def count(self, name: str) -> int:
        new = read_from(self.path, self.offset)
        end = new.rfind(b"\n") + 1  # whole lines only
        for line in new[:end].splitlines():
            for key, rx in self.patterns.items():
                if rx.search(line):
                    self.counts[key] += 1
        self.offset += end
        return self.counts[name]


# What a discarding sink logs per message, per session and per TLS session.
SINK_PATTERNS = {
    "sent": re.compile(rb"/discard\[\d+\]: .*? status=sent"),
    "connect": re.compile(rb"/smtpd\[\d+\]: connect from"),
    "tls": re.compile(rb"TLS connection established from"),
}


# --------------------------------------------------------------------------- sinks


class Sink:
    """Where both MTAs relay to; `delivered()` counts messages it has accepted."""

    port: int
    describe: str

    def start(self) -> None:
        raise NotImplementedError

    def delivered(self) -> int:
        raise NotImplementedError

    def sessions(self) -> int | None:
        return None

    def tls_sessions(self) -> int | None:
        return None

    def stop(self) -> None:
        raise NotImplementedError


class SmtpSink(Sink):
    """Postfix's smtp-sink: PIPELINING, no STARTTLS, accepts everything; `-c` prints
    running counters (sess=, quit=, mesg=) that it rewrites after every message."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.out = workdir / "smtp-sink.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.argv = ["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1000"]
        self.describe = shlex.join(self.argv)

    def start(self) -> None:
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            servers.wait_port("127.0.0.1", self.port, up=True, limit=10)
        except BenchError:
            self.stop()
            tail = self.out.read_text(errors="replace")
            raise BenchError(f"smtp-sink did not listen: {tail}") from None

    def _counter(self, name: str) -> int:
        found = re.findall(rf"\b{name}=(\d+)".encode(), read_from(self.out, 0)[-4096:])
        return int(found[-1]) if found else 0

    def delivered(self) -> int:
        return self._counter("mesg")

    def sessions(self) -> int | None:
        return self._counter("sess")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class PostfixInstance:
    """A private postmulti instance (created once, kept between runs like postfix-bench;
    stopped on exit and never enabled, so a system-wide `postfix start` leaves it alone)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.config = Path("/etc") / name
        self.queue = Path("/var/spool") / name
        self.log = Path("/var/log") / f"{name}.log"

    def create(self, params: dict[str, str], listen: int | None) -> None:
        if not (self.config / "main.cf").exists():
            if run(["postconf", "-h", "multi_instance_enable"]).strip() != "yes":
                run(["postmulti", "-e", "init"])
            run(["postmulti", "-I", self.name, "-e", "create"])
            run(["postmulti", "-i", self.name, "-e", "disable"])
        base = {
            "compatibility_level": "3.7",
            "master_service_disable": "",  # `postmulti create` disables inet services
            "authorized_submit_users": "static:anyone",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "localhost",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.log),
        }
        self.postconf({**base, **params})
        cf = ["postconf", "-c", str(self.config)]
        for line in run([*cf, "-M"]).splitlines():
            name, kind = line.split()[:2]
            if kind == "inet":
                run([*cf, "-M#", f"{name}/inet"])
        if listen is not None:
            run([*cf, "-Me", f"127.0.0.1:{listen}/inet=127.0.0.1:{listen} inet n - n - - smtpd"])
        run([*cf, "-F", "*/*/chroot=n"])  # postwall does not chroot either

    def postconf(self, params: dict[str, str]) -> None:
        run(["postconf", "-c", str(self.config), "-e", *(f"{k}={v}" for k, v in params.items())])

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
            alive = Path(f"/proc/{pid}/comm").read_text().strip() == "master"
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive else None  # a stale pid file survives a stop

    def pids(self) -> list[int]:
        pid = self.master_pid()
        return servers.process_tree(pid) if pid else []

    def pids_named(self, comm: str) -> list[int]:
        out = []
        for pid in self.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    out.append(pid)
        return out

    def start(self) -> None:
        if self.master_pid() is not None:
            self.stop()
        daemon_dir = run(["postconf", "-h", "daemon_directory"]).strip()
        # `master -w` returns once the daemon is up (and skips postfix-script's check).
        run([f"{daemon_dir}/master", "-c", str(self.config), "-w"], limit=30)
        wait_until(self.master_pid, 20, f"{self.name} master")

    def reload(self) -> None:
        run(["postfix", "-c", str(self.config), "reload"])

    def flush(self) -> None:
        run(["postqueue", "-c", str(self.config), "-f"])

    def purge(self) -> None:
        """Delete every queued message. Only while running: a postsuper that finds no
        postlogd writes maillog_file itself, as mail_owner, and cannot create it."""
        if self.queued("maildrop", "incoming", "active", "deferred", "hold", "corrupt"):
            run(["postsuper", "-c", str(self.config), "-d", "ALL"])

    def queued(self, *subdirs: str) -> int:
        return count_files(self.queue, subdirs or ("maildrop", "incoming", "active", "deferred"))

    def stop(self) -> None:
        pid = self.master_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # what `postfix stop` sends
        try:
            wait_until(lambda: self.master_pid() is None, 20, f"{self.name} to stop")
        except BenchError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # master's group is the instance
            wait_until(lambda: self.master_pid() is None, 5, f"{self.name} to die")


class PostfixSink(Sink):
    """A receiving Postfix with STARTTLS (level may) that discards every message: the
    TLS-capable sink (smtp-sink has no TLS). Counts come from its log: discard's
    `status=sent`, smtpd's `connect from` and TLS `connection established` lines."""

    def __init__(self, certs: servers.CertSet) -> None:
        self.port = free_port()
        self.inst = PostfixInstance(SINK_INSTANCE)
        self.certs = certs
        self.describe = (
            f"Postfix instance {SINK_INSTANCE} on 127.0.0.1:{self.port}, STARTTLS offered, "
            "every transport = discard"
        )

    def start(self) -> None:
        self.inst.stop()
        self.inst.create(
            {
                "myhostname": "sink.localdomain",
                "mydestination": "",
                "default_transport": "discard",
                "relay_transport": "discard",
                "local_transport": "discard",
                "virtual_transport": "discard",
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": str(self.certs.cert),
                "smtpd_tls_key_file": str(self.certs.key),
                "smtpd_tls_loglevel": "1",
            },
            listen=self.port,
        )
        self.inst.log.unlink(missing_ok=True)  # counted from the start: keep it short
        self.counter = LogCounter(self.inst.log, SINK_PATTERNS)
        self.inst.start()
        self.inst.purge()
        servers.wait_port("127.0.0.1", self.port, up=True, limit=20)

    def delivered(self) -> int:
        return self.counter.count("sent")

    def sessions(self) -> int | None:
        return self.counter.count("connect")

    def tls_sessions(self) -> int | None:
        return self.counter.count("tls")

    def stop(self) -> None:
        with contextlib.suppress(BenchError):
            self.inst.purge()
        self.inst.stop()


class PostwallSink(Sink):
    """Fallback without Postfix: a second postwall that discards everything, offering
    STARTTLS only in tls mode. Counts come from its log."""

    def __init__(self, workdir: Path, certs: servers.CertSet, tls: bool) -> None:
        self.port = free_port()
        self.server = servers.PostwallServer(
            self.port,
            certs,
            100,
            f"{sys.executable} -m postwall start -c {{config}}",
            "",
            None,
            workdir,
            {"PYTHONPATH": str(REPO / "src")},
        )
        main = self.server.config_dir / "main.cf"
        extra = "mail_owner = root\nmydestination =\nrelay_transport = discard\n"
        if not tls:
            extra += "smtpd_tls_security_level = none\n"
        main.write_text(main.read_text() + extra)
        self.describe = f"postwall on 127.0.0.1:{self.port}, discard, STARTTLS {tls}"
        assert self.server.log_file is not None
        self.counter = LogCounter(self.server.log_file, SINK_PATTERNS)

    def start(self) -> None:
        self.server.start()

    def delivered(self) -> int:
        return self.counter.count("sent")

    def stop(self) -> None:
        self.server.stop()


# ---------------------------------------------------------------------------- MTAs


class PostfixSender:
    """`postfix-drain`: relays everything to the sink; an smtpd on a loopback port takes
    the N submissions."""

    name = "postfix"

    def __init__(self, size: int) -> None:
        self.inst = PostfixInstance(SENDER_INSTANCE)
        self.port = free_port()
        self.size = size
        self.created = False

    def drain(self, sink: Sink, n: int, limit: float) -> dict[str, Any]:
        inst = self.inst
        inst.stop()
        params = {
            "myhostname": "drain.localdomain",
            "relayhost": f"[127.0.0.1]:{sink.port}",
            "smtp_tls_security_level": "may",
            "defer_transports": "smtp",
        }
        if not self.created:
            inst.create(params, listen=self.port)
            self.created = True
        else:
            inst.postconf(params)
        inst.start()
        inst.purge()
        servers.wait_port("127.0.0.1", self.port, up=True, limit=20)
        target = loadgen.Target("127.0.0.1", self.port, SENDER, RECIPIENT)
        loop = loadgen.new_loop()
        try:
            sub = loop.run_until_complete(
                loadgen.run_plain(target, 10, 20, self.size, limit, n)
            ).summary()
        finally:
            loop.close()
        if sub["accepted"] != n:
            raise BenchError(f"postfix accepted {sub['accepted']} of {n}: {sub['errors']}")
        wait_until(
            lambda: inst.queued("deferred") == n and inst.queued() == n,
            limit,
            f"{n} messages in {inst.name}'s deferred queue",
            0.1,
        )
        wait_quiet(inst.pids)
        inst.postconf({"defer_transports": ""})
        old_qmgr = inst.pids_named("qmgr")
        reload_t0 = time.monotonic()
        inst.reload()
        # The old qmgr still has defer_transports; the flush must reach the new one.
        wait_until(lambda: not set(old_qmgr) & set(inst.pids()), 20, "the old qmgr to exit")
        reload_s = time.monotonic() - reload_t0
        log_offset = size_of(inst.log)
        sink0 = sink.delivered(), sink.sessions(), sink.tls_sessions()
        cpu0 = servers.cpu_seconds(inst.pids())
        t0 = time.monotonic()
        inst.flush()
        flushes, last_flush = 1, t0
        deadline = t0 + limit
        while inst.queued():
            if time.monotonic() > deadline:
                raise BenchError(f"postfix: queue not empty after {limit:.0f}s")
            # A flush that reached a qmgr on its way out is lost: send another.
            if inst.queued("deferred") == n and time.monotonic() - last_flush > 3:
                inst.flush()
                flushes, last_flush = flushes + 1, time.monotonic()
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        cpu = servers.cpu_seconds(inst.pids()) - cpu0
        out = finish(self.name, n, elapsed, cpu0, cpu, sink, sink0, inst.log, log_offset, inst.pids)
        out.update({"submission": sub, "reload_s": round(reload_s, 3), "flushes": flushes})
        inst.purge()
        inst.stop()
        count_sessions(out, sink, sink0)
        return out

    def stop(self) -> None:
        with contextlib.suppress(BenchError):
            self.inst.purge()
        self.inst.stop()


class PostwallSender:
    """postwall with a pre-filled queue, started per run from a fresh directory."""

    name = "postwall"

    def __init__(self, workdir: Path, size: int, profile: Path | None) -> None:
        self.workdir = workdir
        self.size = size
        self.profile = profile
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self, base: Path, sink: Sink) -> dict[str, Path]:
        paths = {k: base / k for k in ("etc", "spool", "data")}
        for p in paths.values():
            p.mkdir(parents=True)
        paths["log"] = base / "maillog"
        params = {
            "compatibility_level": "3.7",
            "myhostname": "drain.localdomain",
            "mydestination": "localhost",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "queue_directory": str(paths["spool"]),
            "data_directory": str(paths["data"]),
            "maillog_file": str(paths["log"]),
            "relayhost": f"[127.0.0.1]:{sink.port}",
            "smtp_tls_security_level": "may",
        }
        main = "".join(f"{k} = {v}\n" for k, v in params.items())
        (paths["etc"] / "main.cf").write_text("# written by bench/drain.py\n" + main)
        # postwall needs one smtpd listener to run; nothing connects to it here.
        (paths["etc"] / "master.cf").write_text(f"127.0.0.1:{free_port()} inet n - n - - smtpd\n")
        return paths

    def fill(self, spool: Path, n: int) -> None:
        """N queue files as cleanup would commit them after an SMTP submission."""
        store = QueueStore(spool)
        run_id = f"{int(time.time())}.{os.getpid()}.{self.runs}"

        def one(i: int) -> str:
            now = time.time()
            qid = store.new_queue_id()
            received = (
                "Received: from loadgen.bench.invalid (localhost [127.0.0.1])\r\n"
                f"\tby drain.localdomain (postwall) with ESMTP id {qid}\r\n"
                f"\tfor <{RECIPIENT}>; {time.strftime('%a, %d %b %Y %H:%M:%S +0000')}\r\n"
            ).encode()
            content = received + message(self.size, i, run_id)
            env = Envelope(
                queue_id=qid,
                sender=SENDER,
                recipients=[Recipient(RECIPIENT)],
                arrival_time=now,
                client_name="localhost",
                client_addr="127.0.0.1",
                client_port=40000,
                helo="loadgen.bench.invalid",
                protocol="ESMTP",
                size=len(content),
            )
            return store.commit_sync(env, content)

        try:
            # Several committers at once, so the store writes them in group commits.
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                done = list(pool.map(one, range(n)))
        finally:
            store.close()
        if len(set(done)) != n or count_files(spool, ("incoming",)) != n:
            raise BenchError(f"postwall queue fill: {count_files(spool, ('incoming',))} of {n}")

    def drain(self, sink: Sink, n: int, limit: float) -> dict[str, Any]:
        self.runs += 1
        base = self.workdir / f"postwall-run{self.runs}"
        paths = self._config(base, sink)
        self.fill(paths["spool"], n)
        argv = [sys.executable]
        if self.profile is not None:
            self.profile.mkdir(parents=True, exist_ok=True)
            self.profile.chmod(0o1777)  # written at exit, after the drop to mail_owner
            argv += ["-m", "cProfile", "-o", str(self.profile / f"postwall-run{self.runs}.prof")]
        argv += ["-m", "postwall", "start", "-c", str(paths["etc"])]
        with open(base / "stdio.log", "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                start_new_session=True,
            )
        sink0 = sink.delivered(), sink.sessions(), sink.tls_sessions()
        root = self.proc.pid

        def started() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                tail = (base / "stdio.log").read_text(errors="replace")[-600:]
                raise BenchError(f"postwall exited {self.proc.returncode}: {tail}")
            return b"daemon started" in read_from(paths["log"], 0)

        wait_until(started, 60, "postwall's `daemon started`", interval=0.005)
        cpu0 = servers.cpu_seconds(servers.process_tree(root))
        main0 = thread_cpu(root, root)
        t0 = time.monotonic()
        deadline = t0 + limit
        while count_files(paths["spool"], ("incoming", "active", "deferred")):
            if time.monotonic() > deadline:
                raise BenchError(f"postwall: queue not empty after {limit:.0f}s")
            if self.proc.poll() is not None:
                raise BenchError(f"postwall exited {self.proc.returncode} while draining")
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        cpu = servers.cpu_seconds(servers.process_tree(root)) - cpu0
        main_cpu = thread_cpu(root, root) - main0

        def pids() -> list[int]:
            return servers.process_tree(root)

        out = finish(self.name, n, elapsed, cpu0, cpu, sink, sink0, paths["log"], 0, pids)
        # The event loop's thread alone: what bounds a single-process MTA's rate.
        out["main_thread_cpu_s"] = round(main_cpu, 3)
        out["main_thread_busy"] = main_cpu / elapsed
        left = {s: count_files(paths["spool"], (s,)) for s in ("hold", "corrupt")}
        if any(left.values()):
            out["problems"].append(f"left in the queue: {left}")
        self.stop()
        count_sessions(out, sink, sink0)
        shutil.rmtree(paths["spool"], ignore_errors=True)
        return out

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def finish(
    name: str,
    n: int,
    elapsed: float,
    cpu0: float,
    cpu: float,
    sink: Sink,
    sink0: tuple[int, int | None, int | None],
    log: Path,
    log_offset: int,
    pids: Callable[[], list[int]],
) -> dict[str, Any]:
    """Check the run (N `status=sent`, N at the sink) and collect its figures. CPU until
    the tree is quiet again is recorded too (`cpu_settled_s`)."""
    problems = []
    try:
        wait_until(lambda: sum(statuses(log, log_offset).values()) >= n, 30, "N status= lines")
    except BenchError as exc:
        problems.append(str(exc))
    try:
        wait_until(lambda: sink.delivered() - sink0[0] >= n, 60, "N messages at the sink")
    except BenchError as exc:
        problems.append(str(exc))
    got = statuses(log, log_offset)
    at_sink = sink.delivered() - sink0[0]
    if got != Counter({"sent": n}):
        problems.append(f"{name} logged {dict(got)}, expected {{'sent': {n}}}")
    if at_sink != n:
        problems.append(f"the sink counted {at_sink} messages, expected {n}")
    wait_quiet(pids)
    settled = servers.cpu_seconds(pids()) - cpu0
    return {
        "mta": name,
        "messages": n,
        "drain_s": round(elapsed, 3),
        "msgs_per_s": n / elapsed,
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_msg": cpu * 1000 / n,
        "cpu_settled_s": round(settled, 3),
        "statuses": dict(got),
        "sink_messages": at_sink,
        "problems": problems,
    }


def count_sessions(
    out: dict[str, Any], sink: Sink, sink0: tuple[int, int | None, int | None]
) -> None:
    """Sessions the sink saw during the run, read once the MTA has stopped (and sent
    QUIT on its cached connections): smtp-sink counts a session when it ends."""

    def now() -> tuple[int | None, int | None]:
        return sink.sessions(), sink.tls_sessions()

    before, after = None, now()
    deadline = time.monotonic() + 5
    while before != after and time.monotonic() < deadline:
        time.sleep(0.3)
        before, after = after, now()
    for key, value, start in (
        ("sink_sessions", after[0], sink0[1]),
        ("sink_tls_sessions", after[1], sink0[2]),
    ):
        out[key] = value - start if value is not None and start is not None else None


# --------------------------------------------------------------------------- report


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {}
    out: dict[str, Any] = {}
    keys = ("msgs_per_s", "cpu_ms_per_msg", "drain_s", "main_thread_busy")
    for key in (*keys, "sink_sessions", "sink_tls_sessions"):
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
            out[key + "_range"] = (min(values), max(values))
    return out


def table(results: dict[str, Any]) -> str:
    lines = [f"{'figure':34} {'postfix':>20} {'postwall':>20} {'ratio':>6}"]
    rows = [
        ("msgs/s", "msgs_per_s", "{:,.0f}"),
        ("CPU ms/msg", "cpu_ms_per_msg", "{:.2f}"),
        ("drain s", "drain_s", "{:.2f}"),
        ("event-loop thread busy", "main_thread_busy", "{:.0%}"),
        ("sessions at the sink", "sink_sessions", "{:,.0f}"),
        ("TLS sessions at the sink", "sink_tls_sessions", "{:,.0f}"),
    ]
    for mode, per in results["summary"].items():
        pf, pw = per.get("postfix", {}), per.get("postwall", {})
        for label, key, fmt in rows:
            a, b = pf.get(key), pw.get(key)
            if a is None and b is None:
                continue

            def cell(fig: dict[str, Any], v: float | None, key: str = key, fmt: str = fmt) -> str:
                if v is None:
                    return "-"
                lo, hi = fig[key + "_range"]
                spread = f" ({fmt.format(lo)}-{fmt.format(hi)})" if lo != hi else ""
                return fmt.format(v) + (spread if key != "sink_tls_sessions" else "")

            ratio = f"{b / a:.2f}" if a and b is not None and key != "drain_s" else ""
            lines.append(f"{mode + ': ' + label:34} {cell(pf, a):>20} {cell(pw, b):>20} {ratio:>6}")
    for note in results["notes"]:
        lines.append(f"note: {note}")
    for r in results["runs"]:
        for problem in r.get("problems", []) + ([r["error"]] if "error" in r else []):
            lines.append(f"{r['mode']} {r['mta']} run {r['repeat']}: {problem}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def have_postfix() -> bool:
    return all(shutil.which(t) for t in ("postconf", "postmulti", "smtp-sink", "postqueue"))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (Postfix instances, smtp-sink -u, /proc of postfix)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop everything.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    postfix = have_postfix()
    notes = []
    only = args.only
    if not postfix:
        notes.append(
            "Postfix is not installed: postwall only, against a postwall sink (discard); "
            "not comparable with figures measured against smtp-sink or Postfix"
        )
        only = "postwall"
    results: dict[str, Any] = {
        "started": started,
        "command": shlex.join(["python3", os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": notes,
        "runs": [],
        "summary": {},
    }
    if args.profile:
        notes.append(f"postwall ran under cProfile (profiles in {args.profile})")
    workdir = Path(tempfile.mkdtemp(prefix="postwall-drain-"))
    # postwall drops privileges to mail_owner (postfix): it must reach its queue below.
    workdir.chmod(0o755)
    ok = True
    senders: list[PostfixSender | PostwallSender] = []
    sink: Sink | None = None
    try:
        certs = servers.make_certs(workdir, args.key_type)
        if only in ("both", "postfix"):
            senders.append(PostfixSender(args.size))
        if only in ("both", "postwall"):
            senders.append(PostwallSender(workdir, args.size, args.profile))
        for mode in args.modes:
            if postfix:
                sink = SmtpSink(workdir) if mode == "plain" else PostfixSink(certs)
            else:
                sink = PostwallSink(workdir / f"sink-{mode}", certs, tls=mode == "tls")
            print(f"== {mode}: sink {sink.describe}", file=sys.stderr)
            sink.start()
            results["sinks"] = {**results.get("sinks", {}), mode: sink.describe}
            per: dict[str, list[dict[str, Any]]] = {s.name: [] for s in senders}
            for rep in range(args.repeat):
                # Alternate the order so a drift in machine load hits both alike.
                for sender in senders if rep % 2 == 0 else senders[::-1]:
                    print(f"   {sender.name} run {rep + 1}/{args.repeat}", file=sys.stderr)
                    try:
                        fig = sender.drain(sink, args.messages, args.limit)
                    except BenchError as exc:
                        fig = {"mta": sender.name, "error": str(exc)}
                        sender.stop()
                    fig.update({"mode": mode, "repeat": rep + 1})
                    if fig.get("problems") or "error" in fig:
                        ok = False
                    results["runs"].append(fig)
                    per[sender.name].append(fig)
                    if "error" in fig:
                        print(f"   FAILED: {fig['error']}", file=sys.stderr)
                    else:
                        print(
                            f"   {fig['msgs_per_s']:,.0f} msgs/s, "
                            f"{fig['cpu_ms_per_msg']:.2f} CPU ms/msg {fig['problems'] or ''}",
                            file=sys.stderr,
                        )
            results["summary"][mode] = {name: summary(runs) for name, runs in per.items()}
            sink.stop()
            sink = None
    except KeyboardInterrupt:
        ok = False
        notes.append("interrupted")
    except BenchError as exc:
        ok = False
        notes.append(f"stopped: {exc}")
    finally:
        for sender in senders:
            with contextlib.suppress(Exception):
                sender.stop()
        if sink is not None:
            with contextlib.suppress(Exception):
                sink.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} (configs, postwall logs) for inspection", file=sys.stderr)
    out = servers.save_results(results, args.results, f"drain-{started}.json")
    print(table(results))
    print(f"raw figures: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
