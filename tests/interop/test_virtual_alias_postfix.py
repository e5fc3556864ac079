"""virtual_alias_maps and virtual_alias_domains (virtual(5)), the BCC maps and
relocated_maps (refused at RCPT, 5.1.6), against
Postfix 3.7: the same tables, the same recipients, sent to a private Postfix and to
postwall.  Compared: the reply to each RCPT, and where each accepted recipient went
(`to=` and `orig_to=` in the delivery lines; both servers discard, so only the routing
is compared).
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop

TABLE = """\
virt.test               anything
catch.test              anything
info@virt.test          alice@example.com, bob@remote.test
sales@virt.test         carol
@catch.test             catchall@example.com
postmaster@example.com  admin@example.com
team@example.com        dave, erin@example.com, team@example.com
deep@virt.test          info@virt.test
"""
RECIPIENTS = [
    "info@virt.test",
    "info+news@virt.test",
    "sales@virt.test",
    "anyone@catch.test",
    "team@example.com",
    "team+x@example.com",
    "plain@example.com",
    "deep@virt.test",
    "unknown@virt.test",
    "someone@elsewhere.test",
    "gone+x@example.com",
    "x@olddomain.test",
]
DELIVERED = re.compile(r"/discard\[\d+\]: \w+: to=<([^>]*)>(?:, orig_to=<([^>]*)>)?, .*status=sent")


def _params(table: Path) -> dict[str, str]:
    sender_bcc = table.with_name("sender_bcc")
    sender_bcc.write_text("sender@client.test  sent-copies@example.com\n")
    rcpt_bcc = table.with_name("recipient_bcc")
    rcpt_bcc.write_text("plain@example.com  plain-copy@remote.test\n@catch.test  info@virt.test\n")
    relocated = table.with_name("relocated")
    relocated.write_text("gone@example.com  new@elsewhere.test\n@olddomain.test  newdomain.test\n")
    for path in (sender_bcc, rcpt_bcc, relocated):
        path.chmod(0o644)
    return {
        "relocated_maps": f"texthash:{relocated}",
        "always_bcc": "archive",  # qualified with myorigin
        "sender_bcc_maps": f"texthash:{sender_bcc}",
        "recipient_bcc_maps": f"texthash:{rcpt_bcc}",
        "myhostname": "mx.example.com",
        "mydomain": "example.com",
        "myorigin": "example.com",
        "mydestination": "example.com, localhost, olddomain.test",
        "virtual_alias_maps": f"texthash:{table}",
        "recipient_delimiter": "+",
        "local_recipient_maps": "",
        "local_transport": "discard",
        "default_transport": "discard",
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "reject_unauth_destination",  # loopback may not relay
    }


def _session(port: int) -> dict[str, str]:
    """RCPT replies, one transaction per recipient."""
    replies = {}
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.postwall.test")
        for rcpt in RECIPIENTS:
            s.mail("sender@client.test")
            code, text = s.rcpt(rcpt)
            replies[rcpt] = f"{code} {text.decode()}"
            if code == 250:
                code, _ = s.data(peers.simple_message(rcpt, "sender@client.test", rcpt))
                assert code == 250
            else:
                s.rset()
    return replies


def _routes(log: str) -> set[tuple[str, str]]:
    return {(m.group(1), m.group(2) or "") for m in DELIVERED.finditer(log)}


def test_same_replies_and_routes_as_postfix(
    postfix_factory: Callable[..., peers.PostfixInstance],
    postwall_factory: Callable[..., peers.PostwallServer],
    tmp_path: Path,
) -> None:
    table = tmp_path / "virtual"
    table.write_text(TABLE)
    table.chmod(0o644)
    pf = postfix_factory("relay_client", 9, listen=True, extra=_params(table))
    pw = postwall_factory(params=_params(table))
    assert pf.port is not None
    theirs, ours = _session(pf.port), _session(pw.port)
    # Replies name the server's host: identical here, both are mx.example.com.
    assert ours == theirs
    assert theirs["unknown@virt.test"].startswith("550 5.1.1 <unknown@virt.test>: Recipient")
    assert theirs["gone+x@example.com"].endswith("User has moved to new@elsewhere.test")
    count = sum(1 for r in theirs.values() if r.startswith("250"))
    expected = _routes_when_settled(pf.log_text, count)
    got = _routes_when_settled(pw.log_text, count)
    assert got == expected, (got, expected)
    assert ("bob+news@remote.test", "info+news@virt.test") in got  # the extension carried
    assert ("plain-copy@remote.test", "") in got and ("archive@example.com", "") in got
    assert ("alice@example.com", "info@virt.test") in got  # a BCC address is an alias too


def _routes_when_settled(log: Callable[[], str], messages: int) -> set[tuple[str, str]]:
    """The routes once every accepted message was delivered (each ends with removed)."""
    peers.wait_for(lambda: log().count(": removed") >= messages, 30, "all messages delivered")
    return _routes(log())
