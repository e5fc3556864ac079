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

Cost per message: the wake-ups of one group-commit batch are taken together.  A
message whose recipients all go to a non-blocking transport (discard) is delivered
on the event loop from the envelope cleanup handed over with the wake-up (no
re-read of the file) and unlinked from incoming/ by the queue's commit writer
thread (`QueueStore.unlink_fresh`), which is awake for the commits anyway; thread
hand-offs, not the work, were the largest cost per message.  Every other message
is moved to active/ and loaded there in one worker-thread call per batch, then
delivered by the agents on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

from postwall import bounce, logfmt
from postwall.cleanup import Cleanup, Submission
from postwall.config.params import Params
from postwall.delivery import DeliveryResult
from postwall.delivery.agents import Agent, AgentResult, SyncAgent
from postwall.log import MailLog
from postwall.queue.records import CorruptQueueFile, Envelope, RcptStatus, Recipient
from postwall.queue.store import QueuedMessage, QueueStore, State
from postwall.resolve import AddressResolver, Destination


@dataclass(slots=True)
class _Attempt:
    """One message taken up: loaded into active/, or finished (removed)."""

    qid: str
    msg: QueuedMessage | None = None
    error: Exception | None = None
    active_time: float = 0.0
    # (recipient index, start time, outcome) for recipients delivered in the thread.
    outcomes: list[tuple[int, float, AgentResult]] = field(default_factory=list)
    removed: bool = False  # every recipient done and the file unlinked


