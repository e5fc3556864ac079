"""Command delivery with a running postwall: mailbox_command and `|command` aliases, as root
(mail_owner = root: a forked child becomes the user) and after the privilege drop (through
the root delivery helper, which runs only commands its own reading of main.cf and the alias
tables names: a request naming another command is refused)."""

from __future__ import annotations

import ast
import os
import pwd
import shutil
import smtplib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peers


def _free_privileged_port() -> int:
    for port in range(900, 1024):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free privileged port")


@pytest.fixture
def work() -> Iterator[Path]:
    """A directory the unprivileged users can reach (tmp_path is root-only)."""
    peers.require_root()
    peers.WORK_ROOT.mkdir(parents=True, exist_ok=True)
    base = peers.WORK_ROOT / f"command-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    base.chmod(0o777)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _recorder(work: Path) -> Path:
    script = work / "record.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'out="{work}/out.$RECIPIENT"\n'
        '{ echo "ARGV: $*"; echo "UID: $(id -u) GID: $(id -g) GROUPS: $(id -G)";'
        ' echo "EXT: ${EXTENSION-unset} HOME: ${HOME-unset} USER: $USER"; cat; } > "$out"\n'
    )
    script.chmod(0o755)
    return script


def _wait_out(work: Path, rcpt: str) -> list[str]:
    path = work / f"out.{rcpt}"
    peers.wait_for(lambda: path.exists() and b"\nbody line" in path.read_bytes(), 30, str(path))
    return path.read_text().split("\n")


def _send(port: int, rcpts: list[str]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        for rcpt in rcpts:
            s.sendmail(
                "alice@example.org",
                [rcpt],
                peers.simple_message("cmd", "alice@example.org", rcpt, "body line\r\n"),
            )


def test_mailbox_command_and_alias_commands(
    work: Path, postwall_factory: Callable[..., peers.PostwallServer]
) -> None:
    rec = _recorder(work)
    aliases = work / "aliases"
    aliases.write_text(
        f'list: "|{rec} list, post", nobody\n'
        "fail: \"|/bin/sh -c 'echo no such list; exit 67'\"\n"
        "later: \"|/bin/sh -c 'exit 75'\"\n"
        f"archive: {work}/archive, /dev/null\n"
    )
    maps = work / "commands"
    maps.write_text(f"root {rec} from-maps\n")
    server = postwall_factory(
        params={
            "mydestination": "postwall.test, localhost",
            "mailbox_command_maps": f"texthash:{maps}",
            "alias_maps": f"hash:{aliases}",
            "mailbox_command": f'{rec} -a "$EXTENSION"',
            "recipient_delimiter": "+",
            "queue_directory": str(work / "queue"),
        }
    )
    rcpts = ["nobody+ext@localhost", "list@localhost", "fail@localhost", "later@localhost"]
    rcpts += ["archive@localhost", "root@localhost"]
    _send(server.port, rcpts)
    nobody = pwd.getpwnam("nobody")
    lines = _wait_out(work, "nobody+ext@localhost")
    assert lines[:3] == [
        "ARGV: -a ext",
        f"UID: {nobody.pw_uid} GID: {nobody.pw_gid} GROUPS: {nobody.pw_gid}",
        f"EXT: ext HOME: {nobody.pw_dir} USER: nobody",
    ]
    assert lines[3].startswith("From alice@example.org  ")
    # mailbox_command_maps first (by user name); root's command runs as default_privs.
    assert _wait_out(work, "root@localhost")[:3] == [
        "ARGV: from-maps",
        f"UID: {nobody.pw_uid} GID: {nobody.pw_gid} GROUPS: {nobody.pw_gid}",
        "EXT: unset HOME: /root USER: root",
    ]
    assert lines[4:7] == [
        "Return-Path: <alice@example.org>",
        "X-Original-To: nobody+ext@localhost",
        "Delivered-To: nobody+ext@localhost",
    ]
    # The alias: its command as default_privs (the alias file is root's), without HOME;
    # its user "nobody" goes on to mailbox_command.
    lines = _wait_out(work, "list@localhost")
    assert lines[:3] == [
        "ARGV: list, post",
        f"UID: {nobody.pw_uid} GID: {nobody.pw_gid} GROUPS: {nobody.pw_gid}",
        "EXT: unset HOME: unset USER: list",
    ]
    assert "Delivered-To: list@localhost" in lines
    _wait_out(work, "nobody@postwall.test")
    server.wait_log(
        rf"to=<list@localhost>, relay=local, .*dsn=2.0.0, status=sent \(delivered to command: "
        rf"{rec} list, post\)"
    )
    server.wait_log(
        r"to=<fail@localhost>, relay=local, .*dsn=5.1.1, status=bounced "
        r"\(user unknown. Command output: no such list \)"
    )
    server.wait_log(
        r"to=<later@localhost>, relay=local, .*dsn=4.3.0, status=deferred \(temporary failure\)"
    )
    server.wait_log(r"to=<archive@localhost>, relay=local, .*status=sent \(delivered to file: ")
    archive = (work / "archive").read_bytes()
    st = (work / "archive").stat()
    assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, 0o600)
    assert archive.startswith(b"From alice@example.org  ") and archive.endswith(b"body line\n\n")
    assert b"\nDelivered-To: archive@localhost\n" in archive


