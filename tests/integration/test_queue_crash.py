"""Crash safety of the queue: SIGKILL a committing process at random points.

A child process commits messages from many concurrent tasks and prints each
queue id the moment `commit` returns. The parent kills it with SIGKILL at a
random time, several rounds over the same queue directory, then checks that
every printed id loads with exactly the content that was committed, that every
file in incoming/ is complete (a partial one would be quarantined), and that
opening the store again clears the tmp/ leftovers. SIGKILL keeps the page
cache, so this tests the protocol (no partial file ever visible), not fsync.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from postwall.queue import CorruptQueueFile, QueueStore

SRC = Path(__file__).resolve().parents[2] / "src"

CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from postwall.queue import Envelope, QueueStore, Recipient

    def content(rnd, seq):
        line = f"round {rnd} message {seq} ".encode() * 40 + b"\\r\\n"
        return b"Subject: crash test\\r\\n\\r\\n" + line * (1 + seq % 50)

    async def worker(store, rnd, start, step):
        seq = start
        while True:
            env = Envelope(sender=f"s{seq}@example.org",
                           recipients=[Recipient(f"r{seq}@example.com")],
                           arrival_time=time.time())
            qid = await store.commit(env, content(rnd, seq))
            sys.stdout.write(f"{qid} {seq}\\n")
            sys.stdout.flush()
            seq += step

    async def main():
        store = QueueStore(Path(sys.argv[1]))
        rnd = int(sys.argv[2])
        await asyncio.gather(*(worker(store, rnd, i, 16) for i in range(16)))

    asyncio.run(main())
    """
)


def expected_content(rnd: int, seq: int) -> bytes:
    line = f"round {rnd} message {seq} ".encode() * 40 + b"\r\n"
    return b"Subject: crash test\r\n\r\n" + line * (1 + seq % 50)


@pytest.mark.slow
def test_sigkill_never_loses_or_exposes_partial_files(tmp_path: Path) -> None:
    qdir = tmp_path / "queue"
    rng = random.Random(os.getpid() ^ int(time.time()))
    env = dict(os.environ, PYTHONPATH=str(SRC))
    printed: dict[str, tuple[int, int]] = {}
    for rnd in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(qdir), str(rnd)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        # Wait for the first commits so the kill lands mid-stream, then a random delay.
        first = child.stdout.readline()
        assert first, "child produced no queue id"
        time.sleep(rng.uniform(0.05, 0.8))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        out = first + child.stdout.read()
        child.stdout.close()
        for line in out.decode().splitlines():
            parts = line.split()
            if len(parts) != 2:
                continue  # a line cut by the kill: that id was never fully reported
            qid, seq_text = parts
            assert qid not in printed, f"queue id {qid} reused"
            printed[qid] = (rnd, int(seq_text))

    assert len(printed) > 20
    leftovers = os.listdir(qdir / "tmp")
    store = QueueStore(qdir)  # start-up: removes the dead children's temp files
    try:
        assert os.listdir(qdir / "tmp") == []
        incoming = store.scan_sync("incoming")
        assert set(printed) <= set(incoming)
        corrupt = []
        for qid in incoming:
            try:
                with store.load_sync(qid) as msg:
                    content = msg.read_content()
            except CorruptQueueFile as exc:
                corrupt.append(store.quarantine_sync(qid, str(exc)))
                continue
            if qid in printed:
                rnd_at, seq_at = printed[qid]
            else:
                # Committed but killed before printing: still the whole message.
                seq_at = int(msg.envelope.sender[1:].split("@")[0])
                rnd_at = int(content.split(b"round ", 1)[1].split(b" ", 1)[0])
            assert content == expected_content(rnd_at, seq_at), qid
            assert msg.envelope.sender == f"s{seq_at}@example.org"
            assert msg.envelope.size == len(content)
        assert corrupt == [], f"partial files reached incoming/: {corrupt}"
        print(f"{len(printed)} reported, {len(incoming)} queued, {len(leftovers)} tmp leftovers")
    finally:
        store.close()


RECYCLING_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from postwall.queue import Envelope, QueueStore, Recipient

    def content(rnd, seq):
        line = f"round {rnd} message {seq} ".encode() * 40 + b"\\r\\n"
        return b"Subject: crash test\\r\\n\\r\\n" + line * (1 + (seq * 7) % 50)

    async def worker(store, rnd, start, step):
        seq, mine = start, []
        while True:
            env = Envelope(sender=f"s{seq}@example.org",
                           recipients=[Recipient(f"r{seq}@example.com")],
                           arrival_time=time.time())
            qid = await store.commit(env, content(rnd, seq))
            sys.stdout.write(f"C {qid} {seq}\\n")
            sys.stdout.flush()
            mine.append(qid)
            if len(mine) > 2:  # finish an older one: its file becomes the next spare
                old = mine.pop(0)
                await asyncio.to_thread(store.remove_sync, old, None, False)
                sys.stdout.write(f"R {old}\\n")
                sys.stdout.flush()
            seq += step

    async def main():
        store = QueueStore(Path(sys.argv[1]))
        rnd = int(sys.argv[2])
        await asyncio.gather(*(worker(store, rnd, i, 8) for i in range(8)))

    asyncio.run(main())
    """
)


def recycled_content(rnd: int, seq: int) -> bytes:
    line = f"round {rnd} message {seq} ".encode() * 40 + b"\r\n"
    return b"Subject: crash test\r\n\r\n" + line * (1 + (seq * 7) % 50)


@pytest.mark.slow
def test_sigkill_while_files_are_recycled_never_shows_stale_bytes(tmp_path: Path) -> None:
    """Finished files are renamed into tmp/ and overwritten by later commits (shorter or
    longer than what they held): whatever the kill interrupts, every file in incoming/ is
    exactly one message, never a mix with its predecessor's bytes."""
    qdir = tmp_path / "queue"
    rng = random.Random(os.getpid() ^ int(time.time()))
    env = dict(os.environ, PYTHONPATH=str(SRC))
    live: dict[str, tuple[int, int]] = {}
    uncertain: set[str] = set()  # being removed when the kill came: gone or not
    removed = 0
    for rnd in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", RECYCLING_CHILD, str(qdir), str(rnd)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first, "child produced no queue id"
        time.sleep(rng.uniform(0.2, 1.0))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        out = first + child.stdout.read()
        child.stdout.close()
        for line in out.decode().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "C":
                assert parts[1] not in live, f"queue id {parts[1]} given to two live files"
                live[parts[1]] = (rnd, int(parts[2]))
            elif len(parts) == 2 and parts[0] == "R":
                live.pop(parts[1], None)
                removed += 1
        # A worker keeps its last two; with three, the oldest was being removed.
        for worker in range(8):
            mine = [q for q, (r, seq) in live.items() if r == rnd and seq % 8 == worker]
            if len(mine) >= 3:
                uncertain.add(mine[0])
    assert removed > 20, "nothing was recycled"
    store = QueueStore(qdir)
    try:
        incoming = store.scan_sync("incoming")
        assert set(live) - set(incoming) <= uncertain
        for qid in incoming:
            with store.load_sync(qid) as msg:  # CorruptQueueFile would fail the test
                content = msg.read_content()
            seq = int(msg.envelope.sender[1:].split("@")[0])
            rnd_at = live[qid][0] if qid in live else int(content.split(b"round ")[1].split()[0])
            assert content == recycled_content(rnd_at, seq), qid
            assert msg.envelope.size == len(content)
    finally:
        store.close()
