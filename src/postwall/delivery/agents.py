"""The delivery agents as the queue manager calls them: one recipient in, one result out.

Who calls it: master builds the agents from the configuration and hands them to
qmgr, which calls `agent(message, recipient_index, destination)`.

The local agent follows Postfix's local(8) for what postwall supports: alias_maps
first (the local part with its extension, then without), recursively, with loop
protection; each alias target that is a local user gets a Maildir copy (or goes to
mailbox_command), a `|command` target runs through delivery/command.py and a `/file`
target is appended to in mailbox format, both with the alias table owner's rights
(allow_mail_to_commands / allow_mail_to_files must name `alias`); targets postwall
cannot deliver yet (remote addresses; commands and files listed in a :include: file)
defer with a "not supported" reason, so nothing is lost and the log says why.
`:include:/file` entries expand to the addresses the file lists.  The Maildir
file name is the same on every attempt for one message and recipient, so a retry
after a crash, or after a partial alias delivery, never leaves a second copy.
"""

from __future__ import annotations

import asyncio
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from postwall.config.params import Params
from postwall.config.tables import Table, lookup_maps, open_maps
from postwall.delivery import DeliveryResult, DeliveryStatus, discard, dsn_split
from postwall.delivery.command import CommandSettings, alias_items
from postwall.delivery.local import (
    LocalDeliveryNotSupported,
    deliver_alias_target,
    deliver_local,
    resolve_mailbox,
)
from postwall.delivery.mbox import MboxSettings
from postwall.queue.store import QueuedMessage
from postwall.resolve import AddressClass, AddressResolver, Destination

_MAX_ALIAS_DEPTH = 10
# Maildir names must not contain "/" or ":" (the Maildir spec's escapes).
_HOST = socket.gethostname().split(".")[0].replace("/", "\\057").replace(":", "\\072")


@dataclass(frozen=True, slots=True)
class AgentResult:
    result: DeliveryResult
    relay: str  # the relay= field of the log line
    conn_time: float = 0.0  # the "c" part of delays=a/b/c/d
    xfer_time: float = 0.0  # the "d" part
    conn_use: int = 1  # the transaction's number on its connection (conn_use= when > 1)
    remote_mta: str = ""  # the server's name, for a delivery status notice
    smtp_reply: str = ""  # the server's reply, for the notice's Diagnostic-Code
    service: str = "qmgr"  # who logs the status= line: smtp, local, discard, error...
    dsn_relayed: bool = False  # the next hop announced DSN and got NOTIFY passed on


# Recipients of one message that share a destination in, one result each (in order) out.
Agent = Callable[[QueuedMessage, Sequence[int], Destination], Awaitable[list[AgentResult]]]
# A transport that never blocks nor fails, run by qmgr on its worker thread.
SyncAgent = Callable[[QueuedMessage, int, Destination], AgentResult]


def maildir_name(msg: QueuedMessage, index: int, target: str = "") -> str:
    """The same Maildir name on every attempt for one message, recipient and target."""
    env = msg.envelope
    arrival_us = int(env.arrival_time * 1_000_000)
    tag = f"R{index}" + (f"A{zlib.crc32(target.encode()):08x}" if target else "")
    return f"{arrival_us // 1_000_000}.Q{env.queue_id}{tag}M{arrival_us % 1_000_000}.{_HOST}"


@dataclass(frozen=True, slots=True)
class AliasCommand:
    """A `|command` or `/file` alias target: the alias_maps key that lists it, the item as
    listed (`|command`, `/path`) and the address being expanded (RECIPIENT and
    Delivered-To)."""

    key: str
    item: str
    address: str


