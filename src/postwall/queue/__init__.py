"""The durable mail queue (layer 2): ids, the queue file format, the store.

Only this package touches queue paths. See `store` for the durability contract
and `records` for the file format.
"""

from postwall.queue.ids import is_queue_id, make_queue_id
from postwall.queue.records import CorruptQueueFile, Envelope, RcptStatus, Recipient
from postwall.queue.store import STATES, QueuedMessage, QueueStore, Reservation, State

__all__ = [
    "STATES",
    "CorruptQueueFile",
    "Envelope",
    "QueueStore",
    "QueuedMessage",
    "RcptStatus",
    "Recipient",
    "Reservation",
    "State",
    "is_queue_id",
    "make_queue_id",
]
