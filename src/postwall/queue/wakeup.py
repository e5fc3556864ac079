"""The queue manager's wake-up channel: `$queue_directory/public/qmgr`.

Postfix's pickup and postqueue write one byte to the qmgr fifo in public/ to say
"look at incoming/ now"; postwall uses a UNIX datagram socket at the same place.

Contract:
- `listen(directory, on_wake)` (the master, once at start-up): removes a stale
  socket, binds a new one with mode 0622 (anyone who may reach public/ may write,
  only the owner reads; public/ is 0710 as Postfix's), and calls `on_wake()` on the
  event loop once per datagram.  Returns the socket; `close(sock, directory)` at stop.
- `notify(directory)` (sendmail after a durable commit): sends one datagram; False
  when nobody listens (no server running, or a stale socket), True otherwise.  A
  wake-up is only a hint: the directory is the truth, and the queue manager's
  periodic scan finds whatever a lost wake-up left behind.
- `notify(directory, site=...)` (postqueue -s, smtpd's ETRN): "deliver what waits for
  this site now"; `listen`'s `on_site(site)` gets it (Postfix's flush service).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from postwall import fsutil

PUBLIC = "public"
QMGR = "qmgr"
_MAX_DATAGRAM = 512  # b"W" is a wake-up; b"S" + domain asks for one site's mail


def socket_path(directory: str | os.PathLike[str], name: str = QMGR) -> Path:
    return Path(directory) / PUBLIC / name


@contextlib.contextmanager
def short_name(directory: str | os.PathLike[str], name: str = QMGR) -> Iterator[str]:
    """A name for socket `name` in public/ that fits sockaddr_un's 108 bytes however
    deep the queue directory is: through a descriptor of public/ (Linux resolves
    /proc/self/fd).  O_PATH, so a user who may search public/ but not list it can too."""
    fd = os.open(Path(directory) / PUBLIC, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def listen(
    directory: str | os.PathLike[str],
    on_wake: Callable[[], None],
    on_site: Callable[[str], None] | None = None,
) -> socket.socket:
    """Bind the wake-up socket and register it with the running loop."""
    path = socket_path(directory)
    fsutil.ensure_dir(path.parent, 0o710)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # stale from a crash: a bound path cannot be bound again
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        with short_name(directory) as name:
            sock.bind(name)
        os.chmod(path, 0o622)
    except BaseException:
        sock.close()
        raise

    def readable() -> None:
        woken = False
        sites: set[str] = set()
        while True:  # drain: a burst of submissions is one scan
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            site = data[1:].decode("ascii", "replace").strip().lower()
            if data[:1] == b"S" and site and on_site is not None:
                sites.add(site)
            else:
                woken = True
        if woken:
            on_wake()
        for site in sorted(sites):
            on_site(site)  # type: ignore[misc]

    asyncio.get_running_loop().add_reader(sock.fileno(), readable)
    return sock


def close(sock: socket.socket, directory: str | os.PathLike[str]) -> None:
    with contextlib.suppress(Exception):
        asyncio.get_running_loop().remove_reader(sock.fileno())
    sock.close()
    with contextlib.suppress(OSError):
        os.unlink(socket_path(directory))


def notify(directory: str | os.PathLike[str], site: str | None = None) -> bool:
    """One wake-up (or site flush) datagram to a running master; False if none listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        try:
            with short_name(directory) as name:
                sock.sendto(b"S" + site.encode("ascii") if site else b"W", name)
        except BlockingIOError:
            return True  # its buffer is full of wake-ups already: it will scan
        except OSError:  # no socket (ENOENT), nobody bound to it (ECONNREFUSED)
            return False
    return True
