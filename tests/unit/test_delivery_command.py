"""Command delivery (delivery/command.py): local(8)'s environment, command line, standard
input and exit-status mapping, with real processes.  The wording of each outcome is what a
private Postfix 3.7 logged for the same commands (tests/interop/test_command_postfix.py
compares them live)."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import sys
from pathlib import Path

import pytest

from postwall.delivery import DeliveryResult
from postwall.delivery.command import (
    CommandSettings,
    CommandTarget,
    alias_items,
    command_argv,
    command_environment,
    exec_directory,
    exit_result,
    run_command,
    split_recipient,
)
from postwall.delivery.local import _in_child

ME = pwd.getpwuid(os.geteuid())


def _target(command: str, **kw: object) -> CommandTarget:
    base: dict[str, object] = dict(
        command=command,
        uid=os.geteuid(),
        gid=os.getegid(),
        user="bob",
        recipient="Bob+Lists@Example.ORG",
        sender="alice@example.org",
        original="bob+lists@example.org",
        delivered="Bob+Lists@Example.ORG",
        home="/home/bob",
        shell="/bin/sh",
        client=(("CLIENT_ADDRESS", "127.0.0.1"), ("CLIENT_HELO", "[127.0.0.1]")),
    )
    base.update(kw)
    return CommandTarget(**base)  # type: ignore[arg-type]


def _run(target: CommandTarget, settings: CommandSettings, content: bytes) -> DeliveryResult:
    # run_command sets RLIMIT_FSIZE on its caller: keep that in a child, as local.py does.
    return _in_child(lambda: run_command(target, settings, iter([content])), target.user)


def test_split_recipient_as_local() -> None:
    assert split_recipient("Bob+Lists@Example.ORG", "+") == (
        "bob+lists",
        "Example.ORG",
        "bob",
        "lists",
    )
    assert split_recipient("bob", "+-") == ("bob", None, "bob", None)
    assert split_recipient("a-b+c@x", "+-") == ("a-b+c", "x", "a", "b+c")
    assert split_recipient("+x@y", "+") == ("+x", "y", "+x", None)  # no empty user


def test_environment_names_values_and_censoring() -> None:
    settings = CommandSettings(recipient_delimiter="+", config_directory="/etc/pw")
    env = command_environment(
        _target("x"), settings, parent={"TZ": "UTC", "LANG": "de_DE", "SECRET": "1"}
    )
    assert env == {
        "TZ": "UTC",
        "MAIL_CONFIG": "/etc/pw",
        "LANG": "C",  # import_environment's LANG=C wins, as Postfix's master sets it
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/bob",
        "LOGNAME": "bob",
        "USER": "bob",
        "SENDER": "alice@example.org",
        "RECIPIENT": "Bob+Lists@Example.ORG",
        "LOCAL": "bob+lists",
        "SHELL": "/bin/sh",
        "DOMAIN": "Example.ORG",
        "EXTENSION": "lists",
        "ORIGINAL_RECIPIENT": "bob+lists@example.org",
        "CLIENT_ADDRESS": "127.0.0.1",
        "CLIENT_HELO": "_127.0.0.1_",  # what Postfix exported for [127.0.0.1]
    }
    bare = command_environment(
        _target("x", home=None, shell=None, original="", sender='a"b;`rm`@x', client=()),
        CommandSettings(),
        parent={},
    )
    assert "HOME" not in bare and "SHELL" not in bare and "EXTENSION" not in bare
    assert "ORIGINAL_RECIPIENT" not in bare and "TZ" not in bare
    assert bare["SENDER"] == "a_b__rm_@x"


def test_command_line_shell_rule() -> None:
    assert command_argv("/usr/bin/procmail -t", "") == ["/usr/bin/procmail", "-t"]
    assert command_argv('/usr/bin/procmail -a "$EXTENSION"', "") == [
        "/bin/sh",
        "-c",
        '/usr/bin/procmail -a "$EXTENSION"',
    ]
    assert command_argv("cat > /tmp/x", "") == ["/bin/sh", "-c", "cat > /tmp/x"]
    assert command_argv("/bin/true", "/bin/bash -c") == ["/bin/bash", "-c", "/bin/true"]


def test_execution_directory_expansion() -> None:
    settings = CommandSettings(
        recipient_delimiter="+", exec_directory="/srv/$user/${extension?ext/$extension}"
    )
    assert exec_directory(_target("x"), settings) == "/srv/bob/ext/lists"
    settings = CommandSettings(exec_directory="/srv/${extension:none}/$home")
    assert exec_directory(_target("x", recipient="bob@x"), settings) == "/srv/none//home/bob"


def test_exit_status_mapping() -> None:
    cmd = "/bin/x"
    assert exit_result(cmd, 0, b"") == DeliveryResult(
        "sent", "2.0.0", "delivered to command: /bin/x"
    )
    assert exit_result(cmd, 67 << 8, b"some output\n") == DeliveryResult(
        "bounced", "5.1.1", "user unknown. Command output: some output "
    )
    assert exit_result(cmd, 75 << 8, b"") == DeliveryResult(
        "deferred", "4.3.0", "temporary failure"
    )
    assert exit_result(cmd, 73 << 8, b"").dsn == "5.2.0"
    assert exit_result(cmd, 1 << 8, b"oops\n") == DeliveryResult(
        "bounced", "5.3.0", 'Command died with status 1: "/bin/x". Command output: oops '
    )
    assert exit_result(cmd, 1 << 8, b"4.7.1 go away\n") == DeliveryResult(
        "deferred", "4.7.1", "go away "
    )
    assert exit_result(cmd, 75 << 8, b"5.7.9 no way\n") == DeliveryResult(
        "bounced", "5.7.9", "no way "
    )
    assert exit_result(cmd, signal.SIGSEGV, b"") == DeliveryResult(
        "deferred", "4.3.0", 'Command died with signal 11: "/bin/x"'
    )
    assert exit_result(cmd, None, b"", timed_out=True) == DeliveryResult(
        "bounced", "5.3.0", 'Command time limit exceeded: "/bin/x"'
    )
    assert exit_result(cmd, 1 << 8, b"a\tb\x01\xff" + b"z" * 5000).text.endswith(
        ". Command output: a b__" + "z" * 4091
    )


def test_alias_items() -> None:
    assert alias_items('"|/usr/bin/x a, b", bob ,  "/var/log/x y", :include:/l') == [
        "|/usr/bin/x a, b",
        "bob",
        "/var/log/x y",
        ":include:/l",
    ]
    assert alias_items('"foo bar"@example.org') == ['"foo bar"@example.org']


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    script = tmp_path / "record"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "out = os.environ['OUT']\n"
        "data = sys.stdin.buffer.read()\n"
        "open(out, 'wb').write(repr((sys.argv[1:], os.getcwd(), dict(os.environ))).encode()"
        " + b'\\n' + data)\n"
        "sys.stdout.write(os.environ.get('SAY', ''))\n"
        "sys.exit(int(os.environ.get('CODE', '0')))\n"
    )
    script.chmod(0o755)
    return script


def test_run_command_stdin_env_and_cwd(recorder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = CommandSettings(
        queue_directory=str(tmp_path), export_environment=("OUT", "CODE", "SAY")
    )
    parent_import = ("OUT", "CODE", "SAY")
    settings = CommandSettings(**{**settings.as_dict(), "import_environment": parent_import})
    os.environ.update(OUT=str(out), CODE="0", SAY="")
    try:
        result = _run(
            _target(f"{recorder} one two"),
            settings,
            b"Subject: x\r\n\r\nFrom me\r\nlast line without newline",
        )
        assert result == DeliveryResult(
            "sent", "2.0.0", f"delivered to command: {recorder} one two"
        )
        head, _, body = out.read_bytes().partition(b"\n")
        argv, cwd, env = eval(head)
        assert argv == ["one", "two"] and cwd == str(tmp_path)
        assert env["USER"] == "bob" and env["PATH"] == "/usr/bin:/bin"
        lines = body.split(b"\n")
        assert lines[0].startswith(b"From alice@example.org  ")
        assert lines[1:] == [
            b"Return-Path: <alice@example.org>",
            b"X-Original-To: bob+lists@example.org",
            b"Delivered-To: Bob+Lists@Example.ORG",
            b"Subject: x",
            b"",
            b"From me",  # no >From quoting for commands
            b"last line without newline",
            b"",  # a final newline, and no empty line after it
        ]
        os.environ.update(CODE="67", SAY="no such list\n")
        result = _run(_target(f"{recorder}"), settings, b"x\r\n")
        assert result == DeliveryResult(
            "bounced", "5.1.1", "user unknown. Command output: no such list "
        )
    finally:
        for name in ("OUT", "CODE", "SAY"):
            os.environ.pop(name, None)


def test_time_limit_kills_the_process_group(tmp_path: Path) -> None:
    settings = CommandSettings(queue_directory=str(tmp_path), time_limit=1)
    result = _run(_target("sleep 30 & sleep 30; echo never"), settings, b"x\r\n")
    assert result == DeliveryResult(
        "bounced", "5.3.0", 'Command time limit exceeded: "sleep 30 & sleep 30; echo never"'
    )


def test_time_limit_holds_after_the_command_closes_its_output(tmp_path: Path) -> None:
    settings = CommandSettings(queue_directory=str(tmp_path), time_limit=1)
    result = _run(_target("exec >/dev/null 2>&1; sleep 30"), settings, b"x\r\n")
    assert result.text == 'Command time limit exceeded: "exec >/dev/null 2>&1; sleep 30"'


def test_missing_command_and_signal(tmp_path: Path) -> None:
    settings = CommandSettings(queue_directory=str(tmp_path))
    result = _run(_target("/nonexistent/cmd"), settings, b"x\r\n")
    assert result == DeliveryResult(
        "deferred",
        "4.3.0",
        "temporary failure. Command output: local: fatal: execvp /nonexistent/cmd: "
        "No such file or directory ",
    )
    result = _run(_target("/bin/sh -c 'kill -9 $$'"), settings, b"x\r\n")
    assert result.status == "bounced" and result.text.startswith("Command died with status 137")
    result = _run(_target("/bin/sleep 0"), settings, b"y" * 1_000_000)  # never reads: EPIPE
    assert result.status == "sent"
    script = tmp_path / "crash"
    script.write_text("#!/bin/sh\nkill -SEGV $$\n")
    script.chmod(0o755)
    result = _run(_target(str(script)), settings, b"x\r\n")
    assert result == DeliveryResult("deferred", "4.3.0", f'Command died with signal 11: "{script}"')


def test_missing_execution_directory_defers(tmp_path: Path) -> None:
    settings = CommandSettings(exec_directory=f"{tmp_path}/nonexistent/$user")
    result = _run(_target("/bin/true"), settings, b"x\r\n")
    assert result == DeliveryResult("deferred", "4.3.0", "temporary failure")  # as Postfix
    settings = CommandSettings(exec_directory=f"{tmp_path}/${{user")
    result = _run(_target("/bin/true"), settings, b"x\r\n")
    assert result == DeliveryResult("deferred", "4.3.5", "mail system configuration error")


def test_file_size_limit_applies_to_what_the_command_writes(tmp_path: Path) -> None:
    settings = CommandSettings(queue_directory=str(tmp_path), size_limit=1000)
    result = _run(_target(f"head -c 5000 /dev/zero > {tmp_path}/big"), settings, b"x\r\n")
    assert result.status == "bounced"  # SIGXFSZ: the shell reports 153
    assert (tmp_path / "big").stat().st_size == 1000


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_runs_as_the_target_user_with_only_its_primary_group(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    out = Path("/tmp") / f"postwall-cmd-{os.getpid()}"
    out.unlink(missing_ok=True)
    try:
        settings = CommandSettings(queue_directory="/")
        job = _target(f"id > {out}", uid=nobody.pw_uid, gid=nobody.pw_gid, user="nobody", home="/")
        assert _run(job, settings, b"x\r\n").status == "sent"
        assert out.stat().st_uid == nobody.pw_uid
        assert (
            out.read_text().strip() == "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
        )
        assert not out.stat().st_mode & stat.S_IWOTH
    finally:
        out.unlink(missing_ok=True)
