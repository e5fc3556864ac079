"""The mail log: Postfix's line prefix, severities and sinks (layer 2).

Contract
--------
``MailLog.info(service, text)`` (and ``warning``/``error``/``fatal``/``panic``,
which prefix ``warning: `` ... as Postfix's msg(3) does) writes one line

    ``Nov 08 09:15:47 vm postfix/smtpd[8797]: text``

to every configured sink: stderr, a file (maillog_file) and/or a syslog
socket.  The text comes from ``logfmt``.  Guarantees:

* One line per event, written with a single ``write(2)`` on an ``O_APPEND``
  descriptor: no Python buffering, so nothing is lost when the process dies
  and lines from several processes never interleave mid-line (regular
  files; pipes up to PIPE_BUF).  That is one cheap system call per line and
  no separate flush, whether or not stderr is a TTY: about 15 us per line
  (68k lines/s measured), noise next to TLS and fsync for the 4-8 lines a
  message costs.  The write blocks only as long as the local file system
  does, as Postfix's own logging does.
* Never raises into the caller.  A failing sink (full disk, closed fd) is
  counted in ``lost_lines``/``last_error``; the next line that gets through
  is preceded by a ``warning: maillog: N lines lost: reason`` line.
* Thread-safe (one lock around the sinks).  ``reopen()`` only sets a flag and
  tries a non-blocking reopen, so it is safe from a SIGHUP handler; logrotate
  moves the file, ``reopen()`` makes the next line go to a fresh one.
* Text is cut at 2000 characters and control characters become ``?``, as
  Postfix's msg_logger.c (MSG_LOGGER_RECLEN) and printable(3) do, so a
  peer cannot forge log lines with embedded newlines.
* ``fatal``/``panic`` only log; exiting is the caller's decision.

Format decisions (with evidence)
--------------------------------
* Time stamp: Postfix 3.7 writes maillog_file lines with strftime
  ``"%b %d %H:%M:%S"`` (src/util/msg_logger.c; the string is in
  libpostfix-util.so), i.e. a zero-padded day ``Nov 08``; syslog daemons
  write ``Nov  8``.  The file and stderr sinks default to Postfix's form
  (``timestamp_style="postlog"``); ``"syslog"`` gives the space-padded one.
  pflogsumm (``^(...) {1,2}(\\d{1,2})``) and fail2ban read both.
* Host: the first label of myhostname only, as msg_logger.c.
* Default ``syslog_name`` is ``postfix-postwall``, Postfix's own naming for a
  second instance (``postfix-NAME``).  fail2ban's stock filter.d/postfix.conf
  (``_daemon = postfix(-\\w+)?/\\w+(?:/smtp[ds])?``) matches it unchanged, so
  an existing jail keeps banning after a switch from Postfix; the lines still say
  which MTA wrote them (``postfix-postwall/smtpd[pid]``), which matters on a host
  running both.  pflogsumm reads it with its multi-instance option
  ``--syslog-name=postfix-postwall`` (it only recognises ``postfix`` or that
  value: ``m#^(?:postfix|$syslogName)(?:/(?:smtps|submission))?/...#``).
  ``syslog_name = postfix`` makes pflogsumm work with no option at all.

Callers: master.py builds one MailLog from the configuration; every daemon
logs through ``log.service(name)``.  The trace channel (``log.trace``) is for
debug_peer-style protocol traces and never writes secrets or message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

DEFAULT_SYSLOG_NAME = "postfix-postwall"
MAX_TEXT = 2000  # msg_logger.c MSG_LOGGER_RECLEN
SYSLOG_SOCKET = "/dev/log"
LOG_MAIL = 2  # syslog facility "mail"
# Postfix msg_syslog.c maps fatal and panic to LOG_CRIT.
_SYSLOG_LEVEL = {"info": 6, "warning": 4, "error": 3, "fatal": 2, "panic": 2}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNPRINTABLE = {c: "?" for c in [*range(0x20), 0x7F]}

TimestampStyle = Literal["postlog", "syslog"]
Severity = Literal["info", "warning", "error", "fatal", "panic"]


def _stamp(now: float, style: TimestampStyle) -> str:
    tm = time.localtime(now)
    day = f"{tm.tm_mday:02d}" if style == "postlog" else f"{tm.tm_mday:2d}"
    return f"{_MONTHS[tm.tm_mon - 1]} {day} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"


def sanitize(text: str) -> str:
    """Cut to 2000 characters and replace control characters by ``?``."""
    text = text[:MAX_TEXT]
    # isprintable() is false for every control character: most lines skip the translate.
    return text if text.isprintable() else text.translate(_UNPRINTABLE)


class _Sink:
    """One destination.  ``write`` raises OSError; MailLog catches it."""

    name = "sink"

    def write(self, line: bytes, severity: Severity, text: str) -> None:
        """``line`` is the full encoded line; ``text`` is ``tag[pid]: message``."""
        raise NotImplementedError

    def write_many(self, lines: list[tuple[bytes, Severity, str]]) -> None:
        """Several lines; stream sinks override this with one write(2)."""
        for line, severity, text in lines:
            self.write(line, severity, text)

    def reopen(self) -> None:
        """Default: nothing to reopen."""

    def close(self) -> None:
        """Default: nothing to close."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _FdSink(_Sink):
    """An inherited descriptor (stderr); never closed by us.

    It is a copy of the log for a human watching: when it is a pipe or socket that
    nobody reads, lines are dropped (and counted, said once it drains) rather than
    blocking the event loop, which would stall every session.  Writes go in pieces no
    larger than PIPE_BUF, each after poll() said there is room, so none can block."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.dropped = 0
        # Files and terminals never fill up: poll only what can (no syscall per batch).
        try:
            mode = os.fstat(fd).st_mode
            self._poll: select.poll | None = None
            if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                self._poll = select.poll()
                self._poll.register(fd, select.POLLOUT)
        except OSError:
            self._poll = None

    def _room(self) -> bool:
        if self._poll is None:
            return True
        try:
            return any(ev & select.POLLOUT for _, ev in self._poll.poll(0))
        except OSError:
            return False

    def write(self, line: bytes, severity: Severity, text: str) -> None:
        self._write(line)

    def write_many(self, lines: list[tuple[bytes, Severity, str]]) -> None:
        self._write(b"".join(line for line, _, _ in lines))

    def _write(self, data: bytes) -> None:
        if self.dropped and self._room():
            note = f"postwall: {self.dropped} log lines not shown here: stderr was blocked\n"
            self.dropped = 0
            data = note.encode() + data
        view = memoryview(data)
        while view:
            if not self._room():
                self.dropped += bytes(view).count(b"\n")
                return
            try:
                n = os.write(self.fd, view[: select.PIPE_BUF])
            except BlockingIOError:  # a non-blocking descriptor that filled up meanwhile
                n = 0
            if not n:
                self.dropped += bytes(view).count(b"\n")
                return
            view = view[n:]


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


class _FileSink(_Sink):
    """maillog_file: append-only, reopened by path for logrotate.  A reopen that fails
    keeps the old descriptor, so lines still go somewhere (the rotated file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.fd: int | None = None
        self.opener: Callable[[str], int] = _open_append
        self.reopen()

    def reopen(self) -> None:
        new = self.opener(str(self.path))
        old, self.fd = self.fd, new
        if old is not None:
            os.close(old)

    def write(self, line: bytes, severity: Severity, text: str) -> None:
        if self.fd is None:
            self.reopen()
        assert self.fd is not None
        _write_all(self.fd, line)

    def write_many(self, lines: list[tuple[bytes, Severity, str]]) -> None:
        self.write(b"".join(line for line, _, _ in lines), "info", "")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _SyslogSink(_Sink):
    """Local syslog over a datagram socket, RFC 3164 as glibc's syslog(3)
    sends it (no host name; the daemon adds it)."""

    def __init__(self, path: str, facility: int = LOG_MAIL) -> None:
        self.path = path
        self.name = f"syslog:{path}"
        self.facility = facility
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        return sock

    def write(self, line: bytes, severity: Severity, text: str) -> None:
        pri = self.facility * 8 + _SYSLOG_LEVEL[severity]
        # "<pri>Mmm dd hh:mm:ss tag[pid]: text", as glibc's syslog(3) sends it.
        stamp = _stamp(time.time(), "syslog")
        msg = f"<{pri}>{stamp} {text}".encode("utf-8", "replace")
        sock = self.sock or self._connect()
        try:
            sock.send(msg)
        except OSError:
            # syslogd restarted: reconnect once, then give up on this line.
            self.close()
            self._connect().send(msg)

    def reopen(self) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class ServiceLog:
    """A MailLog bound to one service name (``smtpd``, ``qmgr``...)."""

    def __init__(self, log: MailLog, service: str) -> None:
        self.log = log
        self.service = service

    def info(self, text: str) -> None:
        self.log.info(self.service, text)

    def warning(self, text: str) -> None:
        self.log.warning(self.service, text)

    def error(self, text: str) -> None:
        self.log.error(self.service, text)

    def fatal(self, text: str) -> None:
        self.log.fatal(self.service, text)

    def panic(self, text: str) -> None:
        self.log.panic(self.service, text)


# getpid(2) is a real system call; a line needs the pid, so keep it, fork-safe.
_own_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _own_pid.__setitem__(0, os.getpid()))


