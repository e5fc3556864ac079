"""Delivery agents (layer 3): `local` (Maildir) and `discard`; smtp comes later.

Every agent returns a `DeliveryResult` per recipient; the queue manager turns it
into the `status=` log line (`status=sent (delivered to maildir)`) and into
recipient completion or a bounce/defer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DeliveryResult", "DeliveryStatus"]

DeliveryStatus = Literal["sent", "deferred", "bounced"]


@dataclass(frozen=True)
class DeliveryResult:
    """Outcome for one recipient: `status`, RFC 3463 enhanced code, Postfix's text."""

    status: DeliveryStatus
    dsn: str
    text: str

    def __post_init__(self) -> None:
        wanted = {"sent": "2", "deferred": "4", "bounced": "5"}[self.status]
        if not self.dsn.startswith(wanted + "."):
            raise ValueError(f"dsn {self.dsn} does not fit status {self.status}")
