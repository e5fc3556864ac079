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

Cost per message: the wake-ups of one group-commit batch are taken together and
handled in one worker-thread call.  A message whose recipients all go to a
non-blocking transport (discard) is delivered and removed inside that call, from
the envelope cleanup handed over with the wake-up (no re-read of the file);
every other message is moved to active/ and loaded there, then delivered by
the agents on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from postwall import logfmt
from postwall.config.params import Params
from postwall.delivery import DeliveryResult
from postwall.delivery.agents import Agent, AgentResult, SyncAgent
from postwall.log import MailLog
from postwall.queue.records import CorruptQueueFile, Envelope, RcptStatus
from postwall.queue.store import QueuedMessage, QueueStore, State
from postwall.resolve import AddressResolver, Destination


@dataclass(slots=True)
class _Attempt:
    """One message a worker thread took up: loaded into active/, or finished there."""

    qid: str
    msg: QueuedMessage | None = None
    error: Exception | None = None
    active_time: float = 0.0
    # (recipient index, start time, outcome) for recipients delivered in the thread.
    outcomes: list[tuple[int, float, AgentResult]] = field(default_factory=list)
    removed: bool = False  # every recipient done and the file unlinked


class QueueManager:
    def __init__(
        self,
        params: Params,
        store: QueueStore,
        log: MailLog,
        resolver: AddressResolver,
        agents: dict[str, Agent],
        sync_agents: dict[str, SyncAgent] | None = None,
    ) -> None:
        self._params = params
        self._store = store
        self._log = log
        self._resolver = resolver
        self._agents = agents
        # Transports that never block (discard): delivered in the same worker-thread
        # call that activates and loads the message, so such a message costs one hop.
        self._sync_agents = sync_agents or {}
        self._wakeups: asyncio.Queue[str | None] = asyncio.Queue()
        # Envelopes handed over by cleanup with their wake-up: exactly what the
        # fresh queue file holds, so it need not be read back.
        self._fresh: dict[str, Envelope] = {}
        self._in_flight: set[str] = set()
        self._slots = asyncio.Semaphore(max(1, params.default_process_limit))
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def wake(self, queue_id: str | None = None, envelope: Envelope | None = None) -> None:
        """A hint that `queue_id` (or anything) is waiting in incoming/; `envelope`
        is the one just committed for it, if the caller has it."""
        if queue_id is not None and envelope is not None:
            self._fresh[queue_id] = envelope
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
                first = await asyncio.wait_for(self._wakeups.get(), timeout)
            except TimeoutError:
                await self._scan_all()
                next_scan = time.monotonic() + self._params.queue_run_delay
                continue
            # Every commit of one group-commit batch wakes us at once: take them together.
            woken = [first]
            while not self._wakeups.empty():
                woken.append(self._wakeups.get_nowait())
            if None in woken:
                await self._scan_state("incoming")
            else:
                self._start_batch([q for q in woken if q is not None], "incoming")

    async def stop(self) -> None:
        self._stopping = True
        self._wakeups.put_nowait(None)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)

    async def flush(self) -> None:
        """Attempt every deferred message now, and whatever waits in incoming/
        (postqueue -f, and -i or postsuper -r, which move messages there)."""
        self._start_batch(await self._store.scan("incoming"), "incoming")
        self._start_batch(await self._store.scan("deferred"), "deferred")

    async def _scan_all(self) -> None:
        await self._scan_state("incoming")
        self._start_batch(await self._store.scan("deferred", due=time.time()), "deferred")

    async def _scan_state(self, state: State) -> None:
        self._start_batch(await self._store.scan(state), state)

    def _start_batch(self, qids: list[str], state: State) -> None:
        known: dict[str, Envelope] = {}
        if state == "incoming":  # taken even when not started, so nothing piles up
            known = {q: e for q in qids if (e := self._fresh.pop(q, None)) is not None}
        if self._stopping:
            return
        fresh = [q for q in dict.fromkeys(qids) if q not in self._in_flight]
        if not fresh:
            return
        self._in_flight.update(fresh)
        task = asyncio.get_running_loop().create_task(self._process_batch(fresh, state, known))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process_batch(
        self, qids: list[str], state: State, known: dict[str, Envelope]
    ) -> None:
        try:
            attempts = await asyncio.to_thread(self._activate_batch, qids, state, known)
        except BaseException:
            self._in_flight.difference_update(qids)
            raise
        for attempt in attempts:
            if attempt.error is not None or attempt.removed:
                try:
                    await self._settle(attempt, state)
                finally:
                    self._in_flight.discard(attempt.qid)
            else:
                task = asyncio.get_running_loop().create_task(self._process(attempt, state))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _settle(self, attempt: _Attempt, state: State) -> None:
        """A message the worker thread could not load, or finished completely."""
        qid, exc = attempt.qid, attempt.error
        if isinstance(exc, CorruptQueueFile):
            self._log.warning("qmgr", logfmt.corrupt_queue_file(qid, str(exc)))
            with contextlib.suppress(OSError):
                await self._store.quarantine(qid, str(exc))
        elif exc is not None and not isinstance(exc, FileNotFoundError):
            self._log.warning("qmgr", f"{qid}: delivery attempt failed: {exc!r}")
        elif attempt.removed:
            assert attempt.msg is not None
            env = attempt.msg.envelope
            if state == "incoming":
                self._log.info(
                    "qmgr", logfmt.queue_active(qid, env.sender, env.size, len(env.recipients))
                )
            for index, started, outcome in attempt.outcomes:
                self._log_outcome(
                    qid,
                    env.arrival_time,
                    attempt.active_time,
                    started,
                    env.recipients[index],
                    outcome,
                )
            self._log.info("qmgr", logfmt.removed(qid))

    def _activate_batch(
        self, qids: list[str], state: State, known: dict[str, Envelope]
    ) -> list[_Attempt]:
        """Worker thread: finish each message whose every pending recipient goes to a
        non-blocking transport; activate and load the others for the loop thread."""
        attempts = []
        for qid in qids:
            attempt = _Attempt(qid)
            attempts.append(attempt)
            try:
                envelope = known.get(qid)
                if envelope is not None and self._deliver_fresh(attempt, envelope, state):
                    continue
                attempt.msg = self._activate(qid, state)
                attempt.active_time = time.time()
                self._deliver_sync(attempt)
            except Exception as exc:  # reported per message by the loop thread
                attempt.error = exc
            if attempt.msg is not None and (attempt.removed or attempt.error is not None):
                attempt.msg.close()
        return attempts

    def _deliver_fresh(self, attempt: _Attempt, envelope: Envelope, state: State) -> bool:
        """A just-committed message for non-blocking transports only: delivered from
        the envelope cleanup handed over, then unlinked straight from incoming/ (it
        would stay in active/ for no measurable time; a crash before the unlink
        leaves it in incoming/, delivered again at start-up: at worst twice)."""
        plan = self._sync_plan(envelope)
        if plan is None:
            return False
        msg = QueuedMessage(envelope, state, self._store.path(state, attempt.qid), 0, 0)
        attempt.msg = msg
        attempt.active_time = time.time()
        outcomes = self._run_sync(msg, plan)
        if outcomes is None:
            attempt.msg = None
            return False
        self._store.remove_sync(attempt.qid, state, durable=False)
        attempt.outcomes = outcomes
        attempt.removed = True
        return True

    def _sync_plan(self, env: Envelope) -> list[tuple[int, Destination, SyncAgent]] | None:
        """Every pending recipient with its non-blocking agent; None if any lacks one."""
        plan = []
        for index, recipient in enumerate(env.recipients):
            if recipient.done:
                continue
            dest = self._resolver.destination(recipient.address)
            agent = self._sync_agents.get(dest.transport)
            if agent is None:
                return None
            plan.append((index, dest, agent))
        return plan

    @staticmethod
    def _run_sync(
        msg: QueuedMessage, plan: list[tuple[int, Destination, SyncAgent]]
    ) -> list[tuple[int, float, AgentResult]] | None:
        """The outcomes if every recipient was sent; None (nothing recorded) otherwise."""
        outcomes = []
        for index, dest, agent in plan:
            started = time.time()
            outcome = agent(msg, index, dest)
            if outcome.result.status != "sent":
                return None
            outcomes.append((index, started, outcome))
        return outcomes

    def _deliver_sync(self, attempt: _Attempt) -> None:
        msg = attempt.msg
        assert msg is not None
        plan = self._sync_plan(msg.envelope)
        outcomes = None if plan is None else self._run_sync(msg, plan)
        if outcomes is None:
            return  # the loop thread delivers this message (again, from the start)
        self._store.remove_sync(attempt.qid, "active", durable=False)
        attempt.outcomes = outcomes
        attempt.removed = True

    async def _process(self, attempt: _Attempt, state: State) -> None:
        assert attempt.msg is not None
        qid = attempt.qid
        try:
            async with self._slots:
                await self._deliver_message(attempt.msg, state)
        except FileNotFoundError:
            pass  # removed or moved by an administrator meanwhile
        except Exception as exc:  # the scheduler must outlive any one message
            self._log.warning("qmgr", f"{qid}: delivery attempt failed: {exc!r}")
        finally:
            attempt.msg.close()
            self._in_flight.discard(qid)

    async def _deliver_message(self, msg: QueuedMessage, state: State) -> None:
        qid = msg.queue_id
        with msg:
            env = msg.envelope
            active_time = time.time()
            pending = [i for i, r in enumerate(env.recipients) if not r.done]
            if state == "incoming":
                self._log.info(
                    "qmgr", logfmt.queue_active(qid, env.sender, env.size, len(env.recipients))
                )
            deferred = False
            reasons: dict[str, str] = {}
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
                    reasons[recipient.address] = outcome.result.text
                    continue
                status = RcptStatus.SENT if outcome.result.status == "sent" else RcptStatus.BOUNCED
                done[status].append(index)
        if deferred:
            # Only a message that stays queued needs its finished recipients on record.
            for status, indexes in done.items():
                if indexes:
                    await self._store.mark_recipients(qid, indexes, status, "active")
            await asyncio.to_thread(self._store.record_defer_sync, qid, reasons)
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
