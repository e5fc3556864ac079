"""check_policy_service against a scripted policy server behind a running postwall.

The scripted server (a thread in the test process, real TCP or UNIX socket) records each
request it reads and answers as the test says: an action, silence, a close, garbage.
Replies, warnings and the attributes received are checked as Postfix 3.7 words them
(SMTPD_POLICY_README, smtpd_check.c, attr_clnt.c).
"""

from __future__ import annotations

import smtplib
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peers

# What a scripted server does with one request: bytes to send back, or None to close.
Answer = Callable[[dict[str, str]], bytes | None]


class PolicyServer:
    """A policy server on 127.0.0.1 (or a UNIX socket) answering with `answer`."""

    def __init__(self, answer: Answer, unix_path: Path | None = None) -> None:
        self.answer = answer
        self.requests: list[dict[str, str]] = []
        self.raw: list[bytes] = []
        self.connections = 0
        self.close_after_reply = False
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                while True:
                    lines: list[bytes] = []
                    while True:
                        line = self.rfile.readline()
                        if not line:
                            return
                        if line == b"\n":
                            break
                        lines.append(line)
                    outer.raw.append(b"".join(lines))
                    request = dict(
                        ln.decode().rstrip("\n").partition("=")[::2]  # type: ignore[misc]
                        for ln in lines
                    )
                    outer.requests.append(request)
                    reply = outer.answer(request)
                    if reply is None:
                        return
                    self.wfile.write(reply)
                    self.wfile.flush()
                    if outer.close_after_reply:
                        return

        self.server: socketserver.BaseServer
        if unix_path is not None:

            class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
                daemon_threads = True

            self.server = UnixServer(str(unix_path), Handler)
            self.endpoint = f"unix:{unix_path}"
        else:

            class TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
                daemon_threads = True
                allow_reuse_address = True

            self.server = TCPServer(("127.0.0.1", 0), Handler)
            self.endpoint = f"inet:127.0.0.1:{self.server.server_address[1]}"  # type: ignore[index]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def policy_servers() -> Iterator[Callable[..., PolicyServer]]:
    started: list[PolicyServer] = []

    def make(answer: Answer, unix_path: Path | None = None) -> PolicyServer:
        server = PolicyServer(answer, unix_path)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def action(text: str) -> Answer:
    return lambda request: f"action={text}\n\n".encode()


def _server(postwall_factory, restriction: str, **params: str) -> peers.PostwallServer:  # type: ignore[no-untyped-def]
    return postwall_factory(
        params={
            "mydestination": "localhost, postwall.test",
            "smtpd_recipient_restrictions": (
                f"{restriction}, permit_mynetworks, reject_unauth_destination"
            ),
            **params,
        }
    )


def _rcpt(server: peers.PostwallServer, rcpt: str = "root@postwall.test") -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.org")
        code, text = smtp.rcpt(rcpt)
        return code, text.decode()


def test_reject_with_text_and_the_request_attributes(postwall_factory, policy_servers):  # type: ignore[no-untyped-def]
    policy = policy_servers(action("REJECT 5.7.9 go away"))
    server = _server(postwall_factory, f"check_policy_service {policy.endpoint}")
    assert _rcpt(server) == (554, "5.7.9 <root@postwall.test>: Recipient address rejected: go away")
    server.wait_log(
        r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 554 5\.7\.9 "
        r"<root@postwall\.test>: Recipient address rejected: go away; "
        r"from=<sender@example\.org> to=<root@postwall\.test> proto=ESMTP helo=<client\.example>"
    )
    (request,) = policy.requests
    names = [ln.partition(b"=")[0].decode() for ln in policy.raw[0].splitlines()]
    assert names == [
        "request", "protocol_state", "protocol_name", "client_address", "client_name",
        "client_port", "reverse_client_name", "server_address", "server_port", "helo_name",
        "sender", "recipient", "recipient_count", "queue_id", "instance", "size",
        "etrn_domain", "stress", "sasl_method", "sasl_username", "sasl_sender",
        "ccert_subject", "ccert_issuer", "ccert_fingerprint", "ccert_pubkey_fingerprint",
        "encryption_protocol", "encryption_cipher", "encryption_keysize", "policy_context",
        "compatibility_level", "mail_version",
    ]  # fmt: skip
    assert request["request"] == "smtpd_access_policy"
    assert request["protocol_state"] == "RCPT"
    assert request["protocol_name"] == "ESMTP"
    assert request["client_address"] == "127.0.0.1"
    assert request["server_address"] == "127.0.0.1"
    assert request["server_port"] == str(server.port)
    assert int(request["client_port"]) > 0
    assert request["helo_name"] == "client.example"
    assert request["sender"] == "sender@example.org"
    assert request["recipient"] == "root@postwall.test"
    assert request["recipient_count"] == "0"
    assert request["queue_id"] == ""
    assert request["instance"].count(".") == 3
    assert request["encryption_keysize"] == "0"
    assert request["compatibility_level"] == "3.6"  # what PostwallServer's main.cf sets
    assert request["mail_version"] == "3.7.11"


