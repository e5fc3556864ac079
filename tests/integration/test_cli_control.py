"""`postwall status|reload|stop` against a real running server, through its pid file."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import peers

postwall = peers.run_postwall


def test_status_reload_stop(
    postwall_factory: Callable[..., peers.PostwallServer], tmp_path: Path
) -> None:
    srv = postwall_factory(params={"data_directory": str(tmp_path / "data")})
    cdir = str(srv.config_dir)
    res = postwall("status", "-c", cdir)
    assert res.returncode == 0
    assert res.stdout == f"postwall: the postwall mail system is running: PID: {srv.pid}\n"

    res = postwall("reload", "-c", cdir)
    assert res.returncode == 0 and res.stdout == "postwall: refreshing the postwall mail system\n"
    srv.wait_log(rf"postfix-postwall/master\[{srv.pid}\]: reload -- version .*, configuration ")
    assert srv.running

    res = postwall("stop", "-c", cdir)
    assert res.returncode == 0 and res.stdout == "postwall: stopping the postwall mail system\n"
    assert not srv.running and srv.returncode == 0  # stop waited for the exit
    srv.wait_log(r"postfix-postwall/master\[\d+\]: terminating on signal 15")

    res = postwall("status", "-c", cdir)
    assert res.returncode == 1
    assert res.stdout == "postwall: the postwall mail system is not running\n"
    for cmd in ("stop", "reload"):
        res = postwall(cmd, "-c", cdir)
        assert res.returncode == 1
        assert res.stderr == "postwall: fatal: the postwall mail system is not running\n"


def test_stale_pid_file_is_not_a_running_server(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text(f"data_directory = {tmp_path}\n")
    # A live process that is not postwall (a reused pid) must not be signalled.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "master.pid").write_text(f"{sleeper.pid}\n")
        for cmd, code in (("status", 1), ("stop", 1), ("reload", 1)):
            assert postwall(cmd, "-c", str(tmp_path)).returncode == code
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / "master.pid").write_text("garbage\n")
    assert postwall("status", "-c", str(tmp_path)).returncode == 1


def test_help_and_bad_config(tmp_path: Path) -> None:
    for cmd in ("status", "stop", "reload"):
        res = postwall(cmd, "--help")
        assert res.returncode == 0 and res.stdout.startswith(f"usage: postwall {cmd}")
    (tmp_path / "main.cf").write_text("smtpd_tls_loglevel = lots\n")
    res = postwall("status", "-c", str(tmp_path))
    assert res.returncode == 1
    assert res.stderr.startswith(f"postwall: fatal: {tmp_path}/main.cf:1: smtpd_tls_loglevel")
    assert res.stderr.count("\n") == 1


WAITER = """
import signal, sys, time
from pathlib import Path
if sys.argv[1] == "handles":
    signal.signal(signal.SIGUSR1, lambda *_: Path(sys.argv[2]).write_text("woken"))
Path(sys.argv[2] + ".ready").write_text("")
time.sleep(30)
"""


def test_postqueue_f_wakes_only_a_master_that_handles_sigusr1(tmp_path: Path) -> None:
    """SIGUSR1 kills a process without a handler, so the flush must check before sending.
    The stand-ins carry "postwall" in their command line, as the real master does."""
    (tmp_path / "main.cf").write_text(
        f"data_directory = {tmp_path}\nqueue_directory = {tmp_path}/queue\n"
    )
    for mode in ("handles", "ignores"):
        marker = tmp_path / mode
        proc = subprocess.Popen([sys.executable, "-c", WAITER, mode, str(marker), "postwall"])
        try:
            peers.wait_for(lambda m=marker: m.with_suffix(".ready").exists(), 10, "stand-in")
            (tmp_path / "master.pid").write_text(f"{proc.pid}\n")
            res = postwall("postqueue", "-f", "-c", str(tmp_path))
            assert res.returncode == 0, res.stderr
            if mode == "handles":
                peers.wait_for(marker.exists, 10, "SIGUSR1 to reach the handler")
            else:
                time.sleep(0.5)  # a signal sent would have killed it by now
                assert proc.poll() is None and not marker.exists()
        finally:
            proc.kill()
            proc.wait()
