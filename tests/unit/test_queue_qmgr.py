"""Queue manager hand-off: batched wake-ups, the in-thread discard path, the load path."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from postwall.config.params import Params
from postwall.delivery import DeliveryResult
from postwall.delivery.agents import AgentResult, discard_agent, discard_now
from postwall.log import MailLog
from postwall.qmgr import QueueManager
from postwall.queue.records import Envelope, Recipient
from postwall.queue.store import QueuedMessage, QueueStore, State
from postwall.resolve import AddressResolver, Destination


def _resolver(default_transport: str) -> AddressResolver:
    return AddressResolver(
        myhostname="mx.example",
        myorigin="mx.example",
        mydestination=["mx.example"],
        relay_domains=[],
        local_recipient_maps=[],
        local_maps_configured=False,
        recipient_delimiter="+",
        local_transport="local",
        default_transport=default_transport,
    )


def _envelope(store: QueueStore, n: int) -> Envelope:
    return Envelope(
        queue_id=store.new_queue_id(),
        sender="alice@example.org",
        recipients=[Recipient(f"r{i}@example.com") for i in range(n)],
        arrival_time=time.time(),
        client_name="localhost",
        client_addr="127.0.0.1",
        client_port=2525,
        helo="client.example",
        protocol="ESMTP",
        size=5,
    )


async def _run(store: QueueStore, qmgr: QueueManager, batches: list[list[Envelope]]) -> None:
    # Commit only after qmgr's start-up scan, which would find the files on its own.
    scanned = threading.Event()
    real_scan = store.scan_sync

    def scan(state: State, *, due: float | None = None) -> list[str]:
        result = real_scan(state, due=due)
        if state == "deferred":
            scanned.set()
        return result

    store.scan_sync = scan  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(qmgr.run())
    while not scanned.is_set():
        await asyncio.sleep(0.005)
    for batch in batches:
        for env in batch:
            await store.commit(env, b"x\r\n")
        for env in batch:  # cleanup's wake-ups, all queued before qmgr runs again
            qmgr.wake(env.queue_id, env)
    deadline = time.monotonic() + 10
    while store.scan_sync("incoming") or store.scan_sync("active") or qmgr._in_flight:
        assert time.monotonic() < deadline, "queue did not drain"
        await asyncio.sleep(0.01)
    await qmgr.stop()
    task.cancel()


def test_discard_messages_are_finished_from_the_handed_over_envelope(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q")
    log = MailLog(maillog_file=tmp_path / "maillog", pid=7)
    qmgr = QueueManager(
        Params(),
        store,
        log,
        _resolver("discard"),
        agents={"discard": discard_agent},
        sync_agents={"discard": discard_now},
    )
    envs = [[_envelope(store, 2) for _ in range(5)], [_envelope(store, 1)]]
    loads = []
    real_load = store.load_sync
    store.load_sync = lambda *a, **k: loads.append(a) or real_load(*a, **k)  # type: ignore
    asyncio.run(_run(store, qmgr, envs))
    log.close()
    store.close()
    assert loads == []  # the handed-over envelope was used, the file never re-read
    lines = (tmp_path / "maillog").read_text().splitlines()
    for env in (e for batch in envs for e in batch):
        mine = [ln.split(": ", 1)[1] for ln in lines if f": {env.queue_id}: " in ln]
        assert mine[0].startswith(f"{env.queue_id}: from=<alice@example.org>, size=5, nrcpt=")
        sent = [ln for ln in mine if "status=sent" in ln]
        assert len(sent) == len(env.recipients)
        assert all("relay=none" in ln and "dsn=2.0.0" in ln for ln in sent)
        assert mine[-1] == f"{env.queue_id}: removed"
    assert not any(store.scan_sync(s) for s in ("incoming", "active", "deferred"))


def test_other_transports_load_the_file_and_defer_with_their_recipients(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q")
    log = MailLog(maillog_file=tmp_path / "maillog", pid=7)
    seen: list[tuple[str, int]] = []

    async def slow(
        msg: QueuedMessage, indexes: Sequence[int], dest: Destination
    ) -> list[AgentResult]:
        results = []
        for index in indexes:  # both recipients share example.com: one call
            seen.append((msg.read_content().decode(), index))  # needs the real file
            status = "sent" if index == 0 else "deferred"
            dsn = "2.0.0" if index == 0 else "4.4.1"
            results.append(AgentResult(DeliveryResult(status, dsn, "test"), relay="example"))
        return results

    qmgr = QueueManager(
        Params(),
        store,
        log,
        _resolver("slow"),
        agents={"slow": slow},
        sync_agents={"discard": discard_now},
    )
    env = _envelope(store, 2)
    asyncio.run(_run(store, qmgr, [[env]]))
    log.close()
    assert seen == [("x\r\n", 0), ("x\r\n", 1)]
    assert store.scan_sync("deferred") == [env.queue_id]
    with store.load_sync(env.queue_id, "deferred") as msg:
        assert [r.done for r in msg.envelope.recipients] == [True, False]
    store.close()


def test_site_window_hands_a_freed_slot_to_the_longest_waiter() -> None:
    """A destination's window bounds parallel deliveries; a freed slot goes to the
    longest waiter even if another delivery asks before that waiter runs (no barging,
    no waiter sent back to the end of the line), and a waiter cancelled after being
    handed a slot passes it on."""
    from postwall.qmgr import _Site

    async def scenario() -> None:
        sites: dict[tuple[str, str, str], _Site] = {}
        key = ("smtp", "[sink]", "")
        site = sites[key] = _Site(sites, key, limit=20, window=1, backoff=300)
        order: list[str] = []
        release = {name: asyncio.Event() for name in "abcd"}

        async def delivery(name: str) -> None:
            async with site:
                order.append(name)
                assert site.busy <= site.window
                await release[name].wait()

        a = asyncio.create_task(delivery("a"))
        await asyncio.sleep(0)
        b = asyncio.create_task(delivery("b"))
        await asyncio.sleep(0)
        assert order == ["a"] and len(site._waiters) == 1
        release["a"].set()
        await asyncio.sleep(0)  # a leaves and hands its slot to b, which has not run yet
        late = asyncio.create_task(delivery("c"))  # asks now, before b runs
        await asyncio.sleep(0)
        assert order == ["a", "b"]
        d = asyncio.create_task(delivery("d"))
        await asyncio.sleep(0)
        release["b"].set()
        await asyncio.sleep(0)  # b leaves: its slot is handed to c ...
        late.cancel()  # ... which is cancelled before it runs: d gets the slot
        release["d"].set()
        await asyncio.gather(a, b, late, d, return_exceptions=True)
        assert order == ["a", "b", "d"]
        assert site.busy == 0 and not site._waiters and key not in sites

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_a_site_flush_during_the_attempt_brings_the_deferral_back(tmp_path: Path) -> None:
    """ETRN or `postqueue -s` arriving while a message of the site is being deferred (the
    status logged, the file not yet in deferred/) must not be lost: the message is tried
    again right after, not an hour of backoff later."""
    store = QueueStore(tmp_path / "q")
    log = MailLog(maillog_file=tmp_path / "maillog", pid=7)
    attempts: list[float] = []

    async def flaky(
        msg: QueuedMessage, indexes: Sequence[int], dest: Destination
    ) -> list[AgentResult]:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            qmgr.flush_site("example.com")  # the ETRN, while this attempt is under way
            await asyncio.sleep(0.05)  # the flush's scan of deferred/ finds nothing yet
            status, dsn = "deferred", "4.3.2"
        else:
            status, dsn = "sent", "2.0.0"
        return [AgentResult(DeliveryResult(status, dsn, "test"), relay="x") for _ in indexes]

    params = Params(minimal_backoff_time=3600.0, maximal_backoff_time=4000.0)
    qmgr = QueueManager(
        params, store, log, _resolver("flaky"), agents={"flaky": flaky}, sync_agents={}
    )
    env = _envelope(store, 1)
    asyncio.run(_run(store, qmgr, [[env]]))
    log.close()
    store.close()
    assert len(attempts) == 2
    assert "status=sent" in (tmp_path / "maillog").read_text()