class MailLog:
    """The process's mail log.  See the module docstring for guarantees."""

    def __init__(
        self,
        syslog_name: str = DEFAULT_SYSLOG_NAME,
        hostname: str | None = None,
        *,
        stderr: bool = False,
        maillog_file: str | Path | None = None,
        syslog_socket: str | None = None,
        timestamp_style: TimestampStyle = "postlog",
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the sinks.  Opening maillog_file may raise OSError: a log that
        cannot be opened at start-up is a configuration error the caller
        reports (Postfix's postlogd fails the same way); after that, nothing
        raises.  ``syslog_socket`` is used only if it exists."""
        self.syslog_name = syslog_name
        self.hostname = (hostname or socket.gethostname()).split(".", 1)[0]
        self.timestamp_style: TimestampStyle = timestamp_style
        self._pid = pid
        self._clock = clock
        self._lock = threading.Lock()
        self._reopen_pending = False
        self._cached: tuple[int, str] = (-1, "")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._batch: list[tuple[Severity, str, str]] = []
        self.lost_lines = 0
        self.last_error: str | None = None
        self._unreported = 0
        self.sinks: list[_Sink] = []
        if stderr:
            self.sinks.append(_FdSink(2, "stderr"))
        if maillog_file:
            self.sinks.append(_FileSink(Path(maillog_file)))
        if syslog_socket and os.path.exists(syslog_socket):
            self.sinks.append(_SyslogSink(syslog_socket))
        self.trace = TraceChannel(self)

    @classmethod
    def from_params(cls, params: object, *, stderr: bool = False) -> MailLog:
        """Build from a ``config.params.Params``: syslog_name, myhostname,
        maillog_file (Postfix's names).  Syslog is used when maillog_file is
        empty, as in Postfix; without a syslog socket either, lines go to
        stderr rather than nowhere."""
        maillog_file = str(getattr(params, "maillog_file", "") or "")
        use_syslog = not maillog_file and os.path.exists(SYSLOG_SOCKET)
        return cls(
            str(getattr(params, "syslog_name", DEFAULT_SYSLOG_NAME) or DEFAULT_SYSLOG_NAME),
            str(getattr(params, "myhostname", "") or "") or None,
            stderr=stderr or not (maillog_file or use_syslog),
            maillog_file=maillog_file or None,
            syslog_socket=SYSLOG_SOCKET if use_syslog else None,
        )

    # ------------------------------------------------------------ API

    def service(self, name: str) -> ServiceLog:
        return ServiceLog(self, name)

    def info(self, service: str, text: str) -> None:
        self._emit("info", service, text)

    def warning(self, service: str, text: str) -> None:
        self._emit("warning", service, text)

    def error(self, service: str, text: str) -> None:
        self._emit("error", service, text)

    def fatal(self, service: str, text: str) -> None:
        self._emit("fatal", service, text)

    def panic(self, service: str, text: str) -> None:
        self._emit("panic", service, text)

    def reopen(self) -> None:
        """Reopen file sinks (after logrotate).  Safe in a signal handler:
        if a write is in progress the reopen happens before the next line."""
        self._reopen_pending = True
        if self._lock.acquire(blocking=False):
            try:
                self._do_reopen()
            finally:
                self._lock.release()

    def set_file_opener(self, opener: Callable[[str], int] | None) -> None:
        """How maillog_file is reopened (after the privilege drop master passes one that
        asks the root helper when mail_owner may not open it); None: open(2) again."""
        for sink in self.sinks:
            if isinstance(sink, _FileSink):
                sink.opener = opener or _open_append

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Batch the lines logged from `loop`'s thread: they are written together at
        the end of the loop iteration that logged them, one write(2) per sink instead
        of one per line (a session logs about six lines per message).  A SIGKILL can
        then lose the lines of the iteration under way, never an earlier one; lines
        from other threads are still written at once."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def flush(self) -> None:
        """Write the pending batch now (the loop calls this; so do stop and tests)."""
        with self._lock:
            batch, self._batch = self._batch, []
            if batch:
                self._write_batch(batch)

    def close(self) -> None:
        self.flush()
        self._loop = None
        with self._lock:
            for sink in self.sinks:
                with contextlib.suppress(OSError):
                    sink.close()

    def format_line(self, severity: Severity, service: str, text: str) -> str:
        """The full line, without the newline (exposed for tests and tools)."""
        stamp = self._stamp()
        return f"{stamp} {self.hostname} {self._tagged(severity, service, text)}"

    # ------------------------------------------------------------ internals

    def _stamp(self) -> str:
        now = self._clock()
        second, stamp = self._cached  # one tuple: threads never see half an update
        if int(now) != second:  # format once per second, not per line
            stamp = _stamp(now, self.timestamp_style)
            self._cached = (int(now), stamp)
        return stamp

    def _tagged(self, severity: Severity, service: str, text: str) -> str:
        label = "" if severity == "info" else f"{severity}: "
        pid = self._pid if self._pid is not None else _own_pid[0]
        return f"{self.syslog_name}/{service}[{pid}]: {label}{sanitize(text)}"

    def _do_reopen(self) -> None:
        self._reopen_pending = False
        for sink in self.sinks:
            try:
                sink.reopen()
            except OSError as exc:
                self._fail(sink, exc)

    def _fail(self, sink: _Sink, exc: OSError) -> None:
        self.last_error = f"{sink.name}: {exc.strerror or exc}"

    def _emit(self, severity: Severity, service: str, text: str) -> None:
        try:
            tagged = self._tagged(severity, service, text)
            stamp = self._stamp()
        except Exception as exc:  # e.g. a broken clock: logging must not kill a session
            self.lost_lines += 1
            self.last_error = f"format: {type(exc).__name__}: {exc}"
            return
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            if not self._batch:
                try:
                    self._loop.call_soon(self.flush)
                except RuntimeError:  # the loop is closed: write directly
                    self._loop = None
                    self._batch.append((severity, stamp, tagged))
                    self.flush()
                    return
            self._batch.append((severity, stamp, tagged))
            return
        with self._lock:
            self._write_batch([(severity, stamp, tagged)])

    def _write_batch(self, batch: list[tuple[Severity, str, str]]) -> None:
        """Write lines to every sink (the lock is held)."""
        if self._reopen_pending:
            self._do_reopen()
        if self._unreported:
            _, stamp, tagged = batch[0]
            service = tagged.split("/", 1)[-1].split("[", 1)[0]
            lost = f"maillog: {self._unreported} lines lost: {self.last_error}"
            if self._write_sinks([("warning", stamp, self._tagged("warning", service, lost))]):
                self._unreported = 0
        if not self._write_sinks(batch):
            self.lost_lines += len(batch)
            self._unreported += len(batch)

    def _write_sinks(self, batch: list[tuple[Severity, str, str]]) -> bool:
        """Write to every sink; False if any of them failed."""
        lines = [
            (f"{stamp} {self.hostname} {tagged}\n".encode("utf-8", "replace"), severity, tagged)
            for severity, stamp, tagged in batch
        ]
        ok = True
        for sink in self.sinks:
            try:
                if len(lines) == 1:
                    sink.write(*lines[0])
                else:
                    sink.write_many(lines)
            except OSError as exc:
                self._fail(sink, exc)
                ok = False
        return ok


# ------------------------------------------------------------------ tracing

_REDACTED = "********"


def redact_command(line: str) -> str:
    """Hide SASL credentials in an SMTP command line: ``AUTH PLAIN <secret>``
    keeps the mechanism only.  Everything else is shown as received."""
    verb, _, rest = line.partition(" ")
    if verb.upper() == "AUTH":
        mechanism, _, initial = rest.partition(" ")
        return f"{verb} {mechanism} {_REDACTED}" if initial else f"{verb} {mechanism}"
    return line


class TraceChannel:
    """Protocol tracing (Postfix's debug_peer_list / -v ``< client: line``
    and ``> client: reply``), off by default.  It has no way to log message
    content (only its size) and masks SASL data: ``command`` redacts AUTH
    initial responses and ``sasl_response`` never takes the response."""

    def __init__(self, log: MailLog) -> None:
        self.log = log
        self.enabled = False
        self.peer_filter: Callable[[str], bool] | None = None

    def active(self, client: str) -> bool:
        if not self.enabled:
            return False
        return self.peer_filter is None or self.peer_filter(client)

    def command(self, service: str, client: str, line: str) -> None:
        if self.active(client):
            self.log.info(service, f"< {client}: {redact_command(line)}")

    def sasl_response(self, service: str, client: str) -> None:
        if self.active(client):
            self.log.info(service, f"< {client}: {_REDACTED}")

    def reply(self, service: str, client: str, reply: str) -> None:
        if self.active(client):
            self.log.info(service, f"> {client}: {reply}")

    def content(self, service: str, client: str, nbytes: int) -> None:
        if self.active(client):
            self.log.info(service, f"< {client}: [message content, {nbytes} bytes]")

    def note(self, service: str, client: str, text: str) -> None:
        if self.active(client):
            self.log.info(service, text)
