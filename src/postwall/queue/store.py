"""The durable mail queue: one file per message, moved between state directories.

Layout under the queue directory (all created mode 0700): `incoming/`,
`active/`, `deferred/`, `hold/`, `corrupt/` hold complete queue files named by
their queue id; `tmp/` holds files being written. A file appears in a state
directory only by link/rename of a complete, fsync'ed file, so a crash never
leaves a partial file in a state directory; leftovers in `tmp/` belonging to
dead processes are removed when a store is opened, and unused spares when it
is closed.

Guarantees:
- `commit` returns the queue id only after the file's data and its directory
  entry in `incoming/` are on disk (file fsync, rename without replace,
  directory fsync). On failure it raises OSError/ValueError and leaves nothing
  in `incoming/`. Concurrent commits are grouped: a writer thread takes every
  commit pending, writes and fsyncs the files (itself by default: on ext4 the
  first fsync commits the journal transaction that holds the whole batch; with
  `fsync_workers` on a small pool), renames them all into `incoming/`,
  then fsyncs `incoming/` once for the whole batch, and settles the batch's
  waiters with one wake-up of their event loop. Cancelling the awaiting task
  does not stop a commit under way.
- `reserve`/`new_queue_id` allocate the queue id early (Postfix logs it at the
  first RCPT and puts it in the Received header, before the content exists);
  `release_queue_id` gives it back (ids never released nor committed are
  dropped after `reservation_ttl`, a day by default). Creating a file is the slow step on ext4
  (up to a few hundred microseconds here), so a background thread keeps up to
  `spare_ids` temp files ready and `new_queue_id` is cheap enough to call
  on the event loop when a spare is available.  Most spares are recycled: a
  finished queue file is renamed into tmp/ instead of being unlinked
  (`recycle_or_unlink`), gets a new id (same inode, new microseconds) and is
  overwritten and truncated by its next commit.
- `mark_recipients` and `set_warn_time` rewrite fixed-width bytes in place and
  fsync, so a recipient is never lost: after a crash it is pending or done.
- `move`, `remove`, `quarantine` rename/unlink (or recycle) and fsync the directories.
- Deferred files carry their next delivery attempt as atime and mtime, as
  Postfix's qmgr does (qmgr_active.c sets both to now + backoff); `scan`
  with `due=` skips files whose time has not come.

Reads raise `records.CorruptQueueFile` on a bad file; the caller decides to
`quarantine` it. Async methods run blocking work off the event loop; the
`*_sync` methods are for command-line tools and the writer thread.
Callers: cleanup (commit, reserve), qmgr (scan, load, mark, move, remove,
unlink_fresh),
the postqueue/postsuper tools (sync API).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import errno
import itertools
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from postwall import fsutil
from postwall.queue import records
from postwall.queue.ids import is_queue_id, make_queue_id
from postwall.queue.records import CorruptQueueFile, Envelope, RcptStatus

__all__ = ["STATES", "QueueStore", "QueuedMessage", "Reservation", "State"]

State = Literal["incoming", "active", "deferred", "hold", "corrupt"]
STATES: tuple[State, ...] = ("incoming", "active", "deferred", "hold", "corrupt")
_TMP = "tmp"
_REASON_SUFFIX = ".reason"
_DEFER = "defer"  # <qid>: one "address TAB reason" line per deferred recipient
_SPARE_WORKERS = 1
# A finished queue file up to this size becomes a spare temp file instead of being
# unlinked; a larger one is not worth keeping its blocks for.
_RECYCLE_MAX = 256 * 1024


@dataclass
class Reservation:
    """A queue id bound to a temp file in tmp/ (which keeps its inode, and so the id,
    taken). No descriptor is held, so idle sessions cost no file handles. A recycled
    file still holds a finished message's bytes: the commit overwrites and truncates."""

    queue_id: str
    tmp_path: str
    created: float
    closed: bool = False
    submitted: bool = False
    recycled: bool = False


