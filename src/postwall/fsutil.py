"""Small file-system primitives with stated durability guarantees.

Contract:
- `create_exclusive(path, mode)` creates a new file with `mode` applied by
  `open(2)` itself (O_CREAT|O_EXCL|O_NOFOLLOW), so there is no window in which
  the file exists with looser permissions; it fails with FileExistsError
  rather than reuse or follow anything already at `path`.
- `fsync_dir(path)` makes the directory's entries (creations, renames, unlinks)
  durable. On Linux a new file is only durable once both the file and its
  directory are fsync'ed (fsync(2), "Calling fsync() does not necessarily
  ensure that the entry in the directory containing the file has also reached
  disk").
- `atomic_write(path, data, mode)`: after it returns, `path` holds exactly
  `data` and survives a crash; a crash before it returns leaves either the old
  file or nothing, never a partial file at `path`. A leftover temp file (name
  starting with `.tmp.`) may remain in the same directory after a crash.
- `rename_noreplace(src, dst)` moves `src` to `dst` in one step and fails with
  FileExistsError if `dst` exists (renameat2(2) RENAME_NOREPLACE; where the
  kernel or file system lacks it, link(2) then unlink(2), same guarantee).
  Like any rename it is durable only once `dst`'s directory is fsync'ed.
- `ensure_dir(path, mode)` creates a directory (and parents) with `mode` and
  fsyncs the parent (skipped only when the parent is not readable by us).

Every failure is raised as the OSError the system call gave; nothing is
swallowed except cleanup errors of a temp file that is already being
abandoned. Callers: queue/ (queue files), delivery/local.py (maildirs), and any
module that must persist a small state file.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "atomic_write",
    "chown_tree",
    "create_exclusive",
    "ensure_dir",
    "fsync_dir",
    "rename_noreplace",
    "write_all",
    "writev_all",
]

_AT_FDCWD = -100
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
_RENAME_NOREPLACE = 1


def _load_renameat2() -> object | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28: link + unlink instead
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    func.restype = ctypes.c_int
    return func


_renameat2 = _load_renameat2()


def create_exclusive(path: str | os.PathLike[str], mode: int = 0o600) -> int:
    """Create `path` (must not exist) with `mode`; return an O_WRONLY descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    # open(2) masks `mode` with the umask, which can only narrow it: no chmod needed.
    return os.open(path, flags, mode)


def rename_noreplace(src: str, dst: str) -> None:
    """Rename `src` to `dst` unless `dst` exists (then FileExistsError, nothing moved)."""
    global _renameat2
    if _renameat2 is not None:
        result = _renameat2(  # type: ignore[operator]
            _AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE
        )
        if result == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), src, None, dst)
        _renameat2 = None  # this kernel or file system cannot: fall back for good
    # Where renameat2 is missing, link refuses an existing target just the same.
    os.link(src, dst)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(src)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of `data` to `fd` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def writev_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """Write `parts` in order with as few writev(2) calls as the kernel allows (a queue
    file is a dozen small records and the content: one system call, not a dozen)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + _IOV_MAX])
        while n and i < len(views):  # skip what was written; a short write resumes mid-part
            size = len(views[i])
            if n < size:
                views[i] = views[i][n:]
                break
            n -= size
            i += 1


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that entries created/renamed/removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: str | os.PathLike[str], mode: int = 0o700) -> Path:
    """Create `path` and missing parents with `mode`; an existing directory is kept as is."""
    p = Path(path)
    try:
        os.mkdir(p, mode)
    except FileExistsError:
        if not p.is_dir():
            raise
        return p
    except FileNotFoundError:
        ensure_dir(p.parent, mode)
        with contextlib.suppress(FileExistsError):
            os.mkdir(p, mode)
    # The new entry must survive a crash too, or files created inside it are lost.
    # A parent we may search but not read (mode 0711) cannot be opened for
    # fsync; the mkdir itself succeeded, so go on as best effort.
    with contextlib.suppress(PermissionError):
        fsync_dir(p.parent)
    return p


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Durably replace `path` with `data`: temp file, write, fsync, rename, fsync dir."""
    target = Path(path)
    directory = target.parent
    tmp = directory / f".tmp.{target.name}.{os.getpid()}.{secrets.token_hex(6)}"
    fd = create_exclusive(tmp, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def chown_tree(path: str | os.PathLike[str], uid: int, gid: int) -> int:
    """Give `path` and everything under it to uid:gid (symlinks themselves, never their
    targets); returns how many entries changed.  For handing the queue to mail_owner."""
    changed = 0
    for root, dirs, files in os.walk(path):
        for name in (root, *(os.path.join(root, n) for n in dirs + files)):
            st = os.lstat(name)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(name, uid, gid)
                changed += 1
    return changed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True  # no /proc: kill(0) is all we know
    return stat.rpartition(")")[2].split()[0] != "Z"