class LocalAgent:
    def __init__(self, params: Params, resolver: AddressResolver) -> None:
        self._params = params
        self._mbox = MboxSettings.from_params(params)
        self._commands = CommandSettings.from_params(params)
        self._command_maps = open_maps(params.mailbox_command_maps, Path(params.config_directory))
        self._resolver = resolver
        self._aliases: list[Table] = open_maps(
            params.alias_maps, Path(params.config_directory), aliases=True
        )

    async def __call__(
        self, msg: QueuedMessage, indexes: Sequence[int], dest: Destination
    ) -> list[AgentResult]:
        results = []
        for index in indexes:
            rcpt = msg.envelope.recipients[index]
            started = time.time()
            result = await asyncio.to_thread(self._deliver, msg, index, rcpt.address, rcpt.original)
            results.append(
                AgentResult(result, relay="local", xfer_time=time.time() - started, service="local")
            )
        return results

    def _deliver(
        self, msg: QueuedMessage, index: int, address: str, original: str
    ) -> DeliveryResult:
        targets, problem = self._expand(address)
        if problem is not None:
            return problem
        results = [
            self._command(msg, t, original or address)
            if isinstance(t, AliasCommand)
            else self._deliver_one(msg, index, t, address, original, len(targets) > 1)
            for t in targets
        ]
        for status in ("deferred", "bounced"):
            for r in results:
                if r.status == status:
                    return r
        return results[0]

    def verify(self, address: str) -> DeliveryResult:
        """What delivering to `address` would do, without delivering (sendmail -bv):
        "sent" means deliverable, worded as Postfix's local(8) in verify mode."""
        targets, problem = self._expand(address)
        if problem is not None:
            return problem
        p = self._params
        found: object = None
        for user in targets:
            if isinstance(user, AliasCommand):
                continue
            try:
                found = resolve_mailbox(
                    user,
                    home_mailbox=p.home_mailbox,
                    mail_spool_directory=p.mail_spool_directory,
                    recipient_delimiter=p.recipient_delimiter,
                )
            except LocalDeliveryNotSupported as exc:
                return DeliveryResult("deferred", "4.3.0", str(exc))
            if isinstance(found, DeliveryResult):
                return found
        if found is not None:
            user = found.user  # type: ignore[attr-defined]
            command = lookup_maps(self._command_maps, user) or p.mailbox_command
            if command:
                return DeliveryResult("sent", "2.0.0", f"delivers to command: {command}")
        if found is None:  # only commands
            item = next(t for t in targets if isinstance(t, AliasCommand)).item
            if item.startswith("|"):
                return DeliveryResult("sent", "2.0.0", f"delivers to command: {item[1:]}")
            return DeliveryResult("sent", "2.0.0", f"delivers to file: {item}")
        kind = "mailbox" if found.mbox else "maildir"  # type: ignore[attr-defined]
        return DeliveryResult("sent", "2.0.0", f"delivers to {kind}")

    def _command(self, msg: QueuedMessage, target: AliasCommand, original: str) -> DeliveryResult:
        p = self._params
        try:
            return deliver_alias_target(
                msg,
                alias_maps=p.alias_maps,
                config_directory=p.config_directory,
                key=target.key,
                item=target.item,
                address=target.address,
                original=original,
                settings=self._commands,
                mbox=self._mbox,
            )
        except (LocalDeliveryNotSupported, OSError, ValueError) as exc:
            return DeliveryResult("deferred", "4.3.0", f"alias {target.key}: {exc}")

    def _deliver_one(
        self, msg: QueuedMessage, index: int, user: str, address: str, original: str, many: bool
    ) -> DeliveryResult:
        p = self._params
        try:
            return deliver_local(
                msg,
                user,
                home_mailbox=p.home_mailbox,
                mail_spool_directory=p.mail_spool_directory,
                recipient_delimiter=p.recipient_delimiter,
                original=original or address,
                stable_name=maildir_name(msg, index, user if many else ""),
                mbox=self._mbox,
                mailbox_command=p.mailbox_command,
                commands=self._commands,
                command_maps=self._command_maps,
            )
        except LocalDeliveryNotSupported as exc:
            return DeliveryResult("deferred", "4.3.0", str(exc))

    def _expand(self, address: str) -> tuple[list[str | AliasCommand], DeliveryResult | None]:
        """Local users and alias commands an address resolves to through alias_maps; or
        why not.  A command listed twice for one recipient runs once (local(8))."""
        users: list[str | AliasCommand] = []
        seen: set[str] = set()

        def walk(addr: str, depth: int) -> DeliveryResult | None:
            local = self._resolver.local_user(addr).lower()
            full = addr.rpartition("@")[0].lower() if "@" in addr else addr.lower()
            if depth > _MAX_ALIAS_DEPTH:
                return DeliveryResult("bounced", "5.4.6", f"alias expansion loop for {addr}")
            value = None
            key = local
            if local not in seen:
                value = lookup_maps(self._aliases, full) if full != local else None
                if value is not None:
                    key = full
                else:
                    value = lookup_maps(self._aliases, local)
            seen.add(local)
            if value is None:
                users.append(addr)
                return None
            for item in alias_items(value):
                problem = expand_item(item, key, addr, local, depth, "alias")
                if problem is not None:
                    return problem
            return None

        def expand_item(
            item: str, key: str, addr: str, local: str, depth: int, source: str
        ) -> DeliveryResult | None:
            """One alias (or :include: file) entry; `source` is where it was listed."""
            if item[:1] in ("|", "/"):
                kind = "command" if item[0] == "|" else "file"
                allowed = (
                    self._params.allow_mail_to_commands
                    if kind == "command"
                    else self._params.allow_mail_to_files
                )
                if source not in allowed:
                    return DeliveryResult("bounced", "5.7.1", f"mail to {kind} is restricted")
                if source != "alias":  # the root helper checks alias_maps entries only
                    return DeliveryResult(
                        "deferred",
                        "4.3.0",
                        f"alias {local}: {item}: a {kind} in an include file "
                        "is not supported by postwall yet",
                    )
                target_item = AliasCommand(key, item, addr)
                if target_item not in users:
                    users.append(target_item)
                return None
            if item.startswith(":include:"):
                return include(item[len(":include:") :].strip(), key, addr, local, depth)
            if item[0] == '"':
                return DeliveryResult(
                    "deferred", "4.3.0", f"alias {local}: {item}: not supported by postwall yet"
                )
            target = self._resolver.qualify(item)
            if self._resolver.classify(target) is not AddressClass.LOCAL:
                return DeliveryResult(
                    "deferred",
                    "4.3.0",
                    f"alias {local}: forwarding to {item} is not supported by postwall yet",
                )
            if self._resolver.local_user(target).lower() == local:
                users.append(target)  # "root: root, x": the user itself, no recursion
                return None
            return walk(target, depth + 1)

        def include(
            path: str, key: str, addr: str, local: str, depth: int
        ) -> DeliveryResult | None:
            """`:include:/file`: its addresses (one or more a line, # comments) as if listed
            in the alias itself; commands and files in it need `include` in
            allow_mail_to_commands / allow_mail_to_files."""
            if depth > _MAX_ALIAS_DEPTH:
                return DeliveryResult("bounced", "5.4.6", f"alias expansion loop for {addr}")
            try:
                if not path.startswith("/"):
                    raise OSError(f"include file must be an absolute pathname: {path}")
                text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
            except OSError:  # Postfix 3.7 says no more (its warning has the details)
                return DeliveryResult("bounced", "5.3.5", "mail system configuration error")
            for line in text.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                for item in alias_items(line):
                    problem = expand_item(item, key, addr, local, depth + 1, "include")
                    if problem is not None:
                        return problem
            return None

        problem = walk(address, 0)
        return users, problem


