"""`postwall sendmail`: Postfix's sendmail(1), the local submission interface.

Who calls it: cli.main, before argparse (sendmail's options are getopt-style, `-oi`,
`-bs`, `-qIID`...), as `postwall sendmail ARGS` or `python3 -m postwall sendmail ARGS`.

Contract (Postfix 3.7's sendmail, checked against Debian's binary):
- Options are parsed as Postfix's getopt list, stopping at the first recipient or
  `--`; ignored options are ignored as Postfix ignores them; `-C` names main.cf or its
  directory (so does MAIL_CONFIG); `-c` takes no argument and is ignored, as Postfix.
- Enqueue (the default): the message is read from standard input; LF and CRLF
  line ends both become CRLF (sendmail_fix_line_endings = always), a bare CR
  becomes a space, leading `From ` lines are dropped, and a line with a single
  dot ends input unless `-i`/`-oi`.  `-t` adds the To/Cc/Bcc (or, when present,
  Resent-To/Cc/Bcc) addresses to the command-line recipients; Bcc headers are
  removed.  The message goes through `cleanup.Cleanup.submit`, as SMTP mail does,
  into the durable queue; success is exit 0 only once the queue file is durable.
  The log gets pickup's `QID: uid=N from=<sender>` and cleanup's `message-id=`;
  then one datagram on `$queue_directory/public/qmgr` wakes a running server.
- `-bs`: an SMTP session on standard input/output through the sans-I/O
  `smtp.server.ServerConnection`, with access controls off (Postfix's -bs as a
  non-mail_owner user); `-bv`: each recipient is checked with the resolver and the
  local agent (nothing delivered, no remote probe) and a "Mail Delivery Status
  Report" is queued for the sender; `-bp` is mailq, `-q` postqueue -f, `-qIID`
  postqueue -i.
- Errors: one `sendmail: fatal: ...` line on stderr (and in the mail log when the
  configuration could be read) and exit status 75, which Postfix's sendmail returns
  for every fatal error, usage errors included (its msg_cleanup handler exits
  EX_TEMPFAIL); warnings are `sendmail: warning: ...`.
- Privilege: only root or the owner of the queue directory may submit; anyone else
  gets a "not supported yet" error (no setgid maildrop yet: issue 4).
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import os
import pwd
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from postwall import logfmt, pickup
from postwall.cleanup import ChecksError, Cleanup, Submission
from postwall.config import Config
from postwall.delivery.agents import LocalAgent
from postwall.log import SYSLOG_SOCKET, MailLog
from postwall.queue import QueueStore, Recipient, wakeup
from postwall.resolve import AddressResolver
from postwall.smtp import events as ev
from postwall.smtp.replies import Reply
from postwall.smtp.server import CLOSED, NEED_DATA, ServerConnection, ServerSettings

from . import ToolError, load_config

PROG = "sendmail"
EX_TEMPFAIL = 75  # what Postfix's sendmail exits with on any fatal error
# Postfix's GETOPT_LIST: letters followed by ":" take an argument.
_OPTIONS = "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx"
_WITH_ARG = {c for i, c in enumerate(_OPTIONS) if c != ":" and _OPTIONS[i + 1 : i + 2] == ":"}
_LETTERS = {c for c in _OPTIONS if c != ":"}
_NOTIFY = {"never", "success", "failure", "delay"}
_READ_CHUNK = 1 << 16

HELP = """\
usage: postwall sendmail [options] [recipient ...]

Postfix's sendmail(1): read a message from standard input and queue it.

  -t            also send to the To/Cc/Bcc header addresses (Bcc is removed)
  -f SENDER     envelope sender (also -r); default: the login name
  -F NAME       full name for a From: header postwall adds
  -i, -oi       a line with a single dot does not end the message
  -N DSN        never, or success,failure,delay (DSN notification)
  -R full|hdrs  how much of the message a bounce returns
  -V ENVID      DSN envelope id
  -B 7BIT|8BITMIME  body type
  -bs           SMTP on standard input/output
  -bv           verify the recipients and mail a status report to the sender
  -bp           list the queue (mailq);  -q  attempt all queued mail;  -qIID  one message
  -C CONFIG     main.cf or its directory (also $MAIL_CONFIG)
  -v            say on stderr what happened to the message
