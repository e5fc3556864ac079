"""Running as a system service: the shipped unit file passes `systemd-analyze verify`, and
postwall speaks systemd's notify protocol (Type=notify): READY=1 once it accepts
connections, RELOADING=1 then READY=1 around a SIGHUP reload, STOPPING=1 at SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import peers

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "postwall.service"


@pytest.mark.interop
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = peers.require_tool("systemd-analyze")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/postwall start -c /etc/postwall" in text
    # verify insists that ExecStart's program exists: point it at one that does here.
    exe = shutil.which("postwall") or sys.executable
    unit = tmp_path / "postwall.service"
    unit.write_text(text.replace("/usr/local/bin/postwall", exe))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    for option in (
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert f"\n{option}\n" in text, option
    caps = next(line for line in text.splitlines() if line.startswith("CapabilityBoundingSet="))
    assert "CAP_NET_BIND_SERVICE" in caps and "CAP_SETUID" in caps and "CAP_SYS_ADMIN" not in caps


def test_sd_notify_ready_reloading_stopping(postwall_factory, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        server = postwall_factory()
        assert sock.recv(4096) == b"READY=1"
        assert server.pid is not None
        os.kill(server.pid, signal.SIGHUP)
        assert sock.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096) == b"READY=1"
        server.stop()
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()
