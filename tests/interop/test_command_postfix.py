"""Command delivery against a private Postfix 3.7 with the same main.cf settings and alias
file: mailbox_command (with an extension, and for root) and `|command` aliases run a
recording script; what each command saw (argv, uid and groups, working directory,
environment, standard input) and the `status=` of each delivery must be the same, once
the host-dependent parts are set aside (the From_ date, Received, queue directory,
MAIL_CONFIG).  A `/file` alias (mailbox format) and /dev/null likewise."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import smtplib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop

MESSAGE = (
    b"From: alice@example.org\r\nTo: someone@localhost\r\nSubject: command check\r\n"
    b"Message-ID: <command-check@example.org>\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
    b"\r\nFrom the first line\r\nsecond\tline\r\n"
)
RECIPIENTS = [
    "nobody+ext@localhost",  # mailbox_command, EXTENSION set
    "root@localhost",  # mailbox_command for root: default_privs
    "rec@localhost",  # |command alias
    "ex67@localhost",
    "ex75@localhost",
    "ex1@localhost",
    "exdsn@localhost",
    "nx@localhost",
    "sig@localhost",  # the command dies of a signal
    "file@localhost",  # /file alias, mailbox format
    "devnull@localhost",
    "inc@localhost",  # :include: of an address
    "incmissing@localhost",
    "inccmd@localhost",  # a command in an include file: not allowed by default
]


def _setup(work: Path) -> tuple[Path, Path]:
    work.mkdir(parents=True)
    work.chmod(0o777)
    rec = work / "record.sh"
    rec.write_text(
        "#!/bin/sh\n"
        f"out={work}/out.$RECIPIENT\n"
        '{ echo "ARGV: $0 $*"; echo "ID: $(id)"; echo "PWD: $(pwd)"; env | sort;'
        ' echo "--STDIN--"; cat; } > "$out" 2>&1\n'
    )
    rec.chmod(0o755)
    aliases = work / "aliases"
    aliases.write_text(
        f'rec: "|{rec} aliasarg"\n'
        "ex67: \"|/bin/sh -c 'echo some output; exit 67'\"\n"
        "ex75: \"|/bin/sh -c 'exit 75'\"\n"
        "ex1: \"|/bin/sh -c 'echo oops >&2; exit 1'\"\n"
        "exdsn: \"|/bin/sh -c 'echo 4.7.1 go away; exit 1'\"\n"
        'nx: "|/nonexistent/cmd"\n'
        f"sig: |{work}/crash.sh\n"
        f"file: {work}/file.mbox\n"
        "devnull: /dev/null\n"
        f"inc: :include:{work}/list\n"
        f"incmissing: :include:{work}/missing\n"
        f"inccmd: :include:{work}/cmdlist\n"
    )
    (work / "list").write_text("# the list\nnobody@localhost\n")
    (work / "cmdlist").write_text("|/bin/true\n")
    crash = work / "crash.sh"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crash.chmod(0o755)
    subprocess.run(["postalias", str(aliases)], check=True, timeout=30)
    return rec, aliases


def _params(rec: Path, aliases: Path) -> dict[str, str]:
    return {
        "mydestination": "localhost",
        "alias_maps": f"hash:{aliases}",
        "alias_database": f"hash:{aliases}",
        "mailbox_command": f'{rec} -a "$EXTENSION"',
        "recipient_delimiter": "+",
        "home_mailbox": "",
    }


def _send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example")
        for rcpt in RECIPIENTS:
            s.sendmail("alice@example.org", [rcpt], MESSAGE)


def _statuses(log: str) -> dict[str, tuple[str, str]]:
    """recipient -> (dsn, status and reason) of its first delivery attempt."""
    out: dict[str, tuple[str, str]] = {}
    for m in re.finditer(r"to=<([^>]+)>, relay=local, .*?dsn=(\S+), status=(.*)$", log, re.M):
        out.setdefault(m.group(1), (m.group(2), m.group(3)))
    return out


def _recorded(work: Path, queue: str, config: str) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for path in sorted([*work.glob("out.*"), work / "file.mbox"]):
        lines = []
        skipping = False
        for line in path.read_text().split("\n"):
            if line.startswith("Received:"):
                skipping = True
                continue
            if skipping and line[:1] in (" ", "\t"):
                continue
            skipping = False
            line = re.sub(r"^(From \S+  ).*", r"\1DATE", line)
            line = line.replace(queue, "QUEUE").replace(config, "CONFIG")
            lines.append(line)
        st = path.stat()
        seen[path.name] = [f"{st.st_uid}:{st.st_gid} {st.st_mode:o}", *lines]
        path.unlink()
    return seen


def test_command_delivery_matches_postfix(
    postwall_factory: Callable[..., peers.PostwallServer],
) -> None:
    peers.require_root()
    peers.require_tool("postmulti")
    peers.require_tool("postalias")
    work = peers.WORK_ROOT / f"cmd-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    rec, aliases = _setup(work)
    try:
        postfix = peers.PostfixInstance.create(
            {**_params(rec, aliases), "command_time_limit": "20s"}, port=peers.free_port()
        )
        try:
            postfix.start()
            assert postfix.port is not None
            _send(postfix.port)
            for rcpt in RECIPIENTS:
                postfix.wait_log(rf"to=<{re.escape(rcpt)}>, relay=local, .*status=")
            # inc@ is "forwarded as" a new message: wait until that one's command is done
            # too, or its recording may still be half written.
            postfix.wait_log(r"to=<nobody@localhost>, orig_to=<inc@localhost>, .*status=")
            theirs_log = _statuses(postfix.log_text())
            theirs = _recorded(work, str(postfix.queue_dir), str(postfix.config_dir))
        finally:
            postfix.destroy()
        queue = work / "pw-queue"
        postwall = postwall_factory(params={**_params(rec, aliases), "queue_directory": str(queue)})
        assert postwall.port is not None
        _send(postwall.port)
        for rcpt in RECIPIENTS:
            postwall.wait_log(rf"to=<{re.escape(rcpt)}>, relay=local, .*status=")
        ours_log = _statuses(postwall.log_text())
        ours = _recorded(work, str(queue), str(postwall.config_dir))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert sorted(theirs) == [
        "file.mbox",
        "out.nobody+ext@localhost",
        "out.nobody@localhost",
        "out.rec@localhost",
        "out.root@localhost",
    ]
    # Postfix re-submits mail that an alias (here through an include file) forwards to
    # another local address, with a Delivered-To: naming the alias; postwall delivers the
    # expansion directly (a known difference, docs/status.md).
    theirs["out.nobody@localhost"].remove("Delivered-To: inc@localhost")
    assert theirs_log.pop("inc@localhost")[1].startswith("sent (forwarded as ")
    assert ours_log.pop("inc@localhost")[1].startswith("sent (delivered to command: ")
    assert ours == theirs
    assert ours_log == theirs_log


def test_procmail_as_mailbox_command(
    postwall_factory: Callable[..., peers.PostwallServer],
) -> None:
    """A real procmail as Debian administrators configure it (postconf(5)'s example
    `procmail -a "$EXTENSION"`): it gets the extension as $1 and files the message, From_
    line included, where its rc file says."""
    procmail = peers.require_tool("procmail")
    peers.require_root()
    work = peers.WORK_ROOT / f"procmail-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "box").mkdir(parents=True)
    work.chmod(0o755)
    (work / "box").chmod(0o777)
    rc = work / "procmailrc"
    rc.write_text(f"EXT=$1\n:0:\n{work}/box/ext-$EXT\n")
    rc.chmod(0o644)
    try:
        server = postwall_factory(
            params={
                "mydestination": "localhost",
                "recipient_delimiter": "+",
                "mailbox_command": f'{procmail} -a "$EXTENSION" {rc}',
                "queue_directory": str(work / "queue"),
            }
        )
        assert server.port is not None
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            s.sendmail("alice@example.org", ["nobody+lists@localhost"], MESSAGE)
        server.wait_log(
            r"to=<nobody\+lists@localhost>, relay=local, .*dsn=2.0.0, status=sent "
            rf"\(delivered to command: {re.escape(procmail)} -a \"\$EXTENSION\" "
        )
        box = work / "box" / "ext-lists"
        data = box.read_bytes()
        assert data.startswith(b"From alice@example.org  ")
        head = b"\nX-Original-To: nobody+lists@localhost\nDelivered-To: nobody+lists@localhost\n"
        assert head in data
        assert b"\n>From the first line\n" in data  # procmail quotes, as a mailbox wants
        assert box.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    finally:
        shutil.rmtree(work, ignore_errors=True)
