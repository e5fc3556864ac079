"""Delivery to a command, as Postfix's local(8) runs mailbox_command and `|command` aliases.

Who calls it: delivery/local.py, in a process that is root or already the target user
(a forked child of the server, or of the root DeliveryHelper).  Nothing here decides
*which* command may run: local.py takes mailbox_command from main.cf and alias commands
from the alias tables, never from a request of the unprivileged side.

Contract of `run_command` (local/command.c and global/pipe_command.c of Postfix 3.7,
facts only): the command runs as `uid`/`gid` (primary group only; root becomes
default_privs, as local(8)'s "DELIVERY RIGHTS"), in its own session, with a clean
environment: PATH=/usr/bin:/bin, the export_environment names, then HOME, LOGNAME,
USER, SENDER, RECIPIENT, LOCAL, SHELL, DOMAIN, EXTENSION, ORIGINAL_RECIPIENT and the
CLIENT_* / SASL_* values when known, each censored through command_expansion_filter
(other characters become `_`).  Its working directory is command_execution_directory
($user, $home, $extension... expanded through execution_directory_expansion_filter)
or else the queue directory.  The command line is never `$name`-expanded by us
(postconf(5): mailbox_command "is not subjected to $name substitutions"; the shell
expands `$EXTENSION` from the environment).  Without local_command_shell it is exec'ed
directly when it has only `command_expansion_filter`-safe characters and blanks, else
given to `/bin/sh -c`; a shell given in local_command_shell always runs it.

Standard input is the message as MAIL_COPY_FROM | RETURN_PATH | ORIG_RCPT | DELIVERED
writes it: a `From SENDER  DATE` line, Return-Path, X-Original-To, Delivered-To, the
content with LF line ends; no `>From` quoting and no empty line at the end.  Up to 4096
bytes of standard output and error are kept (tabs and newlines become spaces, other
unprintable bytes `_`) for the reason.  command_time_limit bounds the whole run; the
process group is then killed.  mailbox_size_limit bounds any file the command writes
(RLIMIT_FSIZE); its umask is 077, as under Postfix's master.  Exit status per
sysexits.h with Postfix's enhanced codes (`EXIT_CODES`); output that begins with an
enhanced status code wins over them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import resource
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postwall.config.maincf import Expander, ExpandError
from postwall.delivery import DeliveryResult, copy_head, dsn_split, lf_lines

__all__ = [
    "EXIT_CODES",
    "CommandSettings",
    "CommandTarget",
    "alias_items",
    "command_argv",
    "command_environment",
    "exit_result",
    "run_command",
    "split_recipient",
    "table_owner",
]

SAFE_CHARS = "1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
DEFAULT_PATH = "/usr/bin:/bin"  # glibc's _PATH_DEFPATH
OUTPUT_MAX = 4096  # Postfix reads one VSTREAM_BUFSIZE of command output

# sysexits.h codes, Postfix's global/sys_exits.c: (enhanced status, text).
EXIT_CODES: dict[int, tuple[str, str]] = {
    64: ("5.3.0", "command line usage error"),
    65: ("5.6.0", "data format error"),
    66: ("5.3.0", "cannot open input"),
    67: ("5.1.1", "user unknown"),
    68: ("5.1.2", "host name unknown"),
    69: ("5.3.0", "service unavailable"),
    70: ("5.3.0", "internal software error"),
    71: ("4.3.0", "system resource problem"),
    72: ("5.3.0", "critical OS file missing"),
    73: ("5.2.0", "can't create user output file"),
    74: ("5.3.0", "input/output error"),
    75: ("4.3.0", "temporary failure"),
    76: ("5.5.0", "remote error in protocol"),
    77: ("5.7.0", "permission denied"),
    78: ("5.3.5", "local configuration error"),
}

# Table types that are files (config/tables.py opens these from a path).
_FILE_TABLES = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash", "regexp", "pcre")


@dataclass(frozen=True)
class CommandSettings:
    """The parameters command delivery obeys (names and defaults as Postfix's)."""

    shell: str = ""  # local_command_shell
    time_limit: float = 1000.0  # command_time_limit
    exec_directory: str = ""  # command_execution_directory (raw)
    export_environment: tuple[str, ...] = ("TZ", "MAIL_CONFIG", "LANG")
    import_environment: tuple[str, ...] = ("MAIL_CONFIG", "TZ", "LANG=C")
    cmd_filter: str = SAFE_CHARS  # command_expansion_filter
    exec_filter: str = SAFE_CHARS  # execution_directory_expansion_filter
    recipient_delimiter: str = ""
    queue_directory: str = "/var/spool/postfix"
    config_directory: str = "/etc/postfix"
    size_limit: int = 51200000  # mailbox_size_limit
    default_privs: str = "nobody"

    @classmethod
    def from_params(cls, params: Any) -> CommandSettings:
        """From a config.params.Params (or anything with those attributes)."""
        return cls(
            shell=params.local_command_shell,
            time_limit=float(params.command_time_limit),
            exec_directory=params.command_execution_directory,
            export_environment=tuple(params.export_environment),
            import_environment=tuple(params.import_environment),
            cmd_filter=params.command_expansion_filter,
            exec_filter=params.execution_directory_expansion_filter,
            recipient_delimiter=params.recipient_delimiter,
            queue_directory=params.queue_directory,
            config_directory=params.config_directory,
            size_limit=int(params.mailbox_size_limit),
            default_privs=params.default_privs,
        )

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> CommandSettings:
        fields = {f.name for f in dataclasses.fields(cls)}
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**{k: v for k, v in clean.items() if k in fields})  # type: ignore[arg-type]


