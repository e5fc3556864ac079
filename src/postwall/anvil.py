"""anvil: per-client connection counts and event rates, as Postfix's anvil(8), in process.

Who calls it: master makes one `Anvil` for the whole server (it survives reloads, as
Postfix's anvil outlives smtpd processes); each smtpd session reports its events
through `smtpd.limits`, and master logs `status_lines()` every anvil_status_update_time
and at exit.

Semantics follow anvil.c: a client is identified by "service:address"; `connect`
returns its concurrent session count and its connection rate, `mail`, `rcpt` and
`newtls` return the rate of that event.  Rates are counted over a fixed window of
anvil_rate_time_unit that restarts with the first event after it ran out (anvil
resets the counter rather than keeping a moving average); `newtls_stat` reads the
TLS rate without counting.  An entry whose last session ended is forgotten
anvil_rate_time_unit later.

Memory bound (postwall's addition): entries with open sessions are bounded by the
sessions themselves; idle entries are kept in a queue in the order they went idle and
are dropped when they expire or, under a flood of distinct addresses, as soon as the
table holds `max_entries` (the oldest idle client loses its rate history first).
Not thread-safe: only the event loop calls it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from postwall.config.network import NetworkError, Networks, parse_network
from postwall.config.tables import Table, open_table

# About 250 bytes an entry with its key: 100,000 clients cost some 25 MB at most.
DEFAULT_MAX_ENTRIES = 100_000


@dataclass(slots=True)
class _Remote:
    count: int = 0
    rate: int = 0
    mail: int = 0
    rcpt: int = 0
    ntls: int = 0
    auth: int = 0
    start: float = 0.0
    idle_since: float = 0.0  # when count last dropped to 0


@dataclass(slots=True)
class _Peak:
    value: int = 0
    ident: str = ""
    when: float = 0.0  # wall clock, for the log line

    def update(self, value: int, ident: str) -> None:
        if value > self.value:
            self.value, self.ident, self.when = value, ident, time.time()


class Anvil:
    def __init__(
        self,
        time_unit: float = 60.0,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.time_unit = time_unit
        self.max_entries = max_entries
        self.clock = clock
        self._remotes: dict[str, _Remote] = {}
        self._idle: deque[tuple[float, str]] = deque()
        self._peaks = {
            k: _Peak() for k in ("conn_rate", "conn_count", "mail", "rcpt", "ntls", "auth")
        }
        self._max_size = 0
        self._max_size_when = 0.0
        self.evicted = 0  # idle entries dropped before their time, for tests and stats

    def __len__(self) -> int:
        return len(self._remotes)

    # -- events ----------------------------------------------------------------

    def connect(self, ident: str) -> tuple[int, int]:
        """A new session: (concurrent sessions, connections in this window), both counting
        this one."""
        now = self.clock()
        self._expire(now)
        remote = self._remotes.get(ident)
        if remote is None:
            self._make_room(now)
            remote = self._remotes[ident] = _Remote(count=1, rate=1, start=now)
            if len(self._remotes) > self._max_size:
                self._max_size, self._max_size_when = len(self._remotes), time.time()
        else:
            self._incr(remote, "rate", now)
            remote.count += 1
        self._peaks["conn_rate"].update(remote.rate, ident)
        self._peaks["conn_count"].update(remote.count, ident)
        return remote.count, remote.rate

    def disconnect(self, ident: str) -> None:
        remote = self._remotes.get(ident)
        if remote is None or remote.count <= 0:
            return
        remote.count -= 1
        if remote.count == 0:
            now = self.clock()
            remote.idle_since = now
            self._idle.append((now, ident))
            if len(self._idle) > 2 * self.max_entries:
                self._compact()

    def mail(self, ident: str) -> int:
        return self._event(ident, "mail")

    def rcpt(self, ident: str) -> int:
        return self._event(ident, "rcpt")

    def newtls(self, ident: str) -> int:
        return self._event(ident, "ntls")

    def auth(self, ident: str) -> int:
        return self._event(ident, "auth")

    def newtls_stat(self, ident: str) -> int:
        remote = self._remotes.get(ident)
        if remote is None:
            return 0
        if remote.start + self.time_unit < self.clock():
            return 0  # stale: anvil reports it as reset
        return remote.ntls

    def lookup(self, ident: str) -> tuple[int, int, int, int, int]:
        """(count, connection rate, mail rate, recipient rate, newtls rate), as anvil's
        lookup request, for tests and tools."""
        remote = self._remotes.get(ident)
        if remote is None:
            return (0, 0, 0, 0, 0)
        if remote.start + self.time_unit < self.clock():
            return (remote.count, 0, 0, 0, 0)
        return (remote.count, remote.rate, remote.mail, remote.rcpt, remote.ntls)

    # -- statistics --------------------------------------------------------------

    def status_lines(self) -> list[str]:
        """anvil's periodic `statistics:` lines (peaks since the last call), then reset."""
        unit = int(self.time_unit)
        lines = []
        for key, what in (("conn_rate", "connection"), ("conn_count", "connection")):
            peak = self._peaks[key]
            if peak.value > 0:
                if key == "conn_rate":
                    lines.append(_rate_line(what, peak, unit))
                else:
                    lines.append(
                        f"statistics: max {what} count {peak.value} for ({peak.ident})"
                        f" at {_ctime15(peak.when)}"
                    )
                peak.value = 0
        for key, what in (
            ("mail", "message"),
            ("rcpt", "recipient"),
            ("ntls", "newtls"),
            ("auth", "auth"),
        ):
            peak = self._peaks[key]
            if peak.value > 0:
                lines.append(_rate_line(what, peak, unit))
                peak.value = 0
        if self._max_size > 0:
            lines.append(
                f"statistics: max cache size {self._max_size} at {_ctime15(self._max_size_when)}"
            )
            self._max_size = 0
        return lines

    # -- internals ------------------------------------------------------------------

    def _event(self, ident: str, what: str) -> int:
        now = self.clock()
        remote = self._remotes.get(ident)
        if remote is None:
            # As anvil after a reload: an event for a client it does not know starts one.
            self._make_room(now)
            remote = self._remotes[ident] = _Remote(start=now, idle_since=now)
            self._idle.append((now, ident))
        self._incr(remote, what, now)
        value: int = getattr(remote, what)
        self._peaks[what].update(value, ident)
        return value

    def _incr(self, remote: _Remote, what: str, now: float) -> None:
        if remote.start + self.time_unit < now:
            remote.rate = remote.mail = remote.rcpt = remote.ntls = remote.auth = 0
            remote.start = now
        setattr(remote, what, getattr(remote, what) + 1)

    def _expire(self, now: float) -> None:
        idle = self._idle
        while idle and idle[0][0] + self.time_unit <= now:
            self._drop_if_idle(*idle.popleft())

    def _make_room(self, now: float) -> None:
        idle = self._idle
        while len(self._remotes) >= self.max_entries and idle:
            if self._drop_if_idle(*idle.popleft()):
                self.evicted += 1

    def _drop_if_idle(self, since: float, ident: str) -> bool:
        remote = self._remotes.get(ident)
        # A queue item is stale when the client came back (count > 0) or went idle again
        # later (a newer item stands for it).
        if remote is not None and remote.count == 0 and remote.idle_since == since:
            del self._remotes[ident]
            return True
        return False

    def _compact(self) -> None:
        self._idle = deque(
            (since, ident)
            for since, ident in self._idle
            if (r := self._remotes.get(ident)) is not None
            and r.count == 0
            and r.idle_since == since
        )