@dataclass
class QueuedMessage:
    """A loaded queue file. Holds an open descriptor, so the content stays readable
    after the file moves to another state; call `close` (or use `with`)."""

    envelope: Envelope
    state: State
    path: Path
    content_offset: int
    content_length: int
    _fd: int = field(repr=False, default=-1)
    # When the queue manager took it for this delivery attempt (Postfix's
    # active_arrival): the SMTP client's plaintext fallback rule needs it.
    active_time: float = 0.0

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id

    def read_content(self) -> bytes:
        """The whole content (copies it into memory)."""
        return b"".join(self.iter_content())

    def iter_content(self, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """The content in chunks, read straight from the queue file."""
        if self._fd < 0:
            raise ValueError("queued message is closed")
        pos, end = self.content_offset, self.content_offset + self.content_length
        while pos < end:
            chunk = os.pread(self._fd, min(chunk_size, end - pos), pos)
            if not chunk:
                raise CorruptQueueFile(f"{self.queue_id}: content truncated while reading")
            pos += len(chunk)
            yield chunk

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> QueuedMessage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Job:
    parts: list[bytes | memoryview]
    reservation: Reservation
    future: concurrent.futures.Future[str] | asyncio.Future[str]
    # Set for an asyncio caller: its future is settled on this loop, one
    # call_soon_threadsafe per batch (each wake-up of the loop costs a syscall).
    loop: asyncio.AbstractEventLoop | None = None
    state: State = "incoming"  # "hold" for a message header_checks put on hold


# (queue file, its deferral-reason file) pairs, the caller's future and loop.
_Unlinks = tuple[
    list[tuple[str, str]], asyncio.Future[list[OSError | None]], asyncio.AbstractEventLoop
]


class _GroupCommitter:
    """Writer thread that turns pending commits into batches sharing one dir fsync."""

    def __init__(self, store: QueueStore, workers: int) -> None:
        self._store = store
        self._cond = threading.Condition()
        self._pending: list[_Job] = []
        self._closed = False
        # 0: the writer thread fsyncs the batch itself.  On ext4 (data=ordered) the
        # first fsync commits the journal transaction holding the whole batch, so the
        # rest are cheap, and each extra thread costs context switches per batch.
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(workers, "postwall-qfsync") if workers else None
        )
        # Unlinks of messages the queue manager finished straight from incoming/: this
        # thread is awake for the commits anyway, so they cost no thread hand-off of
        # their own.  (paths, future, loop) per request.
        self._unlinks: list[_Unlinks] = []
        self._thread = threading.Thread(target=self._run, name="postwall-qwriter", daemon=True)
        self._thread.start()
        self.batches = 0  # for tests and statistics

    def submit(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("queue store is closed")
            self._pending.append(job)
            self._cond.notify()

    def submit_unlinks(
        self,
        paths: list[tuple[str, str]],
        future: asyncio.Future[list[OSError | None]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("queue store is closed")
            self._unlinks.append((paths, future, loop))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        if self._pool is not None:
            self._pool.shutdown()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._unlinks and not self._closed:
                    self._cond.wait()
                batch, self._pending = self._pending, []
                unlinks, self._unlinks = self._unlinks, []
                if not batch and not unlinks and self._closed:
                    return
            if batch:
                self._commit_and_settle(batch)
            # After the commits: their sessions wait for a 250, these only for a log line.
            if unlinks:
                _unlink_and_settle(self._store, unlinks)

    def _commit_and_settle(self, batch: list[_Job]) -> None:
        self.batches += 1
        outcomes: list[tuple[_Job, str | BaseException]] = []
        try:
            self._commit_batch(batch, outcomes)
        except BaseException as exc:  # a bug must fail the callers, not hang them
            settled = {id(job) for job, _ in outcomes}
            for job in batch:
                if id(job) not in settled:
                    outcomes.append((job, exc))
                    self._store.abandon(job.reservation)
        _deliver_outcomes(outcomes)

    def _commit_batch(
        self, batch: list[_Job], outcomes: list[tuple[_Job, str | BaseException]]
    ) -> None:
        store = self._store
        if self._pool is None or len(batch) == 1:
            written = [_write_and_fsync(job) for job in batch]
        else:
            written = list(self._pool.map(_write_and_fsync, batch))
        linked: list[_Job] = []
        dirs = {job.state: store.state_dir(job.state) for job in batch}
        for job, err in zip(batch, written, strict=True):
            if err is None:
                try:
                    # One step, and never over an existing queue file.
                    fsutil.rename_noreplace(
                        job.reservation.tmp_path, dirs[job.state] + job.reservation.queue_id
                    )
                    store.forget(job.reservation)
                    linked.append(job)
                    continue
                except OSError as exc:
                    err = exc
            store.abandon(job.reservation)
            outcomes.append((job, err))
        if not linked:
            return
        try:
            for state in {job.state for job in linked}:
                fsutil.fsync_dir(dirs[state])
        except OSError as exc:
            for job in linked:
                with contextlib.suppress(OSError):
                    os.unlink(dirs[job.state] + job.reservation.queue_id)
                outcomes.append((job, exc))
            return
        for job in linked:
            outcomes.append((job, job.reservation.queue_id))


def _unlink_and_settle(store: QueueStore, requests: list[_Unlinks]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for paths, future, loop in requests:
        errors: list[OSError | None] = []
        for path, leftover in paths:
            try:
                store.recycle_or_unlink(path)
                errors.append(None)
            except OSError as exc:
                errors.append(exc)
                continue
            with contextlib.suppress(OSError):  # as remove_sync: a stale deferral reason
                os.unlink(leftover)
        by_loop.setdefault(loop, []).append((future, errors))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle_futures, items)


def _settle_futures(items: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in items:
        if not future.done():
            future.set_result(result)


def _deliver_outcomes(outcomes: list[tuple[_Job, str | BaseException]]) -> None:
    """Settle every caller's future: sync ones directly, async ones in one loop call."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, str | BaseException]]] = {}
    for job, outcome in outcomes:
        if job.loop is None:
            _settle(job.future, outcome)
        else:
            by_loop.setdefault(job.loop, []).append((job, outcome))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle_all, items)


def _settle_all(items: list[tuple[_Job, str | BaseException]]) -> None:
    for job, outcome in items:
        _settle(job.future, outcome)


def _settle(
    future: concurrent.futures.Future[str] | asyncio.Future[str], outcome: str | BaseException
) -> None:
    """Complete a caller's future once; a future already done (cancelled) is left alone."""
    if future.done():
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError, asyncio.InvalidStateError):
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _write_and_fsync(job: _Job) -> OSError | None:
    try:
        fd = os.open(job.reservation.tmp_path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        return exc
    try:
        fsutil.writev_all(fd, job.parts)
        if job.reservation.recycled:  # cut what is left of the finished message
            os.ftruncate(fd, sum(len(part) for part in job.parts))
        os.fsync(fd)
    except OSError as exc:
        return exc
    finally:
        os.close(fd)
    return None


class QueueStore:
    """The queue directory. Thread-safe; one store per process and directory."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync_workers: int = 0,
        spare_ids: int = 64,
        reservation_ttl: float = 86400.0,
    ) -> None:
        self.directory = Path(directory)
        fsutil.ensure_dir(self.directory, 0o700)
        for name in (*STATES, _TMP, _DEFER):
            fsutil.ensure_dir(self.directory / name, 0o700)
        # Plain "dir/state/" strings: hot paths build names by concatenation, as
        # pathlib costs several microseconds per join.
        self._dirs: dict[str, str] = {
            name: os.path.join(self.directory, name, "") for name in (*STATES, _TMP)
        }
        self._fsync_workers = fsync_workers
        self._committer: _GroupCommitter | None = None
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self._reserved: dict[str, Reservation] = {}
        self._spares: collections.deque[Reservation] = collections.deque()
        self._spare_target = spare_ids
        self._reservation_ttl = reservation_ttl
        self._spare_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._refills = 0
        self._closing = False
        self.clean_tmp()

    # -- paths -----------------------------------------------------------

    def path(self, state: State, queue_id: str) -> Path:
        return Path(self._spath(state, queue_id))

    def _spath(self, state: State, queue_id: str) -> str:
        if state not in STATES:
            raise ValueError(f"unknown queue state {state!r}")
        if not is_queue_id(queue_id):
            raise ValueError(f"malformed queue id {queue_id!r}")
        return self._dirs[state] + queue_id

    def free_space(self) -> tuple[int, int]:
        """(blocks available to unprivileged users, block size) of the queue's file system."""
        st = os.statvfs(self.directory)
        return st.f_bavail, st.f_frsize

    def state_dir(self, state: str) -> str:
        """The directory of a state (or "tmp") as a string ending in "/"."""
        return self._dirs[state]

    def locate(self, queue_id: str) -> State | None:
        """The state whose directory holds `queue_id`, or None."""
        if not is_queue_id(queue_id):
            raise ValueError(f"malformed queue id {queue_id!r}")
        for state in STATES:
            if os.path.lexists(self._dirs[state] + queue_id):
                return state
        return None

    def clean_tmp(self) -> list[str]:
        """Remove temp files left by dead processes; returns the names removed."""
        removed = []
        tmpdir = self.directory / _TMP
        for name in os.listdir(tmpdir):
            pid_text = name.split(".", 1)[0]
            if pid_text.isdigit() and fsutil.pid_alive(int(pid_text)):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmpdir / name)
                removed.append(name)
        return removed

    # -- commit ----------------------------------------------------------

    def _tmp_name(self) -> str:
        # The pid lets clean_tmp tell a live process's files from a dead one's.
        return f"{self._dirs[_TMP]}{os.getpid()}.{next(self._counter)}.{secrets.token_hex(4)}"

    def _fresh_id(self, inode: int, previous: str = "") -> str:
        """An id for the file with `inode`: free in every state and not `previous`."""
        while True:
            qid = make_queue_id((time.time_ns() // 1000) % 1_000_000, inode)
            # A live file with our inode cannot exist; a restored foreign file can.
            if qid != previous and self.locate(qid) is None and qid not in self._reserved:
                return qid
            time.sleep(1e-6)

    def _create_reservation(self) -> Reservation:
        """Create an empty temp file and derive the queue id from its inode."""
        tmp = self._tmp_name()
        fd = fsutil.create_exclusive(tmp, 0o600)
        try:
            qid = self._fresh_id(os.fstat(fd).st_ino)
        except BaseException:
            os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        return Reservation(qid, tmp, time.time())

    def recycle_or_unlink(self, path: str) -> None:
        """Remove a finished queue file: keep it as a spare temp file when the spares
        run short, else unlink it.  Raises what the unlink raises.

        Why: a queue that creates and unlinks one file per message makes ext4 skip
        each recently freed inode when it allocates the next (`recently_deleted`), so
        creating a file cost ~120 us after a few thousand unlinks against ~16 us on a
        fresh directory, measured here.  A rename keeps the inode and its blocks."""
        st = self._recyclable(path)
        if st is not None:
            tmp = self._tmp_name()
            try:
                os.rename(path, tmp)
            except OSError:
                pass  # unlinked below, with the error the caller should see
            else:
                qid = self._fresh_id(st.st_ino, previous=os.path.basename(path))
                self._spares.append(Reservation(qid, tmp, time.time(), recycled=True))
                return
        os.unlink(path)

    def _recyclable(self, path: str) -> os.stat_result | None:
        """`path`'s status if the spares run short and it is a plain file of ours, named
        once, small enough: one the next commit may overwrite."""
        if not self._spare_target or self._closing or len(self._spares) >= self._spare_target:
            return None
        try:
            st = os.lstat(path)
        except OSError:
            return None
        ours = (
            stat.S_ISREG(st.st_mode)
            and st.st_nlink == 1
            and st.st_uid == os.geteuid()
            and stat.S_IMODE(st.st_mode) == 0o600
            and st.st_size <= _RECYCLE_MAX
        )
        return st if ours else None

    def _refill_spares(self) -> None:
        try:
            while len(self._spares) < self._spare_target and not self._closing:
                self._spares.append(self._create_reservation())
        except OSError:
            pass  # reserve_sync creates on demand and reports the error to its caller
        finally:
            with self._lock:
                self._refills -= 1

    def _maybe_refill(self) -> None:
        with self._lock:
            if self._closing or len(self._spares) >= self._spare_target // 2:
                return
            if self._spare_pool is None:
                self._spare_pool = concurrent.futures.ThreadPoolExecutor(
                    _SPARE_WORKERS, "postwall-qspare"
                )
            start = _SPARE_WORKERS - self._refills
            self._refills += start
            pool = self._spare_pool
        # File creation is the slow part of a commit (it takes the directory
        # lock and allocates an inode), so a few threads keep spares ready.
        for _ in range(start):
            pool.submit(self._refill_spares)

    def reserve_sync(self) -> Reservation:
        """Take a queue id: a ready spare temp file if there is one, else a new one."""
        reservation = None
        while self._spares:
            try:
                spare = self._spares.popleft()
            except IndexError:
                break
            # Checked against every state when made; its temp file holds the inode the
            # id is built from, so no live queue file can have taken the id since.
            reservation = spare
            break
        if self._spare_target:
            self._maybe_refill()
        if reservation is None:
            reservation = self._create_reservation()
        reservation.created = time.time()
        with self._lock:
            self._reserved[reservation.queue_id] = reservation
            sweep = len(self._reserved) % 1024 == 0
        if sweep:  # leak guard for callers that never release an unused id
            self.expire_reservations(reservation.created - self._reservation_ttl)
        return reservation

    async def reserve(self) -> Reservation:
        return await asyncio.to_thread(self.reserve_sync)

    def new_queue_id(self) -> str:
        """Reserve a queue id now (a ready spare, else one file creation; no fsync).
        `commit` an envelope carrying it, or `release_queue_id` it when abandoned."""
        return self.reserve_sync().queue_id

    def release_queue_id(self, queue_id: str) -> None:
        """Give up a reserved, uncommitted queue id (RSET, QUIT, lost connection)."""
        with self._lock:
            reservation = self._reserved.get(queue_id)
        if reservation is not None:
            self.abandon(reservation)

    def expire_reservations(self, older_than: float) -> int:
        """Release reservations made before `older_than` (a leak guard); returns how many."""
        with self._lock:
            stale = [
                r for r in self._reserved.values() if r.created < older_than and not r.submitted
            ]
        for reservation in stale:
            self.abandon(reservation)
        return len(stale)

    def abandon(self, reservation: Reservation) -> None:
        """Release a reservation: unlink its temp file (idempotent)."""
        with self._lock:
            if reservation.closed:
                return
            reservation.closed = True
            self._reserved.pop(reservation.queue_id, None)
        self._discard_file(reservation.tmp_path)

    def forget(self, reservation: Reservation) -> None:
        """Drop a reservation whose temp file has been renamed into a state directory."""
        with self._lock:
            reservation.closed = True
            self._reserved.pop(reservation.queue_id, None)

    @staticmethod
    def _discard_file(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _reservation_for(self, envelope: Envelope) -> Reservation | None:
        if not envelope.queue_id:
            return None
        with self._lock:
            reservation = self._reserved.get(envelope.queue_id)
        if reservation is None:
            raise ValueError(f"queue id {envelope.queue_id} was not reserved by this store")
        return reservation

    def _submit(
        self,
        envelope: Envelope,
        content: bytes | memoryview,
        reservation: Reservation | None,
        future: concurrent.futures.Future[str] | asyncio.Future[str],
        loop: asyncio.AbstractEventLoop | None = None,
        state: State = "incoming",
    ) -> None:
        parts = records.encode(envelope, content)  # ValueError before anything is queued
        if reservation is None:
            reservation = self.reserve_sync()
        with self._lock:
            if reservation.closed or reservation.submitted:
                raise ValueError(f"queue id {reservation.queue_id} already committed or released")
            reservation.submitted = True
            if self._committer is None:
                self._committer = _GroupCommitter(self, self._fsync_workers)
            committer = self._committer
        try:
            committer.submit(_Job(parts, reservation, future, loop, state))
        except BaseException:
            self.abandon(reservation)
            raise

    async def commit(
        self,
        envelope: Envelope,
        content: bytes,
        reservation: Reservation | None = None,
        *,
        state: State = "incoming",
    ) -> str:
        """Durably queue a message into incoming/ (or `state` "hold"); returns its queue id.

        The id is `reservation`'s, else `envelope.queue_id`'s if set (from
        `new_queue_id`), else a fresh one. A reservation is consumed, except on
        ValueError (bad envelope), when it stays usable."""
        if reservation is None:
            reservation = self._reservation_for(envelope)
        owned = reservation is None
        if reservation is None:
            reservation = await self.reserve()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        try:
            self._submit(envelope, content, reservation, future, loop, state)
        except BaseException:
            if owned:
                self.abandon(reservation)
            raise
        # shield: a cancelled session must not abandon a file the writer is linking.
        return await asyncio.shield(future)

    def commit_sync(
        self, envelope: Envelope, content: bytes, reservation: Reservation | None = None
    ) -> str:
        if reservation is None:
            reservation = self._reservation_for(envelope)
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._submit(envelope, content, reservation, future)
        return future.result()

    @property
    def batches(self) -> int:
        """Number of commit batches written so far (each had one directory fsync)."""
        return self._committer.batches if self._committer else 0

    def close(self) -> None:
        """Finish pending commits, stop the threads, remove unused spare temp files.
        The store stays usable: a later call starts what it needs again."""
        with self._lock:
            committer, self._committer = self._committer, None
            spare_pool, self._spare_pool = self._spare_pool, None
            self._closing = True
        if spare_pool is not None:
            spare_pool.shutdown()
        while self._spares:
            self._discard_file(self._spares.popleft().tmp_path)
        with self._lock:
            self._closing = False
        if committer is not None:
            committer.close()

    # -- reading ---------------------------------------------------------

    def scan_sync(self, state: State, *, due: float | None = None) -> list[str]:
        """Queue ids in `state`, oldest first; with `due`, only files whose mtime <= due."""
        entries: list[tuple[float, str]] = []
        directory = self.directory / state
        if state not in STATES:
            raise ValueError(f"unknown queue state {state!r}")
        for name in os.listdir(directory):
            if not is_queue_id(name):
                continue
            try:
                mtime = os.stat(directory / name).st_mtime
            except FileNotFoundError:
                continue  # moved meanwhile
            if due is None or mtime <= due:
                entries.append((mtime, name))
        entries.sort()
        return [name for _, name in entries]

    async def scan(self, state: State, *, due: float | None = None) -> list[str]:
        return await asyncio.to_thread(self.scan_sync, state, due=due)

    def _find(self, queue_id: str, state: State | None) -> tuple[State, str]:
        found = state if state is not None else self.locate(queue_id)
        if found is None:
            raise FileNotFoundError(f"queue file {queue_id} not found")
        return found, self._spath(found, queue_id)

    def load_sync(self, queue_id: str, state: State | None = None) -> QueuedMessage:
        """Parse a queue file; raises FileNotFoundError or CorruptQueueFile."""
        found, path = self._find(queue_id, state)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                with open(fd, "rb", closefd=False, buffering=8192) as fp:
                    parsed = records.parse(fp, queue_id)
            finally:
                # Still this name's file?  A finished file is recycled (renamed into tmp/,
                # then overwritten): what a reader in another process got may be torn.
                if os.lstat(path).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError(errno.ENOENT, "queue file moved", path)
        except BaseException:
            os.close(fd)
            raise
        return QueuedMessage(
            parsed.envelope, found, Path(path), parsed.content_offset, parsed.content_length, fd
        )

    async def load(self, queue_id: str, state: State | None = None) -> QueuedMessage:
        return await asyncio.to_thread(self.load_sync, queue_id, state)

    def next_attempt(self, queue_id: str, state: State = "deferred") -> float:
        """When a deferred message is due again (its mtime)."""
        return os.stat(self.path(state, queue_id)).st_mtime

    # -- updates ---------------------------------------------------------

    def mark_recipients_sync(
        self, queue_id: str, indexes: Iterable[int], status: RcptStatus, state: State | None = None
    ) -> None:
        """Durably set the completion status of recipients (by index in the envelope)."""
        _, path = self._find(queue_id, state)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            with open(fd, "rb", closefd=False) as fp:
                offsets = records.parse(fp, queue_id).status_offsets
            wanted = sorted(set(indexes))
            for i in wanted:
                if not 0 <= i < len(offsets):
                    raise IndexError(f"{queue_id}: no recipient #{i}")
            for i in wanted:
                os.pwrite(fd, status.value, offsets[i])
            os.fsync(fd)
        finally:
            os.close(fd)

    async def mark_recipients(
        self, queue_id: str, indexes: Iterable[int], status: RcptStatus, state: State | None = None
    ) -> None:
        await asyncio.to_thread(self.mark_recipients_sync, queue_id, list(indexes), status, state)

    def set_warn_time_sync(self, queue_id: str, when: int, state: State | None = None) -> None:
        """Durably set the next delay-warning time (0 = none), in place."""
        _, path = self._find(queue_id, state)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            with open(fd, "rb", closefd=False) as fp:
                offset = records.parse(fp, queue_id).warn_offset
            if offset is None:
                raise CorruptQueueFile(f"{queue_id}: no warn record")
            os.pwrite(fd, int(when).to_bytes(8, "big", signed=True), offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def set_warn_time(self, queue_id: str, when: int, state: State | None = None) -> None:
        await asyncio.to_thread(self.set_warn_time_sync, queue_id, when, state)

    def move_sync(
        self,
        queue_id: str,
        from_state: State,
        to_state: State,
        *,
        next_attempt: float | None = None,
        durable: bool = True,
    ) -> Path:
        """Rename a queue file to another state; `next_attempt` sets atime/mtime first.

        `durable=False` skips the directory fsyncs: for moves whose loss in a crash is
        harmless because both states are scanned again at start-up (incoming -> active)."""
        src, dst = self._spath(from_state, queue_id), self._spath(to_state, queue_id)
        if next_attempt is not None:
            os.utime(src, (next_attempt, next_attempt))
            fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)  # the new time must survive a crash with the rename
            finally:
                os.close(fd)
        if from_state != to_state:
            if os.path.lexists(dst):
                raise FileExistsError(f"{dst} already exists")
            os.rename(src, dst)
            if durable:
                fsutil.fsync_dir(self._dirs[to_state])
                fsutil.fsync_dir(self._dirs[from_state])
        return Path(dst)

    async def move(
        self,
        queue_id: str,
        from_state: State,
        to_state: State,
        *,
        next_attempt: float | None = None,
        durable: bool = True,
    ) -> Path:
        return await asyncio.to_thread(
            self.move_sync,
            queue_id,
            from_state,
            to_state,
            next_attempt=next_attempt,
            durable=durable,
        )

    async def unlink_fresh(self, queue_ids: list[str]) -> list[OSError | None]:
        """Unlink just-committed files from incoming/ without a directory fsync (as
        `remove(durable=False)`), through the commit writer thread; one error or None
        per id.  For the queue manager's fast path: no thread hand-off of its own."""
        defer = os.path.join(self.directory, _DEFER, "")
        paths = [(self._spath("incoming", qid), defer + qid) for qid in queue_ids]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[OSError | None]] = loop.create_future()
        with self._lock:
            if self._committer is None:
                self._committer = _GroupCommitter(self, self._fsync_workers)
            committer = self._committer
        committer.submit_unlinks(paths, future, loop)
        return await asyncio.shield(future)

    def remove_sync(self, queue_id: str, state: State | None = None, durable: bool = True) -> None:
        """Delete a queue file for good (all recipients done).

        Without the directory fsync (`durable=False`, as Postfix does) a power loss can
        resurrect the file and its recipients are tried again: never lost, at worst twice."""
        found, path = self._find(queue_id, state)
        self.recycle_or_unlink(path)
        if durable:
            fsutil.fsync_dir(self._dirs[found])
        if found == "corrupt":  # only quarantined files have a reason file next to them
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + _REASON_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / _DEFER / queue_id)

    # -- deferral reasons (Postfix's defer logs) ----------------------------

    def record_defer_sync(self, queue_id: str, reasons: dict[str, str]) -> None:
        """Why each still-pending recipient was deferred, for mailq.  Replaced whole
        at every deferral; advisory only, so it is written atomically but not fsync'ed
        more than atomic_write does, and losing it loses no mail."""
        lines = "".join(
            f"{_one_line(address)}\t{_one_line(reason)}\n" for address, reason in reasons.items()
        )
        fsutil.atomic_write(self.directory / _DEFER / queue_id, lines.encode("utf-8", "replace"))

    def defer_reasons_sync(self, queue_id: str) -> dict[str, str]:
        """recipient address -> deferral reason; empty when none was recorded."""
        try:
            text = (self.directory / _DEFER / queue_id).read_text("utf-8", "replace")
        except FileNotFoundError:
            return {}
        pairs = (line.split("\t", 1) for line in text.splitlines() if "\t" in line)
        return {address: reason for address, reason in pairs}

    async def remove(self, queue_id: str, state: State | None = None, durable: bool = True) -> None:
        await asyncio.to_thread(self.remove_sync, queue_id, state, durable)

    def quarantine_sync(self, queue_id: str, reason: str, state: State | None = None) -> Path:
        """Move a bad file to corrupt/ and record why next to it (`<qid>.reason`)."""
        found, _ = self._find(queue_id, state)
        reason_path = self.directory / "corrupt" / (queue_id + _REASON_SUFFIX)
        fsutil.atomic_write(reason_path, (reason.rstrip("\n") + "\n").encode(), 0o600)
        return self.move_sync(queue_id, found, "corrupt")

    async def quarantine(self, queue_id: str, reason: str, state: State | None = None) -> Path:
        return await asyncio.to_thread(self.quarantine_sync, queue_id, reason, state)

    def quarantine_reason(self, queue_id: str) -> str | None:
        try:
            path = self.directory / "corrupt" / (queue_id + _REASON_SUFFIX)
            return path.read_text().rstrip("\n")
        except FileNotFoundError:
            return None


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)
