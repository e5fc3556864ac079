"""`postwall mailq`, `postqueue` and `postsuper`: the queue as Postfix's tools show it.

Contract:
- `mailq` / `postqueue -p` print Postfix 3.7's listing (postqueue/showq_compat.c): a
  heading, then per message the queue id (`*` active, `!` held), the message size, the
  arrival time as asctime() without the year, the sender (`MAILER-DAEMON` for <>), then
  each pending recipient, with `(reason)` lines when a deferral reason is known; a
  blank line between messages and `-- N Kbytes in M Requests.` or `Mail queue is empty`.
  Queues are listed in showq's order: incoming, active, deferred, hold. `-j` prints
  one JSON object per message with showq_json.c's keys.
- `postqueue -f` makes every deferred message due now and `-i ID` moves one deferred
  message to incoming; the running master is woken with SIGUSR1 only if it handles it
  (checked in /proc), otherwise its next queue scan (queue_run_delay) picks them up.
- `postsuper -d/-h/-H/-r ID|ALL [queue]` delete, hold, release, requeue, printing and
  logging (through MailLog, service `postsuper`) Postfix's messages: `ID: removed` for
  a message named by id (not for ALL), then `Deleted: 1 message`. Unlike Postfix, a
  named id that is not in the queue (or is malformed) makes the command exit 1 after
  the others were handled.
The queue is read and changed only through QueueStore's sync API; a corrupt queue file
is reported as a warning and skipped. Deferral reasons come from the queue manager's
per-message record (QueueStore.defer_reasons_sync), as Postfix's showq reads its defer logs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from postwall.config import Config
from postwall.log import SYSLOG_SOCKET, MailLog
from postwall.queue import CorruptQueueFile, QueueStore, State, is_queue_id, wakeup

from . import ToolError, add_config_option, load_config, warn
from .control import master_pid, wake_master

LISTED: tuple[State, ...] = ("incoming", "active", "deferred", "hold")
_MARK = {"active": "*", "hold": "!"}
# showq_compat.c S_SENDER_FORMAT / S_STRING_FORMAT (short queue ids).
_HEADING = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
_RCPT_INDENT = " " * 41  # the three empty columns before a recipient


@dataclass(frozen=True)
class Entry:
    """One queued message as the listing shows it."""

    queue_name: State
    queue_id: str
    arrival_time: int
    message_size: int
    sender: str
    recipients: list[tuple[str, str]]  # (address, deferral reason or "")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser("mailq", help="list the mail queue (postqueue -p)")
    add_config_option(m)
    m.set_defaults(func=cmd_mailq)

    q = sub.add_parser(
        "postqueue",
        help="list or flush the mail queue (Postfix postqueue)",
        description="-p lists the queue as mailq, -j as JSON lines, -f attempts every "
        "deferred message now, -i ID attempts one message now.",
    )
    add_config_option(q)
    action = q.add_mutually_exclusive_group(required=True)
    action.add_argument("-p", action="store_true", help="list the queue")
    action.add_argument("-j", action="store_true", help="list the queue as JSON, one per line")
    action.add_argument("-f", action="store_true", help="flush: attempt all deferred mail now")
    action.add_argument("-i", metavar="ID", help="attempt delivery of one message now")
    action.add_argument("-s", metavar="SITE", help="deliver what waits for one site now")
    q.set_defaults(func=cmd_postqueue)

    s = sub.add_parser(
        "postsuper",
        help="delete, hold, release or requeue queued mail (Postfix postsuper)",
        description="ID may be a queue id, ALL, or - (read ids from standard input); each "
        "option may be repeated. The optional queue (incoming, active, deferred, hold) "
        "limits the operations to that queue.",
        add_help=False,  # -h is postsuper's hold
    )
    s.add_argument("--help", action="help", help="show this help message and exit")
    add_config_option(s)
    s.add_argument("-d", metavar="ID", action="append", default=[], help="delete")
    s.add_argument("-h", metavar="ID", action="append", default=[], help="put on hold")
    s.add_argument("-H", metavar="ID", action="append", default=[], help="release from hold")
    s.add_argument("-r", metavar="ID", action="append", default=[], help="requeue")
    s.add_argument("queue", nargs="?", help="restrict to this queue")
    s.set_defaults(func=cmd_postsuper)


def _open_store(config: Config) -> QueueStore | None:
    directory = Path(config.params.queue_directory)
    if not directory.is_dir():
        return None  # never started: nothing queued yet
    try:
        return QueueStore(directory, spare_ids=0)
    except OSError as exc:
        raise ToolError(f"queue directory {directory}: {exc.strerror}") from None


def entries(store: QueueStore, empty_sender: str) -> Iterator[Entry]:
    for state in LISTED:
        for qid in store.scan_sync(state):
            try:
                msg = store.load_sync(qid, state)
            except FileNotFoundError:
                continue  # delivered or moved since the scan
            except CorruptQueueFile as exc:
                warn(f"{qid}: corrupt queue file in {state}: {exc}")
                continue
            reasons = store.defer_reasons_sync(qid)
            with msg:
                env = msg.envelope
                yield Entry(
                    state,
                    qid,
                    int(env.arrival_time),
                    env.size or msg.content_length,
                    _printable(env.sender or empty_sender),
                    [
                        (_printable(r.address), reasons.get(r.address, ""))
                        for r in env.recipients
                        if not r.done
                    ],
                )


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def format_listing(items: list[Entry]) -> str:
    out: list[str] = []
    for entry in items:
        out.append("\n" if out else _HEADING)
        arrival = time.asctime(time.localtime(entry.arrival_time))[:20]
        qid = entry.queue_id + _MARK.get(entry.queue_name, "")
        out.append(f"{qid:<11} {entry.message_size:>7} {arrival:>20.20} {entry.sender}\n")
        shown = ""
        for address, reason in entry.recipients:
            if reason != shown:
                # showq_compat: a reason line only when it changes from the previous one.
                shown = reason
                text = reason or "reason unavailable"
                out.append(" " * max(0, 76 - len(text)) + f"({text})\n")
            out.append(f"{_RCPT_INDENT}{address}\n")
    if not items:
        return "Mail queue is empty\n"
    total = sum(e.message_size for e in items)
    plural = "" if len(items) == 1 else "s"
    out.append(f"\n-- {total // 1024} Kbytes in {len(items)} Request{plural}.\n")
    return "".join(out)


def format_json(entry: Entry) -> str:
    rcpts = []
    for address, reason in entry.recipients:
        r = {"address": address}
        if reason:
            r["delay_reason"] = reason
        rcpts.append(r)
    obj = {
        "queue_name": entry.queue_name,
        "queue_id": entry.queue_id,
        "arrival_time": entry.arrival_time,
        "message_size": entry.message_size,
        "forced_expire": False,  # the key Postfix 3.7 prints
        "sender": entry.sender,
        "recipients": rcpts,
    }
    return json.dumps(obj, ensure_ascii=False) + "\n"


def cmd_mailq(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    store = _open_store(config)
    items = list(entries(store, config.params.empty_address_recipient)) if store else []
    sys.stdout.write(format_listing(items))
    return 0


def cmd_postqueue(args: argparse.Namespace) -> int:
    if args.s:
        site = args.s.strip().lower()
        if not site or any(c in site for c in " \t\r\n@") or not site.isascii():
            raise ToolError(f"invalid site name: {args.s}")
        config = load_config(args.config_dir)
        if not wakeup.notify(config.params.queue_directory, site=site):
            raise ToolError("Cannot flush mail queue - mail system is down")
        return 0
    if args.p:
        return cmd_mailq(args)
    config = load_config(args.config_dir)
    store = _open_store(config)
    if args.j:
        for entry in entries(store, config.params.empty_address_recipient) if store else ():
            sys.stdout.write(format_json(entry))
        return 0
    if args.i:
        if store is None or not is_queue_id(args.i) or store.locate(args.i) is None:
            raise ToolError(f"{args.i}: no such queue file")
        if store.locate(args.i) == "deferred":
            store.move_sync(args.i, "deferred", "incoming", next_attempt=time.time())
    elif store is not None:
        now = time.time()
        for qid in store.scan_sync("deferred"):
            try:
                store.move_sync(qid, "deferred", "deferred", next_attempt=now)
            except FileNotFoundError:
                continue
    pid = master_pid(config)
    if pid is not None:
        wake_master(pid)
    return 0


# -- postsuper ------------------------------------------------------------------------

# (default queues, per-message line, summary label) per action. As postsuper.c, a message
# named by its id gets its own line; ALL (the mass operations) prints only the summary.
_ACTIONS: dict[str, tuple[tuple[State, ...], str, str]] = {
    "d": (LISTED, "removed", "Deleted"),
    "h": (("incoming", "active", "deferred"), "placed on hold", "Placed on hold"),
    "H": (("hold",), "released from hold", "Released from hold"),
    "r": (LISTED, "requeued", "Requeued"),
}


def cmd_postsuper(args: argparse.Namespace) -> int:
    if not (args.d or args.h or args.H or args.r):
        raise ToolError("postsuper: specify one of -d, -h, -H or -r (see --help)")
    if args.queue is not None and args.queue not in LISTED:
        raise ToolError(f"invalid directory name: {args.queue}")
    config = load_config(args.config_dir)
    store = _open_store(config)
    log = _mail_log(config)
    missing: list[str] = []
    try:
        # Postfix's order: deletions first, then hold, release and requeue.
        for flag in "dhHr":
            targets: list[str] = getattr(args, flag)
            if targets:
                missing += _postsuper(store, log, flag, targets, args.queue)
    finally:
        if log is not None:
            log.close()
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ToolError(f"{missing[0]}: no such queue file{more}")
    return 0


def _postsuper(
    store: QueueStore | None, log: MailLog | None, flag: str, targets: list[str], queue: str | None
) -> list[str]:
    """One action over its targets; returns the ids that were malformed or not found."""
    queues, verb, label = _ACTIONS[flag]
    if queue is not None:
        queues = (queue,)  # type: ignore[assignment]
    ids = [i for t in targets for i in (sys.stdin.read().split() if t == "-" else [t])]
    done = 0
    missing: list[str] = []
    seen: set[str] = set()
    for qid in ids:
        if qid == "ALL":
            found = [(q, s) for s in queues for q in (store.scan_sync(s) if store else [])]
        elif not is_queue_id(qid):
            _say(log, f"warning: invalid mail queue id: {qid}")
            missing.append(qid)
            continue
        else:
            state = store.locate(qid) if store else None
            if state is None or state not in queues:
                missing.append(qid)
                continue
            found = [(qid, state)]
        for q, state in found:
            if q not in seen and store is not None and _apply(store, flag, q, state):
                seen.add(q)
                done += 1
                if qid != "ALL":
                    _say(log, f"{q}: {verb}")
    _say(log, f"{label}: {done} message{'' if done == 1 else 's'}")
    return missing


def _apply(store: QueueStore, flag: str, qid: str, state: State) -> bool:
    """One action on one message; False when it left meanwhile (or is already there)."""
    try:
        if flag == "d":
            store.remove_sync(qid, state)
        elif flag == "h":
            store.move_sync(qid, state, "hold")
        elif flag == "H":
            # Released mail is due at once, as Postfix's postsuper -H.
            store.move_sync(qid, "hold", "deferred", next_attempt=time.time())
        elif state == "incoming":
            store.move_sync(qid, state, state, next_attempt=time.time())
        else:
            store.move_sync(qid, state, "incoming", next_attempt=time.time())
    except (FileNotFoundError, FileExistsError):
        return False
    return True


def _mail_log(config: Config) -> MailLog | None:
    p = config.params
    syslog = None if p.maillog_file or not os.path.exists(SYSLOG_SOCKET) else SYSLOG_SOCKET
    try:
        return MailLog(
            p.syslog_name, p.myhostname, maillog_file=p.maillog_file or None, syslog_socket=syslog
        )
    except OSError as exc:
        warn(f"cannot open maillog_file {p.maillog_file}: {exc.strerror}; not logging")
        return None


def _say(log: MailLog | None, text: str) -> None:
    """Postfix's postsuper writes each message to stderr and to the mail log."""
    print(f"postsuper: {text}", file=sys.stderr)
    if log is None:
        return
    if text.startswith("warning: "):
        log.warning("postsuper", text.removeprefix("warning: "))
    else:
        log.info("postsuper", text)