@dataclass(frozen=True)
class CommandTarget:
    """One command delivery: what runs, as whom, and for which recipient."""

    command: str
    uid: int
    gid: int
    user: str  # USER and LOGNAME: the bare recipient name (or alias name)
    recipient: str  # RECIPIENT: the whole address being delivered
    sender: str
    original: str = ""  # ORIGINAL_RECIPIENT
    delivered: str = ""  # the Delivered-To: value (default: recipient)
    home: str | None = None
    shell: str | None = None
    client: tuple[tuple[str, str], ...] = ()  # CLIENT_ADDRESS, ... as recorded


def split_recipient(address: str, delimiter: str) -> tuple[str, str | None, str, str | None]:
    """(local, domain, user, extension) as local(8) splits a recipient: the local part
    lowercased, the domain after the last @, and with a recipient_delimiter the user
    before the first delimiter character and the extension after it."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    local = local.lower()
    user, extension = local, None
    if delimiter:
        cut = min((i for i, c in enumerate(local) if c in delimiter), default=-1)
        if cut > 0:
            user, extension = local[:cut], local[cut + 1 :]
    return local, (domain or None), user, extension


def alias_items(value: str) -> list[str]:
    """An aliases(5) right-hand side as local(8) reads it: comma-separated, commas and
    blanks inside double quotes kept, a wholly quoted item unquoted (`"|cmd a, b"`)."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    out = []
    for item in (i.strip() for i in items):
        if len(item) >= 2 and item[0] == item[-1] == '"':
            item = re.sub(r"\\(.)", r"\1", item[1:-1])
        if item:
            out.append(item)
    return out


def table_owner(ref: str, base: Path) -> int | None:
    """The owner of a file-based table (whose `|command` and `/file` aliases run with its
    owner's rights); None for a table that is no file.  postwall reads the source file,
    so that is the file asked (Postfix asks the .db postalias made from it)."""
    spec = ref.strip()
    while spec.startswith("proxy:"):
        spec = spec[len("proxy:") :]
    kind, _colon, name = spec.partition(":")
    if kind.lower() not in _FILE_TABLES:
        return None
    path = Path(name) if Path(name).is_absolute() else base / name
    return os.stat(path).st_uid


def _censor(value: str, allowed: str) -> str:
    return "".join(c if c in allowed else "_" for c in value)


def _local_attrs(target: CommandTarget, settings: CommandSettings) -> dict[str, str | None]:
    local, domain, _user, extension = split_recipient(
        target.recipient, settings.recipient_delimiter
    )
    return {
        "user": target.user,
        "home": target.home,
        "shell": target.shell,
        "recipient": target.recipient,
        "extension": extension,
        "domain": domain,
        "local": local,
        "recipient_delimiter": settings.recipient_delimiter or None,
    }


