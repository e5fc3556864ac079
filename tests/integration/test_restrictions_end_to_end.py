"""Restrictions end to end: relay by client certificate with swaks, the reject log lines
fail2ban's stock filter bans on, and start-up refusing what postwall does not support.

127.0.0.1 is made an outside client by a mynetworks that excludes it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import peers
from postwall.tls import certs as pki

FOREIGN = "bob@foreign.example"


def _cert_relay_server(postwall_factory, certs: peers.TestCerts, tmp_path: Path):  # type: ignore[no-untyped-def]
    listed = [
        peers.cert_fingerprint(certs.client_cert),
        peers.cert_fingerprint(certs.selfsigned_cert),
    ]
    table = tmp_path / "relay_clientcerts"
    table.write_text("".join(f"{fp} listed\n" for fp in listed))
    return postwall_factory(
        params={
            "mynetworks": "127.0.0.2/32",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_CAfile": str(certs.ca_cert),
            "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_loglevel": "1",
            "relay_clientcerts": f"texthash:{table}",
            "smtpd_relay_restrictions": (
                "permit_mynetworks, permit_tls_clientcerts, reject_unauth_destination"
            ),
        }
    )


def _rcpt_reply(result: peers.ToolResult) -> str:
    """The server's last reply before QUIT ("<~" lines are under TLS, "*" marks errors)."""
    lines = [ln.split(None, 1)[1] for ln in result.transcript.splitlines() if ln.startswith("<")]
    return lines[-2] if len(lines) > 1 else result.transcript


@pytest.mark.interop
def test_relay_by_client_certificate(postwall_factory, certs, tmp_path):  # type: ignore[no-untyped-def]
    server = _cert_relay_server(postwall_factory, certs, tmp_path)
    at = f"127.0.0.1:{server.port}"
    stranger = pki.make_client_cert(pki.make_ca("postwall test CA"), "stranger.postwall.test")
    # Signed by a CA this server does not trust: presented, but Untrusted and unlisted.
    pki.write_pem(stranger, tmp_path / "stranger.pem", tmp_path / "stranger.key")
    quit_after = ("--quit-after", "RCPT")

    trusted = peers.swaks(
        at, "-tls", "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key),
        *quit_after, to=FOREIGN,
    )  # fmt: skip
    assert _rcpt_reply(trusted) == "250 2.1.5 Ok", trusted.transcript

    refused = {
        "self-signed, fingerprint listed": (certs.selfsigned_cert, certs.selfsigned_key),
        "unknown CA": (tmp_path / "stranger.pem", tmp_path / "stranger.key"),
    }
    for why, (cert, key) in refused.items():
        res = peers.swaks(
            at, "-tls", "--tls-cert", str(cert), "--tls-key", str(key), *quit_after, to=FOREIGN
        )
        assert _rcpt_reply(res) == f"554 5.7.1 <{FOREIGN}>: Relay access denied", why
    for args in (["-tls"], []):
        res = peers.swaks(at, *args, *quit_after, to=FOREIGN)
        assert _rcpt_reply(res) == f"554 5.7.1 <{FOREIGN}>: Relay access denied", args

    server.wait_log(r"Trusted TLS connection established from localhost\[127\.0\.0\.1\]")
    server.wait_log(
        r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 554 5\.7\.1 "
        r"<bob@foreign\.example>: Relay access denied; from=<alice@postwall\.test> "
        r"to=<bob@foreign\.example> proto=ESMTP helo=<\S+>"
    )


FILTER = Path("/etc/fail2ban/filter.d/postfix.conf")


@pytest.mark.interop
def test_fail2ban_bans_on_real_reject_lines(postwall_factory, tmp_path):  # type: ignore[no-untyped-def]
    tool = peers.require_tool("fail2ban-regex")
    (tmp_path / "helos").write_text("bad.example REJECT\n")
    server = postwall_factory(
        params={
            "mynetworks": "127.0.0.2/32",
            "smtpd_helo_restrictions": "check_helo_access texthash:" + str(tmp_path / "helos"),
            "smtpd_sender_restrictions": "warn_if_reject, reject_non_fqdn_sender",
        }
    )
    at = f"127.0.0.1:{server.port}"
    peers.swaks(at, "--quit-after", "RCPT", to=FOREIGN)
    peers.swaks(at, "--quit-after", "RCPT", "--helo", "bad.example", to="root@localhost")
    peers.swaks(at, "--quit-after", "RCPT", sender="joe", to="nosuchuser@localhost")
    server.wait_log(r"Helo command rejected")
    server.wait_log(r"NOQUEUE: reject_warning: RCPT from .*need fully-qualified address")
    log = tmp_path / "copy.log"
    shutil.copy(server.maillog_path, log)  # type: ignore[arg-type]
    out = subprocess.run(
        [tool, "--raw", "-o", "msg", str(log), "postfix[mode=normal]"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    matched = out.stdout.splitlines()
    # The same lines Postfix writes, so the stock filter bans on the same ones: relay
    # denied and user unknown (it has no pattern for an access-map HELO reject), and
    # never on a reject_warning.
    assert len(matched) == 2, out.stdout + log.read_text()
    assert "[127.0.0.1]: 454 4.7.1 <bob@foreign.example>: Relay access denied" in matched[0]
    assert "[127.0.0.1]: 550 5.1.1 <nosuchuser@localhost>: Recipient address" in matched[1]


def test_unsupported_restriction_stops_start_up(tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        f"queue_directory = {tmp_path / 'q'}\n"
        "smtpd_client_restrictions = permit_mynetworks,\n"
        "    reject_unverified_sender\n"
    )
    port = peers.free_port()
    (tmp_path / "master.cf").write_text(f"127.0.0.1:{port} inet n - n - - smtpd\n")
    res = peers.run_postwall("start", "-c", str(tmp_path), timeout=30)
    assert res.returncode != 0
    assert (
        f"{tmp_path}/main.cf:3: service 127.0.0.1:{port}: smtpd_client_restrictions: "
        "restriction 'reject_unverified_sender' is not supported by postwall"
    ) in res.stderr, res.stderr