Ignored as Postfix ignores them: -Am -Ac -G -h N -L L -m -O x=y -o7 -o8 -om -oX -U -c
-e x -p x -x -q<interval> -bh -bH.  Exit status 0, or 75 with one line on stderr.
"""


class Fatal(Exception):
    """`sendmail: fatal: <message>`, exit 75; `warnings` are printed before it."""

    def __init__(self, message: str, getopt: str = "") -> None:
        super().__init__(message)
        self.warnings: list[str] = []
        self.getopt = getopt  # getopt's own complaint, printed as it prints it


@dataclass
class Options:
    mode: str = "enqueue"  # enqueue, mailq, flush, smtp, daemon, newaliases, ignore
    verify: bool = False
    extract: bool = False  # -t
    dot_ends: bool = True  # cleared by -i / -oi
    sender: str | None = None
    full_name: str | None = None
    notify: frozenset[str] = frozenset()
    ret: str | None = None
    envid: str | None = None
    body_type: str | None = None
    config: str | None = None
    verbose: int = 0
    flush_id: str | None = None
    flush_site: str | None = None
    queue_interval: bool = False
    recipients: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _parse_into(opts: Options, argv: list[str]) -> Options:
    """Postfix's option parsing; Fatal on a usage error, warnings kept in order."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg == "-q":  # not getopt compatible: no argument
            opts.mode = "flush" if opts.mode != "daemon" else opts.mode
            i += 1
            continue
        if not arg.startswith("-") or arg == "-":
            break
        i += 1
        pos = 1
        while pos < len(arg):
            c = arg[pos]
            pos += 1
            if c not in _LETTERS:
                raise Fatal(f"usage: {PROG} [options]", getopt=f"invalid option -- '{c}'")
            value = ""
            if c in _WITH_ARG:
                if pos < len(arg):
                    value, pos = arg[pos:], len(arg)
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    raise Fatal(
                        f"usage: {PROG} [options]", getopt=f"option requires an argument -- '{c}'"
                    )
            _option(opts, c, value)
    opts.recipients = argv[i:]
    _check_conflicts(opts)
    return opts


def parse(argv: list[str]) -> Options:
    """_parse_into, with the warnings given so far attached to a Fatal."""
    opts = Options()
    try:
        return _parse_into(opts, argv)
    except Fatal as exc:
        exc.warnings[:0] = opts.warnings
        raise


def _option(opts: Options, c: str, value: str) -> None:
    match c:
        case "n":
            raise Fatal("-n option not supported")
        case "B":
            if value not in ("8BITMIME", "7BIT"):
                raise Fatal("-B option needs 8BITMIME or 7BIT")
            opts.body_type = value
        case "C":
            opts.config = str(Path(value).parent) if Path(value).name == "main.cf" else value
        case "F":
            opts.full_name = value
        case "I":
            opts.mode = "newaliases"
        case "N":
            words = {w.strip().lower() for w in value.replace(",", " ").split() if w.strip()}
            bad = words - _NOTIFY
            if bad or not words or ("never" in words and len(words) > 1):
                for word in sorted(bad):
                    opts.warnings.append(f'unknown DSN NOTIFY command value "{word}" in "{value}"')
                opts.warnings.append("bad -N option value -- ignored")
            else:
                opts.notify = frozenset(w.upper() for w in words)
        case "R":
            if value.lower() in ("full", "hdrs"):
                opts.ret = value.upper()
            else:
                opts.warnings.append("bad -R option value -- ignored")
        case "V":
            if len(value) > 100:
                opts.warnings.append("too long -V option value -- ignored")
            elif not value.isprintable() or not value.isascii():
                opts.warnings.append("bad syntax in -V option value -- ignored")
            else:
                opts.envid = value
        case "X":
            if value[:1] == "V":
                raise Fatal("-XV (VERP) is not supported by postwall yet")
            raise Fatal(f"unsupported: -X{value[:1]}")
        case "b":
            _b_option(opts, value)
        case "f" | "r":
            opts.sender = value
        case "i":
            opts.dot_ends = False
        case "o":
            if value[:1] == "i":
                opts.dot_ends = False
            elif value == "A":
                raise Fatal("-oA requires pathname")
        case "q":
            if value[:1].isdigit():
                opts.queue_interval = True
            elif value[:1] == "R":
                if not value[1:]:
                    raise Fatal("specify: -qRsitename")
                opts.flush_site = value[1:]
            elif value[:1] == "I":
                if not value[1:]:
                    raise Fatal("specify: -qIqueueid")
                opts.flush_id = value[1:]
            else:
                raise Fatal(f"-q{value[:1]} is not implemented")
        case "t":
            opts.extract = True
        case "v":
            opts.verbose += 1
        case _:
            pass  # A, G, L, O, U, c, e, h, m, p, x: ignored, as Postfix


