"""Started as root, postwall binds a privileged port and reads its root-only private key,
then runs as mail_owner (postfix) for everything that talks to the network; local mail
still lands in each user's Maildir, owned by that user, through the root delivery helper.
"""

from __future__ import annotations

import ast
import os
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

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


def _ids(pid: int) -> dict[str, list[int]]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(v) for v in value.split()]
    return out


def _served_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    """The DER certificate a new STARTTLS session on `port` presents."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.starttls(context=ctx)
        der = s.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der
    return der


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.fixture
def workdir() -> Path:
    peers.require_root()
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("no postfix user")
    root = peers.WORK_ROOT
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    base = root / f"privdrop-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_root_start_drops_to_mail_owner(workdir: Path, certs: peers.TestCerts) -> None:
    postfix = pwd.getpwnam("postfix")
    keys = workdir / "keys"
    keys.mkdir(mode=0o700)
    shutil.copy(certs.server_cert, keys / "cert.pem")
    shutil.copy(certs.server_key, keys / "key.pem")
    (keys / "key.pem").chmod(0o600)
    spool = workdir / "mail"
    spool.mkdir()
    spool.chmod(0o1777)  # a world-writable spool, so each user can make its Maildir
    server = peers.PostwallServer(
        config_dir=workdir / "conf",
        port=_free_privileged_port(),
        params={
            "mail_owner": "postfix",
            "mail_spool_directory": f"{spool}/",
            "mydestination": "postwall.test, localhost",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(keys / "cert.pem"),
            "smtpd_tls_key_file": str(keys / "key.pem"),
        },
    )
    try:
        server.start()
        assert server.pid is not None
        server.wait_log(r"dropped privileges to mail_owner postfix \(uid \d+, gid \d+\)")
        ids = _ids(server.pid)
        assert ids["Uid"] == [postfix.pw_uid] * 4
        assert ids["Gid"] == [postfix.pw_gid] * 4
        assert ids["Groups"] == [postfix.pw_gid]
        # The one process kept as root is the delivery helper.
        helpers = _children(server.pid)
        assert len(helpers) == 1 and _ids(helpers[0])["Uid"][0] == 0

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as s:
            s.starttls(context=ctx)
            s.sendmail(
                "alice@example.org",
                ["root@localhost", "nobody@localhost"],
                peers.simple_message("privdrop", "alice@example.org", "root@localhost"),
            )
        for user, uid in (("root", 0), ("nobody", pwd.getpwnam("nobody").pw_uid)):
            new = spool / user / "new"
            peers.wait_for(lambda n=new: n.is_dir() and any(n.iterdir()), 30, f"{user}'s mail")
            (delivered,) = list(new.iterdir())
            assert delivered.stat().st_uid == uid
            assert b"Subject: privdrop" in delivered.read_bytes()

        queue = Path(server.params["queue_directory"])
        st = queue.stat()
        # Searchable, not listable: users reach public/pickup; the states stay 0700.
        assert (st.st_uid, st.st_mode & 0o777) == (postfix.pw_uid, 0o711)
        assert (queue / "incoming").stat().st_mode & 0o777 == 0o700
        assert all(p.stat().st_uid == postfix.pw_uid for p in queue.rglob("*"))
        assert (keys / "key.pem").stat().st_uid == 0

        # A renewed certificate and key, still root-only (as certbot leaves them), are
        # read through the root helper at the reload: new sessions show the new one.
        before = _served_cert(server.port, ctx)
        keys.chmod(0o700)
        shutil.copy(certs.mx_cert, keys / "cert.pem")
        shutil.copy(certs.mx_key, keys / "key.pem")
        (keys / "key.pem").chmod(0o600)
        os.kill(server.pid, signal.SIGHUP)
        server.wait_log(r"reload -- version")
        assert "reload failed" not in server.log_text()
        after = _served_cert(server.port, ctx)
        assert after != before
        assert (
            x509.load_der_x509_certificate(after)
            .subject.rfc4514_string()
            .endswith(f"CN={peers.TestCerts.MX_NAME}")
        )
        assert server.stop() == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in helpers)
        assert not (Path(server.params["data_directory"]) / "master.pid").exists()
    finally:
        server.cleanup()


def test_unknown_mail_owner_stops_start_up(tmp_path: Path) -> None:
    peers.require_root()
    server = peers.PostwallServer(config_dir=tmp_path / "c", params={"mail_owner": "nosuchuser9"})
    with pytest.raises(peers.PeerError, match="mail_owner = nosuchuser9: no such user"):
        server.start()
    server.cleanup()


def test_root_helper_opens_only_what_the_configuration_names(workdir: Path) -> None:
    """The unprivileged side can have the root helper open a root-only TLS key, an
    smtp_sasl_password_maps file or the maillog_file named in main.cf, and nothing else
    (not /etc/shadow, not another key)."""
    from postwall.delivery.local import DeliveryHelper

    secret = workdir / "secret"
    secret.mkdir(mode=0o700)
    key, other, log = secret / "key.pem", secret / "other.pem", secret / "mail.log"
    passwords = secret / "sasl_passwd"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nroot only\n")
    other.write_bytes(b"not named anywhere\n")
    passwords.write_bytes(b"[smtp.example.net]:587 alice:secret\n")
    for path in (key, other, passwords):
        path.chmod(0o600)
    conf = workdir / "conf"
    conf.mkdir()
    (conf / "main.cf").write_text(
        f"smtpd_tls_key_file = {key}\nmaillog_file = {log}\n"
        f"smtp_sasl_password_maps = hash:{passwords}\n"
    )
    (conf / "master.cf").write_text("smtp inet n - n - - smtpd\n")
    helper = DeliveryHelper.start(
        home_mailbox="Maildir/",
        mail_spool_directory="",
        recipient_delimiter="",
        config_dir=str(conf),
    )

    def unprivileged_side() -> str:  # as after the drop
        result = [helper.read_file(str(key)).decode()]
        result.append(helper.read_file(str(passwords)).decode())
        for path in ("/etc/shadow", str(other)):
            try:
                helper.read_file(path)
                result.append(f"read {path}")
            except PermissionError:
                result.append("refused")
        fd = helper.open_log(str(log))
        os.write(fd, b"appended by nobody\n")
        os.close(fd)
        try:
            helper.open_log(str(other))
            result.append("opened other for writing")
        except PermissionError:
            result.append("refused")
        return "|".join(result)

    answer = ast.literal_eval(peers.run_as_nobody(unprivileged_side))
    helper.stop()
    assert answer.split("|") == [
        "-----BEGIN PRIVATE KEY-----\nroot only\n",
        "[smtp.example.net]:587 alice:secret\n",
        "refused",
        "refused",
        "refused",
    ]
    assert log.read_bytes() == b"appended by nobody\n"
    assert other.read_bytes() == b"not named anywhere\n"


def test_a_local_user_submits_through_the_server(workdir: Path) -> None:
    """sendmail run by an ordinary user, who may not write the queue, hands the message
    to the server over public/pickup: queued under the kernel's uid, delivered."""
    from postwall import pickup
    from postwall.queue import Recipient
    from postwall.tools import sendmail

    server = peers.PostwallServer(
        config_dir=workdir / "conf",
        params={"mydestination": "postwall.test, localhost", "message_size_limit": "100000"},
    )
    try:
        server.start()
        conf = str(server.config_dir)
        queue = Path(server.params["queue_directory"])
        assert (queue.stat().st_mode & 0o777, (queue / "public").stat().st_mode & 0o777) == (
            0o711,
            0o711,
        )
        assert (queue / "incoming").stat().st_mode & 0o777 == 0o700

        def send() -> int:
            message = b"Subject: from a user\n\nhello\n"
            r, w = os.pipe()
            os.write(w, message)
            os.close(w)
            os.dup2(r, 0)
            sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the child's stdin, once
            return sendmail.main(["-C", conf, "root@localhost"])

        assert peers.run_as_nobody(send) == "0"
        server.wait_log(r"postfix-postwall/pickup\[\d+\]: [0-9A-F]+: uid=65534 from=<nobody@")
        [msg] = peers.wait_maildir(server.maildir("root"))
        assert b"from userid 65534)" in msg and b"Subject: from a user" in msg

        # The request cannot smuggle SMTP through an address, nor exceed the size limit.
        bad = pickup.Request("nobody@postwall.test", [Recipient("x@y>\r\nDATA")], b"x\r\n")
        big = pickup.Request("nobody@postwall.test", [Recipient("root@localhost")], b"x" * 200000)
        answers = peers.run_as_nobody(
            lambda: [_pickup_answer(pickup, queue, request) for request in (bad, big)]
        )
        assert "refused 5.5.4 Error: malformed submission: bad address syntax" in answers
        assert "'refused 5.3.4 Error: message file too big temporary=False'" in answers, answers
        assert len(peers.maildir_messages(server.maildir("root"))) == 1
    finally:
        server.cleanup()