class _Site:
    """One destination's delivery window: Postfix's slow start (initial_destination_
    concurrency, +1 per good delivery up to the destination's limit, -1 per failed
    connection) and its dead-destination throttle (after a delivery where no host
    could be reached, the site's mail is deferred at once until minimal_backoff_time
    has passed or a flush)."""

    def __init__(
        self,
        sites: dict[tuple[str, str, str], _Site],
        key: tuple[str, str, str],
        *,
        limit: int,
        window: int,
        backoff: float,
    ) -> None:
        self._sites = sites
        self._key = key
        self.limit = limit
        self.window = max(1, window)
        self.backoff = backoff
        self.busy = 0
        self.dead_until = 0.0
        self.dead_reason: DeliveryResult | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def dead(self) -> bool:
        if self.dead_reason is not None and time.monotonic() >= self.dead_until:
            self.dead_reason = None
        return self.dead_reason is not None

    async def __aenter__(self) -> None:
        if self.busy < self.window and not self._waiters:
            self.busy += 1
            return
        # First come, first served: _wake hands the slot over (counts it in busy), so
        # a woken delivery never goes back to the end of the line, and one freed slot
        # wakes one waiter, not all those that would find it taken again.
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.busy -= 1  # handed a slot, cancelled before taking it
                self._wake()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.busy -= 1
        self._wake()
        if not self.busy and not self._waiters and not self.dead:
            self._sites.pop(self._key, None)

    def _wake(self) -> None:
        while self.busy < self.window and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.busy += 1
                waiter.set_result(None)

    def feedback(self, results: list[AgentResult]) -> None:
        if results and all(r.relay == "none" and r.result.status == "deferred" for r in results):
            self.window = max(1, self.window - 1)
            self.dead_reason = results[0].result
            self.dead_until = time.monotonic() + self.backoff
        elif any(r.relay != "none" for r in results):
            self.window = min(self.limit, self.window + 1)
            self.dead_reason = None
            self._wake()

    def revive(self) -> None:
        self.dead_reason = None


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
        # Transports that never block (discard): delivered without a thread of their
        # own (see the module docstring).
        self._sync_agents = sync_agents or {}
        self._wakeups: asyncio.Queue[str | None] = asyncio.Queue()
        # Envelopes handed over by cleanup with their wake-up: exactly what the
        # fresh queue file holds, so it need not be read back.
        self._fresh: dict[str, Envelope] = {}
        self._in_flight: set[str] = set()
        self._again: set[str] = set()  # flushed while in flight: try once more after
        # The domains of the pending recipients of each message being delivered, so a
        # site flush (ETRN) that arrives while its deferral is being recorded still
        # brings it back.
        self._in_flight_domains: dict[str, frozenset[str]] = {}
        self._cleanup: Cleanup | None = None  # where notices are queued (attach_cleanup)
        # Deliveries under way (Postfix's agent processes), and messages loaded at once
        # (qmgr_message_active_limit): a message waiting for a busy destination holds
        # a message slot, never a delivery slot, so one slow site cannot starve others.
        self._slots = asyncio.Semaphore(max(1, params.default_process_limit))
        self._messages = asyncio.Semaphore(max(1, params.qmgr_message_active_limit))
        self._sites: dict[tuple[str, str, str], _Site] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def reconfigure(
        self,
        params: Params,
        resolver: AddressResolver,
        agents: dict[str, Agent],
        sync_agents: dict[str, SyncAgent],
    ) -> None:
        """A reload: deliveries under way finish with the agents they started with."""
        self._params = params
        self._resolver = resolver
        self._agents = agents
        self._sync_agents = sync_agents

    def attach_cleanup(self, cleanup: Cleanup) -> None:
        """Delivery status notices are queued through cleanup, as any other mail."""
        self._cleanup = cleanup

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
        (postqueue -f, and -i or postsuper -r, which move messages there); like
        Postfix's flush, this also revives destinations throttled as dead."""
        for site in self._sites.values():
            site.revive()
        self._start_batch(await self._store.scan("incoming"), "incoming", again=True)
        self._start_batch(await self._store.scan("deferred"), "deferred", again=True)

    def flush_site(self, site: str) -> None:
        """Deliver now what waits in deferred/ for `site` (postqueue -s, ETRN)."""
        asyncio.get_running_loop().create_task(self._flush_site(site.lower().rstrip(".")))

    async def _flush_site(self, site: str) -> None:
        # As Postfix's flush service, which asks qmgr to flush dead destinations too:
        # the site's mail may go through a relayhost throttled by an earlier failure.
        for entry in self._sites.values():
            entry.revive()

        def matching() -> list[str]:
            found = []
            for qid in self._store.scan_sync("deferred"):
                try:
                    with self._store.load_sync(qid, "deferred") as msg:
                        rcpts = msg.envelope.recipients
                except (OSError, CorruptQueueFile):
                    continue
                domains = {r.address.rpartition("@")[2].lower() for r in rcpts if not r.done}
                if site in domains:
                    found.append(qid)
            return found

        # Being delivered now, perhaps about to be deferred: once more right after (taken
        # before the scan, which may run while such a message moves to deferred/).
        busy = [q for q, domains in self._in_flight_domains.items() if site in domains]
        found = await asyncio.to_thread(matching)
        self._start_batch(found, "deferred", again=True)
        self._again.update(q for q in busy if q in self._in_flight)
        # Finished during the scan: its file is in deferred/ by now.
        self._start_batch(
            [q for q in busy if q not in self._in_flight and q not in found], "deferred"
        )

    async def _scan_all(self) -> None:
        await self._scan_state("incoming")
        self._start_batch(await self._store.scan("deferred", due=time.time()), "deferred")

    async def _scan_state(self, state: State) -> None:
        self._start_batch(await self._store.scan(state), state)

    def _start_batch(self, qids: list[str], state: State, again: bool = False) -> None:
        """Start delivering `qids`; with `again`, a message still finishing an attempt
        (its file already back in deferred/) is tried once more right after it."""
        known: dict[str, Envelope] = {}
        if state == "incoming":  # taken even when not started, so nothing piles up
            known = {q: e for q in qids if (e := self._fresh.pop(q, None)) is not None}
        if self._stopping:
            return
        fresh = [q for q in dict.fromkeys(qids) if q not in self._in_flight]
        if again:
            self._again.update(q for q in qids if q in self._in_flight)
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
            attempts = self._deliver_fresh(qids, known)
            if attempts:
                # Delivered on the loop; only the unlinks need a thread, the commit
                # writer's, so the message costs no hand-off of its own.
                errors = await self._store.unlink_fresh([a.qid for a in attempts])
                for attempt, error in zip(attempts, errors, strict=True):
                    if error is None:
                        attempt.removed = True
                    else:  # left in incoming/: the next scan delivers it again
                        attempt.error, attempt.outcomes = error, []
            done = {a.qid for a in attempts}
            rest = [q for q in qids if q not in done]
            if rest:
                attempts += await asyncio.to_thread(self._activate_batch, rest, state)
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
        """A message that could not be loaded, or that was finished completely."""
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

    def _activate_batch(self, qids: list[str], state: State) -> list[_Attempt]:
        """Worker thread: finish each message whose every pending recipient goes to a
        non-blocking transport; activate and load the others for the loop thread."""
        attempts = []
        for qid in qids:
            attempt = _Attempt(qid)
            attempts.append(attempt)
            try:
                attempt.msg = self._activate(qid, state)
                attempt.active_time = time.time()
                self._deliver_sync(attempt)
            except Exception as exc:  # reported per message by the loop thread
                attempt.error = exc
            if attempt.msg is not None and (attempt.removed or attempt.error is not None):
                attempt.msg.close()
        return attempts

    def _deliver_fresh(self, qids: list[str], known: dict[str, Envelope]) -> list[_Attempt]:
        """Just-committed messages for non-blocking transports only, delivered from the
        envelope cleanup handed over; the caller unlinks them straight from incoming/
        (they would stay in active/ for no measurable time; a crash before the unlink
        leaves them in incoming/, delivered again at start-up: at worst twice).  The
        others take the worker-thread path, which loads them from disk."""
        attempts = []
        for qid in qids:
            envelope = known.get(qid)
            if envelope is None:
                continue
            attempt = _Attempt(qid)
            try:
                plan = self._sync_plan(envelope)
                if plan is None:
                    continue
                attempt.msg = QueuedMessage(
                    envelope, "incoming", self._store.path("incoming", qid), 0, 0
                )
                attempt.active_time = time.time()
                outcomes = self._run_sync(attempt.msg, plan)
            except Exception:  # the worker-thread path tries again and reports it
                continue
            if outcomes is None:
                continue
            attempt.outcomes = outcomes
            attempts.append(attempt)
        return attempts

    def _sync_plan(self, env: Envelope) -> list[tuple[int, Destination, SyncAgent]] | None:
        """Every pending recipient with its non-blocking agent; None if any lacks one."""
        plan = []
        for index, recipient in enumerate(env.recipients):
            if recipient.done:
                continue
            dest = self._resolver.destination(recipient.address, env.sender)
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
            async with self._messages:
                await self._deliver_message(attempt.msg, state)
        except FileNotFoundError:
            pass  # removed or moved by an administrator meanwhile
        except Exception as exc:  # the scheduler must outlive any one message
            self._log.warning("qmgr", f"{qid}: delivery attempt failed: {exc!r}")
        finally:
            attempt.msg.close()
            self._in_flight.discard(qid)
            self._in_flight_domains.pop(qid, None)
            if qid in self._again:
                self._again.discard(qid)
                self._start_batch([qid], "deferred")

    async def _deliver_message(self, msg: QueuedMessage, state: State) -> None:
        qid = msg.queue_id
        env = msg.envelope
        active_time = msg.active_time = time.time()
        self._in_flight_domains[qid] = frozenset(
            r.address.rpartition("@")[2].lower() for r in env.recipients if not r.done
        )
        if state == "incoming":
            self._log.info(
                "qmgr", logfmt.queue_active(qid, env.sender, env.size, len(env.recipients))
            )
        # Recipients that share a transport and next hop go together (one SMTP
        # transaction each, up to the transport's recipient limit), in parallel
        # with the other destinations of the message.
        groups: dict[tuple[str, str, str], tuple[Destination, list[int]]] = {}
        for index, recipient in enumerate(env.recipients):
            if recipient.done:
                continue
            dest = self._resolver.destination(recipient.address, env.sender)
            per_rcpt = self._recipient_limit(dest.transport) == 1
            key = (dest.transport, dest.nexthop.lower(), dest.address if per_rcpt else "")
            groups.setdefault(key, (dest, []))[1].append(index)
        outcomes: dict[int, AgentResult] = {}
        await asyncio.gather(
            *(
                self._deliver_group(msg, key, dest, indexes, active_time, outcomes)
                for key, (dest, indexes) in groups.items()
            )
        )
        await self._settle_outcomes(msg, outcomes)

    async def _deliver_group(
        self,
        msg: QueuedMessage,
        key: tuple[str, str, str],
        dest: Destination,
        indexes: list[int],
        active_time: float,
        outcomes: dict[int, AgentResult],
    ) -> None:
        env = msg.envelope
        limit = self._recipient_limit(dest.transport)
        for first in range(0, len(indexes), limit or len(indexes)):
            chunk = indexes[first : first + limit] if limit else indexes
            site = self._site(key, dest.transport)
            started = time.time()
            if site.dead and site.dead_reason is not None:
                result = DeliveryResult(
                    "deferred",
                    site.dead_reason.dsn,
                    f"delivery temporarily suspended: {site.dead_reason.text}",
                )
                # Postfix hands a dead site's mail to its error(8) agent.
                results = [AgentResult(result, relay="none", service="error") for _ in chunk]
            else:
                async with site, self._slots:
                    started = time.time()
                    results = await self._call_agent(msg, chunk, dest)
                    site.feedback(results)
            for index, outcome in zip(chunk, results, strict=True):
                outcomes[index] = outcome
                self._log_outcome(
                    msg.queue_id,
                    env.arrival_time,
                    active_time,
                    started,
                    env.recipients[index],
                    outcome,
                )

    async def _call_agent(
        self, msg: QueuedMessage, chunk: list[int], dest: Destination
    ) -> list[AgentResult]:
        agent = self._agents.get(dest.transport)
        if agent is None:
            result = DeliveryResult(
                "deferred",
                "4.3.0",
                f"mail transport unavailable: {dest.transport} delivery is not "
                "supported in this version",
            )
            return [AgentResult(result, relay="none") for _ in chunk]
        try:
            results = await agent(msg, chunk, dest)
        except (FileNotFoundError, asyncio.CancelledError):
            raise
        except Exception as exc:  # an agent bug must not lose the message: defer it
            self._log.warning("qmgr", f"{msg.queue_id}: {dest.transport} agent failed: {exc!r}")
            result = DeliveryResult("deferred", "4.3.0", f"{dest.transport} agent failure")
            return [AgentResult(result, relay="none") for _ in chunk]
        if len(results) != len(chunk):
            raise RuntimeError(f"{dest.transport} agent returned {len(results)} results")
        return results

    async def _settle_outcomes(self, msg: QueuedMessage, outcomes: dict[int, AgentResult]) -> None:
        """Record the attempt: notices first (queued durably before any recipient is
        marked done, so a crash can repeat a notice but never lose one), then remove a
        finished message, or defer it with its reasons."""
        qid = msg.queue_id
        env = msg.envelope
        p = self._params
        deferred = {i: o for i, o in outcomes.items() if o.result.status == "deferred"}
        now = time.time()
        lifetime = p.maximal_queue_lifetime
        if not env.sender or bounce.is_double_bounce(env.sender, p):
            lifetime = p.bounce_queue_lifetime
        failed = [i for i, o in outcomes.items() if o.result.status == "bounced"]
        if deferred and now - env.arrival_time > lifetime:
            # Past its lifetime: what is still pending is returned as failed, with the
            # last deferral's 4.x.x status (as Postfix reports it).
            self._log.info("qmgr", logfmt.expired(qid, env.sender))
            failed += list(deferred)
            deferred = {}
        await self._notify("failure", msg, outcomes, failed)
        sent = [i for i, o in outcomes.items() if o.result.status == "sent"]
        await self._notify("success", msg, outcomes, sent)
        warn = p.delay_warning_time
        if deferred and warn > 0 and not env.warn_time and now - env.arrival_time >= warn:
            await self._notify("delay", msg, outcomes, list(deferred))
            await self._store.set_warn_time(qid, int(now), "active")
        done = {RcptStatus.SENT: sent, RcptStatus.BOUNCED: failed}
        if deferred:
            # Only a message that stays queued needs its finished recipients on record.
            for status, indexes in done.items():
                if indexes:
                    await self._store.mark_recipients(qid, indexes, status, "active")
            reasons = {env.recipients[i].address: o.result.text for i, o in deferred.items()}
            await asyncio.to_thread(self._store.record_defer_sync, qid, reasons)
            age = time.time() - env.arrival_time
            delay = min(
                max(age, self._params.minimal_backoff_time), self._params.maximal_backoff_time
            )
            await self._store.move(qid, "active", "deferred", next_attempt=time.time() + delay)
            return
        # Closed first, so the unlink in the worker thread frees the inode: the last
        # close of an unlinked file does that work, ~0.1 ms, on the event loop otherwise.
        msg.close()
        await self._store.remove(qid, "active", durable=False)
        self._log.info("qmgr", logfmt.removed(qid))

    async def _notify(
        self,
        kind: bounce.Kind,
        msg: QueuedMessage,
        outcomes: dict[int, AgentResult],
        indexes: list[int],
    ) -> None:
        """Queue the `kind` notice about the recipients at `indexes`."""
        env = msg.envelope
        p = self._params
        notices = []
        for index in sorted(indexes):
            outcome = outcomes[index]
            rcpt = env.recipients[index]
            if not bounce.wants_notice(kind, env, rcpt, delay_warning_time=p.delay_warning_time):
                continue
            if kind == "success" and outcome.dsn_relayed:
                continue  # the next hop took NOTIFY over (RFC 3461 4.1)
            r = outcome.result
            action = {"failure": "failed", "delay": "delayed"}.get(kind) or (
                "delivered" if outcome.service == "local" else "relayed"
            )
            notices.append(
                bounce.RecipientNotice(
                    rcpt,
                    action,  # type: ignore[arg-type]
                    r.dsn,
                    r.text,
                    remote_mta=outcome.remote_mta or None,
                    smtp_reply=outcome.smtp_reply or None,
                )
            )
        cleanup = self._cleanup
        if not notices or cleanup is None:
            return
        content = msg.read_content()
        for audience in bounce.audiences(kind, env, p):
            new_qid = cleanup.new_queue_id()
            now = time.time()
            data = bounce.compose(
                kind,
                env,
                content,
                notices,
                params=p,
                now=now,
                message_id=bounce.message_id(new_qid, now, p.myhostname),
                audience=audience,
            )
            sub = Submission(
                queue_id=new_qid,
                sender=audience.sender,
                recipients=[Recipient(audience.recipient)],
                content=data,
                arrival_time=now,
                client_name="",
                client_addr="",
                client_port=0,
                helo=None,
                protocol="ESMTP",
                smtputf8=audience.smtputf8,
                internal=True,
            )
            reply = await cleanup.submit(sub)
            if reply is not None:  # not queued: keep the message, try again later
                raise RuntimeError(f"cannot queue the {kind} notice: {reply}")
            self._log.info("bounce", logfmt.notification(env.queue_id, audience.log_kind, new_qid))

    def _recipient_limit(self, transport: str) -> int:
        p = self._params
        return int(
            getattr(
                p, f"{transport}_destination_recipient_limit", p.default_destination_recipient_limit
            )
        )

    def _site(self, key: tuple[str, str, str], transport: str) -> _Site:
        site = self._sites.get(key)
        if site is None:
            p = self._params
            limit = int(
                getattr(
                    p,
                    f"{transport}_destination_concurrency_limit",
                    p.default_destination_concurrency_limit,
                )
            )
            site = self._sites[key] = _Site(
                self._sites,
                key,
                limit=limit or 1_000_000,
                window=min(p.initial_destination_concurrency, limit or 1_000_000),
                backoff=p.minimal_backoff_time,
            )
        return site

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
            outcome.service,
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
                conn_use=outcome.conn_use,
            ),
        )
