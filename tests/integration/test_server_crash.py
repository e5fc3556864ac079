"""SIGKILL in the middle of a load: every message answered 250 is delivered exactly once.

Ten clients send several hundred messages over persistent sessions; the server is
killed with SIGKILL while they are at it, then restarted.  After the queue drains,
each message that got its 250 must be in the Maildir exactly once, and every message
in the Maildir must be one that was sent in full (a message whose 250 was lost with
the connection may be there: the client would retry it, as RFC 5321 6.1 expects).
"""

from __future__ import annotations

import re
import smtplib
import threading
import time
from collections import Counter

import peers

CLIENTS = 10
PER_CLIENT = 40
KILL_AFTER_ACKS = 150


def _sender(port: int, client: int, acked: list[str], stop: threading.Event) -> None:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
            s.ehlo("loadgen.example")
            for n in range(PER_CLIENT):
                if stop.is_set():
                    return
                token = f"c{client}m{n}"
                msg = (
                    f"From: <load@example.org>\r\nSubject: crash {token}\r\n"
                    f"Message-ID: <{token}@loadgen.example>\r\n\r\n{'x' * 900}\r\n"
                ).encode()
                s.sendmail("load@example.org", ["root@localhost"], msg)
                acked.append(token)
    except (smtplib.SMTPException, OSError):
        return  # the server was killed under us


def _subjects(server: peers.PostwallServer) -> Counter[str]:
    found: Counter[str] = Counter()
    for raw in peers.maildir_messages(server.maildir("root")):
        m = re.search(rb"^Subject: crash (c\d+m\d+)$", raw, re.M)
        assert m, raw[:300]
        found[m.group(1).decode()] += 1
    return found


def _queue_empty(server: peers.PostwallServer) -> bool:
    queue = server.config_dir / "queue"
    return all(
        not any(p.name[0].isalnum() for p in (queue / d).iterdir())
        for d in ("incoming", "active", "deferred")
        if (queue / d).exists()
    )


def test_sigkill_under_load_loses_nothing_and_duplicates_nothing(postwall_factory):
    server = postwall_factory()
    acked: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_sender, args=(server.port, c, acked, stop), daemon=True)
        for c in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    peers.wait_for(lambda: len(acked) >= KILL_AFTER_ACKS, 120, "enough acknowledged messages")
    server.kill()
    stop.set()
    for t in threads:
        t.join(30)
    acked_at_kill = list(acked)
    assert len(acked_at_kill) < CLIENTS * PER_CLIENT, "the kill came after the load ended"

    server.start()
    peers.wait_for(lambda: _queue_empty(server), 120, "the queue to drain after restart")
    time.sleep(0.5)
    delivered = _subjects(server)
    sent_tokens = {f"c{c}m{n}" for c in range(CLIENTS) for n in range(PER_CLIENT)}
    missing = [t for t in acked_at_kill if delivered[t] == 0]
    duplicated = {t: k for t, k in delivered.items() if k > 1}
    assert not missing, f"acknowledged but never delivered: {missing}"
    assert not duplicated, f"delivered more than once: {duplicated}"
    assert set(delivered) <= sent_tokens
    # At most one in-flight message per client can be delivered without its 250.
    assert len(delivered) - len(acked_at_kill) <= CLIENTS
    assert not list((server.config_dir / "queue" / "corrupt").glob("[0-9A-F]*"))