def _b_option(opts: Options, value: str) -> None:
    match value[:1]:
        case "d" | "l":
            opts.mode = "daemon"
        case "h" | "H":
            opts.mode = "ignore"
        case "i":
            opts.mode = "newaliases"
        case "m":
            opts.mode = "enqueue"
        case "p":
            opts.mode = "mailq"
        case "s":
            opts.mode = "smtp"
        case "v":
            opts.verify = True
        case _:
            raise Fatal(f"unsupported: -b{value[:1]}")


def _check_conflicts(opts: Options) -> None:
    if opts.extract and opts.mode != "enqueue":
        raise Fatal("-t can be used only in delivery mode")
    if opts.flush_site and opts.mode != "enqueue":
        raise Fatal("-qR can be used only in delivery mode")
    if opts.flush_id and opts.mode != "enqueue":
        raise Fatal("-qI can be used only in delivery mode")
    if opts.verify:
        if opts.extract:
            raise Fatal("-t option cannot be used with -bv")
        if opts.notify:
            raise Fatal("-N option cannot be used with -bv")
        if opts.ret:
            raise Fatal("-R option cannot be used with -bv")
        if opts.verbose == 1:
            raise Fatal("-v option cannot be used with -bv")
    needs_none = {
        "mailq": "display queue mode requires no recipient",
        "flush": "flush queue mode requires no recipient",
        "daemon": "daemon mode requires no recipient",
        "newaliases": "alias initialization mode requires no recipient",
        "smtp": "stand-alone mode requires no recipient",
    }
    if opts.recipients and opts.mode in needs_none:
        raise Fatal(needs_none[opts.mode])
    if opts.recipients and opts.mode == "enqueue":
        if opts.flush_site:
            raise Fatal("flush site requires no recipient")
        if opts.flush_id:
            raise Fatal("flush queue_id requires no recipient")


# -- the message -----------------------------------------------------------------------


