"""The local submission socket (public/pickup) of a running server, from its client side."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import peers
from postwall import pickup
from postwall.queue import Recipient, wakeup


def test_connections_held_open_cannot_starve_the_server(
    postwall_factory: Callable[..., peers.PostwallServer],
) -> None:
    """A local user who opens connections and sends nothing gets no more than 64 of them
    read; the next one is told 421 at once, and submissions work again once they close."""
    server = postwall_factory(params={"mydestination": "localhost"})
    queue = Path(server.params["queue_directory"])
    request = pickup.Request(
        "root@localhost", [Recipient("root@localhost")], b"Subject: x\r\n\r\nx\r\n"
    )
    idle = []
    try:
        for _ in range(64):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with wakeup.short_name(queue, pickup.PICKUP) as name:
                sock.connect(name)
            idle.append(sock)
        peers.wait_for(
            lambda: _refused(queue, request), 10, "the 65th connection to be refused at once"
        )
    finally:
        for sock in idle:
            sock.close()
    qid = peers.wait_for(lambda: _queued(queue, request), 10, "a submission after they closed")
    server.wait_log(rf"pickup\[\d+\]: {qid}: uid=0 from=<root@localhost>")


def _refused(queue: Path, request: pickup.Request) -> bool:
    try:
        pickup.submit(queue, request, timeout=5)
    except pickup.PickupError as exc:
        return "4.3.2 Error: too many local submissions at once" in str(exc) and exc.temporary
    return False


def _queued(queue: Path, request: pickup.Request) -> str | None:
    try:
        return pickup.submit(queue, request, timeout=5)
    except pickup.PickupError:
        return None
