"""Queue ids in the shape of Postfix's short ids (`B3980EB9F5`).

Scheme (the one Postfix uses for `enable_long_queue_ids = no`, see
src/global/mail_queue.h MQID_SH_*): five uppercase hex digits of the
microsecond part of the time the queue file was created, followed by the
file's inode number in uppercase hex. We pad the inode to at least five
digits so every id is 10 characters or more; on ext4 it is usually 10-12.

Why it is unique: the queue file is created (in the queue's tmp area) before
its id is chosen, and the id names that same inode until the file is removed.
Links and renames keep the inode, and the queue never rewrites a queue file
into a new inode (recipient completion is updated in place), so two live queue
files on one file system never share an inode and therefore never share an id,
whatever the message rate and across restarts. The store additionally refuses
an id that already names a file in any queue state (a file restored from
elsewhere could carry a foreign inode), and picks a new microsecond then.
Ids of files that are gone may be reused later, as in Postfix. A finished
queue file may become the temp file of a later message (the store recycles
files rather than unlink and create them); that message gets a new id from
the same inode and a new microsecond, never the finished message's id.

Pure functions; no I/O. Callers: queue.store.
"""

from __future__ import annotations

import re

__all__ = ["QUEUE_ID_RE", "is_queue_id", "make_queue_id"]

# 5 usec digits + 5..16 inode digits.
QUEUE_ID_RE = re.compile(r"[0-9A-F]{10,21}")

_USEC_DIGITS = 5
_MIN_INODE_DIGITS = 5


def make_queue_id(usec: int, inode: int) -> str:
    """Return the id for a file created at microsecond `usec` with inode `inode`."""
    if not 0 <= usec < 1_000_000:
        raise ValueError(f"microseconds out of range: {usec}")
    if inode < 0:
        raise ValueError(f"negative inode number: {inode}")
    return f"{usec:0{_USEC_DIGITS}X}{inode:0{_MIN_INODE_DIGITS}X}"


def is_queue_id(text: str) -> bool:
    """True when `text` has the shape of a queue id (also used to skip stray files)."""
    return QUEUE_ID_RE.fullmatch(text) is not None
