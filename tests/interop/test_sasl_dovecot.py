"""SMTP AUTH through a real Dovecot (Debian's dovecot-core), compared with a real Postfix.

One Dovecot auth server (passwd-file passdb) serves both a postwall and a private Postfix
3.7 instance, each with smtpd_sasl_type = dovecot on its socket.  The same AUTH dialogue
(success, wrong passwords, bad mechanism, bad base64, cancel, "=", already authenticated,
SCRAM-SHA-256) is played against both: every reply must be the same, and so must the
`warning: ... SASL ... authentication failed: ...` lines, the `client=... sasl_method=...`
line and the `disconnect ... auth=N/M` counts.  fail2ban's stock postfix filter (mode
auth) then bans on postwall's log exactly as many times as there were PLAIN/LOGIN failures.
"""

from __future__ import annotations

import base64
import re
import shutil
import smtplib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peers

PASSWORD = "dovecot-secret"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[peers.DovecotAuthServer]:
    peers.require_tool("dovecot")
    server = peers.DovecotAuthServer({"bob": PASSWORD}).start()
    try:
        yield server
    finally:
        server.stop()


def _params(socket: Path) -> dict[str, str]:
    return {
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": str(socket),
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
        "mynetworks": "192.0.2.0/24",
        "smtpd_error_sleep_time": "0",
        "smtpd_sasl_authenticated_header": "yes",
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dialogue(port: int) -> list[tuple[int, bytes]]:
    """The AUTH dialogue; returns every reply (code, text) in order."""
    out: list[tuple[int, bytes]] = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        out.append((250, b"AUTH " + s.esmtp_features["auth"].strip().encode()))
        for line in (
            "AUTH PLAIN " + _b64(b"\0bob\0wrong"),
            "AUTH LOGIN",
            _b64(b"bob"),
            _b64(b"wrong"),
            "AUTH FOO",
            "AUTH PLAIN !!!",
            "AUTH PLAIN",
            "not base64",
            "AUTH LOGIN",
            "*",
            "AUTH PLAIN =",
            "AUTH PLAIN a b c",
        ):
            out.append(s.docmd(line))
        scram = peers.ScramClient("bob", PASSWORD)
        code, challenge = s.docmd("AUTH SCRAM-SHA-256", scram.first())
        out.append((code, b"<server-first>" if code == 334 else challenge))
        code, final = s.docmd(scram.final(challenge.decode()))
        assert code == 334 and scram.check_server(final.decode()), (code, final)
        out.append(s.docmd(""))
        out.append(s.docmd("AUTH PLAIN " + _b64(b"\0bob\0" + PASSWORD.encode())))
        out.append(s.docmd("MAIL FROM:<bob@example.test> AUTH=<bob@example.test>"))
        out.append(s.docmd("RCPT TO:<someone@example.com>"))
        out.append(s.docmd("RSET"))
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.login("bob", PASSWORD)[0] == 235  # smtplib's own choice of mechanism
        out.append(s.docmd("MAIL FROM:<bob@example.test>"))
        out.append(s.docmd("RCPT TO:<someone@example.com>"))
    return out


def _sasl_log_lines(text: str) -> list[str]:
    keep = re.compile(r"SASL \S+ authentication|: client=|disconnect from")
    lines = [line.split("]: ", 1)[1] for line in text.splitlines() if keep.search(line)]
    return [re.sub(r"^[0-9A-F]{6,}: ", "QUEUEID: ", line) for line in lines]


def test_postwall_and_postfix_agree_on_dovecot_auth(
    dovecot: peers.DovecotAuthServer,
    postwall_factory: Callable[..., peers.PostwallServer],
) -> None:
    peers.require_root()
    postfix = peers.PostfixInstance.create(_params(dovecot.socket), port=peers.free_port())
    try:
        postfix.start()
        postwall = postwall_factory(params=_params(dovecot.socket))
        theirs = dialogue(postfix.port)  # type: ignore[arg-type]
        ours = dialogue(postwall.port)
        assert ours == theirs
        # What the dialogue must show, so that agreeing on nothing cannot pass.
        fail = b"5.7.8 Error: authentication failed: "
        assert theirs[:3] == [
            (250, b"AUTH PLAIN LOGIN SCRAM-SHA-256 CRAM-MD5"),
            (535, fail + b"(reason unavailable)"),
            (334, b"VXNlcm5hbWU6"),
        ]
        assert (535, fail + b"Invalid authentication mechanism") in theirs
        assert (501, b"5.7.0 Authentication aborted") in theirs
        assert theirs[-7:] == [
            (235, b"2.7.0 Authentication successful"),  # SCRAM-SHA-256
            (503, b"5.5.1 Error: already authenticated"),
            (250, b"2.1.0 Ok"),
            (250, b"2.1.5 Ok"),  # relayed: permit_sasl_authenticated
            (250, b"2.0.0 Ok"),
            (250, b"2.1.0 Ok"),
            (250, b"2.1.5 Ok"),
        ]
        pattern = r"disconnect from localhost\[127\.0\.0\.1\].*commands=\S+\n(?s:.*)disconnect"
        postfix.wait_log(pattern)
        postwall.wait_log(pattern)
        their_log = _sasl_log_lines(postfix.log_text())
        our_log = _sasl_log_lines(postwall.log_text())
        assert our_log == their_log
        assert (
            "warning: localhost[127.0.0.1]: SASL LOGIN authentication failed: "
            "(reason unavailable), sasl_username=bob"
        ) in their_log
        assert (
            "QUEUEID: client=localhost[127.0.0.1], sasl_method=SCRAM-SHA-256, sasl_username=bob, "
            "sasl_sender=<bob@example.test>"
        ) in their_log
    finally:
        postfix.destroy()
    _fail2ban_bans(postwall.log_text(), our_log)


def _fail2ban_bans(log_text: str, sasl_lines: list[str]) -> None:
    tool = shutil.which("fail2ban-regex")
    if tool is None:
        pytest.skip("fail2ban-regex missing (apt-get install fail2ban)")
    expected = sum(
        1
        for line in sasl_lines
        if re.search(r"SASL (PLAIN|LOGIN) authentication failed:", line)
        and "Invalid authentication mechanism" not in line
    )
    assert expected >= 4
    log = Path(peers.WORK_ROOT) / f"sasl-fail2ban-{id(log_text)}.log"
    log.write_text(log_text)
    try:
        res = subprocess.run(
            [tool, "--raw", "-o", "ip", str(log), "postfix[mode=auth]"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    finally:
        log.unlink()
    assert res.stdout.split() == ["127.0.0.1"] * expected


def test_dovecot_unreachable_means_no_auth(
    postwall_factory: Callable[..., peers.PostwallServer], tmp_path: Path
) -> None:
    params = _params(tmp_path / "no-such-socket")
    server = postwall_factory(params=params)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        assert s.docmd("AUTH PLAIN") == (503, b"5.5.1 Error: authentication not enabled")
        s.mail("bob@example.test")
        assert s.rcpt("someone@example.com")[0] == 554
    server.wait_log(
        rf"warning: SASL: Connect to Dovecot auth socket '{tmp_path}/no-such-socket' failed: "
        r"No such file or directory$"
    )


def test_dovecot_path_relative_to_queue_directory(
    dovecot: peers.DovecotAuthServer, postwall_factory: Callable[..., peers.PostwallServer]
) -> None:
    params = _params(dovecot.socket)
    # Postfix resolves smtpd_sasl_path = private/auth against queue_directory.
    params["queue_directory"] = str(dovecot.directory)
    params["smtpd_sasl_path"] = "auth"
    server = postwall_factory(params=params)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.login("bob", PASSWORD)[0] == 235


def _unix_sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if fd.readlink().name.startswith("socket:"))


def test_reloads_do_not_pile_up_dovecot_connections(
    dovecot: peers.DovecotAuthServer, postwall_factory: Callable[..., peers.PostwallServer]
) -> None:
    server = postwall_factory(params=_params(dovecot.socket))
    assert server.pid is not None

    def login() -> None:
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            s.ehlo("client.test")
            assert s.login("bob", PASSWORD)[0] == 235

    login()
    before = _unix_sockets(server.pid)
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as open_session:
        open_session.ehlo("client.test")
        for _ in range(3):
            server.reload()  # returns once the reload is logged
            login()
        # The session that began before the reloads still authenticates on the old backend.
        assert open_session.login("bob", PASSWORD)[0] == 235
    # Once that session is gone, the replaced backends' Dovecot connections are closed.
    peers.wait_for(lambda: _unix_sockets(server.pid) <= before, 10, "old Dovecot sockets closed")