def test_commands_after_the_drop(work: Path) -> None:
    """mail_owner = postfix: the root helper runs main.cf's mailbox_command (or the
    user's in mailbox_command_maps) as the recipient, root's and the alias command as
    default_privs."""
    rec = _recorder(work)
    aliases = work / "aliases"
    aliases.write_text(f'list: "|{rec} from-alias"\n')
    maps = work / "commands"
    maps.write_text(f"root {rec} from-maps\n")
    server = peers.PostwallServer(
        config_dir=work / "conf",
        port=_free_privileged_port(),
        params={
            "mail_owner": "postfix",
            "mydestination": "localhost",
            "alias_maps": f"hash:{aliases}",
            "mailbox_command": f"{rec} from-main-cf",
            "mailbox_command_maps": f"texthash:{maps}",
            "queue_directory": str(work / "queue"),
        },
    )
    try:
        server.start()
        server.wait_log(r"dropped privileges to mail_owner postfix")
        _send(server.port, ["nobody@localhost", "list@localhost", "root@localhost"])
        nobody = pwd.getpwnam("nobody")
        ids = f"UID: {nobody.pw_uid} GID: {nobody.pw_gid} GROUPS: {nobody.pw_gid}"
        assert _wait_out(work, "nobody@localhost")[:2] == ["ARGV: from-main-cf", ids]
        assert _wait_out(work, "list@localhost")[:2] == ["ARGV: from-alias", ids]
        assert _wait_out(work, "root@localhost")[:2] == ["ARGV: from-maps", ids]
        server.wait_log(r"to=<list@localhost>, relay=local, .*status=sent \(delivered to command")
    finally:
        server.cleanup()


class _Envelope:
    sender = "alice@example.org"
    client_name = client_addr = helo = protocol = sasl_username = ""


class _Message:
    envelope = _Envelope()

    def iter_content(self, chunk_size: int = 65536) -> Iterator[bytes]:
        yield b"Subject: x\r\n\r\nbody line\r\n"


def test_root_helper_runs_only_configured_commands(work: Path) -> None:
    """A request from the unprivileged side that names a command the alias tables do not
    list under that alias is refused; nothing runs."""
    from postwall.delivery.local import DeliveryHelper

    rec = _recorder(work)
    pwned = work / "pwned"
    aliases = work / "aliases"
    aliases.write_text(f'list: "|{rec} listed"\n')
    conf = work / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text(f"alias_maps = hash:{aliases}\nqueue_directory = {work}\n")
    (conf / "master.cf").write_text("smtp inet n - n - - smtpd\n")
    helper = DeliveryHelper.start(
        home_mailbox="Maildir/",
        mail_spool_directory="",
        recipient_delimiter="",
        config_dir=str(conf),
    )

    def unprivileged_side() -> str:  # as after the drop
        result = []
        for key, command in (
            ("list", f"|touch {pwned}"),  # not what alias_maps lists
            ("list", str(pwned)),  # nor is this file
            ("other", f"|{rec} listed"),  # listed, but under another alias
            ("list", f"|{rec} listed"),
        ):
            r = helper.deliver_alias(_Message(), key, command, f"{key}@localhost", "")
            result.append(f"{r.status} {r.dsn} {r.text}")
        return "|".join(result)

    answer = ast.literal_eval(peers.run_as_nobody(unprivileged_side))
    helper.stop()
    assert answer.split("|") == [
        f"deferred 4.3.0 alias list: command not listed in alias_maps: touch {pwned}",
        f"deferred 4.3.0 alias list: file not listed in alias_maps: {pwned}",
        f"deferred 4.3.0 alias other: command not listed in alias_maps: {rec} listed",
        f"sent 2.0.0 delivered to command: {rec} listed",
    ]
    assert not pwned.exists()
    assert _wait_out(work, "list@localhost")[0] == "ARGV: listed"