def _rate_line(what: str, peak: _Peak, unit: int) -> str:
    return (
        f"statistics: max {what} rate {peak.value}/{unit}s for ({peak.ident})"
        f" at {_ctime15(peak.when)}"
    )


def _ctime15(when: float) -> str:
    # ctime() + 4, 15 characters: "Nov  8 09:15:47" (space-padded day, as anvil logs it).
    return time.strftime("%b %e %H:%M:%S", time.localtime(when))


class ClientList:
    """smtpd_client_event_limit_exceptions: Postfix's namadr list, matching a client by
    address (networks, as in mynetworks) or by name (a host name, or `.domain` for the
    names under it), first match wins, `!` negates.  A `type:table` entry matches when
    the table lists the client's name or address (as in mynetworks, its result is not
    used); an unsupported table type is a ValueError."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self._entries: list[tuple[bool, Networks | Table | None, str]] = []
        for item in patterns:
            negate = item.startswith("!")
            pat = item[1:] if negate else item
            if pat.startswith("/"):
                self._entries.append((negate, Networks([pat]), ""))
                continue
            try:
                parse_network(pat)
            except NetworkError:
                if ":" in pat and not pat.startswith("["):
                    self._entries.append((negate, open_table(pat), ""))  # TableError
                    continue
                if not pat or not all(c.isalnum() or c in ".-_" for c in pat):
                    raise ValueError(f'bad client name pattern "{pat}"') from None
                self._entries.append((negate, None, pat.lower()))
                continue
            self._entries.append((negate, Networks([pat]), ""))

    def match(self, name: str, addr: str) -> bool:
        name = name.lower()
        for negate, nets, pattern in self._entries:
            if isinstance(nets, Table):
                hit = (name != "unknown" and nets.lookup(name) is not None) or (
                    nets.lookup(addr) is not None
                )
            elif nets is not None:
                hit = nets.match(addr)
            elif name == "unknown":
                hit = False
            elif pattern.startswith("."):
                hit = name.endswith(pattern)
            else:
                hit = name == pattern
            if hit:
                return not negate
        return False