def test_dunno_and_ok_go_on_and_the_instance_is_per_message(postwall_factory, policy_servers):  # type: ignore[no-untyped-def]
    policy = policy_servers(action("DUNNO"))
    server = _server(
        postwall_factory,
        f"check_policy_service {policy.endpoint}",
        smtpd_data_restrictions=f"check_policy_service {policy.endpoint}",
    )
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        for n in range(2):
            smtp.mail("", ["SIZE=123"])
            assert smtp.rcpt("root@postwall.test")[0] == 250
            assert smtp.rcpt("postmaster@postwall.test")[0] == 250
            code, _ = smtp.data(peers.simple_message(f"m{n}", "", "root@postwall.test"))
            assert code == 250
    peers.wait_maildir(server.maildir("root"), 2)
    rcpt = [r for r in policy.requests if r["protocol_state"] == "RCPT"]
    data = [r for r in policy.requests if r["protocol_state"] == "DATA"]
    assert len(rcpt) == 4 and len(data) == 2
    # One instance per transaction, the same for all of its requests.
    assert rcpt[0]["instance"] == rcpt[1]["instance"] == data[0]["instance"]
    assert rcpt[2]["instance"] == data[1]["instance"] != data[0]["instance"]
    assert rcpt[0]["sender"] == "" and rcpt[0]["size"] == "123"
    assert rcpt[0]["queue_id"] == "" and rcpt[1]["queue_id"] != ""
    # At DATA: the recipient count, and no recipient (more than one was accepted).
    assert data[0]["recipient_count"] == "2" and data[0]["recipient"] == ""
    assert data[0]["queue_id"] == rcpt[1]["queue_id"]
    # One connection served every request of the session.
    assert policy.connections == 1


def test_unix_socket_under_the_queue_directory(postwall_factory, policy_servers):  # type: ignore[no-untyped-def]
    server = postwall_factory(start=False)
    queue = Path(server.params["queue_directory"])
    (queue / "private").mkdir(parents=True)
    policy = policy_servers(action("DEFER_IF_PERMIT Greylisted"), unix_path=queue / "private/pol")
    server.params.update(
        {
            "mydestination": "localhost, postwall.test",
            "smtpd_recipient_restrictions": (
                "check_policy_service unix:private/pol, permit_mynetworks, "
                "reject_unauth_destination"
            ),
        }
    )
    server.start()
    assert _rcpt(server) == (
        450,
        "4.7.1 <root@postwall.test>: Recipient address rejected: Greylisted",
    )
    assert len(policy.requests) == 1


def _default_action(server: peers.PostwallServer) -> None:
    start = time.monotonic()
    assert _rcpt(server) == (
        451,
        "4.3.5 <root@postwall.test>: Recipient address rejected: Server configuration problem",
    )
    return time.monotonic() - start  # type: ignore[return-value]


def test_a_server_that_closes_gets_the_default_action(postwall_factory, policy_servers):  # type: ignore[no-untyped-def]
    policy = policy_servers(lambda request: None)
    server = _server(postwall_factory, f"check_policy_service {policy.endpoint}")
    _default_action(server)
    ep = policy.endpoint.removeprefix("inet:")
    server.wait_log(r"NOQUEUE: reject: RCPT .*: 451 4\.3\.5 ")
    log = server.log_text()
    assert log.count(f"warning: premature end-of-input on {ep} while reading input attribute") == 2
    # attr_clnt: no "problem talking" for a first failure without an error number.
    assert log.count(f"warning: problem talking to server {ep}: Success") == 1
    assert len(policy.requests) == 2


def test_a_silent_server_times_out(postwall_factory, policy_servers):  # type: ignore[no-untyped-def]
    release = threading.Event()

    def never(request: dict[str, str]) -> bytes | None:
        release.wait(30)
        return None

    policy = policy_servers(never)
    server = _server(
        postwall_factory,
        f"check_policy_service {{ {policy.endpoint}, timeout=2s, try_limit=1 }}",
    )
    try:
        elapsed = _default_action(server)
    finally:
        release.set()
    assert 1.5 < elapsed < 10
    ep = policy.endpoint.removeprefix("inet:")
    server.wait_log(rf"warning: timeout on {ep} while reading input attribute name")
    server.wait_log(rf"warning: problem talking to server {ep}: Connection timed out")


def test_garbage_and_a_dead_endpoint_get_the_default_action(postwall_factory, policy_servers):  # type: ignore[no-untyped-def]
    garbage = policy_servers(lambda request: b"HTTP/1.0 400 Bad Request\n\n")
    dead = peers.free_port()
    server = _server(
        postwall_factory,
        f"check_policy_service {{ {garbage.endpoint}, default_action=DUNNO }}",
        smtpd_sender_restrictions=(
            f"check_policy_service {{ inet:127.0.0.1:{dead}, "
            "{ default_action = DEFER_IF_PERMIT policy down } }"
        ),
    )
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.org")
        code, text = smtp.rcpt("root@postwall.test")
    # Both servers fail: the recipient list goes on (DUNNO) to permit_mynetworks, so the
    # sender list's default action, DEFER_IF_PERMIT, decides.
    assert (code, text.decode()) == (
        450,
        "4.7.1 <sender@example.org>: Sender address rejected: policy down",
    )
    server.wait_log(r"NOQUEUE: reject: RCPT .*: 450 4\.7\.1 <sender@example\.org>")
    log = server.log_text()
    assert f"warning: connect to 127.0.0.1:{dead}: Connection refused" in log, log
    assert f"warning: problem talking to server 127.0.0.1:{dead}: Connection refused" in log
    ep = garbage.endpoint.removeprefix("inet:")
    assert log.count(f"warning: missing attribute action in input from {ep}") == 2
    # The session and the server are still fine.
    assert _rcpt(server)[0] == 450
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        assert s.recv(100).startswith(b"220 ")