def discard_now(msg: QueuedMessage, index: int, dest: Destination) -> AgentResult:
    return AgentResult(discard.deliver(dest.nexthop), relay="none", service="discard")


async def discard_agent(
    msg: QueuedMessage, indexes: Sequence[int], dest: Destination
) -> list[AgentResult]:
    return [discard_now(msg, index, dest) for index in indexes]


async def error_agent(
    msg: QueuedMessage, indexes: Sequence[int], dest: Destination
) -> list[AgentResult]:
    """Postfix's error(8): the next hop is the reason (`error:text`), a leading
    enhanced status code its DSN (`error:5.1.1 text`); a 4.x.x one defers."""
    dsn, text = _status(dest.nexthop, "5.0.0")
    status: DeliveryStatus = "deferred" if dsn.startswith("4") else "bounced"
    result = DeliveryResult(status, dsn, text or "delivery failed")
    return [AgentResult(result, relay="none", service="error") for _ in indexes]


def _status(nexthop: str, default: str) -> tuple[str, str]:
    """The error/retry next hop's leading status (not a 2.x.x one), or `default`."""
    split = dsn_split(nexthop)
    return split if split is not None and split[0][0] != "2" else (default, nexthop)


async def retry_agent(
    msg: QueuedMessage, indexes: Sequence[int], dest: Destination
) -> list[AgentResult]:
    """Postfix's retry: defer with the next hop as the reason (a leading status is
    kept, as 4.x.x)."""
    dsn, text = _status(dest.nexthop, "4.0.0")
    dsn = "4" + dsn[1:]
    result = DeliveryResult("deferred", dsn, text or "delivery temporarily suspended")
    return [AgentResult(result, relay="none", service="retry") for _ in indexes]
