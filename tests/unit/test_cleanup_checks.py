"""cleanup's header_checks and body_checks on a real queue store (the wording of every
action is checked against a private Postfix in tests/interop/test_header_checks.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from postwall.cleanup import ChecksError, Cleanup, ContentChecks, ContentRejected, Submission
from postwall.config.params import Params
from postwall.log import MailLog
from postwall.queue.records import Recipient
from postwall.queue.store import QueueStore


def _params(tmp_path: Path, header: str = "", body: str = "", **kw: object) -> Params:
    refs = {}
    for name, text in (("header_checks", header), ("body_checks", body)):
        if text:
            (tmp_path / name).write_text(text)
            refs[name] = (f"pcre:{tmp_path / name}",)
    if "header_checks" in refs:
        refs["mime_header_checks"] = refs["nested_header_checks"] = refs["header_checks"]
    return dataclasses.replace(
        Params(), config_directory=str(tmp_path), myhostname="mx.test", **refs, **kw
    )


def _submit(tmp_path: Path, params: Params, content: bytes) -> tuple[object, QueueStore, list[str]]:
    store = QueueStore(tmp_path / "queue")
    log = MailLog(maillog_file=tmp_path / "maillog", pid=7)
    committed: list[str] = []
    cleanup = Cleanup(params, store, log, on_commit=lambda qid, env: committed.append(qid))
    sub = Submission(
        queue_id=cleanup.new_queue_id(),
        sender="s@client.test",
        recipients=[Recipient(address="a@mx.test"), Recipient(address="b@mx.test")],
        content=content,
        arrival_time=time.time(),
        client_name="client.test",
        client_addr="192.0.2.1",
        client_port=1234,
        helo="helo.test",
        protocol="ESMTP",
    )
    reply = asyncio.run(cleanup.submit(sub))
    log.close()
    store.close()
    return reply, store, (tmp_path / "maillog").read_text().splitlines()


def _queued(store: QueueStore) -> dict[str, list[str]]:
    return {s: store.scan_sync(s) for s in ("incoming", "hold") if store.scan_sync(s)}


def test_no_checks_configured_means_nothing_to_inspect(tmp_path: Path) -> None:
    assert not ContentChecks(_params(tmp_path)).active


def test_reject_queues_nothing_and_logs_once(tmp_path: Path) -> None:
    params = _params(tmp_path, header="/^Subject: spam/ REJECT no spam here\n")
    reply, store, lines = _submit(tmp_path, params, b"Subject: spam offer\r\n\r\nhi\r\n")
    assert isinstance(reply, ContentRejected)
    assert (reply.code, reply.status, reply.text) == (550, "5.7.1", "no spam here")
    assert _queued(store) == {}
    [line] = [ln for ln in lines if "reject:" in ln]
    assert line.endswith(
        ": reject: header Subject: spam offer from client.test[192.0.2.1]; "
        "from=<s@client.test> to=<b@mx.test> proto=ESMTP helo=<helo.test>: 5.7.1 no spam here"
    )
    assert not any("message-id=" in ln for ln in lines)  # rejected before the headers ended


def test_hold_commits_into_hold_without_waking_the_queue_manager(tmp_path: Path) -> None:
    params = _params(tmp_path, body="/viagra/ HOLD\n")
    reply, store, lines = _submit(tmp_path, params, b"Subject: x\r\n\r\nbuy viagra\r\n")
    assert reply is None
    assert list(_queued(store)) == ["hold"]
    assert any(": hold: body buy viagra from client.test[192.0.2.1];" in ln for ln in lines)


def test_discard_answers_ok_and_queues_nothing(tmp_path: Path) -> None:
    params = _params(tmp_path, header="/^X-Junk:/ DISCARD\n")
    reply, store, lines = _submit(tmp_path, params, b"X-Junk: 1\r\n\r\nhi\r\n")
    assert reply is None
    assert _queued(store) == {}
    assert any(": discard: header X-Junk: 1 from " in ln for ln in lines)


def test_ignored_message_id_is_added_back_and_edits_reach_the_queue(tmp_path: Path) -> None:
    params = _params(
        tmp_path,
        header="/^Message-ID:/ IGNORE\n/^X-Old: (.*)/ REPLACE X-New: $1\n",
        body="/^secret/ REPLACE [removed]\n/^$/ REJECT empty lines are never looked up\n",
        always_add_missing_headers=True,
    )
    content = b"Message-ID: <a@b>\r\nX-Old: v\r\n\r\nsecret 1\r\n\r\nend\r\n"
    reply, store, _ = _submit(tmp_path, params, content)
    assert reply is None
    [qid] = _queued(store)["incoming"]
    with store.load_sync(qid, "incoming") as msg:
        queued = msg.read_content()
    assert b"<a@b>" not in queued
    assert b"\r\nX-New: v\r\n" in queued and b"X-Old" not in queued
    assert queued.endswith(b"\r\n\r\n[removed]\r\n\r\nend\r\n")
    assert "Message-Id: <" in queued.decode() and f".{qid}@mx.test>" in queued.decode()


def test_long_body_lines_are_inspected_in_line_length_limit_pieces(tmp_path: Path) -> None:
    params = _params(tmp_path, body="/^needle/ REJECT\n", line_length_limit=100)
    reply, _, _ = _submit(tmp_path, params, b"Subject: x\r\n\r\n" + b"a" * 100 + b"needle\r\n")
    assert isinstance(reply, ContentRejected)


@pytest.mark.parametrize("action", ["FILTER smtp:[127.0.0.1]:10025", "REDIRECT a@b", "BCC a@b"])
def test_actions_that_change_delivery_stop_start_up(tmp_path: Path, action: str) -> None:
    params = _params(tmp_path, header=f"/^Subject:/ {action}\n")
    with pytest.raises(ChecksError, match=r"header_checks: .*not supported by postwall"):
        ContentChecks(params)
