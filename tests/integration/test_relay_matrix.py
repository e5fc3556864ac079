"""Issue 4's negative cases on one server: an outside client (loopback is not in
mynetworks here) relaying to a foreign domain with each combination of TLS, client
certificate and AUTH, AUTH over plaintext, a wrong password, and an authenticated user
forging another sender.  Only a correct login or a trusted, listed certificate relays.

The server is configured as a Postfix submission/MX site would be: smtpd_tls_auth_only,
relay_clientcerts with permit_tls_clientcerts, smtpd_sender_login_maps with
reject_sender_login_mismatch.  The replies are Postfix 3.7's (the restriction and AUTH
transcripts check the same texts against a real Postfix).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

FOREIGN = "someone@foreign.example"
PASSWORD = "s3cret pass"
RELAY_DENIED = (554, f"5.7.1 <{FOREIGN}>: Relay access denied".encode())


@pytest.fixture
def server(
    postwall_factory: Callable[..., peers.PostwallServer], certs: peers.TestCerts, tmp_path: Path
) -> peers.PostwallServer:
    pwfile = tmp_path / "sasl_passwd"
    res = peers.run_postwall("saslpasswd", "-f", str(pwfile), "add", "alice", stdin=PASSWORD)
    assert res.returncode == 0, res.stderr
    (tmp_path / "relay_clientcerts").write_text(
        f"{peers.cert_fingerprint(certs.client_cert)} client.postwall.test\n"
        # Listed, but self-signed: never trusted, so it must not relay.
        f"{peers.cert_fingerprint(certs.selfsigned_cert)} rogue.postwall.test\n"
    )
    (tmp_path / "senders").write_text("alice@postwall.test alice\nbob@postwall.test bob\n")
    return postwall_factory(
        params={
            "mynetworks": "192.0.2.0/24",
            "mydestination": "localhost, postwall.test",
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_CAfile": str(certs.ca_cert),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_auth_only": "yes",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "postwall",
            "smtpd_sasl_path": str(pwfile),
            "relay_clientcerts": f"texthash:{tmp_path / 'relay_clientcerts'}",
            "smtpd_sender_login_maps": f"texthash:{tmp_path / 'senders'}",
            "smtpd_sender_restrictions": "reject_sender_login_mismatch",
            "smtpd_relay_restrictions": (
                "permit_sasl_authenticated, permit_tls_clientcerts, reject_unauth_destination"
            ),
            "smtpd_error_sleep_time": "0",
        }
    )


def _session(
    server: peers.PostwallServer, tls: bool, cert: tuple[Path, Path] | None = None
) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", server.port, timeout=15)
    s.ehlo("client.postwall.test")
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if cert is not None:
            ctx.load_cert_chain(cert[0], cert[1])
        s.starttls(context=ctx)
        s.ehlo("client.postwall.test")
    return s


def _relay(s: smtplib.SMTP, sender: str = "stranger@example.org") -> tuple[int, bytes]:
    code, text = s.mail(sender)
    assert code == 250, (code, text)
    return s.rcpt(FOREIGN)


def test_outside_client_relays_only_with_login_or_trusted_listed_certificate(
    server: peers.PostwallServer, certs: peers.TestCerts
) -> None:
    # No TLS, no AUTH: refused; and AUTH is neither offered nor accepted in plaintext.
    with _session(server, tls=False) as s:
        assert not s.has_extn("auth")
        assert s.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldCBwYXNz") == (
            503,
            b"5.5.1 Error: authentication not enabled",
        )
        assert _relay(s) == RELAY_DENIED
    # TLS without a certificate or login: refused.
    with _session(server, tls=True) as s:
        assert "PLAIN" in s.esmtp_features["auth"]
        assert _relay(s) == RELAY_DENIED
    # A wrong password: 535, and still no relay.
    with _session(server, tls=True) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            s.login("alice", "wrong")
        assert err.value.smtp_code == 535
        assert err.value.smtp_error.startswith(b"5.7.8 Error: authentication failed:")
        assert _relay(s) == RELAY_DENIED
    # The right password relays, as the owner of the sender address...
    with _session(server, tls=True) as s:
        s.login("alice", PASSWORD)
        assert _relay(s, sender="alice@postwall.test") == (250, b"2.1.5 Ok")
    # ...but not as someone else (reject_sender_login_mismatch, checked at RCPT), and
    # nobody may use a listed address without logging in.
    with _session(server, tls=True) as s:
        assert _relay(s, sender="alice@postwall.test") == (
            553,
            b"5.7.1 <alice@postwall.test>: Sender address rejected: not logged in",
        )
    with _session(server, tls=True) as s:
        s.login("alice", PASSWORD)
        assert _relay(s, sender="bob@postwall.test") == (
            553,
            b"5.7.1 <bob@postwall.test>: Sender address rejected: not owned by user alice",
        )
    # A trusted client certificate listed in relay_clientcerts relays without a login.
    with _session(server, tls=True, cert=(certs.client_cert, certs.client_key)) as s:
        assert _relay(s, sender="") == (250, b"2.1.5 Ok")
    # A listed but self-signed (untrusted) certificate does not.
    with _session(server, tls=True, cert=(certs.selfsigned_cert, certs.selfsigned_key)) as s:
        assert _relay(s, sender="") == RELAY_DENIED
    server.wait_log(r"warning: localhost\[127\.0\.0\.1\]: SASL PLAIN authentication failed")
    server.wait_log(r"Trusted TLS connection established from localhost\[127\.0\.0\.1\]")
    server.wait_log(r"Untrusted TLS connection established from localhost\[127\.0\.0\.1\]")


@pytest.mark.parametrize(("listed", "relays"), [("127.0.0.0/8", True), ("192.0.2.0/24", False)])
def test_mynetworks_from_a_cidr_table(
    postwall_factory: Callable[..., peers.PostwallServer],
    tmp_path: Path,
    listed: str,
    relays: bool,
) -> None:
    """`mynetworks = cidr:/etc/postfix/mynetworks.cidr`, as many sites keep it."""
    table = tmp_path / "mynetworks.cidr"
    table.write_text(f"{listed}  trusted\n")
    server = postwall_factory(params={"mynetworks": f"cidr:{table}"})
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as s:
        s.ehlo("client.postwall.test")
        s.mail("alice@postwall.test")
        reply = s.rcpt(FOREIGN)
    # Postfix's default smtpd_relay_restrictions end in defer_unauth_destination: 454.
    denied = (454, f"4.7.1 <{FOREIGN}>: Relay access denied".encode())
    assert (reply[0] == 250) if relays else (reply == denied), reply