def read_message(stream: object, dot_ends: bool, limit: int) -> bytes:
    """Standard input as CRLF lines, as Postfix's sendmail and cleanup store it.
    Fatal-free: returns what was read; the caller checks `limit` (0: none) on the
    result, and reading stops early once past it."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    out: list[bytes] = []
    size = 0
    pending = b""
    at_start = True
    while True:
        chunk = os.read(fd, _READ_CHUNK)
        if chunk:
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
        else:  # end of input: a last line without its line end still counts
            lines, pending = ([pending] if pending else []), b""
        for line in lines:
            line = line.rstrip(b"\r").replace(b"\r", b" ")
            if at_start and line.lstrip(b">").startswith(b"From "):
                continue  # Postfix drops leading mbox From_ lines
            at_start = False
            if dot_ends and line == b".":
                return b"".join(out)
            out.append(line + b"\r\n")
            size += len(line) + 2
            if limit and size > limit:
                return b"".join(out)
        if not chunk:
            return b"".join(out)


def split_headers(content: bytes) -> tuple[list[bytes], bytes]:
    """The primary header lines (each with its continuation lines, CRLF-joined) and
    the rest of the content (the blank line and body, or a body that starts with a
    line that is not a header)."""
    headers: list[bytes] = []
    pos = 0
    while pos < len(content):
        end = content.find(b"\r\n", pos)
        end = len(content) if end < 0 else end + 2
        line = content[pos:end]
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1] += line
        elif _is_header(line):
            headers.append(line)
        else:
            break
        pos = end
    return headers, content[pos:]


def _is_header(line: bytes) -> bool:
    name, sep, _ = line.partition(b":")
    return bool(sep) and bool(name.strip()) and all(33 <= b <= 126 for b in name.rstrip(b" \t"))


def _header_name(header: bytes) -> str:
    return header.partition(b":")[0].strip().decode("ascii", "replace").lower()


def extract_recipients(headers: list[bytes]) -> list[str]:
    """To/Cc/Bcc addresses; only the Resent- ones when the message has any (Postfix)."""
    plain: list[str] = []
    resent: list[str] = []
    for header in headers:
        name = _header_name(header)
        target = resent if name.startswith("resent-") else plain
        if name.removeprefix("resent-") not in ("to", "cc", "bcc"):
            continue
        value = header.partition(b":")[2].decode("utf-8", "surrogateescape")
        value = " ".join(value.split())
        target.extend(addr for _, addr in email.utils.getaddresses([value]) if addr)
    return resent or plain


def parse_addresses(arg: str) -> list[str]:
    """A command-line recipient is parsed as a header value: "a, b", "Name <a>"."""
    if arg.strip() == "<>":
        return [""]
    return [addr for _, addr in email.utils.getaddresses([arg]) if addr]


# -- the command ----------------------------------------------------------------------


@dataclass
class _Env:
    """What every mode needs once the configuration is read."""

    config: Config
    log: MailLog | None
    uid: int
    login: str


def main(argv: list[str]) -> int:
    if argv[:1] in (["--help"], ["-h"]) and len(argv) == 1:
        sys.stdout.write(HELP)
        return 0
    env: _Env | None = None
    try:
        opts = parse(argv)
        env = _setup(opts)
        for text in opts.warnings:
            _warn(text, env.log)
        return _run(opts, env)
    except Fatal as exc:
        for text in exc.warnings:
            _warn(text, env.log if env else None)
        if exc.getopt:
            # Postfix's getopt runs twice (a pre-scan looks for -C), so it complains twice.
            print(f"{PROG}: {exc.getopt}\n{PROG}: {exc.getopt}", file=sys.stderr)
        _fatal(str(exc), env.log if env else None)
        return EX_TEMPFAIL
    except ToolError as exc:
        _fatal(str(exc), env.log if env else None)
        return EX_TEMPFAIL
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _fatal(f"{where}{exc.strerror or exc}", env.log if env else None)
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        return EX_TEMPFAIL
    finally:
        if env is not None and env.log is not None:
            env.log.close()


def _setup(opts: Options) -> _Env:
    config = load_config(opts.config)
    uid = os.getuid()
    try:
        login = pwd.getpwuid(uid).pw_name
    except KeyError:
        login = ""
    return _Env(config, _mail_log(config), uid, login)


def _run(opts: Options, env: _Env) -> int:
    if opts.queue_interval and opts.mode != "daemon":
        return 0
    match opts.mode:
        case "ignore":
            return 0
        case "mailq":
            from .queue import cmd_mailq

            return cmd_mailq(argparse.Namespace(config_dir=opts.config))
        case "flush":
            return _postqueue(opts, f=True)
        case "daemon":
            raise Fatal("-bd/-bl: run `postwall start` to start the server")
        case "newaliases":
            raise Fatal("newaliases is not needed: postwall reads alias_maps tables directly")
        case "smtp":
            return _smtp_mode(env)
    if opts.flush_site:
        raise Fatal("-qR: per-destination flush is not supported yet")
    if opts.flush_id:
        return _postqueue(opts, i=opts.flush_id)
    return _enqueue(opts, env)


def _postqueue(opts: Options, f: bool = False, i: str | None = None) -> int:
    from .queue import cmd_postqueue

    ns = argparse.Namespace(config_dir=opts.config, p=False, j=False, f=f, i=i, s=None)
    return cmd_postqueue(ns)


def _who(sender: str, env: _Env) -> str:
    """Postfix's `sender(uid)` prefix of sendmail's fatal messages."""
    return f"{sender}({env.uid})"


def _sender(opts: Options, env: _Env) -> str:
    if opts.sender is None:
        if not env.login:
            raise Fatal(f"no login name found for user ID {env.uid}")
        return env.login
    if opts.sender.strip() in ("<>", ""):
        return ""
    found = [addr for _, addr in email.utils.getaddresses([opts.sender])]
    if len(found) > 1:
        _warn(f"-f option specified malformed sender: {opts.sender}", env.log)
    return found[0] if found else ""


def _full_name(opts: Options, env: _Env) -> str:
    if opts.full_name is not None:
        return opts.full_name
    if os.environ.get("NAME"):
        return os.environ["NAME"]
    try:
        gecos = pwd.getpwuid(env.uid).pw_gecos.split(",")[0]
    except KeyError:
        return ""
    # BSD convention, as Postfix's fullname(): "&" is the capitalised login name.
    return gecos.replace("&", env.login[:1].upper() + env.login[1:])


def _writes_queue(env: _Env) -> bool:
    """Root and the queue's owner write the queue themselves; other users submit through
    the running server (public/pickup)."""
    if env.uid == 0:
        return True
    queue_dir = Path(env.config.params.queue_directory)
    try:
        owner = queue_dir.stat().st_uid
    except OSError:
        try:
            owner = queue_dir.parent.stat().st_uid
        except OSError:
            owner = -1
    return owner == env.uid


def _check_privilege(env: _Env, sender: str) -> Path:
    queue_dir = Path(env.config.params.queue_directory)
    if not _writes_queue(env):
        raise Fatal(
            f"{_who(sender, env)}: not supported yet for a user other than root or the "
            f"owner of {queue_dir}: this mode (plain submission goes through the server)"
        )
    return queue_dir


def _enqueue(opts: Options, env: _Env) -> int:
    params = env.config.params
    sender = _sender(opts, env)
    resolver = AddressResolver.from_params(params)
    if opts.verify:
        return _verify(opts, env, sender, _check_privilege(env, sender), resolver)
    rcpts = [a for arg in opts.recipients for a in parse_addresses(arg)]
    content = read_message(sys.stdin, opts.dot_ends, params.message_size_limit)
    if params.message_size_limit and len(content) > params.message_size_limit:
        _warn(f"uid={env.uid}: File too large", env.log, service="postdrop")
        raise Fatal(f"{_who(sender, env)}: message file too big")
    headers, rest = split_headers(content)
    if opts.extract:
        rcpts += extract_recipients(headers)
    if not rcpts:
        if opts.extract:
            raise Fatal(f"{_who(sender, env)}: No recipient addresses found in message header")
        raise Fatal(
            f"{_who(sender, env)}: Recipient addresses must be specified on the command "
            "line or via the -t option"
        )
    # Postfix removes Bcc (and Resent-Bcc) from locally submitted mail, -t or not.
    kept = [h for h in headers if _header_name(h) not in ("bcc", "resent-bcc")]
    content = b"".join(kept) + rest
    sub = Submission.local(
        resolver.qualify(sender),
        _recipients(rcpts, resolver, opts.notify),
        content,
        uid=env.uid,
        full_name=_full_name(opts, env),
        ret=opts.ret,
        envid=opts.envid,
        body_type=opts.body_type,
    )
    queue_dir = Path(params.queue_directory)
    if not _writes_queue(env):
        request = pickup.Request(
            sub.sender,
            sub.recipients,
            sub.content,
            sub.ret,
            sub.envid,
            sub.body_type,
            sub.full_name,
        )
        try:
            qid = pickup.submit(queue_dir, request)
        except pickup.PickupError as exc:
            raise Fatal(f"{_who(sender, env)}: {exc}") from None
        if opts.verbose:
            print(f"{PROG}: {qid}: queued by the postwall server", file=sys.stderr)
        return 0
    qid = _submit(env, queue_dir, sub, pickup_sender=sender, resolver=resolver)
    _wake(env, queue_dir, opts.verbose, qid)
    return 0


def _recipients(
    addresses: list[str], resolver: AddressResolver, notify: frozenset[str]
) -> list[Recipient]:
    out: list[Recipient] = []
    seen: set[str] = set()
    for raw in addresses:
        address = resolver.qualify(raw)
        if address.lower() in seen:  # cleanup drops duplicate recipients
            continue
        seen.add(address.lower())
        out.append(Recipient(address=address, original=raw, notify=notify))
    return out


def _submit(
    env: _Env,
    queue_dir: Path,
    sub: Submission,
    pickup_sender: str | None,
    resolver: AddressResolver,
) -> str:
    """Through cleanup into incoming/, durably; the queue id, or Fatal."""
    log = env.log or MailLog(env.config.params.syslog_name, env.config.params.myhostname)
    store = QueueStore(queue_dir, spare_ids=0)
    try:
        try:
            cleanup = Cleanup(env.config.params, store, log, resolver=resolver)
        except ChecksError as exc:  # an unusable header_checks/body_checks table
            raise Fatal(str(exc)) from None
        sub.queue_id = cleanup.new_queue_id()
        if pickup_sender is not None:
            log.info("pickup", logfmt.pickup(sub.queue_id, env.uid, pickup_sender))
        failure = asyncio.run(cleanup.submit(sub))
    finally:
        store.close()
    if failure is not None:
        raise Fatal(f"{_who(pickup_sender or sub.sender, env)}: {failure.text}")
    return sub.queue_id


def _wake(env: _Env, queue_dir: Path, verbose: int, qid: str) -> None:
    if wakeup.notify(queue_dir):
        if verbose:
            print(f"{PROG}: {qid}: queued; the running server was woken", file=sys.stderr)
    elif verbose:
        print(
            f"{PROG}: {qid}: queued; no postwall server is running, the message waits in "
            f"{queue_dir} until one starts",
            file=sys.stderr,
        )


# -- -bv --------------------------------------------------------------------------------


@dataclass
class _Verdict:
    address: str
    original: str
    action: str  # deliverable / undeliverable
    dsn: str
    text: str  # for the report: "delivery via local: delivers to maildir"
    relay: str
    detail: str  # for the log line's parentheses


def _verify(
    opts: Options, env: _Env, sender: str, queue_dir: Path, resolver: AddressResolver
) -> int:
    params = env.config.params
    rcpts = [a for arg in opts.recipients for a in parse_addresses(arg)]
    if not rcpts:
        raise Fatal(
            f"{_who(sender, env)}: Recipient addresses must be specified on the command "
            "line or via the -t option"
        )
    local = LocalAgent(params, resolver)
    verdicts = [_check(r, resolver, local) for r in _recipients(rcpts, resolver, frozenset())]
    log = env.log
    probe_store = QueueStore(queue_dir, spare_ids=0)
    try:
        probe = probe_store.new_queue_id()  # named in the log and the report, never queued
        probe_store.release_queue_id(probe)
    finally:
        probe_store.close()
    now = time.time()
    if log is not None:
        log.info("pickup", logfmt.pickup(probe, env.uid, sender))
        for v in verdicts:
            log.info(
                v.relay if v.relay in ("local", "smtp") else "qmgr",
                logfmt.delivery_status(
                    probe,
                    to=v.address,
                    orig_to=v.original,
                    relay=v.relay,
                    delay=0,
                    delays=(0, 0, 0, 0),
                    dsn=v.dsn,
                    status=v.action,
                    text=v.detail,
                ),
            )
    qualified_sender = resolver.qualify(sender)
    report = _report(params.myhostname, probe, qualified_sender, env.uid, verdicts, now)
    if qualified_sender:
        sub = Submission(
            queue_id="",
            sender="",
            recipients=_recipients([qualified_sender], resolver, frozenset()),
            content=report,
            arrival_time=now,
            client_name="",
            client_addr="",
            client_port=0,
            helo=None,
            protocol="",
            internal=True,
        )
        qid = _submit(env, queue_dir, sub, pickup_sender=None, resolver=resolver)
        if log is not None:
            log.info("bounce", logfmt.notification(probe, "sender delivery status", qid))
        _wake(env, queue_dir, opts.verbose, qid)
    print(f"Mail Delivery Status Report will be mailed to <{sender}>.")
    return 0


def _check(rcpt: Recipient, resolver: AddressResolver, local: LocalAgent) -> _Verdict:
    dest = resolver.destination(rcpt.address)
    if dest.transport == "local":
        if not resolver.is_known_local(rcpt.address):
            user = resolver.local_user(rcpt.address)
            result_status, dsn, text = "bounced", "5.1.1", f'unknown user: "{user}"'
        else:
            r = local.verify(rcpt.address)
            result_status, dsn, text = r.status, r.dsn, r.text
        action = "deliverable" if result_status == "sent" else "undeliverable"
        return _Verdict(
            rcpt.address, rcpt.original, action, dsn, f"delivery via local: {text}", "local", text
        )
    if dest.transport == "discard":
        text = f"discards mail: {dest.nexthop}" if dest.nexthop else "discards mail"
        return _Verdict(rcpt.address, rcpt.original, "deliverable", "2.0.0", text, "none", text)
    text = (
        f"mail transport unavailable: {dest.transport} delivery is not supported in this "
        "version; postwall sendmail -bv does not probe remote servers"
    )
    return _Verdict(rcpt.address, rcpt.original, "undeliverable", "4.3.0", text, "none", text)


def _report(
    host: str, probe: str, sender: str, uid: int, verdicts: list[_Verdict], now: float
) -> bytes:
    """The multipart/report Postfix's bounce daemon mails for sendmail -bv (RFC 3464,
    with Postfix's deliverable/undeliverable actions)."""
    boundary = f"{probe}.{int(now)}/{host}"
    date = logfmt.mail_date(now)
    notes = []
    for v in verdicts:
        expanded = f" (expanded from <{v.original}>)" if v.original != v.address else ""
        line = f"<{v.address}>{expanded}: {v.text}"
        notes.append("\n".join(textwrap.wrap(line, 76, subsequent_indent="    ")))
    dsns = []
    for v in verdicts:
        diagnostic = textwrap.wrap(
            f"Diagnostic-Code: X-Postfix; {v.text}", 76, break_on_hyphens=False
        )
        dsns.append(
            f"Final-Recipient: rfc822; {v.address}\n"
            f"Original-Recipient: rfc822;{v.address}\n"
            f"Action: {v.action}\n"
            f"Status: {v.dsn}\n" + "\n    ".join(diagnostic) + "\n"
        )
    probe_to = ",\n\t".join(v.address for v in verdicts)
    body = f"""\
From: Mail Delivery System <MAILER-DAEMON@{host}>
Subject: Mail Delivery Status Report
To: {sender}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host {host}.

Enclosed is the mail delivery report that you requested.

                   The mail system

{chr(10).join(f"{n}{chr(10)}" for n in notes)}
--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; {host}
X-Postfix-Queue-ID: {probe}
X-Postfix-Sender: rfc822; {sender}
Arrival-Date: {date}

{chr(10).join(dsns)}
--{boundary}
Content-Description: Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

Return-Path: <{sender}>
Received: by {host} (postwall, from userid {uid})
\tid {probe}; {date}
From: {sender}
Subject: probe
To: {probe_to}
Date: {date}

--{boundary}--
"""
    return body.replace("\n", "\r\n").encode("utf-8", "surrogateescape")


