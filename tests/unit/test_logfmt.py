"""logfmt: every event's text byte for byte against tests/golden/log/events.txt.

The golden file holds lines captured from the reference Postfix 3.7.11 and
lines derived from its source; each case below must produce exactly its line.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postwall import logfmt as lf

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "log" / "events.txt"

LOCAL = (None, "127.0.0.1")
REMOTE = ("unknown", "198.51.100.4")
D = lf.Delays(0.12, 0.01, 0.01, 0.0, 0.1)


def _deliver(
    qid: str, to: str, relay: str, d: lf.Delays, dsn: str, status: str, text: str, **kw: object
) -> str:
    return lf.delivery_status(
        qid,
        to=to,
        relay=relay,
        delay=d.total,
        delays=d.parts,
        dsn=dsn,
        status=status,
        text=text,
        **kw,  # type: ignore[arg-type]
    )


def _delays_text(d: lf.Delays) -> str:
    return f"delay={lf.format_delay(d.total)}, delays=" + "/".join(
        lf.format_delay(v) for v in d.parts
    )


def _local_time(*fields: int) -> float:
    return time.mktime((*fields, 0, 0, -1))  # type: ignore[arg-type]


def _golden() -> dict[str, str]:
    cases: dict[str, str] = {}
    for line in GOLDEN.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, text = line.partition("|")
        assert name not in cases, f"duplicate golden case {name}"
        cases[name] = text
    return cases


CASES: dict[str, Callable[[], str]] = {
    "connect": lambda: lf.connect(None, "127.0.0.1"),
    "connect_ipv6": lambda: lf.connect("unknown", "::1"),
    "disconnect": lambda: lf.disconnect(*LOCAL, "ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5"),
    "disconnect_errors": lambda: lf.disconnect(
        *LOCAL, " ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4"
    ),
    "disconnect_bare": lambda: lf.disconnect("mail.example.com", "192.0.2.7"),
    "lost_rcpt": lambda: lf.lost_connection("RCPT", *LOCAL),
    "lost_data": lambda: lf.lost_connection("DATA", *LOCAL, nbytes=21),
    "lost_starttls": lambda: lf.session_abort("lost connection", "STARTTLS", *LOCAL),
    "timeout_eom": lambda: lf.timeout("END-OF-MESSAGE", "mail.example.com", "192.0.2.7"),
    "too_many_errors": lambda: lf.too_many_errors("RCPT", None, "192.0.2.66"),
    "pipelining_connect": lambda: lf.improper_pipelining("CONNECT", *LOCAL, b"EHLO x\r\nQUIT\r\n"),
    "pipelining_binary": lambda: lf.improper_pipelining(
        "EHLO", *LOCAL, b"NOOP \t\\\"'\x80\xff\x01 " + b"x" * 150 + b"\r\nQUIT\r\n"
    ),
    "too_many_errors_unknown": lambda: lf.too_many_errors("UNKNOWN", *LOCAL),
    "lost_bdat_bytes": lambda: lf.lost_connection("BDAT", *LOCAL, nbytes=12),
    "lost_bdat": lambda: lf.lost_connection("BDAT", *LOCAL),
    "disconnect_too_many_errors": lambda: lf.disconnect(
        *LOCAL, "ehlo=1 unknown=0/20 commands=1/21"
    ),
    "timeout_ehlo": lambda: lf.timeout("EHLO", *LOCAL),
    "disconnect_no_commands": lambda: lf.disconnect(*LOCAL, "commands=0/0"),
    "setting_up_tls": lambda: lf.tls_setup(*LOCAL),
    "ssl_accept_lost": lambda: lf.ssl_accept_error(*LOCAL, "lost connection"),
    "ssl_accept_code": lambda: lf.ssl_accept_error(*LOCAL, "-1"),
    "tls_library_problem": lambda: lf.tls_library_problem(
        "error:0A00010B:SSL routines::wrong version number:../ssl/record/ssl3_record.c:350:"
    ),
    "tls_abort": lambda: lf.tls_abort(None, "192.0.2.9", "Cannot start TLS: handshake failure"),
    "client": lambda: lf.client("207E616000D", *LOCAL),
    "client_sasl": lambda: lf.client(
        "3F2A11C0042", None, "203.0.113.5", sasl_method="PLAIN", sasl_username="alice"
    ),
    "client_port": lambda: lf.client("3F2A11C0042", "mail.example.com", "2001:db8::25", port=49152),
    "reject_rcpt": lambda: lf.reject(
        None,
        "RCPT",
        *LOCAL,
        "550 5.1.1 <nosuchuser@localhost>: Recipient address rejected: "
        "User unknown in local recipient table",
        sender="bob@example.com",
        recipient="nosuchuser@localhost",
        protocol="ESMTP",
        helo="vm",
    ),
    "reject_rcpt_null_sender": lambda: lf.reject(
        None,
        "RCPT",
        *LOCAL,
        "550 5.1.1 <nosuch@localhost>: Recipient address rejected: "
        "User unknown in local recipient table",
        sender="",
        recipient="nosuch@localhost",
        protocol="ESMTP",
        helo="a",
    ),
    "reject_relay": lambda: lf.reject(
        None,
        "RCPT",
        *REMOTE,
        "554 5.7.1 <x@example.net>: Relay access denied",
        sender="a@example.org",
        recipient="x@example.net",
        protocol="ESMTP",
        helo="client.example.org",
    ),
    "reject_connect": lambda: lf.reject(
        None,
        "CONNECT",
        *REMOTE,
        "554 5.7.1 <unknown[198.51.100.4]>: Client host rejected: Access denied",
        protocol="SMTP",
    ),
    "reject_helo": lambda: lf.reject(
        None,
        "HELO",
        *REMOTE,
        "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname",
        protocol="SMTP",
        helo="localhost",
    ),
    "reject_mail": lambda: lf.reject(
        None,
        "MAIL",
        *REMOTE,
        "553 5.7.1 <spam@example.com>: Sender address rejected: Access denied",
        sender="spam@example.com",
        protocol="ESMTP",
        helo="x.example",
    ),
    "reject_data": lambda: lf.reject(
        "",
        "DATA",
        *REMOTE,
        "554 5.5.1 Error: no valid recipients",
        sender="a@example.org",
        protocol="ESMTP",
        helo="x.example",
    ),
    "reject_eom": lambda: lf.reject(
        "4B1C0D2E3F",
        "END-OF-MESSAGE",
        *REMOTE,
        "552 5.3.4 Message size exceeds fixed limit",
        sender="a@example.org",
        recipient="b@example.com",
        protocol="ESMTP",
        helo="x.example",
    ),
    "reject_warning": lambda: lf.reject(
        None,
        "RCPT",
        *REMOTE,
        "554 5.7.1 <x@example.net>: Relay access denied",
        sender="a@example.org",
        recipient="x@example.net",
        protocol="ESMTP",
        helo="x.example",
        action="reject_warning",
    ),
    "sasl_failed_plain": lambda: lf.sasl_failed(
        None, "192.0.2.200", "PLAIN", "authentication failure"
    ),
    "sasl_failed_login": lambda: lf.sasl_failed(
        None, "192.0.2.201", "LOGIN", "UGFzc3dvcmQ6", "admin@example.com"
    ),
    "sasl_failed_noreason": lambda: lf.sasl_failed(None, "2001:db8::bad", "PLAIN", ""),
    "sasl_aborted": lambda: lf.sasl_aborted(None, "192.0.2.202", "LOGIN"),
    "hostname_mismatch": lambda: lf.hostname_mismatch("ptr.example.net", "192.0.2.44"),
    "hostname_mismatch_error": lambda: lf.hostname_mismatch(
        "ptr.example.net", "192.0.2.44", "Name or service not known"
    ),
    "etrn_reject": lambda: lf.etrn_reject("foo", *LOCAL),
    "non_smtp": lambda: lf.non_smtp_command(None, "192.0.2.3", "GET / HTTP/1.1"),
    "message_id": lambda: lf.cleanup_message_id("207E616000D", " <20261128091547.008747@vm>"),
    "message_id_empty_header": lambda: lf.cleanup_message_id("4B1C0D2E3F", " "),
    "message_id_missing": lambda: lf.cleanup_message_id("4B1C0D2E3F", None),
    "resent_message_id": lambda: lf.cleanup_message_id(
        "4B1C0D2E3F", "<r1@example.com>", resent=True
    ),
    "pickup": lambda: lf.pickup("4B1C0D2E3F", 0, "root"),
    "queue_active": lambda: lf.queue_active("207E616000D", "alice@example.com", 372, 1),
    "queue_active_null": lambda: lf.queue_active("4B1C0D2E3F", "", 2048, 3),
    "removed": lambda: lf.removed("207E616000D"),
    "corrupt": lambda: lf.corrupt_queue_file("4B1C0D2E3F"),
    "corrupt_reason": lambda: lf.corrupt_queue_file("4B1C0D2E3F", "missing end record"),
    "expired": lambda: lf.expired("4B1C0D2E3F", "a@example.org"),
    "force_expired": lambda: lf.expired("4B1C0D2E3F", "a@example.org", forced=True),
    "delivered_local": lambda: _deliver(
        "207E616000D",
        "root@localhost",
        "local",
        lf.Delays.from_stamps(100.0, 100.011, 100.0125, None, 100.0152),
        "2.0.0",
        "sent",
        "delivered to maildir",
    ),
    "delivered_zero": lambda: _deliver(
        "36BEE16000D",
        "root@localhost",
        "local",
        lf.Delays.from_stamps(100.0, 100.001, 100.002, None, 100.003),
        "2.0.0",
        "sent",
        "delivered to maildir",
    ),
    "delivered_one": lambda: _deliver(
        "D5C12160015",
        "root@vm",
        "local",
        lf.Delays.from_stamps(100.0, 100.996, 100.998, None, 100.999),
        "2.0.0",
        "sent",
        "delivered to maildir",
    ),
    "delivered_orig_to": lambda: _deliver(
        "4B1C0D2E3F",
        "root@vm.example",
        "local",
        D,
        "2.0.0",
        "sent",
        "delivered to maildir",
        orig_to="postmaster@vm.example",
    ),
    "delivered_same_orig": lambda: _deliver(
        "4B1C0D2E3F",
        "Root@vm.example",
        "local",
        D,
        "2.0.0",
        "sent",
        "delivered to maildir",
        orig_to="root@VM.example",
    ),
    "deferred_connect": lambda: _deliver(
        "4B1C0D2E3F",
        "b@example.net",
        "none",
        # A failed connect still stamps set-up completion, so the wait shows as set-up.
        lf.Delays.from_stamps(0.0, 1233.2, 1233.23, 1234.3, 1234.3),
        "4.4.1",
        "deferred",
        lf.connect_failed("mx.example.net", "192.0.2.25", 25, "Connection refused"),
    ),
    "bounced_remote": lambda: _deliver(
        "4B1C0D2E3F",
        "nobody@example.net",
        "mx.example.net[192.0.2.25]:25",
        lf.Delays.from_stamps(10.0, 10.05, 10.05, 11.25, 12.25),
        "5.1.1",
        "bounced",
        lf.host_said(
            "mx.example.net[192.0.2.25]",
            "550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown",
            "RCPT TO command",
        ),
        conn_use=2,
    ),
    "bounce_notice": lambda: lf.notification("4B1C0D2E3F", "sender non-delivery", "5D6E7F8A9B"),
    "delay_notice": lambda: lf.notification("4B1C0D2E3F", "sender delay", "5D6E7F8A9C"),
    "success_notice": lambda: lf.notification(
        "685F5162260", lf.NOTIFICATION_KINDS[("success", False)], "6E07516226D"
    ),
    "postmaster_notice": lambda: lf.notification(
        "4B1C0D2E3F", lf.NOTIFICATION_KINDS[("failure", True)], "5D6E7F8A9D"
    ),
    "notice_discarded": lambda: lf.postmaster_notice_discarded("4B1C0D2E3F"),
    "starttls_offered": lambda: lf.host_offered_starttls("mx.example.net"),
    "connect_failed_v6": lambda: lf.connect_failed(
        "mx.example.net", "2001:db8::25", 25, "Network is unreachable"
    ),
    "lost_with": lambda: lf.lost_connection_with(
        "mx.example.net[192.0.2.25]", "receiving the initial server greeting"
    ),
    "timed_out_with": lambda: lf.conversation_timed_out(
        "mx.example.net[192.0.2.25]", "sending message body"
    ),
    "master_started": lambda: lf.master_started("3.7.11", "/etc/postfix"),
    "master_reload": lambda: lf.master_reload("3.7.11", "/etc/postfix"),
    "master_terminating": lambda: lf.master_terminating(signal.SIGTERM),
    "anvil_rate": lambda: lf.anvil_max_rate(
        "connection", 2, 60, "smtp:115.64.127.45", _local_time(2026, 7, 11, 16, 13, 53)
    ),
    "anvil_count": lambda: lf.anvil_max_count(
        1, "smtp:115.64.127.45", _local_time(2026, 7, 11, 16, 13, 52)
    ),
    "anvil_cache": lambda: lf.anvil_max_cache(1, _local_time(2026, 7, 1, 6, 3, 52)),
}


def test_every_golden_line_has_a_case() -> None:
    assert set(_golden()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    assert CASES[name]() == _golden()[name]


# Vectors from Postfix's own format_tv test table (src/util/format_tv.ref):
# (seconds, microseconds, significant digits, max decimals) -> text.
FORMAT_TV = [
    (1110, 0, 2, 6, "1110"),
    (111, 0, 2, 6, "111"),
    (11, 100000, 2, 6, "11"),
    (1, 110000, 2, 6, "1.1"),
    (0, 111000, 2, 6, "0.11"),
    (0, 11100, 2, 6, "0.011"),
    (0, 1110, 2, 6, "0.0011"),
    (0, 111, 2, 6, "0.00011"),
    (0, 11, 2, 6, "0.000011"),
    (0, 1, 2, 6, "0.000001"),
    (0, 10, 2, 6, "0.00001"),
    (99, 600000, 2, 6, "100"),
    (9, 960000, 2, 6, "10"),
    (0, 996000, 2, 6, "1"),
    (0, 99600, 2, 6, "0.1"),
    (0, 9960, 2, 6, "0.01"),
    (0, 996, 2, 6, "0.001"),
    (1, 110000, 1, 6, "1"),
    (0, 111000, 1, 6, "0.1"),
    (0, 11, 1, 6, "0.00001"),
    (9, 960000, 1, 6, "10"),
    # delay_logging_resolution_limit=2 (Postfix's default) caps decimals.
    (0, 4999, 2, 2, "0"),
    (0, 5000, 2, 2, "0.01"),
    (0, 125000, 2, 2, "0.13"),
    (0, 995000, 2, 2, "1"),
    (1, 50000, 2, 2, "1.1"),
    (10, 499999, 2, 2, "10"),
    (10, 500000, 2, 2, "11"),
]


@pytest.mark.parametrize(("sec", "usec", "sig", "maxd", "text"), FORMAT_TV)
def test_format_tv(sec: int, usec: int, sig: int, maxd: int, text: str) -> None:
    assert lf.format_tv(sec, usec, sig, maxd) == text


def test_negative_delay_is_zero() -> None:
    # Clock jumped back: Postfix clamps the difference to 0.
    d = lf.Delays.from_stamps(100.0, 99.0, 98.0, None, 97.0)
    assert _delays_text(d) == "delay=0, delays=0/0/0/0"


def test_delays_missing_stamps() -> None:
    # Bounced by cleanup: no active stamp, everything is "before qmgr".
    assert _delays_text(lf.Delays.from_stamps(0.0, None, None, None, 2.5)) == (
        "delay=2.5, delays=2.5/0/0/0"
    )
    # Deferred by qmgr: no hand-off, the rest is qmgr latency.
    assert _delays_text(lf.Delays.from_stamps(0.0, 1.0, None, None, 3.0)) == (
        "delay=3, delays=1/2/0/0"
    )


def test_should_log_abort() -> None:
    assert not lf.should_log_abort("lost connection", "END-OF-MESSAGE")
    assert lf.should_log_abort("timeout", "END-OF-MESSAGE")
    assert lf.should_log_abort("lost connection", "RCPT")


@given(st.binary(max_size=300))
def test_escape_is_printable_and_bounded(data: bytes) -> None:
    text = lf.improper_pipelining("EHLO", *LOCAL, data)
    assert text.isprintable()
    assert "\n" not in text and "\r" not in text
    # At most 4 characters per shown byte, and at most 100 bytes are shown.
    prefix = len(lf.improper_pipelining("EHLO", *LOCAL, b""))
    assert len(text) - prefix <= 4 * min(len(data), 100)


@given(st.floats(min_value=0, max_value=10**7, allow_nan=False))
def test_format_delay_precision(seconds: float) -> None:
    text = lf.format_delay(seconds)
    whole, _, frac = text.partition(".")
    assert not frac.endswith("0")
    if int(whole) >= 10:
        assert frac == ""
    elif int(whole) >= 1:
        assert len(frac) <= 1
    else:
        assert len(frac) <= 2
    assert abs(float(text) - seconds) <= 0.5 + 1e-9


@pytest.mark.parametrize(
    ("internal", "logged"),
    [
        ("root@localhost", "root@localhost"),
        ("quoted user@localhost", '"quoted user"@localhost'),  # reference: to=<"quoted user"@..>
        ("user@other@localhost", '"user@other"@localhost'),
        ("a..b@c", '"a..b"@c'),
        ('a"b@c', '"a\\"b"@c'),
        ("caf\u00e9@b", "caf\u00e9@b"),  # 8-bit stays as it is
        ("", ""),  # the null sender
    ],
)
def test_addresses_are_logged_in_external_form(internal: str, logged: str) -> None:
    assert lf.external_address(internal) == logged
    line = lf.reject(None, "RCPT", "h", "192.0.2.1", "550 5.1.1 x", recipient=internal)
    assert line.endswith(f" to=<{logged}>")
