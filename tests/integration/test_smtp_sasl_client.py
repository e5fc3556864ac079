"""postwall's smtp client authenticating to a server (smtp_sasl_auth_enable), end to end.

One postwall relays (relayhost, credentials in smtp_sasl_password_maps keyed as Postfix
looks them up) to a second postwall that takes mail only from authenticated clients
(its password-file backend offers PLAIN, LOGIN and SCRAM-SHA-256).  Each test checks the
mechanism the receiving side logged, or the relaying side's status line with Postfix's
wording for each failure.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

PASSWORD = peers.SASL_PASSWORD

STATUS = (
    r"smtp\[\d+\]: (\w+): to=<root@b\.test>, relay={relay}, delay=[\d.]+, "
    r"delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, dsn={dsn}, status={status} \((?P<text>.*)\)"
)


def _relay(
    factory: Callable[..., peers.PostwallServer],
    receiver: peers.PostwallServer,
    tmp_path: Path,
    password: str = PASSWORD,
    key: str | None = None,
    **params: str,
) -> peers.PostwallServer:
    table = tmp_path / "smtp_sasl_passwd"
    table.write_text(f"{key or f'[127.0.0.1]:{receiver.port}'}  alice:{password}\n")
    base = {
        "relayhost": f"[127.0.0.1]:{receiver.port}",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"texthash:{table}",
        "smtp_tls_security_level": "encrypt",
        "smtp_sasl_tls_security_options": "noanonymous",
        "minimal_backoff_time": "300s",
    }
    base.update(params)
    return factory(params=base)


def _send(server: peers.PostwallServer, subject: str) -> None:
    message = peers.simple_message(subject, "alice@a.test", "root@b.test")
    peers.smtp_send("127.0.0.1", server.port, "alice@a.test", ["root@b.test"], message)


def test_relays_with_the_strongest_mechanism_both_offer(
    postwall_factory: Callable[..., peers.PostwallServer],
    sasl_receiver: peers.PostwallServer,
    tmp_path: Path,
) -> None:
    relay = _relay(postwall_factory, sasl_receiver, tmp_path)
    _send(relay, "sasl.scram")
    sasl_receiver.wait_log(
        r"smtpd\[\d+\]: \w+: client=localhost\[127\.0\.0\.1\], "
        r"sasl_method=SCRAM-SHA-256, sasl_username=alice"
    )
    hop = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{sasl_receiver.port}"
    sent = relay.wait_log(STATUS.format(relay=hop, dsn=r"2\.0\.0", status="sent"))
    assert sent.group("text").startswith("250 2.0.0 Ok: queued as ")
    (msg,) = peers.wait_maildir(sasl_receiver.maildir("root"), 1)
    assert b"Subject: sasl.scram" in msg and b"with ESMTPSA id" in msg


def test_plaintext_mechanisms_need_the_security_options_to_allow_them(
    postwall_factory: Callable[..., peers.PostwallServer],
    sasl_receiver: peers.PostwallServer,
    tmp_path: Path,
) -> None:
    # The server's host name is a lookup key too; PLAIN is allowed over TLS only here.
    relay = _relay(
        postwall_factory,
        sasl_receiver,
        tmp_path,
        key="127.0.0.1",
        smtp_sasl_mechanism_filter="plain, login",
        smtp_tls_security_level="none",
        smtp_sasl_security_options="noplaintext, noanonymous",
    )
    _send(relay, "sasl.none")
    # Postfix's wording (tests/interop/test_smtp_sasl_postfix.py compares them).
    line = relay.wait_log(
        STATUS.format(
            relay=rf"127\.0\.0\.1\[127\.0\.0\.1\]:{sasl_receiver.port}",
            dsn=r"4\.7\.0",
            status="deferred",
        )
    )
    assert line.group("text") == (
        "SASL authentication failed; cannot authenticate to server 127.0.0.1[127.0.0.1]: "
        "no mechanism available"
    )
    relay.wait_log(r"smtp\[\d+\]: warning: SASL authentication failure: No worthy mechs found")


def test_plain_over_tls_when_the_filter_asks_for_it(
    postwall_factory: Callable[..., peers.PostwallServer],
    sasl_receiver: peers.PostwallServer,
    tmp_path: Path,
) -> None:
    relay = _relay(postwall_factory, sasl_receiver, tmp_path, smtp_sasl_mechanism_filter="plain")
    _send(relay, "sasl.plain")
    sasl_receiver.wait_log(r"sasl_method=PLAIN, sasl_username=alice")
    peers.wait_maildir(sasl_receiver.maildir("root"), 1)


@pytest.mark.parametrize(
    ("soft", "dsn", "status"), [("yes", "4.7.8", "deferred"), ("no", "5.7.8", "bounced")]
)
def test_a_refused_password_defers_or_bounces_as_postfix(
    postwall_factory: Callable[..., peers.PostwallServer],
    sasl_receiver: peers.PostwallServer,
    tmp_path: Path,
    soft: str,
    dsn: str,
    status: str,
) -> None:
    relay = _relay(
        postwall_factory, sasl_receiver, tmp_path, password="wrong", smtp_sasl_auth_soft_bounce=soft
    )
    _send(relay, "sasl.wrong")
    hop = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{sasl_receiver.port}"
    line = relay.wait_log(STATUS.format(relay=hop, dsn=dsn.replace(".", r"\."), status=status))
    assert line.group("text") == (
        "SASL authentication failed; server 127.0.0.1[127.0.0.1] said: "
        "535 5.7.8 Error: authentication failed: authentication failure"
    )
    sasl_receiver.wait_log(
        r"warning: localhost\[127\.0\.0\.1\]: SASL SCRAM-SHA-256 authentication failed"
    )


def test_without_credentials_for_the_server_no_auth_is_tried(
    postwall_factory: Callable[..., peers.PostwallServer],
    sasl_receiver: peers.PostwallServer,
    tmp_path: Path,
) -> None:
    relay = _relay(postwall_factory, sasl_receiver, tmp_path, key="[other.example]:587")
    _send(relay, "sasl.nocreds")
    hop = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{sasl_receiver.port}"
    line = relay.wait_log(STATUS.format(relay=hop, dsn=r"5\.7\.1", status="bounced"))
    assert "Relay access denied" in line.group("text") or "Access denied" in line.group("text")
    assert "sasl_method" not in sasl_receiver.log_text()


def test_a_smarthost_with_implicit_tls_and_a_password(
    postwall_factory: Callable[..., peers.PostwallServer],
    sasl_receiver: peers.PostwallServer,
    tmp_path: Path,
) -> None:
    """The relayhost = [host]:465 set-up: smtp_tls_wrappermode, at `may` as many how-tos
    write it (Postfix's warning, then encrypt), and PLAIN over that TLS."""
    port = sasl_receiver.smtps_port  # type: ignore[attr-defined]
    relay = _relay(
        postwall_factory,
        sasl_receiver,
        tmp_path,
        key=f"[127.0.0.1]:{port}",
        relayhost=f"[127.0.0.1]:{port}",
        smtp_tls_wrappermode="yes",
        smtp_tls_security_level="may",
        smtp_tls_loglevel="1",
        smtp_sasl_mechanism_filter="plain",
    )
    relay.wait_log(
        r"smtp\[\d+\]: warning: smtp_tls_wrappermode requires "
        r'"smtp_tls_security_level = encrypt" \(or stronger\)'
    )
    _send(relay, "sasl.smtps")
    hop = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{port}"
    relay.wait_log(rf"smtp\[\d+\]: Untrusted TLS connection established to {hop}: TLSv1\.3")
    relay.wait_log(STATUS.format(relay=hop, dsn=r"2\.0\.0", status="sent"))
    sasl_receiver.wait_log(r"sasl_method=PLAIN, sasl_username=alice")
    (msg,) = peers.wait_maildir(sasl_receiver.maildir("root"), 1)
    assert b"Subject: sasl.smtps" in msg and b"with ESMTPSA id" in msg
    assert "SMTPS wrappermode (TCP port 465)" not in relay.log_text()


def test_the_smtps_port_without_wrappermode_gets_postfix_s_hint(
    postwall_factory: Callable[..., peers.PostwallServer],
) -> None:
    """Without smtp_tls_wrappermode a session to port 465 waits for a greeting that an
    SMTPS server never sends in plaintext: Postfix names the two settings, so do we."""
    if peers.port_open("127.0.0.1", 465):
        pytest.skip("127.0.0.1:465 is taken on this machine")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 465))
    listener.listen(1)
    try:
        relay = postwall_factory(params={"relayhost": "[127.0.0.1]:465", "smtp_helo_timeout": "2s"})
        _send(relay, "sasl.hint")
        relay.wait_log(
            r"smtp\[\d+\]: SMTPS wrappermode \(TCP port 465\) requires setting "
            r'"smtp_tls_wrappermode = yes", and "smtp_tls_security_level = encrypt" '
            r"\(or stronger\)"
        )
        relay.wait_log(
            r"status=deferred \(conversation with 127\.0\.0\.1\[127\.0\.0\.1\] timed out "
            r"while receiving the initial server greeting\)"
        )
    finally:
        listener.close()