# -- -bs ----------------------------------------------------------------------------------


def _smtp_mode(env: _Env) -> int:
    """Postfix's `sendmail -bs`: smtpd on standard input and output, run as the user
    (access controls off, as Postfix does for a user other than mail_owner)."""
    params = env.config.params
    queue_dir = _check_privilege(env, env.login)
    resolver = AddressResolver.from_params(params)
    log = env.log or MailLog(params.syslog_name, params.myhostname)
    conn = ServerConnection(ServerSettings.from_params(params))
    store = QueueStore(queue_dir, spare_ids=0)
    try:
        cleanup = Cleanup(params, store, log, resolver=resolver)
    except ChecksError as exc:
        store.close()
        raise Fatal(str(exc)) from None
    name, addr = "localhost", "127.0.0.1"
    log.info("smtpd", logfmt.connect(name, addr))
    queue_id: str | None = None
    helo: str | None = None
    out = sys.stdout.buffer
    try:
        conn.greeting()
        for event in _events(conn, out):
            match event:
                case ev.Helo(name=helo_name):
                    helo = helo_name
                    conn.accept()
                case ev.MailFrom():
                    if queue_id is not None:
                        cleanup.release_queue_id(queue_id)
                        queue_id = None
                    conn.accept()
                case ev.RcptTo():
                    if queue_id is None:
                        queue_id = cleanup.new_queue_id()
                        log.info("smtpd", logfmt.client(queue_id, name, addr))
                    conn.accept()
                case ev.Message(envelope=envelope, content=content):
                    assert queue_id is not None
                    sub = Submission(
                        queue_id=queue_id,
                        sender=resolver.qualify(envelope.sender),
                        recipients=[
                            Recipient(
                                address=resolver.qualify(r.address),
                                original=r.address,
                                orcpt=";".join(r.params.orcpt) if r.params.orcpt else "",
                                notify=frozenset(r.params.notify or ()),
                            )
                            for r in envelope.recipients
                        ],
                        content=content,
                        arrival_time=time.time(),
                        client_name=name,
                        client_addr=addr,
                        client_port=0,
                        helo=helo,
                        protocol="ESMTP" if conn.esmtp else "SMTP",
                        ret=envelope.ret,
                        envid=envelope.envid,
                        body_type=envelope.body_type,
                        smtputf8=envelope.smtputf8,
                        rewrite_headers=True,
                    )
                    queue_id = None
                    failure = asyncio.run(cleanup.submit(sub))
                    if failure is None:
                        conn.accept(queue_id=sub.queue_id)
                        wakeup.notify(queue_dir)
                    else:
                        conn.reject(failure)
                case ev.StartTLS():
                    conn.reject(Reply(502, "5.5.1", "Error: command not implemented"))
                case _ if getattr(event, "needs_answer", False):
                    conn.accept()
        log.info("smtpd", logfmt.disconnect(name, addr, conn.disconnect_summary()))
    finally:
        if queue_id is not None:
            cleanup.release_queue_id(queue_id)
        store.close()
    return 0


