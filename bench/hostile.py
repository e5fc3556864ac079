"""Random hostile SMTP sessions against a running server on loopback (run by hand).

Each session pipelines a random mix of valid and malformed commands, bare CR and LF,
binary garbage and TLS record headers, half-closes, and reads whatever comes back.
Afterwards grep the server's log for "internal error" (postwall logs one line with
its location for any bug a peer triggers) and check the server still answers.

    python3 bench/hostile.py --port 2525 --port 2465 --seconds 60 --seed 12

Bounded by --seconds and --sessions; only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import socket
import time

COMMANDS = [
    b"EHLO x",
    b"HELO y\rz",
    b"MAIL FROM:<a@b>",
    b"MAIL FROM:<a@b> X=1\rY",
    b"MAIL FROM:<> SIZE=99999999999",
    b"RCPT TO:<root@localhost>",
    b"RCPT TO:<x@y>",
    b'RCPT TO:<"a b"@localhost> NOTIFY=SUCCESS ORCPT=rfc822;x',
    b"DATA",
    b"BDAT 5",
    b"BDAT 0 LAST",
    b"BDAT 3 LAST",
    b"RSET",
    b"NOOP",
    b"STARTTLS",
    b"VRFY root",
    b'VRFY "x\ry"',
    b"ETRN x",
    b"ETRN \x01",
    b"AUTH PLAIN",
    b"QUIT",
    b".",
    b"\x00\xff",
    b"EHLO " + b"a" * 3000,
    b"\x16\x03\x01\x02\x00\x01",
]
SEPARATORS = [b"\r\n", b"\n", b"\r", b""]


def one_session(rng: random.Random, host: str, port: int) -> int:
    """Send one random dialogue, half-close, return how many reply lines came back."""
    data = b"".join(
        rng.choice(COMMANDS) + rng.choice(SEPARATORS) for _ in range(rng.randint(1, 40))
    )
    if rng.random() < 0.3:
        data += rng.randbytes(rng.randint(0, 2000))
    lines = 0
    with socket.create_connection((host, port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                lines += chunk.count(b"\r\n")
        except OSError:
            pass  # the server may hang up first: that is an answer too
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, action="append", help="repeatable (default 2525)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=12)
    args = ap.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        ap.error("--host must be a loopback address")
    ports = args.port or [2525]
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    sessions = replies = 0
    while time.monotonic() < deadline and sessions < args.sessions:
        replies += one_session(rng, args.host, rng.choice(ports))
        sessions += 1
    print(f"{sessions} sessions, {replies} reply lines")


if __name__ == "__main__":
    main()
