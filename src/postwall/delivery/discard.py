"""The discard transport: reports success for every recipient, writes nothing.

Matches Postfix's discard(8): the status is `sent` and the reason text is the
next-hop field of the transport (`discard:some text` logs
`status=sent (some text)`); a next-hop that starts with an RFC 3463 code
(`discard:2.1.5 dropped`) sets the enhanced status, otherwise it is 2.0.0
(discard.c: dsn_split(&dp, "2.0.0", nexthop)). With no next-hop at all the
queue manager passes the recipient domain, as Postfix's resolver does.
Never fails; callers: the queue manager.
"""

from __future__ import annotations

from postwall.delivery import DeliveryResult, dsn_split

__all__ = ["deliver"]


def deliver(nexthop: str) -> DeliveryResult:
    """The result for each recipient routed to `discard:<nexthop>`."""
    split = dsn_split(nexthop)
    if split is None:
        return DeliveryResult("sent", "2.0.0", nexthop)
    dsn, text = split
    # Postfix keeps the detail but the delivery still counts as sent.
    return DeliveryResult("sent", "2" + dsn[1:], text)
