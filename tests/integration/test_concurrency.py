"""1,000 simultaneous connections against one postwall: some idle, some trickling a byte a
second, some sending mail.  The service's session bound (maxproc, here
default_process_limit = 300) admits 300; every connection past it is told
`421 4.3.2 All server ports are busy` at once; the admitted senders' mail is queued; a
well-behaved client that retries on 4xx (as every MTA does) gets its message through while
the attack goes on; the server's memory stays bounded.  The figures are printed (-s).
"""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

import peers

BOUND = 300
CONNECTIONS = 1000


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    banner = await asyncio.wait_for(reader.readline(), 30)
    return reader, writer, banner


async def _idle(port: int, hold: asyncio.Event) -> bytes:
    _reader, writer, banner = await _open(port)
    await hold.wait()
    writer.close()
    return banner


async def _slow(port: int, hold: asyncio.Event) -> bytes:
    _reader, writer, banner = await _open(port)
    if banner.startswith(b"220"):
        for byte in b"EHLO slow.example\r\n":
            if hold.is_set() or writer.is_closing():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except OSError:
                break
            await asyncio.sleep(1)
    writer.close()
    return banner


async def _sender(port: int, hold: asyncio.Event) -> bytes:
    reader, writer, banner = await _open(port)
    if banner.startswith(b"220"):
        msg = b"Subject: load\r\n\r\nhello\r\n.\r\n"
        try:
            while not hold.is_set():
                writer.write(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n")
                for _ in range(3):
                    await asyncio.wait_for(reader.readline(), 30)
                writer.write(msg)
                assert (await asyncio.wait_for(reader.readline(), 30)).startswith(b"250")
                await asyncio.sleep(0.2)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
    writer.close()
    return banner


async def _good_client(port: int) -> tuple[float, int]:
    """Retry on 4xx until the message is queued: (seconds it took, attempts)."""
    started = time.monotonic()
    attempts = 0
    while time.monotonic() - started < 60:
        attempts += 1
        reader, writer, banner = await _open(port)
        if banner.startswith(b"220"):
            writer.write(
                b"EHLO good.example\r\nMAIL FROM:<good@example.org>\r\n"
                b"RCPT TO:<root@localhost>\r\nDATA\r\n"
            )
            replies = []
            while len(replies) < 4:
                line = await asyncio.wait_for(reader.readline(), 30)
                if line[3:4] != b"-":
                    replies.append(line)
            writer.write(b"Subject: good\r\n\r\nwell behaved\r\n.\r\nQUIT\r\n")
            done = await asyncio.wait_for(reader.readline(), 30)
            writer.close()
            assert done.startswith(b"250 2.0.0 Ok: queued as"), done
            return time.monotonic() - started, attempts
        writer.close()
        await asyncio.sleep(0.5)
    raise AssertionError("the well-behaved client never got through")


def test_thousand_connections_bounded_and_still_serving(postwall_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    server = postwall_factory(
        params={
            "default_process_limit": str(BOUND),
            "smtpd_timeout": "5s",
            "smtpd_peername_lookup": "no",
        }
    )
    assert server.pid is not None
    rss_before = _rss_kib(server.pid)

    async def attack() -> dict[str, object]:
        hold = asyncio.Event()
        kinds = [_idle, _slow, _sender]
        tasks = [asyncio.create_task(kinds[i % 3](server.port, hold)) for i in range(CONNECTIONS)]
        opened = time.monotonic()
        await asyncio.sleep(1)
        peak = _rss_kib(server.pid)  # type: ignore[arg-type]
        good = asyncio.create_task(_good_client(server.port))
        while not good.done():
            await asyncio.sleep(0.25)
            peak = max(peak, _rss_kib(server.pid))  # type: ignore[arg-type]
        hold.set()
        banners = await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "banners": banners,
            "good": good.result(),
            "peak": peak,
            "attack_seconds": time.monotonic() - opened,
        }

    result = asyncio.run(attack())
    banners = result["banners"]
    assert isinstance(banners, list)
    errors = [b for b in banners if isinstance(b, BaseException)]
    assert not errors, errors[:3]
    busy = sum(1 for b in banners if b == b"421 4.3.2 All server ports are busy\r\n")
    admitted = sum(1 for b in banners if isinstance(b, bytes) and b.startswith(b"220 "))
    assert admitted + busy == CONNECTIONS
    assert CONNECTIONS - BOUND <= busy < CONNECTIONS, (admitted, busy)
    took, attempts = result["good"]  # type: ignore[misc]
    peak = int(result["peak"])  # type: ignore[call-overload]
    print(
        f"\nadmitted {admitted}, told 421 4.3.2: {busy}; good client queued after"
        f" {took:.1f}s ({attempts} attempts); server RSS {rss_before} KiB idle,"
        f" {peak} KiB peak under {CONNECTIONS} connections"
    )
    # Bounded: well under a MiB per admitted session, whatever the attackers do.
    assert peak - rss_before < 150 * 1024, (rss_before, peak)
    server.wait_log(r'warning: service "127\.0\.0\.1:\d+" \(127\.0\.0\.1:\d+\) has reached its')
    server.wait_log(r"NOQUEUE: reject: CONNECT from \[127\.0\.0\.1\]:\d+: all server ports busy")
    # Once the attack is over the server serves as before.
    peers.wait_for(lambda: peers.port_open("127.0.0.1", server.port), 10, "the port to stay open")
    assert server.running
