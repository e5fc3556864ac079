"""`postwall status|stop|reload`: control a running server through its pid file.

Contract: the master writes `$data_directory/master.pid` (master.PID_FILE). A pid counts
as the server only while that process lives and its command line names postwall, so a
stale file after a crash or a reused pid is "not running". `status` prints Postfix's
postfix-script wording and exits 0 when running, 1 when not (`postfix status`);
`reload` sends SIGHUP (re-read main.cf, master.cf and certificates; sessions stay up);
`stop` sends SIGTERM and waits for the process to exit (SIGKILL never: the master
finishes its sessions for a few seconds first). Stop and reload of a server that is not
running are ToolErrors (exit 1), as postfix-script's "$FATAL ... not running".
`wake_master` sends SIGUSR1 only when the master catches it (checked in
/proc/PID/status), because SIGUSR1's default action would terminate it.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from postwall import fsutil
from postwall.config import Config

from . import ToolError, add_config_option, load_config

STOP_TIMEOUT = 30.0  # master lets sessions finish for 5 s and deliveries for up to 30 s


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    helps = {
        "status": "tell whether the server runs (exit 0) or not (exit 1)",
        "stop": "stop the running server (SIGTERM) and wait for it to exit",
        "reload": "re-read the configuration and certificates (SIGHUP)",
    }
    for name, text in helps.items():
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add_config_option(p)
        p.set_defaults(func=cmd_control, action=name)


def pid_path(config: Config) -> Path:
    # Imported here: master pulls in the whole server, and every command imports this module.
    from postwall.master import PID_FILE

    return Path(config.params.data_directory) / PID_FILE


def master_pid(config: Config) -> int | None:
    """The running master's pid, or None (no file, dead process, or not postwall)."""
    try:
        pid = int(pid_path(config).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _is_postwall(pid) else None


def _is_postwall(pid: int) -> bool:
    if not fsutil.pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"postwall" in cmdline


def catches(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (SigCgt in /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def wake_master(pid: int) -> bool:
    """Ask the master to scan the queue now; False when it cannot be asked."""
    if not catches(pid, signal.SIGUSR1):
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True


def cmd_control(args: argparse.Namespace) -> int:
    config = load_config(args.config_dir)
    pid = master_pid(config)
    if args.action == "status":
        if pid is None:
            print("postwall: the postwall mail system is not running")
            return 1
        print(f"postwall: the postwall mail system is running: PID: {pid}")
        return 0
    if pid is None:
        raise ToolError("the postwall mail system is not running")
    if args.action == "reload":
        print("postwall: refreshing the postwall mail system")
        os.kill(pid, signal.SIGHUP)
        return 0
    print("postwall: stopping the postwall mail system")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while fsutil.pid_alive(pid):
        if time.monotonic() > deadline:
            raise ToolError(f"PID {pid} did not exit within {STOP_TIMEOUT:g}s")
        time.sleep(0.05)
    return 0
