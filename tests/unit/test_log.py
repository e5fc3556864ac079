"""log.MailLog: prefix format, sinks, reopen, failure accounting, tracing."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postwall import logfmt
from postwall.log import DEFAULT_SYSLOG_NAME, MailLog, redact_command

NOV8 = time.mktime((2026, 11, 8, 9, 15, 47, 0, 0, -1))


def _log(tmp_path: Path, **kw: object) -> tuple[MailLog, Path]:
    path = tmp_path / "maillog"
    log = MailLog(
        "postfix",
        "vm.example.com",
        maillog_file=path,
        pid=8797,
        clock=lambda: NOV8,
        **kw,  # type: ignore[arg-type]
    )
    return log, path


def test_default_syslog_name_is_a_postfix_instance_name() -> None:
    # fail2ban's stock _daemon regex, postfix(-\w+)?/\w+, must match our lines unchanged.
    assert re.fullmatch(r"postfix(-\w+)?", DEFAULT_SYSLOG_NAME)
    assert DEFAULT_SYSLOG_NAME == "postfix-postwall"


def test_prefix_postlog_style(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.info("smtpd", logfmt.connect(None, "127.0.0.1"))
    # Postfix's maillog_file: strftime("%b %d ...") and the host's first label.
    assert (
        path.read_text()
        == "Nov 08 09:15:47 vm postfix/smtpd[8797]: connect from unknown[127.0.0.1]\n"
    )


def test_prefix_syslog_style(tmp_path: Path) -> None:
    log, path = _log(tmp_path, timestamp_style="syslog")
    log.info("qmgr", "ABC: removed")
    assert path.read_text() == "Nov  8 09:15:47 vm postfix/qmgr[8797]: ABC: removed\n"


def test_severity_labels(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.warning("smtpd", "w")
    log.error("smtpd", "e")
    log.fatal("master", "f")
    log.panic("master", "p")
    log.service("cleanup").info("i")
    texts = [line.split(": ", 1)[1] for line in path.read_text().splitlines()]
    assert texts == ["warning: w", "error: e", "fatal: f", "panic: p", "i"]
    assert "postfix/cleanup[8797]: i" in path.read_text()


def test_multi_instance_and_submission_names(tmp_path: Path) -> None:
    path = tmp_path / "m"
    log = MailLog("postfix-out", "h", maillog_file=path, pid=1, clock=lambda: NOV8)
    log.info("smtpd", "x")
    sub = MailLog("postfix/submission", "h", maillog_file=path, pid=2, clock=lambda: NOV8)
    sub.info("smtpd", "y")
    lines = path.read_text().splitlines()
    assert lines[0].endswith("h postfix-out/smtpd[1]: x")
    assert lines[1].endswith("h postfix/submission/smtpd[2]: y")


def test_real_clock_and_pid(tmp_path: Path) -> None:
    path = tmp_path / "m"
    log = MailLog(maillog_file=path, hostname="host")
    log.info("smtpd", "hello")
    line = path.read_text()
    assert re.fullmatch(
        r"[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d host postfix-postwall/smtpd\[(\d+)\]: hello\n", line
    )
    assert f"[{os.getpid()}]" in line


def test_control_characters_and_length(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    # A peer-controlled value must not be able to forge a second log line.
    log.info("smtpd", "helo=<x>\nNov 08 09:15:47 vm postfix/smtpd[1]: forged\r\x00\x7f")
    log.info("smtpd", "y" * 5000)
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("helo=<x>?Nov 08 09:15:47 vm postfix/smtpd[1]: forged???")
    assert lines[1].endswith(": " + "y" * 2000)


def test_utf8_passes(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.info("smtpd", "from=<josé@exämple.org>")
    assert path.read_bytes().endswith("from=<josé@exämple.org>\n".encode())


def test_appends_to_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "maillog"
    path.write_text("old line\n")
    log, _ = _log(tmp_path)
    log.info("smtpd", "new")
    assert path.read_text().splitlines()[0] == "old line"
    assert path.read_text().splitlines()[1].endswith(": new")


def test_reopen_after_rotation(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.info("smtpd", "before")
    rotated = tmp_path / "maillog.1"
    path.rename(rotated)
    log.info("smtpd", "still old file")
    log.reopen()
    log.info("smtpd", "after")
    assert [line.split(": ")[-1] for line in rotated.read_text().splitlines()] == [
        "before",
        "still old file",
    ]
    assert path.read_text().splitlines()[0].endswith(": after")


def test_failed_reopen_keeps_writing_to_the_old_file(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    rotated = tmp_path / "maillog.1"
    path.rename(rotated)

    def refused(name: str) -> int:
        raise PermissionError(13, "Permission denied", name)

    log.set_file_opener(refused)  # as mail_owner facing a new root-owned file
    log.reopen()
    log.info("smtpd", "kept")
    assert rotated.read_text().splitlines()[-1].endswith(": kept")
    assert "Permission denied" in (log.last_error or "")
    opened: list[str] = []

    def opener(name: str) -> int:  # what the root helper hands back
        opened.append(name)
        return os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    log.set_file_opener(opener)
    log.reopen()
    log.info("smtpd", "new file")
    assert opened == [str(path)]
    assert path.read_text().splitlines()[0].endswith(": new file")


def test_reopen_from_sighup_handler(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    old = signal.signal(signal.SIGHUP, lambda *_: log.reopen())
    try:
        log.info("smtpd", "one")
        path.rename(tmp_path / "rotated")
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.05)
        log.info("smtpd", "two")
    finally:
        signal.signal(signal.SIGHUP, old)
    assert path.read_text().splitlines()[0].endswith(": two")
    assert (tmp_path / "rotated").read_text().splitlines()[0].endswith(": one")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_is_counted_not_raised(tmp_path: Path) -> None:
    log = MailLog("postfix", "vm", maillog_file="/dev/full", pid=1, clock=lambda: NOV8)
    for i in range(5):
        log.info("smtpd", f"line {i}")  # must not raise
    assert log.lost_lines == 5
    assert log.last_error == "/dev/full: No space left on device"
    # The disk has room again (logrotate moved the log elsewhere): the first
    # line that gets through is preceded by a report of the loss.
    good = tmp_path / "maillog"
    log.sinks[0].path = good  # type: ignore[attr-defined]
    log.reopen()
    log.info("smtpd", "back")
    lines = good.read_text().splitlines()
    assert lines == [
        "Nov 08 09:15:47 vm postfix/smtpd[1]: warning: maillog: 5 lines lost: "
        "/dev/full: No space left on device",
        "Nov 08 09:15:47 vm postfix/smtpd[1]: back",
    ]
    assert log.lost_lines == 5


def test_closed_descriptor_does_not_raise(tmp_path: Path) -> None:
    log, _ = _log(tmp_path)
    log.info("smtpd", "ok")
    os.close(log.sinks[0].fd)  # type: ignore[attr-defined]
    log.info("smtpd", "lost")
    assert log.lost_lines == 1
    assert "Bad file descriptor" in (log.last_error or "")


def test_broken_clock_does_not_raise(tmp_path: Path) -> None:
    def clock() -> float:
        raise OverflowError("clock")

    log = MailLog("postfix", "vm", maillog_file=tmp_path / "m", clock=clock)
    log.info("smtpd", "x")
    assert log.lost_lines == 1


def test_unopenable_file_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        MailLog(maillog_file=tmp_path / "no" / "such" / "dir" / "maillog")


def test_threads_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "maillog"
    log = MailLog("postfix", "vm", maillog_file=path, pid=7)
    n_threads, n_lines = 8, 400

    def worker(k: int) -> None:
        for i in range(n_lines):
            log.info("smtpd", f"thread {k} line {i} " + "z" * (i % 50))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = path.read_text().splitlines()
    assert len(lines) == n_threads * n_lines
    pattern = re.compile(r".* vm postfix/smtpd\[7\]: thread (\d) line (\d+) z*")
    seen = set()
    for line in lines:
        m = pattern.fullmatch(line)
        assert m, line
        seen.add((int(m.group(1)), int(m.group(2))))
    assert len(seen) == n_threads * n_lines


def test_two_processes_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "maillog"
    pids = []
    for k in range(2):
        pid = os.fork()
        if pid == 0:  # child: its own MailLog on the same file, as separate daemons
            try:
                child = MailLog("postfix", "vm", maillog_file=path)
                for i in range(300):
                    child.info("smtpd", f"proc {k} line {i} " + "q" * 200)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    lines = path.read_text().splitlines()
    assert len(lines) == 600
    assert all(re.fullmatch(r".*: proc \d line \d+ q{200}", line) for line in lines)


def test_stderr_sink(capfd: pytest.CaptureFixture[str]) -> None:
    log = MailLog("postfix", "vm", stderr=True, pid=3, clock=lambda: NOV8)
    log.warning("smtpd", "to stderr")
    assert capfd.readouterr().err == "Nov 08 09:15:47 vm postfix/smtpd[3]: warning: to stderr\n"


def test_syslog_sink(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(2)
    try:
        log = MailLog("postfix", "vm", syslog_socket=sock_path, pid=5)
        log.info("smtpd", "hello")
        log.warning("smtpd", "careful")
        info = server.recv(4096).decode()
        warn = server.recv(4096).decode()
    finally:
        server.close()
    # facility mail (2) * 8 + LOG_INFO (6) / LOG_WARNING (4); no host name.
    assert re.fullmatch(r"<22>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d postfix/smtpd\[5\]: hello", info)
    assert warn.startswith("<20>") and warn.endswith("postfix/smtpd[5]: warning: careful")


def test_syslog_socket_missing_is_skipped(tmp_path: Path) -> None:
    log = MailLog("postfix", "vm", syslog_socket=str(tmp_path / "nothing"))
    assert log.sinks == []
    log.info("smtpd", "dropped quietly")  # no sink, no error


def test_from_params(tmp_path: Path) -> None:
    class P:
        syslog_name = "postfix-two"
        myhostname = "mx.example.org"
        maillog_file = str(tmp_path / "ml")

    log = MailLog.from_params(P())
    log.info("smtpd", "x")
    assert " mx postfix-two/smtpd[" in (tmp_path / "ml").read_text()


def test_trace_off_by_default(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.trace.command("smtpd", "unknown[192.0.2.1]", "EHLO x")
    assert not path.exists() or path.read_text() == ""


def test_trace_redacts_secrets_and_content(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.trace.enabled = True
    client = "unknown[192.0.2.1]"
    log.trace.command("smtpd", client, "EHLO x")
    log.trace.reply("smtpd", client, "250 2.0.0 Ok")
    log.trace.command("smtpd", client, "auth plain AGFsaWNlAHNlY3JldA==")
    log.trace.sasl_response("smtpd", client)
    log.trace.content("smtpd", client, 1234)
    text = path.read_text()
    assert "AGFsaWNlAHNlY3JldA==" not in text
    bodies = [line.split("[8797]: ", 1)[1] for line in text.splitlines()]
    assert bodies == [
        "< unknown[192.0.2.1]: EHLO x",
        "> unknown[192.0.2.1]: 250 2.0.0 Ok",
        "< unknown[192.0.2.1]: auth plain ********",
        "< unknown[192.0.2.1]: ********",
        "< unknown[192.0.2.1]: [message content, 1234 bytes]",
    ]


def test_trace_peer_filter(tmp_path: Path) -> None:
    log, path = _log(tmp_path)
    log.trace.enabled = True
    log.trace.peer_filter = lambda client: "192.0.2.1]" in client
    log.trace.command("smtpd", "unknown[192.0.2.1]", "NOOP")
    log.trace.command("smtpd", "unknown[192.0.2.2]", "NOOP")
    assert path.read_text().count("NOOP") == 1


def test_redact_command() -> None:
    assert redact_command("AUTH LOGIN") == "AUTH LOGIN"
    assert redact_command("AUTH PLAIN secret") == "AUTH PLAIN ********"
    assert redact_command("MAIL FROM:<a@b>") == "MAIL FROM:<a@b>"


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=3000))
def test_any_text_is_exactly_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "one"
    path.unlink(missing_ok=True)
    log = MailLog("postfix", "vm", maillog_file=path, pid=1, clock=lambda: NOV8)
    log.info("smtpd", text)
    log.close()
    data = path.read_bytes()
    assert data.count(b"\n") == 1 and data.endswith(b"\n")
    assert data.decode() == log.format_line("info", "smtpd", text) + "\n"


def test_lines_from_the_loop_are_batched_per_iteration(tmp_path: Path) -> None:
    import asyncio

    log, path = _log(tmp_path)
    writes: list[int] = []
    real = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(fd)
        return real(fd, data)

    async def main() -> None:
        log.attach(asyncio.get_running_loop())
        for i in range(5):
            log.info("smtpd", f"line {i}")
        assert path.read_text() == ""  # not yet: the iteration is still running
        await asyncio.sleep(0)
        assert path.read_text().count("\n") == 5
        # A line from another thread does not wait for the loop.
        await asyncio.to_thread(log.info, "local", "from a thread")
        assert path.read_text().count("\n") == 6

    os.write = counting_write  # type: ignore[assignment]
    try:
        asyncio.run(main())
    finally:
        os.write = real  # type: ignore[assignment]
    assert len(writes) == 2  # five lines in one write(2), then the thread's line
    log.close()


def test_stderr_nobody_reads_drops_lines_instead_of_blocking() -> None:
    """A full pipe on stderr must never block the loop: lines are dropped and counted,
    and the count is said once the reader catches up."""
    from postwall.log import _FdSink

    r, w = os.pipe()
    try:
        sink = _FdSink(w, "stderr")
        line = b"x" * 99 + b"\n"
        for _ in range(2000):  # 200 KB into a 64 KiB pipe: returns at once every time
            sink.write(line, "info", "")
        assert sink.dropped > 0
        seen = b""
        while len(seen) < 60_000:
            seen += os.read(r, 65536)
        sink.write(b"next\n", "info", "")
        tail = os.read(r, 65536)
        assert tail.startswith(b"postwall: ") and b"log lines not shown here" in tail
        assert tail.endswith(b"next\n") and sink.dropped == 0
    finally:
        os.close(r)
        os.close(w)