def _events(conn: ServerConnection, out: object) -> Iterator[object]:
    """The core's events, reading standard input when it needs data and writing its
    replies to standard output in between."""
    write = out.write  # type: ignore[attr-defined]
    flush = out.flush  # type: ignore[attr-defined]
    while True:
        pending = conn.data_to_send()
        if pending:
            write(pending)
            flush()
        event = conn.next_event()
        if event is CLOSED:
            pending = conn.data_to_send()
            if pending:
                write(pending)
                flush()
            return
        if event is NEED_DATA:
            conn.receive_data(os.read(sys.stdin.fileno(), _READ_CHUNK))
            continue
        yield event


# -- output -----------------------------------------------------------------------------


def _mail_log(config: Config) -> MailLog | None:
    p = config.params
    syslog = None if p.maillog_file or not os.path.exists(SYSLOG_SOCKET) else SYSLOG_SOCKET
    try:
        return MailLog(
            p.syslog_name, p.myhostname, maillog_file=p.maillog_file or None, syslog_socket=syslog
        )
    except OSError:
        return None  # logging is best effort for a command


def _warn(text: str, log: MailLog | None, service: str = PROG) -> None:
    print(f"{service}: warning: {text}", file=sys.stderr)
    if log is not None:
        log.warning(service, text)


def _fatal(text: str, log: MailLog | None) -> None:
    print(f"{PROG}: fatal: {text}", file=sys.stderr)
    if log is not None:
        log.fatal(PROG, text)