def _pickup_answer(pickup: Any, queue: Path, request: Any) -> str:
    try:
        return f"queued {pickup.submit(queue, request)}"
    except pickup.PickupError as exc:
        return f"refused {exc} temporary={exc.temporary}"


def test_mailbox_files_after_the_drop(workdir: Path) -> None:
    """Debian's default local delivery through the root helper: /var/mail-like spool
    (2775 root:mail), the mailbox created by the recipient with the spool's group."""
    import grp

    mail_gid = grp.getgrnam("mail").gr_gid
    spool = workdir / "spool"
    spool.mkdir()
    os.chown(spool, 0, mail_gid)
    spool.chmod(0o2775)
    server = peers.PostwallServer(
        config_dir=workdir / "conf",
        port=_free_privileged_port(),
        params={
            "mail_owner": "postfix",
            "mail_spool_directory": str(spool),
            "home_mailbox": "",
            "mydestination": "postwall.test, localhost",
        },
    )
    try:
        server.start()
        server.wait_log(r"dropped privileges to mail_owner postfix")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as s:
            s.sendmail(
                "alice@example.org",
                ["nobody@localhost", "root@localhost"],
                peers.simple_message("mbox", "alice@example.org", "nobody@localhost"),
            )
        for user, uid in (("nobody", pwd.getpwnam("nobody").pw_uid), ("root", 0)):
            box = spool / user
            peers.wait_for(
                lambda b=box: b.exists() and b"Subject: mbox" in b.read_bytes(), 30, user
            )
            st = box.stat()
            assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, mail_gid, 0o600)
            assert box.read_bytes().startswith(b"From alice@example.org  ")
        server.wait_log(
            r"to=<nobody@localhost>, relay=local, .*status=sent \(delivered to mailbox\)"
        )
        assert not list(spool.glob("*.lock"))
    finally:
        server.cleanup()