def test_tls_and_client_certificate_attributes(postwall_factory, policy_servers, certs):  # type: ignore[no-untyped-def]
    policy = policy_servers(action("DUNNO"))
    server = _server(
        postwall_factory,
        f"check_policy_service {policy.endpoint}",
        smtpd_tls_cert_file=str(certs.server_cert),
        smtpd_tls_key_file=str(certs.server_key),
        smtpd_tls_CAfile=str(certs.ca_cert),
        smtpd_tls_security_level="may",
        smtpd_tls_ask_ccert="yes",
    )
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    ctx.check_hostname = False  # the server certificate names localhost, not 127.0.0.1
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.starttls(context=ctx)
        smtp.ehlo("client.example")
        smtp.mail("sender@example.org")
        assert smtp.rcpt("root@postwall.test")[0] == 250
        cipher, protocol, bits = smtp.sock.cipher()  # type: ignore[union-attr]
    (request,) = policy.requests
    assert request["encryption_protocol"] == protocol
    assert request["encryption_cipher"] == cipher
    assert request["encryption_keysize"] == str(bits)
    assert request["ccert_subject"] == certs.CLIENT_CN
    assert request["ccert_issuer"] == "postwall+20test+20CA"  # xtext, as Postfix
    assert request["ccert_fingerprint"] == peers.cert_fingerprint(certs.client_cert)
    assert request["ccert_pubkey_fingerprint"].count(":") == 31


def test_request_limit_and_a_server_that_hangs_up_after_each_reply(  # type: ignore[no-untyped-def]
    postwall_factory, policy_servers
):
    limited = policy_servers(action("DUNNO"))
    hangup = policy_servers(action("DUNNO"))
    hangup.close_after_reply = True
    server = _server(
        postwall_factory,
        f"check_policy_service {{ {limited.endpoint}, request_limit=1 }}, "
        f"check_policy_service {hangup.endpoint}",
    )
    for _ in range(3):
        assert _rcpt(server)[0] == 250
    assert len(limited.requests) == 3 and limited.connections == 3
    # A pooled connection the server closed is replaced at once: no retry, no warning.
    assert len(hangup.requests) == 3 and hangup.connections == 3
    assert "warning" not in server.log_text().partition("daemon started")[2]


def test_end_of_message_requests_carry_the_real_size(postwall_factory, policy_servers):  # type: ignore[no-untyped-def]
    """smtpd_end_of_data_restrictions: the policy server sees END-OF-MESSAGE with the
    message's size (not SIZE=), in the transaction's instance, and may still refuse it."""

    def answer(request: dict[str, str]) -> bytes:
        refuse = request["protocol_state"] == "END-OF-MESSAGE" and int(request["size"]) > 5000
        return b"action=REJECT too big for you\n\n" if refuse else b"action=DUNNO\n\n"

    policy = policy_servers(answer)
    server = _server(
        postwall_factory,
        f"check_policy_service {policy.endpoint}",
        smtpd_end_of_data_restrictions=f"check_policy_service {policy.endpoint}",
    )
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as smtp:
        smtp.ehlo("client.example")
        small = peers.simple_message("small", "sender@example.org", "root@postwall.test")
        smtp.mail("sender@example.org", ["SIZE=99999"])
        smtp.rcpt("root@postwall.test")
        assert smtp.data(small)[0] == 250
        smtp.mail("sender@example.org")
        smtp.rcpt("root@postwall.test")
        code, text = smtp.data(small + b"x" * 6000 + b"\r\n")
        assert (code, text) == (
            554,
            b"5.7.1 <END-OF-MESSAGE>: End-of-data rejected: too big for you",
        )
    eom = [r for r in policy.requests if r["protocol_state"] == "END-OF-MESSAGE"]
    rcpt = [r for r in policy.requests if r["protocol_state"] == "RCPT"]
    assert len(eom) == 2 and eom[0]["instance"] == rcpt[0]["instance"]
    assert int(eom[0]["size"]) == len(small.replace(b"\n", b"\r\n")) or int(eom[0]["size"]) < 5000
    assert int(eom[1]["size"]) > 6000
    server.wait_log(r"reject: END-OF-MESSAGE from \S+: 554 5\.7\.1 <END-OF-MESSAGE>: End-of-data")
    assert len(peers.wait_maildir(server.maildir("root"), 1)) == 1