def command_environment(
    target: CommandTarget, settings: CommandSettings, parent: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The command's whole environment, in local(8)'s order."""
    parent = os.environ if parent is None else parent
    env: dict[str, str] = {}
    # What Postfix's master imported (import_environment), then kept (export_environment).
    imported: dict[str, str] = {"MAIL_CONFIG": settings.config_directory}
    for item in settings.import_environment:
        name, eq, value = item.partition("=")
        if eq:
            imported[name] = value
        elif name in parent and name != "MAIL_CONFIG":
            imported[name] = parent[name]
    for name in settings.export_environment:
        if name in imported:
            env[name] = imported[name]
    env["PATH"] = DEFAULT_PATH
    attrs = _local_attrs(target, settings)
    ours: list[tuple[str, str | None]] = [
        ("HOME", target.home),
        ("LOGNAME", target.user),
        ("USER", target.user),
        ("SENDER", target.sender),
        ("RECIPIENT", target.recipient),
        ("LOCAL", attrs["local"]),
        ("SHELL", target.shell),
        ("DOMAIN", attrs["domain"]),
        ("EXTENSION", attrs["extension"]),
        ("ORIGINAL_RECIPIENT", target.original or None),
        *((name, value or None) for name, value in target.client),
    ]
    for name, maybe in ours:
        if maybe is not None:
            env[name] = _censor(maybe, settings.cmd_filter)
    return env


def exec_directory(target: CommandTarget, settings: CommandSettings) -> str:
    """command_execution_directory expanded (local_expand()); ExpandError if malformed."""
    if not settings.exec_directory:
        return ""
    values = {
        name: _censor(value, settings.exec_filter)
        for name, value in _local_attrs(target, settings).items()
        if value is not None
    }
    derived = {name: (lambda _e, v=v: v) for name, v in values.items()}
    return Expander(lambda _name: None, derived).expand(settings.exec_directory)


def command_argv(command: str, shell: str) -> list[str]:
    """How the command is started: local_command_shell + command; else directly when
    it has no shell magic (exec_command.c's character set plus blanks); else /bin/sh."""
    if shell.strip():
        return [*shell.split(), command]
    if command.strip(" \t") and all(c in SAFE_CHARS or c in " \t" for c in command):
        return command.split()
    return ["/bin/sh", "-c", command]


def exit_result(
    command: str,
    status: int | None,
    output: bytes,
    *,
    timed_out: bool = False,
    write_error: int = 0,
) -> DeliveryResult:
    """Postfix's outcome for a finished command: `status` is the waitpid() status."""
    text = _printable(output)
    tail = f". Command output: {text}" if text else ""
    if timed_out:
        return DeliveryResult("bounced", "5.3.0", f'Command time limit exceeded: "{command}"{tail}')
    assert status is not None
    if os.WIFSIGNALED(status):
        return DeliveryResult(
            "deferred",
            "4.3.0",
            f'Command died with signal {os.WTERMSIG(status)}: "{command}"{tail}',
        )
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1
    if code == 0:
        if write_error and write_error != errno.EPIPE:
            return DeliveryResult(
                "deferred", "4.3.0", f'Command failed: {os.strerror(write_error)}: "{command}"'
            )
        return DeliveryResult("sent", "2.0.0", f"delivered to command: {command}")
    split = dsn_split(text)
    if split:  # "D.S.N text" output takes precedence over the exit status
        dsn, rest = split
        status_word = "deferred" if dsn.startswith("4") else "bounced"
        return DeliveryResult(status_word, dsn, rest or text)  # type: ignore[arg-type]
    if code in EXIT_CODES:
        dsn, what = EXIT_CODES[code]
        status_word = "deferred" if dsn.startswith("4") else "bounced"
        return DeliveryResult(status_word, dsn, f"{what}{tail}")  # type: ignore[arg-type]
    return DeliveryResult("bounced", "5.3.0", f'Command died with status {code}: "{command}"{tail}')


def _printable(output: bytes) -> str:
    out = output[:OUTPUT_MAX].replace(b"\t", b" ").replace(b"\n", b" ")
    return "".join(chr(b) if 32 <= b < 127 else "_" for b in out)


def message_stream(
    chunks: Iterator[bytes], sender: str, original: str, delivered: str
) -> Iterator[bytes]:
    """The command's standard input (see the module docstring)."""
    yield copy_head(sender, original or delivered, delivered, from_line=True)
    yield from lf_lines(chunks)


def run_command(
    target: CommandTarget, settings: CommandSettings, chunks: Iterator[bytes]
) -> DeliveryResult:
    """Run one command delivery to completion (blocking).  Must be called as root or as
    `target.uid`; sets RLIMIT_FSIZE and the umask (077) of the calling process, so call
    it in a child."""
    try:
        cwd = exec_directory(target, settings) or settings.queue_directory
    except ExpandError:
        return DeliveryResult("deferred", "4.3.5", "mail system configuration error")
    os.umask(0o077)  # what Postfix's daemons run with, so what its commands inherit
    if settings.size_limit:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_FSIZE, (settings.size_limit,) * 2)
    argv = command_argv(target.command, settings.shell)
    as_other = os.geteuid() != target.uid
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=command_environment(target, settings),
            cwd=cwd,
            start_new_session=True,
            user=target.uid if as_other else None,
            group=target.gid if as_other else None,
            extra_groups=[target.gid] if as_other else None,
            close_fds=True,
        )
    except OSError as exc:
        if exc.filename == cwd:  # Postfix's child dies (EX_TEMPFAIL) before any output
            return exit_result(target.command, 75 << 8, b"")
        if exc.filename is None:  # fork or pipe failed
            return DeliveryResult("deferred", "4.3.0", f"Delivery failed: {exc.strerror}")
        # Postfix's child dies with EX_TEMPFAIL and this message on its output.
        why = f"local: fatal: execvp {argv[0]}: {exc.strerror}\n".encode()
        return exit_result(target.command, 75 << 8, why)
    stream = message_stream(chunks, target.sender, target.original, target.delivered)
    deadline = time.monotonic() + settings.time_limit
    output, write_error, timed_out = _pump(proc, stream, deadline)
    if not timed_out:  # output closed, but the command may still run: the limit holds
        try:
            proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    code = proc.returncode
    status = -code if code < 0 else code << 8  # back to a waitpid() status
    return exit_result(target.command, status, output, timed_out=timed_out, write_error=write_error)


