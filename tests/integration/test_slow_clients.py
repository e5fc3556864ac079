"""Slow clients against a real postwall: a client trickling one byte a second cannot hold a
session past smtpd_timeout (a command, DATA) or smtpd_starttls_timeout (a TLS handshake),
because postwall turns smtpd_per_request_deadline on by default; the tarpit
(smtpd_soft_error_limit, smtpd_error_sleep_time) and smtpd_hard_error_limit hold; and a
client that never reads its replies cannot make them pile up.
"""

from __future__ import annotations

import socket
import time

import peers

TLS = "smtpd_tls_security_level"


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    assert sock.recv(1024).startswith(b"220 ")
    return sock


def _trickle(sock: socket.socket, data: bytes, limit: float) -> tuple[float, bytes]:
    """Send `data` a byte a second until the server closes; (seconds it took, what it said)."""
    started = time.monotonic()
    said = b""
    sock.settimeout(1)
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        if time.monotonic() - started > limit:
            break
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        said += chunk
        if not chunk:
            break
    return time.monotonic() - started, said


def test_one_byte_a_second_in_a_command_is_cut_at_smtpd_timeout(postwall_factory):
    server = postwall_factory(params={"smtpd_timeout": "3s"})
    sock = _connect(server.port)
    took, said = _trickle(sock, b"EHLO " + b"x" * 60 + b"\r\n", limit=20)
    assert said.endswith(b"421 4.4.2 postwall.test Error: timeout exceeded\r\n"), said
    assert 2.5 < took < 6, took
    server.wait_log(r"timeout after CONNECT from \S+\[127\.0\.0\.1\]")


def test_one_byte_a_second_in_data_is_cut_near_smtpd_timeout(postwall_factory):
    server = postwall_factory(params={"smtpd_timeout": "3s"})
    sock = _connect(server.port)
    sock.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
    got = b""
    while b"354 " not in got:
        got += sock.recv(4096)
    # Lines end often, so a per-line timer would never fire; the request deadline does
    # (each byte earns 1/smtpd_min_data_rate s, nothing like the second it costs).
    took, said = _trickle(sock, b"a\r\n" * 40, limit=20)
    assert said.endswith(b"421 4.4.2 postwall.test Error: timeout exceeded\r\n"), said
    assert 2.5 < took < 6, took
    server.wait_log(r"timeout after DATA")
    assert not list((server.config_dir / "queue").rglob("incoming/*"))


def test_one_byte_a_second_in_the_tls_handshake_is_cut_at_starttls_timeout(postwall_factory, certs):
    server = postwall_factory(
        params={
            TLS: "may",
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_starttls_timeout": "3s",
            "smtpd_timeout": "60s",
        }
    )
    sock = _connect(server.port)
    sock.sendall(b"EHLO x\r\n")
    time.sleep(0.3)
    sock.recv(4096)
    sock.sendall(b"STARTTLS\r\n")
    assert sock.recv(4096).startswith(b"220 2.0.0")
    # The start of a ClientHello record, a byte a second.
    hello = bytes.fromhex("160301020001") + bytes(200)
    took, said = _trickle(sock, hello, limit=20)
    assert said == b"", said  # nothing can be said in plaintext mid-handshake
    assert 2.5 < took < 6, took
    server.wait_log(r"SSL_accept error from \S+\[127\.0\.0\.1\]: timed out")


def test_implicit_tls_handshake_is_bounded_too(postwall_factory, certs):
    server = postwall_factory(
        params={
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_starttls_timeout": "2s",
        },
        smtpd_options={"smtpd_tls_wrappermode": "yes", TLS: "encrypt"},
    )
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    took, said = _trickle(sock, bytes.fromhex("160301020001") + bytes(200), limit=20)
    assert said == b""
    assert 1.5 < took < 5, took


def test_without_deadlines_each_read_restarts_the_clock(postwall_factory):
    """smtpd_per_request_deadline = no is Postfix's default behaviour: a read restarts the
    clock, so a trickle outlives smtpd_timeout (the option exists for compatibility)."""
    server = postwall_factory(params={"smtpd_timeout": "2s", "smtpd_per_request_deadline": "no"})
    sock = _connect(server.port)
    took, said = _trickle(sock, b"NOOP" + b" " * 6, limit=20)
    assert said == b"" and took > 8, (took, said)
    sock.sendall(b"\r\n")
    sock.settimeout(10)
    assert sock.recv(4096).startswith(b"250 ")


def test_tarpit_delays_replies_past_the_soft_error_limit(postwall_factory):
    server = postwall_factory(
        params={
            "smtpd_soft_error_limit": "2",
            "smtpd_error_sleep_time": "1s",
            "smtpd_hard_error_limit": "5",
        }
    )
    sock = _connect(server.port)
    sock.settimeout(15)
    times = []
    for _ in range(5):
        started = time.monotonic()
        sock.sendall(b"BOGUS\r\n")
        reply = sock.recv(4096)
        times.append(time.monotonic() - started)
    assert times[0] < 0.5
    assert all(t > 0.8 for t in times[2:]), times
    assert reply.endswith(b"421 4.7.0 postwall.test Error: too many errors\r\n"), reply
    server.wait_log(r"too many errors after UNKNOWN from \S+\[127\.0\.0\.1\]")


def test_a_client_that_never_reads_cannot_pile_up_replies(postwall_factory):
    server = postwall_factory(params={"smtpd_timeout": "3s"})
    sock = _connect(server.port)
    sock.settimeout(2)
    started = time.monotonic()
    stopped = ""
    # Unread EHLO replies fill the socket buffers; the server then stops reading (and its
    # error limits end the session), so sendall blocks or fails here.
    while time.monotonic() - started < 60 and not stopped:
        try:
            sock.sendall(b"EHLO x\r\n" * 64)
        except TimeoutError:
            stopped = "blocked"
        except OSError:
            stopped = "closed"
    assert stopped, "the server kept reading for a minute"
    peers.wait_for(lambda: "disconnect from" in server.log_text(), 30, "the stuck session to end")
