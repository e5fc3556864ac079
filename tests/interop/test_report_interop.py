"""`postwall report` on logs written in this run by a real Postfix and by postwall.

swaks sends four messages to the server: without STARTTLS, with STARTTLS, with STARTTLS
and the CA-signed client certificate, with STARTTLS and a self-signed one. The report of
that server's log must say 3 TLS sessions and messages of 4, one Trusted (with the client
certificate's subject), one Untrusted, one Anonymous. Two Postfix relay clients send one
message each, to a Postfix receiver (STARTTLS) and to smtp-sink (no STARTTLS): the report of
their logs must list the sink, and only the sink, as a server that did not offer STARTTLS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop


def _swaks_four(server: str, certs: peers.TestCerts, to: str) -> None:
    variants: list[list[str]] = [
        [],
        ["--tls"],
        ["--tls", "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)],
        ["--tls", "--tls-cert", str(certs.selfsigned_cert), "--tls-key", str(certs.selfsigned_key)],
    ]
    for args in variants:
        result = peers.swaks(server, *args, to=to)
        assert result.returncode == 0, result.transcript


def _wait_disconnects(log_text: Callable[[], str], count: int) -> None:
    peers.wait_for(
        lambda: log_text().count(": disconnect from ") >= count,
        30,
        f"{count} smtpd sessions to end",
        detail=lambda: peers.tail(log_text()),
    )


def _report(*paths: Path | str) -> dict:
    proc = peers.run_postwall("report", "--json", *map(str, paths))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _assert_four_swaks_sessions(inbound: dict) -> None:
    assert inbound["sessions"] == {"total": 4, "tls": 3, "plaintext": 1, "tls_percent": 75.0}
    assert inbound["messages"] == {"total": 4, "tls": 3, "plaintext": 1, "tls_percent": 75.0}
    assert inbound["trust"] == {"Anonymous": 1, "Untrusted": 1, "Trusted": 1, "Verified": 0}
    assert inbound["protocols"] == {"TLSv1.3": 3}
    assert inbound["failures"]["sessions"] == 0
    subjects = {(c["subject"], c["trust"]) for c in inbound["certificates"]}
    assert subjects == {
        (f"/CN={peers.TestCerts.CLIENT_CN}", "Trusted"),
        (f"/CN={peers.TestCerts.SELFSIGNED_CN}", "Untrusted"),
    }


def test_report_of_a_postfix_run(postfix_factory, smtp_sink_factory, certs):
    receiver = postfix_factory(
        "receiver",
        cert=certs.server_cert,
        key=certs.server_key,
        ca_file=certs.ca_cert,
        extra={"smtpd_tls_loglevel": "2"},  # the how-to's level: client subjects are logged
    )
    _swaks_four(f"127.0.0.1:{receiver.port}", certs, "bob@example.test")
    peers.wait_maildir(receiver.maildir("bob"), 4)
    _wait_disconnects(receiver.log_text, 4)
    swaks_part = receiver.workdir / "swaks-part.log"
    swaks_part.write_text(receiver.log_text())
    _assert_four_swaks_sessions(_report(swaks_part)["inbound"])

    sink = smtp_sink_factory()
    to_sink = postfix_factory("relay_client", sink.port)
    to_receiver = postfix_factory("relay_client", receiver.port)
    message = peers.simple_message("report", "alice@postwall.test", "bob@example.test")
    for client in (to_sink, to_receiver):
        client.sendmail("alice@postwall.test", ["bob@example.test"], message)
    for client in (to_sink, to_receiver):
        client.wait_queue_empty()
        client.wait_log(r": removed$")

    _wait_disconnects(receiver.log_text, 5)
    inbound = _report(receiver.log_path)["inbound"]
    # the four swaks sessions and the relay client's, which used STARTTLS
    assert inbound["sessions"] == {"total": 5, "tls": 4, "plaintext": 1, "tls_percent": 80.0}
    outbound = _report(to_sink.log_path, to_receiver.log_path)["outbound"]
    assert outbound["sessions"] == {"total": 2, "tls": 1, "plaintext": 1, "tls_percent": 50.0}
    assert outbound["messages"] == {"total": 2, "tls": 1, "plaintext": 1, "tls_percent": 50.0}
    assert outbound["no_starttls"] == [{"peer": f"127.0.0.1[127.0.0.1]:{sink.port}", "sessions": 1}]
    assert outbound["starttls_not_used"] == []

    text = peers.run_postwall("report", str(receiver.log_path), str(to_sink.log_path)).stdout
    assert "Servers that did not offer STARTTLS (sessions)" in text
    assert f"127.0.0.1[127.0.0.1]:{sink.port}  1" in text


def test_report_of_a_postwall_run(postwall_factory, certs):
    server = postwall_factory(
        params={
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_CAfile": str(certs.ca_cert),
            "smtpd_tls_ask_ccert": "yes",
            "smtpd_tls_loglevel": "2",
        }
    )
    _swaks_four(f"127.0.0.1:{server.port}", certs, "root@localhost")
    peers.wait_maildir(server.maildir("root"), 4)
    _wait_disconnects(server.log_text, 4)
    assert server.maillog_path is not None
    report = _report(server.maillog_path)
    assert report["input"]["instances"] == {"postfix-postwall": report["input"]["mail_lines"]}
    _assert_four_swaks_sessions(report["inbound"])
