"""The test infrastructure itself works against real peers.

Proves: a private receiving Postfix takes mail from swaks over STARTTLS and delivers it to its
Maildir; a private relaying Postfix hands mail to smtp-sink and, over TLS with a client
certificate, to another Postfix (relaying into postwall is tests/interop/test_postwall_interop);
openssl s_client sees the test certificate; the private copy of the reference Postfix answers
like 127.0.0.1:25; PostwallServer starts, stops, restarts and kills a real process; the CI
rule turns interop skips into failures. If these fail, every interop test is suspect.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

TESTS = Path(__file__).resolve().parent.parent


def test_receiver_delivers_swaks_starttls_to_maildir(
    postfix_receiver: peers.PostfixInstance, certs: peers.TestCerts
) -> None:
    peers.require_tool("swaks")
    result = peers.swaks(
        f"127.0.0.1:{postfix_receiver.port}",
        "-tls",
        "--tls-cert",
        str(certs.client_cert),
        "--tls-key",
        str(certs.client_key),
        "--header",
        "Subject: smoke-starttls",
        to="bob@example.test",
    )
    assert result.returncode == 0, result.transcript
    assert "<-  220 2.0.0 Ready to start TLS" in result.transcript
    assert re.search(r"<~  250 2\.0\.0 Ok: queued as [0-9A-F]+", result.transcript)

    (message,) = peers.wait_maildir(postfix_receiver.maildir("bob"))
    assert b"Subject: smoke-starttls" in message
    assert re.search(rb"\(using TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)", message)
    # The client certificate is signed by the test CA, which the receiver trusts.
    postfix_receiver.wait_log(r"Trusted TLS connection established from localhost\[127\.0\.0\.1\]")
    postfix_receiver.wait_log(r"to=<bob@example\.test>, relay=virtual, .*status=sent")
    assert postfix_receiver.maildir("alice").exists() is False


def test_relay_client_relays_to_smtp_sink(
    postfix_factory: Callable[..., peers.PostfixInstance],
    smtp_sink_factory: Callable[..., peers.SmtpSink],
) -> None:
    sink = smtp_sink_factory()
    relay = postfix_factory("relay_client", sink.port)
    relay.sendmail(
        "alice@postwall.test",
        ["someone@far.example"],
        peers.simple_message("smoke-relay", "alice@postwall.test", "someone@far.example"),
    )
    (dump,) = sink.wait_messages()
    assert b"Subject: smoke-relay" in dump
    assert b"someone@far.example" in dump
    relay.wait_queue_empty()
    line = relay.wait_log(r"to=<someone@far\.example>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:(\d+),")
    assert int(line.group(1)) == sink.port


def test_relay_client_with_client_certificate_over_tls(
    postfix_factory: Callable[..., peers.PostfixInstance],
    postfix_receiver: peers.PostfixInstance,
    certs: peers.TestCerts,
) -> None:
    relay = postfix_factory(
        "relay_client",
        postfix_receiver.port,
        tls_level="encrypt",
        ca_file=certs.ca_cert,
        client_cert=(certs.client_cert, certs.client_key),
    )
    relay.sendmail(
        "alice@postwall.test",
        ["alice@example.test"],
        peers.simple_message("smoke-cert", "alice@postwall.test", "alice@example.test"),
    )
    (message,) = peers.wait_maildir(postfix_receiver.maildir("alice"), timeout=60)
    assert b"Subject: smoke-cert" in message
    relay.wait_log(r"Trusted TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]")
    postfix_receiver.wait_log(r"Trusted TLS connection established from localhost\[127\.0\.0\.1\]")
    relay.wait_queue_empty()


def test_s_client_starttls_shows_certificate(
    shared_postfix_receiver: peers.PostfixInstance, certs: peers.TestCerts
) -> None:
    result = peers.openssl_s_client_starttls(
        "127.0.0.1", shared_postfix_receiver.port, ["-CAfile", str(certs.ca_cert)]
    )
    assert result.returncode == 0, result.transcript
    assert re.search(r"subject=\s*CN\s*=\s*localhost", result.stdout), result.stdout
    assert "Verify return code: 0 (ok)" in result.stdout
    assert "221 2.0.0 Bye" in result.stdout


def test_s_client_rejects_server_when_ca_unknown(
    shared_postfix_receiver: peers.PostfixInstance, certs: peers.TestCerts
) -> None:
    # The self-signed certificate as the only trust anchor: the chain cannot verify.
    result = peers.openssl_s_client_starttls(
        "127.0.0.1", shared_postfix_receiver.port, ["-CAfile", str(certs.selfsigned_cert)]
    )
    assert "Verify return code: 0 (ok)" not in result.stdout
    assert re.search(r"Verify return code: (19|20|21) ", result.stdout), result.stdout


REFERENCE_EHLO = [
    "220 vm ESMTP Postfix (Debian/GNU)",
    "250-vm",
    "250-PIPELINING",
    "250-SIZE 10240000",
    "250-VRFY",
    "250-ETRN",
    "250-STARTTLS",
    "250-ENHANCEDSTATUSCODES",
    "250-8BITMIME",
    "250-DSN",
    "250-SMTPUTF8",
    "250 CHUNKING",
    "221 2.0.0 Bye",
]


REFERENCE_RCPT = [
    "220 vm ESMTP Postfix (Debian/GNU)",
    "250 vm",
    "250 2.1.0 Ok",
    "550 5.1.1 <nosuchuser@localhost>: Recipient address rejected: User unknown in local "
    "recipient table",
    "250 2.1.5 Ok",
    "550 5.1.1 <x@far.example>: Recipient address rejected: reference instance: no outbound mail",
    "250 2.0.0 Ok",
    "221 2.0.0 Bye",
]


def exchange(port: int, commands: list[str]) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall("".join(f"{c}\r\n" for c in commands).encode())  # Postfix pipelines them
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode().splitlines()


EHLO = ["EHLO client.postwall.test", "QUIT"]
RCPTS = [
    "HELO client.postwall.test",
    "MAIL FROM:<a@b.test>",
    "RCPT TO:<nosuchuser@localhost>",
    "RCPT TO:<root@localhost>",
    "RCPT TO:<x@far.example>",
    "RSET",
    "QUIT",
]


def test_reference_copy_answers_like_the_reference(
    reference_postfix: peers.PostfixInstance,
) -> None:
    # Recorded from the dev machine's reference on 127.0.0.1:25, and compared live there.
    assert exchange(reference_postfix.port, EHLO) == REFERENCE_EHLO
    assert exchange(reference_postfix.port, RCPTS) == REFERENCE_RCPT
    if peers.port_open("127.0.0.1", 25) and not peers.in_ci():
        assert exchange(25, EHLO) == REFERENCE_EHLO
        assert exchange(25, RCPTS) == REFERENCE_RCPT


# --- PostwallServer, against a stand-in for `python3 -m postwall start` ---------------------

STAND_IN = textwrap.dedent(
    """
    import signal, socket, sys
    from pathlib import Path

    conf = Path(sys.argv[sys.argv.index("-c") + 1])
    main = dict(
        (k.strip(), v.strip())
        for k, _, v in (l.partition("=") for l in (conf / "main.cf").read_text().splitlines())
    )
    host, port = (conf / "master.cf").read_text().split()[0].rsplit(":", 1)
    if main.get("stand_in_fail"):
        sys.exit("stand-in: fatal: " + main["stand_in_fail"])
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen()
    with open(main["maillog_file"], "a") as log:
        log.write("stand-in/master: daemon started\\n")
    print("stand-in: listening", file=sys.stderr, flush=True)
    while True:
        c, _ = s.accept()
        c.sendall(b"220 " + main["myhostname"].encode() + b" ESMTP stand-in\\r\\n")
        c.close()
    """
)


@pytest.fixture
def stand_in(tmp_path: Path) -> list[str]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return [sys.executable, str(script)]


def banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        return s.recv(200)


def test_postwall_server_lifecycle(
    postwall_factory: Callable[..., peers.PostwallServer], stand_in: list[str]
) -> None:
    server = postwall_factory(params={"myhostname": "helper.test"}, command=stand_in)
    assert banner(server.port) == b"220 helper.test ESMTP stand-in\r\n"
    assert "daemon started" in server.log_text()
    assert server.maildir("bob") == server.config_dir / "mail" / "bob"
    assert (server.config_dir / "main.cf").read_text().count("mail_spool_directory") == 1
    assert (
        f"127.0.0.1:{server.port} inet n - n - - smtpd"
        in (server.config_dir / "master.cf").read_text()
    )

    assert server.stop() == 0
    assert not peers.port_open("127.0.0.1", server.port)
    server.restart()
    assert server.log_text().count("daemon started") == 2
    assert banner(server.port).startswith(b"220 ")
    assert server.kill() == -9
    assert not server.running


def test_postwall_server_start_failure_shows_stderr(
    postwall_factory: Callable[..., peers.PostwallServer], stand_in: list[str]
) -> None:
    with pytest.raises(peers.PeerError, match=r"(?s)exited with status 1.*bad main\.cf line 3"):
        postwall_factory(params={"stand_in_fail": "bad main.cf line 3"}, command=stand_in)


def test_wait_for_times_out_with_detail() -> None:
    with pytest.raises(peers.PeerError, match=r"timed out after 0\.2s waiting for nothing\nwhy"):
        peers.wait_for(lambda: None, 0.2, "nothing", detail=lambda: "why")


# --- CI strictness ----------------------------------------------------------------------------


def run_inner_pytest(tmp_path: Path, body: str, ci: bool) -> subprocess.CompletedProcess[str]:
    """Run a throwaway test file under a copy of the suite's root conftest."""
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent / "src")])
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


INNER = """
import peers, pytest

@pytest.mark.interop
def test_peer_missing():
    pytest.skip("no such peer")

def test_tool_missing():
    peers.require_tool("postwall-no-such-tool")

def test_plain_skip():
    pytest.skip("not an interop test")
"""


def test_ci_turns_interop_skips_into_failures(tmp_path: Path) -> None:
    local = run_inner_pytest(tmp_path, INNER, ci=False)
    assert "3 skipped" in local.stdout, local.stdout
    assert local.returncode == 0

    ci = run_inner_pytest(tmp_path, INNER, ci=True)
    assert "2 failed, 1 skipped" in ci.stdout, ci.stdout
    assert "interop test skipped under CI" in ci.stdout
    assert "CI requires every peer: postwall-no-such-tool not installed" in ci.stdout
    assert ci.returncode == 1
