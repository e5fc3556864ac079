"""SIGKILL during an outbound burst: after a restart every message that got its 250 from
postwall reaches the receiving Postfix at least once (a message may arrive twice when the
kill fell between the receiver's 250 and our record of it, as with Postfix)."""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections.abc import Callable

import pytest

import peers

pytestmark = pytest.mark.interop

COUNT = 120


def _pending(server: peers.PostwallServer) -> int:
    return sum(
        1
        for state in ("incoming", "active", "deferred")
        if (server.queue_dir / state).is_dir()
        for p in (server.queue_dir / state).rglob("*")
        if p.is_file()
    )


def test_sigkill_during_outbound_burst_loses_nothing(
    postwall_factory: Callable[..., peers.PostwallServer],
    shared_postfix_receiver: peers.PostfixInstance,
) -> None:
    rx = shared_postfix_receiver
    tag = f"crash{time.time_ns()}"
    server = postwall_factory(
        params={
            "relayhost": f"[127.0.0.1]:{rx.port}",
            "smtp_tls_security_level": "may",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "queue_run_delay": "1s",
        }
    )
    accepted: list[str] = []
    failures: list[BaseException] = []

    def submit() -> None:
        try:
            for i in range(COUNT):
                subject = f"{tag}-{i}"
                peers.smtp_send(
                    "127.0.0.1",
                    server.port,
                    "root@localhost",
                    ["bob@example.test"],
                    peers.simple_message(subject, "root@localhost", "bob@example.test"),
                )
                accepted.append(subject)  # smtp_send returned: postwall said 250
        except (OSError, smtplib.SMTPException):  # the kill cut a session short
            pass
        except BaseException as exc:
            failures.append(exc)

    sender = threading.Thread(target=submit)
    sender.start()
    peers.wait_for(
        lambda: len(re.findall(r"status=sent", server.log_text())) >= 30,
        60,
        "30 outbound deliveries before the kill",
        detail=server.log_text,
    )
    server.kill()
    sender.join(60)
    assert not failures, failures
    assert len(accepted) >= 30
    server.start()
    peers.wait_for(
        lambda: _pending(server) == 0, 120, "postwall's queue to drain", detail=server.log_text
    )

    def arrived() -> dict[str, int]:
        seen: dict[str, int] = {}
        for msg in peers.maildir_messages(rx.maildir("bob")):
            m = re.search(rf"Subject: ({tag}-\d+)\r?\n".encode(), msg)
            if m:
                seen[m.group(1).decode()] = seen.get(m.group(1).decode(), 0) + 1
        return seen

    peers.wait_for(
        lambda: set(accepted) <= set(arrived()),
        60,
        "every accepted message at the receiver",
        detail=lambda: f"missing: {sorted(set(accepted) - set(arrived()))[:10]}",
    )
    duplicates = sum(n - 1 for n in arrived().values())
    assert duplicates <= 20, f"{duplicates} duplicates"