def test_start_up_refuses_what_postfix_smtp_dies_of(
    postwall_factory: Callable[..., peers.PostwallServer], tmp_path: Path
) -> None:
    res = peers.run_postwall("check", "-c", str(_config(tmp_path, "smtp_sasl_auth_enable = yes\n")))
    assert res.returncode != 0
    assert (
        "specify a password table via the `smtp_sasl_password_maps' configuration parameter"
        in res.stderr
    )
    cfg = _config(
        tmp_path,
        "smtp_sasl_auth_enable = yes\nsmtp_sasl_password_maps = inline:{x=y:z}\n"
        "smtp_sasl_type = dovecot\nsmtp_sasl_tls_security_options = noplaintxt\n",
    )
    res = peers.run_postwall("check", "-c", str(cfg))
    assert res.returncode != 0
    assert "main.cf:3: unsupported SASL client implementation: dovecot" in res.stderr
    assert "main.cf:4: smtp_sasl_tls_security_options: unknown SASL security option" in res.stderr


def _config(tmp_path: Path, text: str) -> Path:
    d = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*')))}"
    d.mkdir()
    (d / "main.cf").write_text(text)
    (d / "master.cf").write_text("")
    return d


def test_sender_dependent_relayhost_and_credentials(
    postwall_factory: Callable[..., peers.PostwallServer],
    sasl_receiver: peers.PostwallServer,
    tmp_path: Path,
) -> None:
    """A multi-account smarthost set-up: alice's mail goes to her provider with her
    password (looked up by sender), everyone else's to the global relayhost."""
    relays = tmp_path / "sender_relay"
    relays.write_text(f"alice@a.test  [127.0.0.1]:{sasl_receiver.port}\n")
    dead = peers.free_port()  # nothing listens there
    relay = _relay(
        postwall_factory,
        sasl_receiver,
        tmp_path,
        key="alice@a.test",
        relayhost=f"[127.0.0.1]:{dead}",
        sender_dependent_relayhost_maps=f"texthash:{relays}",
        smtp_sender_dependent_authentication="yes",
    )
    _send(relay, "sasl.sender")
    sasl_receiver.wait_log(r"sasl_method=SCRAM-SHA-256, sasl_username=alice")
    hop = rf"127\.0\.0\.1\[127\.0\.0\.1\]:{sasl_receiver.port}"
    relay.wait_log(STATUS.format(relay=hop, dsn=r"2\.0\.0", status="sent"))
    message = peers.simple_message("sasl.other", "carol@a.test", "root@b.test")
    peers.smtp_send("127.0.0.1", relay.port, "carol@a.test", ["root@b.test"], message)
    relay.wait_log(rf"connect to 127\.0\.0\.1\[127\.0\.0\.1\]:{dead}: Connection refused")
