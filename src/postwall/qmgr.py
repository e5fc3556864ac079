"""qmgr: the queue manager, which takes committed messages to their delivery agents.

Who calls it: master starts one `QueueManager` per server; cleanup calls `wake`
after every commit.  The queue directory is the hand-off, wake-ups are only
hints: at start-up it moves active/ back to incoming/ (a crash may have left
messages there, as Postfix's qmgr does), and every queue_run_delay it scans
incoming/ and the deferred/ files that are due, so a lost wake-up or a crash never
strands mail.

Guarantees: a recipient's outcome is recorded in its queue file (durably) before
the next step; a message leaves the queue only when every recipient is done; a
deferred message waits between minimal_backoff_time and maximal_backoff_time,
computed from its age as Postfix does; a queue file that cannot be parsed goes to
corrupt/ with a log line and never stops the scheduler.  After a crash a
recipient may be delivered twice, never zero times.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from postwall import logfmt
from postwall.config.params import Params
from postwall.delivery import DeliveryResult
from postwall.delivery.agents import Agent, AgentResult
from postwall.log import MailLog
from postwall.queue.records import CorruptQueueFile, RcptStatus
from postwall.queue.store import QueuedMessage, QueueStore, State
from postwall.resolve import AddressResolver


class QueueManager:
    def __init__(
        self,
        params: Params,
        store: QueueStore,
        log: MailLog,
        resolver: AddressResolver,
        agents: dict[str, Agent],
    ) -> None:
        self._params = params
        self._store = store
        self._log = log
        self._resolver = resolver
        self._agents = agents
        self._wakeups: asyncio.Queue[str | None] = asyncio.Queue()
        self._in_flight: set[str] = set()
        self._slots = asyncio.Semaphore(max(1, params.default_process_limit))
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def wake(self, queue_id: str | None = None) -> None:
        """A hint that `queue_id` (or anything) is waiting in incoming/."""
        self._wakeups.put_nowait(queue_id)

    async def run(self) -> None:
        for qid in await self._store.scan("active"):
            # A crash left these mid-delivery; start them over (done recipients stay done).
            with contextlib.suppress(FileNotFoundError, FileExistsError):
                await self._store.move(qid, "active", "incoming")
        await self._scan_all()
        next_scan = time.monotonic() + self._params.queue_run_delay
        while not self._stopping:
            timeout = max(0.0, next_scan - time.monotonic())
            try:
                qid = await asyncio.wait_for(self._wakeups.get(), timeout)
            except TimeoutError:
                await self._scan_all()
                next_scan = time.monotonic() + self._params.queue_run_delay
                continue
            if qid is None:
                await self._scan_state("incoming")
            else:
                self._start(qid, "incoming")

    async def stop(self) -> None:
        self._stopping = True
        self._wakeups.put_nowait(None)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)

    async def flush(self) -> None:
        """Attempt every deferred message now (postqueue -f)."""
        for qid in await self._store.scan("deferred"):
            self._start(qid, "deferred")

    async def _scan_all(self) -> None:
        await self._scan_state("incoming")
        for qid in await self._store.scan("deferred", due=time.time()):
            self._start(qid, "deferred")

    async def _scan_state(self, state: State) -> None:
        for qid in await self._store.scan(state):
            self._start(qid, state)

    def _start(self, qid: str, state: State) -> None:
        if qid in self._in_flight or self._stopping:
            return
        self._in_flight.add(qid)
        task = asyncio.get_running_loop().create_task(self._process(qid, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, qid: str, state: State) -> None:
        try:
            async with self._slots:
                await self._deliver_message(qid, state)
        except FileNotFoundError:
            pass  # removed or moved by an administrator meanwhile
        except Exception as exc:  # the scheduler must outlive any one message
            self._log.warning("qmgr", f"{qid}: delivery attempt failed: {exc!r}")
        finally:
            self._in_flight.discard(qid)

    async def _deliver_message(self, qid: str, state: State) -> None:
        try:
            msg = await asyncio.to_thread(self._activate, qid, state)
        except CorruptQueueFile as exc:
            self._log.warning("qmgr", logfmt.corrupt_queue_file(qid, str(exc)))
            await self._store.quarantine(qid, str(exc))
            return
        with msg:
            env = msg.envelope
            active_time = time.time()
            pending = [i for i, r in enumerate(env.recipients) if not r.done]
            if state == "incoming":
                self._log.info(
                    "qmgr", logfmt.queue_active(qid, env.sender, env.size, len(env.recipients))
                )
            deferred = False
            done: dict[RcptStatus, list[int]] = {RcptStatus.SENT: [], RcptStatus.BOUNCED: []}
            for index in pending:
                recipient = env.recipients[index]
                dest = self._resolver.destination(recipient.address)
                agent = self._agents.get(dest.transport)
                started = time.time()
                if agent is None:
                    outcome = AgentResult(
                        DeliveryResult(
                            "deferred",
                            "4.3.0",
                            f"mail transport unavailable: {dest.transport} delivery is not "
                            "supported in this version",
                        ),
                        relay="none",
                    )
                else:
                    outcome = await agent(msg, index, dest)
                self._log_outcome(qid, env.arrival_time, active_time, started, recipient, outcome)
                if outcome.result.status == "deferred":
                    deferred = True
                    continue
                status = RcptStatus.SENT if outcome.result.status == "sent" else RcptStatus.BOUNCED
                done[status].append(index)
        if deferred:
            # Only a message that stays queued needs its finished recipients on record.
            for status, indexes in done.items():
                if indexes:
                    await self._store.mark_recipients(qid, indexes, status, "active")
            age = time.time() - env.arrival_time
            delay = min(
                max(age, self._params.minimal_backoff_time), self._params.maximal_backoff_time
            )
            await self._store.move(qid, "active", "deferred", next_attempt=time.time() + delay)
            return
        await self._store.remove(qid, "active", durable=False)
        self._log.info("qmgr", logfmt.removed(qid))

    def _activate(self, qid: str, state: State) -> QueuedMessage:
        """incoming/deferred -> active, then load.  The rename need not be durable:
        after a crash start-up scans both states again."""
        if state != "active":
            self._store.move_sync(qid, state, "active", durable=False)
        return self._store.load_sync(qid, "active")

    def _log_outcome(
        self,
        qid: str,
        arrival: float,
        active: float,
        started: float,
        recipient: object,
        outcome: AgentResult,
    ) -> None:
        now = time.time()
        before_qmgr = max(0.0, active - arrival)
        in_qmgr = max(0.0, started - active)
        r = outcome.result
        self._log.info(
            "qmgr" if outcome.relay == "none" else _service_for(outcome.relay),
            logfmt.delivery_status(
                qid,
                to=recipient.address,  # type: ignore[attr-defined]
                orig_to=recipient.original or None,  # type: ignore[attr-defined]
                relay=outcome.relay,
                delay=now - arrival,
                delays=(before_qmgr, in_qmgr, outcome.conn_time, outcome.xfer_time),
                dsn=r.dsn,
                status=r.status,
                text=r.text,
            ),
        )


def _service_for(relay: str) -> str:
    return "local" if relay == "local" else "smtp"
