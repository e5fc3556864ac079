"""Postfix 3.7's own smtp client (Cyrus SASL) and postwall's, authenticating to the same
server with the same main.cf settings: the same mechanism chosen, the same status line
when the password is refused or no mechanism is acceptable.

The server is a postwall that takes mail from authenticated clients only (the
sasl_receiver fixture: PLAIN, LOGIN, SCRAM-SHA-256, STARTTLS offered).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop

STATUS = (
    r"(?:postfix-postwall|postfix-pwt-[\d-]+)/smtp\[\d+\]: \w+: to=<root@b\.test>, "
    r"relay=(?P<relay>\S+), delay=[\d.]+, delays=[\d.]+/[\d.]+/[\d.]+/[\d.]+, "
    r"dsn=(?P<dsn>[\d.]+), status=(?P<status>\w+) \((?P<text>.*)\)"
)


def _settings(receiver: peers.PostwallServer, table: Path, **extra: str) -> dict[str, str]:
    settings = {
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"texthash:{table}",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_loglevel": "0",
        "minimal_backoff_time": "300s",
    }
    settings.update(extra)
    return settings


def _both(
    postfix_factory: Callable[..., peers.PostfixInstance],
    postwall_factory: Callable[..., peers.PostwallServer],
    receiver: peers.PostwallServer,
    tmp_path: Path,
    password: str,
    subject: str,
    **extra: str,
) -> dict[str, re.Match[str]]:
    """Send one message through each client; their status lines, by MTA."""
    table = tmp_path / "smtp_sasl_passwd"
    table.write_text(f"[127.0.0.1]:{receiver.port} alice:{password}\n")
    table.chmod(0o644)
    settings = _settings(receiver, table, **extra)
    pf = postfix_factory("relay_client", receiver.port, extra=settings)
    pw = postwall_factory(params={"relayhost": f"[127.0.0.1]:{receiver.port}", **settings})
    found = {}
    for name, mta in (("postfix", pf), ("postwall", pw)):
        message = peers.simple_message(f"{subject}.{name}", "alice@a.test", "root@b.test")
        if isinstance(mta, peers.PostfixInstance):
            mta.sendmail("alice@a.test", ["root@b.test"], message)
        else:
            peers.smtp_send("127.0.0.1", mta.port, "alice@a.test", ["root@b.test"], message)
        found[name] = mta.wait_log(STATUS)
    return found


def test_same_mechanism_as_cyrus(
    postfix_factory: Callable[..., peers.PostfixInstance],
    postwall_factory: Callable[..., peers.PostwallServer],
    sasl_receiver: peers.PostwallServer,
    tmp_path: Path,
) -> None:
    lines = _both(
        postfix_factory,
        postwall_factory,
        sasl_receiver,
        tmp_path,
        peers.SASL_PASSWORD,
        "sasl.same",
        smtp_sasl_tls_security_options="noanonymous",
    )
    statuses = {name: m.group("status") for name, m in lines.items()}
    assert statuses == {"postfix": "sent", "postwall": "sent"}, [
        m.group("text") for m in lines.values()
    ]
    methods = re.findall(r"sasl_method=([\w-]+), sasl_username=alice", sasl_receiver.log_text())
    assert len(methods) == 2 and methods[0] == methods[1], methods


@pytest.mark.parametrize(
    ("password", "extra"),
    [
        ("wrong", {"smtp_sasl_tls_security_options": "noanonymous"}),
        (peers.SASL_PASSWORD, {"smtp_sasl_mechanism_filter": "plain, login"}),  # noplaintext
    ],
    ids=["refused password", "no acceptable mechanism"],
)
def test_same_status_line_as_postfix_when_authentication_fails(
    postfix_factory: Callable[..., peers.PostfixInstance],
    postwall_factory: Callable[..., peers.PostwallServer],
    sasl_receiver: peers.PostwallServer,
    tmp_path: Path,
    password: str,
    extra: dict[str, str],
) -> None:
    lines = _both(
        postfix_factory, postwall_factory, sasl_receiver, tmp_path, password, "sasl.fail", **extra
    )
    pf, pw = lines["postfix"], lines["postwall"]
    warnings = {name: re.findall(r"warning: (SASL .*)", m.string) for name, m in lines.items()}
    assert warnings["postwall"] == warnings["postfix"]
    assert pw.group("status") == pf.group("status") == "deferred"
    assert (pw.group("relay"), pw.group("dsn"), pw.group("text")) == (
        pf.group("relay"),
        pf.group("dsn"),
        pf.group("text"),
    )