def _pump(
    proc: subprocess.Popen[bytes], stream: Iterator[bytes], deadline: float
) -> tuple[bytes, int, bool]:
    """Feed stdin and collect (at most OUTPUT_MAX of) stdout/stderr until the command
    closes its output; (output, errno of a failed write, timed out)."""
    assert proc.stdin is not None and proc.stdout is not None
    win, rout = proc.stdin, proc.stdout
    os.set_blocking(win.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(win.fileno(), selectors.EVENT_WRITE)
    sel.register(rout.fileno(), selectors.EVENT_READ)
    pending, output, write_error = b"", bytearray(), 0
    writing = reading = True
    try:
        while writing or reading:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(output), write_error, True
            events = sel.select(min(left, 60))
            for key, _mask in events:
                if key.fd == rout.fileno():
                    data = os.read(key.fd, 65536)
                    if not data:
                        sel.unregister(key.fd)
                        reading = False
                        continue
                    if len(output) < OUTPUT_MAX:
                        output += data[: OUTPUT_MAX - len(output)]
                    continue
                if not pending:
                    pending = next(stream, b"")
                    if not pending:
                        sel.unregister(key.fd)
                        writing = False
                        win.close()
                        continue
                try:
                    pending = pending[os.write(key.fd, pending) :]
                except BlockingIOError:
                    pass
                except OSError as exc:
                    write_error = exc.errno or errno.EIO
                    sel.unregister(key.fd)
                    writing = False
                    win.close()
        return bytes(output), write_error, False
    finally:
        sel.close()
        with contextlib.suppress(OSError):
            win.close()
        rout.close()
