"""QueueStore: durable commit protocol, group commit, concurrency, state moves."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwall.queue import (
    STATES,
    CorruptQueueFile,
    Envelope,
    QueueStore,
    RcptStatus,
    Recipient,
    is_queue_id,
)
from postwall.queue import store as store_mod


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueueStore]:
    s = QueueStore(tmp_path / "q")
    yield s
    s.close()


def envelope(n: int = 2, sender: str = "alice@example.org") -> Envelope:
    return Envelope(
        sender=sender,
        recipients=[Recipient(f"r{i}@example.com") for i in range(n)],
        arrival_time=time.time(),
        client_name="localhost",
        client_addr="127.0.0.1",
        client_port=2525,
        helo="client.example",
        protocol="ESMTPS",
    )


def names(path: Path) -> list[str]:
    return sorted(os.listdir(path))


def temp_files(store: QueueStore) -> list[str]:
    """tmp/ entries other than unused spares (close() removes those; the store
    restarts its threads on the next call)."""
    store.close()
    return names(store.directory / "tmp")


def test_layout_and_modes(store: QueueStore) -> None:
    for name in (*STATES, "tmp"):
        d = store.directory / name
        assert d.is_dir()
        assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_commit_then_load(store: QueueStore) -> None:
    content = b"Subject: hi\r\n\r\nhello\r\n"
    qid = asyncio.run(store.commit(envelope(), content))
    assert is_queue_id(qid)
    assert names(store.directory / "incoming") == [qid]
    assert temp_files(store) == []
    assert stat.S_IMODE((store.directory / "incoming" / qid).stat().st_mode) == 0o600
    with store.load_sync(qid) as msg:
        assert msg.state == "incoming"
        assert msg.queue_id == qid
        assert msg.envelope.sender == "alice@example.org"
        assert msg.envelope.client_port == 2525
        assert msg.envelope.size == len(content)
        assert msg.read_content() == content
        assert b"".join(msg.iter_content(chunk_size=3)) == content


def test_reserved_id_is_used_and_temp_stays_out_of_incoming(store: QueueStore) -> None:
    qid = store.new_queue_id()
    # Reserved, not committed: the placeholder lives in tmp/, never in incoming/.
    assert names(store.directory / "incoming") == []
    assert len(temp_files(store)) == 1
    env = dataclasses.replace(envelope(), queue_id=qid)
    assert store.commit_sync(env, b"x\r\n") == qid
    assert names(store.directory / "incoming") == [qid]
    assert temp_files(store) == []


def test_release_and_unknown_reservation(store: QueueStore) -> None:
    qid = store.new_queue_id()
    store.release_queue_id(qid)
    assert temp_files(store) == []
    with pytest.raises(ValueError, match="not reserved"):
        store.commit_sync(dataclasses.replace(envelope(), queue_id=qid), b"x")
    old = store.new_queue_id()
    assert store.expire_reservations(time.time() + 1) == 1
    assert old not in os.listdir(store.directory / "incoming")
    assert temp_files(store) == []


def test_bad_envelope_leaves_nothing(store: QueueStore) -> None:
    with pytest.raises(ValueError):
        asyncio.run(store.commit(Envelope(sender="", recipients=[]), b"x"))
    assert names(store.directory / "incoming") == []
    assert temp_files(store) == []


def test_file_is_fsynced_before_it_is_linked_into_incoming(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At each file fsync the file is complete and not yet in incoming/; at the
    directory fsync the entry is already there. Counting only: the I/O is real."""
    seen: list[tuple[str, list[str]]] = []
    real_fsync = os.fsync
    incoming = store.directory / "incoming"

    def observing_fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append((kind, names(incoming)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", observing_fsync)
    qid = store.commit_sync(envelope(), b"body\r\n")
    assert seen == [("file", []), ("dir", [qid])]


def test_group_commit_shares_directory_fsyncs(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = {"file": 0, "dir": 0}
    lock = threading.Lock()
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        with lock:
            counts[kind] += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    n = 300

    async def many() -> list[str]:
        return await asyncio.gather(*(store.commit(envelope(), b"x\r\n" * 50) for _ in range(n)))

    ids = asyncio.run(many())
    assert len(set(ids)) == n
    assert counts["file"] == n  # every file is fsynced...
    assert counts["dir"] == store.batches  # ...but the directory once per batch
    assert store.batches < n // 3, store.batches


def test_500_concurrent_commits_unique_and_readable(store: QueueStore) -> None:
    async def one(i: int) -> tuple[str, bytes]:
        content = f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode()
        return await store.commit(envelope(n=1 + i % 3, sender=f"s{i}@x"), content), content

    async def run() -> list[tuple[str, bytes]]:
        return await asyncio.gather(*(one(i) for i in range(500)))

    results = asyncio.run(run())
    ids = [qid for qid, _ in results]
    assert len(set(ids)) == 500
    assert sorted(ids) == names(store.directory / "incoming")
    assert temp_files(store) == []
    for i, (qid, content) in enumerate(results):
        with store.load_sync(qid, "incoming") as msg:
            assert msg.read_content() == content
            assert msg.envelope.sender == f"s{i}@x"
            assert len(msg.envelope.recipients) == 1 + i % 3


def test_commit_from_threads(store: QueueStore) -> None:
    out: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            qid = store.commit_sync(envelope(), b"t\r\n")
            with lock:
                out.append(qid)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 200 == len(names(store.directory / "incoming"))


def test_mark_recipients_in_place_and_durable(store: QueueStore) -> None:
    qid = store.commit_sync(envelope(n=3), b"x\r\n")
    inode = (store.directory / "incoming" / qid).stat().st_ino
    asyncio.run(store.mark_recipients(qid, [0, 2], RcptStatus.SENT))
    store.mark_recipients_sync(qid, [1], RcptStatus.BOUNCED, "incoming")
    # A fresh store (as after a restart) sees the same thing.
    other = QueueStore(store.directory)
    with other.load_sync(qid) as msg:
        statuses = [r.status for r in msg.envelope.recipients]
        assert statuses == [RcptStatus.SENT, RcptStatus.BOUNCED, RcptStatus.SENT]
        assert all(r.done for r in msg.envelope.recipients)
    assert (store.directory / "incoming" / qid).stat().st_ino == inode
    with pytest.raises(IndexError):
        store.mark_recipients_sync(qid, [3], RcptStatus.SENT)


def test_warn_time_in_place(store: QueueStore) -> None:
    qid = store.commit_sync(envelope(), b"x\r\n")
    store.set_warn_time_sync(qid, 1_800_000_000)
    with store.load_sync(qid) as msg:
        assert msg.envelope.warn_time == 1_800_000_000


def test_move_next_attempt_scan_due(store: QueueStore) -> None:
    a = store.commit_sync(envelope(), b"a\r\n")
    b = store.commit_sync(envelope(), b"b\r\n")
    now = time.time()
    asyncio.run(store.move(a, "incoming", "active"))
    store.move_sync(a, "active", "deferred", next_attempt=now + 3600)
    store.move_sync(b, "incoming", "deferred", next_attempt=now - 1)
    assert store.locate(a) == "deferred"
    assert names(store.directory / "incoming") == []
    assert store.scan_sync("deferred") == [b, a]  # oldest due time first
    assert asyncio.run(store.scan("deferred", due=now)) == [b]
    assert abs(store.next_attempt(a) - (now + 3600)) < 1
    with store.load_sync(a) as msg:
        assert msg.state == "deferred"
        assert msg.read_content() == b"a\r\n"


def test_content_stays_readable_after_move(store: QueueStore) -> None:
    qid = store.commit_sync(envelope(), b"moving\r\n")
    msg = store.load_sync(qid)
    store.move_sync(qid, "incoming", "active")
    assert msg.read_content() == b"moving\r\n"
    msg.close()
    with pytest.raises(ValueError):
        msg.read_content()


def test_remove(store: QueueStore) -> None:
    qid = store.commit_sync(envelope(), b"x\r\n")
    asyncio.run(store.remove(qid))
    assert store.locate(qid) is None
    with pytest.raises(FileNotFoundError):
        store.load_sync(qid)


def test_unlink_fresh_goes_through_the_writer_and_reports_each_file(store: QueueStore) -> None:
    a, b = (store.commit_sync(envelope(), b"x\r\n") for _ in range(2))
    store.record_defer_sync(b, {"r0@example.com": "stale reason"})
    missing = store.new_queue_id()  # reserved, never committed: not in incoming/
    errors = asyncio.run(store.unlink_fresh([a, b, missing]))
    assert errors[:2] == [None, None]
    assert isinstance(errors[2], FileNotFoundError)
    assert store.locate(a) is None and store.locate(b) is None
    assert store.defer_reasons_sync(b) == {}
    assert store.batches == 2  # unlinks are not commit batches


def test_quarantine_corrupt_file(store: QueueStore) -> None:
    qid = store.commit_sync(envelope(), b"x\r\n")
    path = store.directory / "incoming" / qid
    with open(path, "r+b") as fp:
        fp.truncate(path.stat().st_size - 3)
    with pytest.raises(CorruptQueueFile) as info:
        store.load_sync(qid)
    dest = asyncio.run(store.quarantine(qid, str(info.value)))
    assert dest == store.directory / "corrupt" / qid
    assert store.locate(qid) == "corrupt"
    assert "truncated" in (store.quarantine_reason(qid) or "")
    assert store.scan_sync("corrupt") == [qid]  # the .reason file is not a queue file


def test_scan_ignores_stray_files(store: QueueStore) -> None:
    qid = store.commit_sync(envelope(), b"x\r\n")
    (store.directory / "incoming" / "README").write_text("not mail")
    assert store.scan_sync("incoming") == [qid]
    with pytest.raises(ValueError):
        store.scan_sync("bogus")  # type: ignore[arg-type]


def test_startup_removes_temp_files_of_dead_processes(tmp_path: Path) -> None:
    qdir = tmp_path / "q"
    s = QueueStore(qdir)
    live = s.new_queue_id()
    # A dead writer's half-written file (pid 2**22+1 is above Linux's pid_max limit).
    dead = qdir / "tmp" / f"{2**22 + 1}.0.deadbeef"
    dead.write_bytes(b"PWQF\x01partial")
    QueueStore(qdir)  # opening a store is start-up
    assert not dead.exists()
    # Our own live reservation survives another store opening the directory.
    assert s.commit_sync(dataclasses.replace(envelope(), queue_id=live), b"x") == live
    s.close()


def test_write_error_fails_commit_and_leaves_nothing(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_write(fd: int, parts: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.fsutil, "writev_all", failing_write)
    with pytest.raises(OSError, match="No space"):
        store.commit_sync(envelope(), b"x\r\n")
    assert names(store.directory / "incoming") == []
    assert temp_files(store) == []


def test_spare_ids_are_prepared_and_handed_out(store: QueueStore) -> None:
    first = store.new_queue_id()
    deadline = time.time() + 5
    while len(names(store.directory / "tmp")) < 10 and time.time() < deadline:
        time.sleep(0.01)
    spares = set(names(store.directory / "tmp"))
    assert len(spares) >= 10  # background threads created spare temp files
    ids = {store.new_queue_id() for _ in range(5)}
    assert first not in ids and len(ids) == 5
    for qid in ids:
        store.release_queue_id(qid)
    store.release_queue_id(first)
    assert temp_files(store) == []


def _no_background_spares(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_maybe_refill", lambda: None)


def test_finished_file_is_recycled_with_a_new_id_and_only_the_new_content(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_background_spares(store, monkeypatch)
    old = store.commit_sync(envelope(3), b"long old message\r\n" * 500)
    inode = (store.directory / "incoming" / old).stat().st_ino
    store.remove_sync(old, durable=False)
    assert store.locate(old) is None
    qid = store.new_queue_id()  # the recycled file, not a new one
    assert qid != old and qid.endswith(f"{inode:X}")
    assert store.commit_sync(dataclasses.replace(envelope(1), queue_id=qid), b"new\r\n") == qid
    path = store.directory / "incoming" / qid
    assert path.stat().st_ino == inode
    with store.load_sync(qid) as msg:  # nothing of the old message is left behind
        assert msg.read_content() == b"new\r\n"
        assert [r.address for r in msg.envelope.recipients] == ["r0@example.com"]
    assert b"long old message" not in path.read_bytes()


def test_unlink_fresh_recycles_too(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_background_spares(store, monkeypatch)
    old = store.commit_sync(envelope(), b"x\r\n")
    assert asyncio.run(store.unlink_fresh([old])) == [None]
    assert len(names(store.directory / "tmp")) == 1
    assert store.new_queue_id() != old


@pytest.mark.parametrize("spoil", ["hard link", "too large", "mode 0644"])
def test_files_that_are_not_plain_queue_files_are_unlinked_not_recycled(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spoil: str
) -> None:
    _no_background_spares(store, monkeypatch)
    qid = store.commit_sync(envelope(), b"x\r\n")
    path = store.directory / "incoming" / qid
    before = path.read_bytes()
    if spoil == "hard link":  # someone else's name for the inode must keep its bytes
        os.link(path, store.directory / "saved")
    elif spoil == "too large":
        with open(path, "ab") as fp:
            fp.truncate(store_mod._RECYCLE_MAX + 1)
    else:
        path.chmod(0o644)
    store.remove_sync(qid)
    assert names(store.directory / "tmp") == []
    if spoil == "hard link":
        store.commit_sync(envelope(), b"a later message\r\n")
        assert (store.directory / "saved").read_bytes() == before


def test_a_reader_never_gets_a_recycled_file_for_the_old_id(
    store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mailq in another process opens a file the server finishes and recycles while it
    reads: the load reports the file gone instead of returning torn or foreign bytes."""
    _no_background_spares(store, monkeypatch)
    qid = store.commit_sync(envelope(), b"x\r\n")
    real_parse = store_mod.records.parse

    def parse_while_the_server_recycles(fp, queue_id):  # type: ignore[no-untyped-def]
        store.remove_sync(qid, durable=False)  # renamed into tmp/, to be overwritten
        return real_parse(fp, queue_id)

    monkeypatch.setattr(store_mod.records, "parse", parse_while_the_server_recycles)
    with pytest.raises(FileNotFoundError):
        store.load_sync(qid, "incoming")


def test_a_store_without_spares_never_recycles(tmp_path: Path) -> None:
    tool = QueueStore(tmp_path / "q", spare_ids=0)  # as postsuper and sendmail open it
    qid = tool.commit_sync(envelope(), b"x\r\n")
    tool.remove_sync(qid)
    assert names(tool.directory / "tmp") == []
    tool.close()


def test_close_drains_and_a_later_commit_restarts_the_writer(tmp_path: Path) -> None:
    s = QueueStore(tmp_path / "q")
    first = s.commit_sync(envelope(), b"x")
    s.close()
    second = s.commit_sync(envelope(), b"y")
    s.close()
    assert set(s.scan_sync("incoming")) == {first, second}


def test_a_queue_id_commits_once(store: QueueStore) -> None:
    qid = store.new_queue_id()
    env = dataclasses.replace(envelope(), queue_id=qid)

    async def twice() -> list[str | BaseException]:
        return await asyncio.gather(
            store.commit(env, b"one\r\n"), store.commit(env, b"two\r\n"), return_exceptions=True
        )

    results = asyncio.run(twice())
    assert results[0] == qid
    assert isinstance(results[1], ValueError)
    with store.load_sync(qid) as msg:
        assert msg.read_content() == b"one\r\n"


def test_updates_are_fsynced(store: QueueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    qid = store.commit_sync(envelope(), b"x\r\n")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append("dir" if stat.S_ISDIR(st.st_mode) else f"file:{st.st_ino}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    ino = (store.directory / "incoming" / qid).stat().st_ino
    store.mark_recipients_sync(qid, [0], RcptStatus.SENT)
    assert synced == [f"file:{ino}"]
    synced.clear()
    store.move_sync(qid, "incoming", "deferred", next_attempt=time.time() + 60)
    assert synced == [f"file:{ino}", "dir", "dir"]  # new time, then both directories
    synced.clear()
    store.remove_sync(qid)
    assert synced == ["dir"]
