"""fsutil: exclusive creation with a mode, atomic durable replace, directory fsync."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from postwall import fsutil


def test_create_exclusive_applies_mode_and_refuses_existing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    old = os.umask(0)
    try:
        fd = fsutil.create_exclusive(path, 0o640)
    finally:
        os.umask(old)
    os.close(fd)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    with pytest.raises(FileExistsError):
        fsutil.create_exclusive(path)


def test_create_exclusive_does_not_follow_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        fsutil.create_exclusive(link)
    assert not target.exists()


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state"
    fsutil.atomic_write(path, b"one")
    fsutil.atomic_write(path, b"two", 0o644)
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_atomic_write_failure_keeps_old_content(tmp_path: Path) -> None:
    path = tmp_path / "state"
    fsutil.atomic_write(path, b"old")
    with pytest.raises(TypeError):
        fsutil.atomic_write(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_atomic_write_fsyncs_file_then_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    fsutil.atomic_write(tmp_path / "x", b"data")
    assert calls == ["file", "dir"]


def test_ensure_dir_creates_parents_with_mode(tmp_path: Path) -> None:
    d = fsutil.ensure_dir(tmp_path / "a" / "b", 0o700)
    assert d.is_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert fsutil.ensure_dir(d) == d  # existing is fine
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        fsutil.ensure_dir(tmp_path / "file")


def test_writev_all_writes_every_part_in_order_across_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts: list[bytes | memoryview] = [os.urandom(n) for n in (5, 0, 23, 1000, 1, 7)] * 400
    parts.append(memoryview(b"tail"))  # more parts than IOV_MAX
    real_writev = os.writev

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        # The kernel may stop early: at most 11 bytes per call here.
        take, out = 11, []
        for b in buffers:
            out.append(b[:take])
            take -= len(out[-1])
            if not take:
                break
        return real_writev(fd, out)

    fd = fsutil.create_exclusive(tmp_path / "short")
    try:
        monkeypatch.setattr(os, "writev", short_writev)
        fsutil.writev_all(fd, parts)
        monkeypatch.undo()
        fd2 = fsutil.create_exclusive(tmp_path / "whole")
        try:
            fsutil.writev_all(fd2, parts)
        finally:
            os.close(fd2)
    finally:
        os.close(fd)
    expected = b"".join(bytes(p) for p in parts)
    assert (tmp_path / "short").read_bytes() == expected
    assert (tmp_path / "whole").read_bytes() == expected


def test_write_all_writes_everything(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    fd = fsutil.create_exclusive(tmp_path / "big")
    try:
        fsutil.write_all(fd, data)
    finally:
        os.close(fd)
    assert (tmp_path / "big").read_bytes() == data
