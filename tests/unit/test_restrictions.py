"""The restriction engine on its own: parsing, access(5) semantics, the stage rules.

Replies and orders here were checked against Postfix 3.7 (smtpd_check.c and, where the
transcripts in tests/transcripts/restrictions/ cover them, a live Postfix).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from postwall.config.network import Networks
from postwall.config.params import Params, split_list
from postwall.resolve import AddressResolver
from postwall.smtp.replies import Reply
from postwall.smtpd.restrictions import (
    ClientState,
    Decision,
    NotSupported,
    Restrictions,
    run_now,
    valid_hostname,
)


def make(
    tmp_path: Path,
    maps: dict[str, str] | None = None,
    classes: dict[str, str] | None = None,
    **kw: object,
) -> Restrictions:
    for name, text in (maps or {}).items():
        (tmp_path / name).write_text(text)
    values: dict[str, object] = {
        "myhostname": "mx.example.com",
        "mydestination": ("mx.example.com", "localhost"),
        "mynetworks": ("192.0.2.0/24",),
        "local_recipient_maps": (),
        "alias_maps": (),
        "config_directory": str(tmp_path),
        "recipient_delimiter": "+",
    }
    for key, value in kw.items():
        values[key] = (
            tuple(value.replace(",", " ").split())
            if isinstance(value, str) and key.endswith(("restrictions", "maps", "clientcerts"))
            else value
        )
    if classes:
        values["smtpd_restriction_classes"] = tuple(classes)
    params = dataclasses.replace(Params(), **values)  # type: ignore[arg-type]
    resolver = AddressResolver.from_params(params)
    return Restrictions(params, resolver, Networks(params.mynetworks), classes=classes)


def outside(**kw: object) -> ClientState:
    c = ClientState(name="client.example.org", addr="198.51.100.7", helo="client.example.org")
    c.sender = "alice@example.org"
    for key, value in kw.items():
        setattr(c, key, value)
    return c


def rcpt(r: Restrictions, c: ClientState, address: str) -> Decision:
    return run_now(r.rcpt(c, address))


def text(d: Decision) -> str | None:
    return str(d.reply) if d.reply is not None else None


def test_default_relay_control(tmp_path: Path) -> None:
    r = make(tmp_path)
    assert text(rcpt(r, outside(), "bob@foreign.example")) == (
        "454 4.7.1 <bob@foreign.example>: Relay access denied"
    )
    assert rcpt(r, outside(), "root@mx.example.com").reply is None
    assert rcpt(r, outside(addr="192.0.2.9"), "bob@foreign.example").reply is None
    assert not r.uses_dns


def test_open_relay_configurations_refuse_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reject_unauth_destination"):
        make(tmp_path, smtpd_relay_restrictions="permit_mynetworks")
    with pytest.raises(ValueError, match="open relay"):
        make(tmp_path, smtpd_relay_restrictions="", smtpd_recipient_restrictions="permit")


@pytest.mark.parametrize(
    "setting",
    [
        {"smtpd_client_restrictions": "check_client_a_access texthash:x"},
        {"smtpd_recipient_restrictions": "reject_unverified_recipient, reject"},
        {"smtpd_helo_restrictions": "check_helo_access mysql:/x"},
        {"smtpd_end_of_data_restrictions": "check_client_mx_access texthash:x"},
    ],
)
def test_unknown_restrictions_stop_start_up(tmp_path: Path, setting: dict[str, str]) -> None:
    with pytest.raises(NotSupported, match="not supported"):
        make(tmp_path, **setting)


def test_delivery_actions_in_access_tables_stop_start_up(tmp_path: Path) -> None:
    with pytest.raises(NotSupported, match="HOLD"):
        make(
            tmp_path,
            {"senders": "bad@example.org HOLD\n"},
            smtpd_sender_restrictions="check_sender_access texthash:senders",
        )


def test_each_list_must_permit_and_first_match_wins(tmp_path: Path) -> None:
    r = make(
        tmp_path,
        smtpd_client_restrictions="permit_mynetworks, reject",
        smtpd_sender_restrictions="permit",
    )
    reply = rcpt(r, outside(), "root@mx.example.com").reply
    assert str(reply) == (
        "554 5.7.1 <client.example.org[198.51.100.7]>: Client host rejected: Access denied"
    )
    assert rcpt(r, outside(addr="192.0.2.1"), "root@mx.example.com").reply is None


def test_warn_if_reject_logs_instead(tmp_path: Path) -> None:
    r = make(tmp_path, smtpd_sender_restrictions="warn_if_reject, reject_non_fqdn_sender")
    d = rcpt(r, outside(sender="joe"), "root@mx.example.com")
    assert d.reply is None
    assert d.notices == [
        ("reject_warning", "504 5.5.2 <joe>: Sender address rejected: need fully-qualified address")
    ]
    # Only the next restriction is softened.
    r = make(tmp_path, smtpd_sender_restrictions="warn_if_reject, permit_mynetworks, reject")
    assert text(rcpt(r, outside(), "root@mx.example.com")) == (
        "554 5.7.1 <alice@example.org>: Sender address rejected: Access denied"
    )


def test_access_table_keys_in_postfix_order(tmp_path: Path) -> None:
    maps = {
        "rcpt": "\n".join(
            [
                "user+tag@sub.example.net 550 full address",
                "user@sub.example.net 551 without extension",
                "sub.example.net 552 domain",
                "example.net 553 parent domain",
                "user+tag@ 554 local part",
                "other@ 450 bare local part",
            ]
        )
        + "\n"
    }
    r = make(
        tmp_path,
        maps,
        smtpd_relay_restrictions="check_recipient_access texthash:rcpt, permit",
        smtpd_recipient_restrictions="reject_unauth_destination",
    )

    def code(address: str) -> int | None:
        reply = rcpt(r, outside(addr="192.0.2.1"), address).reply
        return reply.code if reply else None

    assert code("user+tag@sub.example.net") == 550
    assert code("user+zz@sub.example.net") == 551
    assert code("x@sub.example.net") == 552
    assert code("x@deep.sub.example.net") == 552
    assert code("x@example.net") == 553
    assert code("user+tag@elsewhere.example") == 554
    assert code("other+x@elsewhere.example") == 450
    assert code("nobody@elsewhere.example") == 554  # no match: reject_unauth_destination


def test_client_access_by_name_then_address_octets(tmp_path: Path) -> None:
    maps = {"clients": "example.org REJECT by name\n198.51 DEFER by network\n"}
    r = make(tmp_path, maps, smtpd_client_restrictions="texthash:clients")
    assert text(rcpt(r, outside(), "root@mx.example.com")) == (
        "554 5.7.1 <client.example.org[198.51.100.7]>: Client host rejected: by name"
    )
    assert text(rcpt(r, outside(name="unknown"), "root@mx.example.com")) == (
        "450 4.7.1 <unknown[198.51.100.7]>: Client host rejected: by network"
    )


def test_routed_recipients_never_get_ok_from_a_table(tmp_path: Path) -> None:
    maps = {"rcpt": "foreign.example OK\n"}
    r = make(
        tmp_path,
        maps,
        smtpd_relay_restrictions="check_recipient_access texthash:rcpt, reject_unauth_destination",
    )
    assert rcpt(r, outside(), "bob@foreign.example").reply is None
    assert text(rcpt(r, outside(), "bob%foreign.example@mx.example.com")) == (
        "554 5.7.1 <bob%foreign.example@mx.example.com>: Relay access denied"
    )


def test_client_certificates_only_when_trusted(tmp_path: Path) -> None:
    fp = "AB:CD:EF:01"
    r = make(
        tmp_path,
        {"certs": f"{fp} laptop\n"},
        relay_clientcerts="texthash:certs",
        smtpd_relay_restrictions="permit_tls_clientcerts, reject_unauth_destination",
    )
    trusted = outside(tls=True, tls_trusted_cert=True, cert_fingerprint=fp)
    assert rcpt(r, trusted, "bob@foreign.example").reply is None
    untrusted = outside(tls=True, tls_trusted_cert=False, cert_fingerprint=fp)
    assert text(rcpt(r, untrusted, "bob@foreign.example")) == (
        "554 5.7.1 <bob@foreign.example>: Relay access denied"
    )
    unlisted = outside(tls=True, tls_trusted_cert=True, cert_fingerprint="00:11")
    assert rcpt(r, unlisted, "bob@foreign.example").reply is not None
    r = make(
        tmp_path,
        {"ccerts": f"{fp} REJECT stolen laptop\n"},
        smtpd_client_restrictions="check_ccert_access texthash:ccerts",
    )
    trusted.cert_cn = "laptop.example.org"
    assert text(rcpt(r, trusted, "root@mx.example.com")) == (
        "554 5.7.1 <laptop.example.org>: Client certificate rejected: stolen laptop"
    )


def test_sender_login_maps(tmp_path: Path) -> None:
    maps = {"logins": "alice@example.org alice, admin\n@shared.example team\n"}
    common = {"smtpd_sasl_auth_enable": True, "smtpd_sender_login_maps": "texthash:logins"}

    def mail(restriction: str, sender: str, user: str | None) -> str | None:
        r = make(tmp_path, maps, smtpd_sender_restrictions=restriction, **common)
        return text(rcpt(r, outside(sender=sender, sasl_username=user), "root@mx.example.com"))

    assert mail("reject_sender_login_mismatch", "alice@example.org", "alice") is None
    assert mail("reject_sender_login_mismatch", "alice@example.org", "ADMIN") is None
    assert mail("reject_sender_login_mismatch", "alice@example.org", "mallory") == (
        "553 5.7.1 <alice@example.org>: Sender address rejected: not owned by user mallory"
    )
    assert mail("reject_sender_login_mismatch", "alice@example.org", None) == (
        "553 5.7.1 <alice@example.org>: Sender address rejected: not logged in"
    )
    # An address nobody owns: the authenticated check refuses it, the "known" one lets it by.
    assert mail("reject_authenticated_sender_login_mismatch", "x@else.example", "alice") == (
        "553 5.7.1 <x@else.example>: Sender address rejected: not owned by user alice"
    )
    assert mail("reject_known_sender_login_mismatch", "x@else.example", "alice") is None
    assert mail("reject_known_sender_login_mismatch", "bob@shared.example", "alice") == (
        "553 5.7.1 <bob@shared.example>: Sender address rejected: not owned by user alice"
    )
    assert mail("reject_unauthenticated_sender_login_mismatch", "x@else.example", None) is None
    assert mail("reject_unauthenticated_sender_login_mismatch", "a@shared.example", None) == (
        "553 5.7.1 <a@shared.example>: Sender address rejected: not logged in"
    )


def test_unauth_pipelining_and_data_restrictions(tmp_path: Path) -> None:
    r = make(tmp_path, smtpd_data_restrictions="reject_unauth_pipelining")
    assert run_now(r.data(outside())).reply is None
    assert str(run_now(r.data(outside(ill_pipelining=True))).reply) == (
        "503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining"
    )


def test_etrn_restrictions(tmp_path: Path) -> None:
    r = make(
        tmp_path, {"etrn": "example.org OK\n"}, smtpd_etrn_restrictions="texthash:etrn, reject"
    )
    assert run_now(r.etrn(outside(), "mail.example.org")).reply is None
    assert str(run_now(r.etrn(outside(), "other.example")).reply) == (
        "554 5.7.1 <other.example>: Etrn command rejected: Access denied"
    )


def test_soft_bounce_and_bad_codes(tmp_path: Path) -> None:
    r = make(tmp_path, smtpd_sender_restrictions="reject", soft_bounce=True)
    assert text(rcpt(r, outside(), "root@mx.example.com")) == (
        "454 4.7.1 <alice@example.org>: Sender address rejected: Access denied"
    )
    r = make(tmp_path, smtpd_sender_restrictions="reject", reject_code=250)
    d = rcpt(r, outside(), "root@mx.example.com")
    assert d.reply == Reply(450, "4.7.1", "Service unavailable")


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("mail.example.com", True),
        ("under_score.example", True),
        ("localhost", True),
        ("-lead.example", False),
        ("trail-.example", False),
        ("a..b", False),
        ("1.2.3.4", False),
        ("x" * 64 + ".example", False),
        ("bad!char.example", False),
    ],
)
def test_valid_hostname(name: str, valid: bool) -> None:
    assert valid_hostname(name) is valid


def test_prepend_adds_a_header_notice_or_warns(tmp_path: Path) -> None:
    maps = {
        "senders": "alice@example.org PREPEND X-Checked: sender listed\n"
        "bad@example.org PREPEND not a header\n",
        "clients": "198.51.100.7 PREPEND X-Client: seen\n",
    }
    r = make(
        tmp_path,
        maps,
        smtpd_sender_restrictions="check_sender_access texthash:senders",
        smtpd_client_restrictions="check_client_access texthash:clients",
    )
    d = rcpt(r, outside(), "root@mx.example.com")
    assert d.reply is None
    assert ("prepend", "X-Client: seen") in d.notices
    assert ("prepend", "X-Checked: sender listed") in d.notices
    d = rcpt(r, outside(sender="bad@example.org"), "root@mx.example.com")
    assert d.reply is None
    assert d.notices == [
        ("prepend", "X-Client: seen"),
        ("warning", 'access table texthash:senders entry "bad@example.org" requires header: text'),
    ]
    # Before MAIL (smtpd_delay_reject = no) there is no message to add a header to.
    early = make(
        tmp_path,
        smtpd_client_restrictions="check_client_access texthash:clients",
        smtpd_delay_reject=False,
    )
    d = run_now(early.connect(outside(sender=None)))
    assert d.reply is None and d.notices == [
        (
            "warning",
            "access table texthash:clients: with smtpd_delay_reject=no, action PREPEND is "
            "always skipped in Client host or Helo command restrictions",
        )
    ]


def test_check_policy_service_syntax_is_checked_at_start_up(tmp_path: Path) -> None:
    ok = make(
        tmp_path,
        smtpd_recipient_restrictions="check_policy_service inet:127.0.0.1:10023, "
        "reject_unauth_destination",
    )
    assert ok.uses_dns and ok.uses_policy
    for spec, message in {
        "check_policy_service": "must be followed by transport:server",
        "check_policy_service tcp:127.0.0.1:1": "need service transport:endpoint",
        "check_policy_service { inet:127.0.0.1:1, bogus=1 }": 'unknown attribute name: "bogus"',
        "check_policy_service { inet:127.0.0.1:1, timeout=0 }": "below minimum 1s",
    }.items():
        with pytest.raises(ValueError, match=message) as info:
            make(tmp_path, smtpd_client_restrictions=split_list(spec))
        assert str(info.value).startswith("smtpd_client_restrictions: "), info.value


def test_regexp_access_tables_see_the_whole_address_only(tmp_path: Path) -> None:
    maps = {
        "senders": "/^spam(\\+.*)?@/ REJECT\n/^example\\.org$/ REJECT domain keys never reach it\n"
        "/^(.+)@bad\\.example$/ 550 5.7.0 $1, go away\n",
        "logins": "/^(alice)@example\\.org$/ ${1}\n/^@shared\\.example$/ team\n",
    }
    r = make(
        tmp_path,
        maps,
        smtpd_sender_restrictions="check_sender_access regexp:senders, "
        "reject_known_sender_login_mismatch",
        smtpd_sasl_auth_enable=True,
        smtpd_sender_login_maps="pcre:logins",
    )

    def mail(sender: str, user: str | None = "alice") -> str | None:
        return text(rcpt(r, outside(sender=sender, sasl_username=user), "root@mx.example.com"))

    assert mail("spam+x@example.org") == (
        "554 5.7.1 <spam+x@example.org>: Sender address rejected: Access denied"
    )
    assert mail("joe@bad.example") == (
        "550 5.7.0 <joe@bad.example>: Sender address rejected: joe, go away"
    )
    assert mail("alice@example.org") is None  # neither the domain nor `alice@` is looked up
    assert mail("alice@example.org", "mallory") == (
        "553 5.7.1 <alice@example.org>: Sender address rejected: not owned by user mallory"
    )
    assert mail("bob@shared.example", "mallory") is None  # no `@domain` key either
    with pytest.raises(NotSupported, match="DISCARD"):
        make(
            tmp_path,
            {"held": "/^x@/ DISCARD\n"},
            smtpd_sender_restrictions="check_sender_access pcre:held",
        )


def test_restriction_classes_in_lists_and_as_access_results(tmp_path: Path) -> None:
    """RESTRICTION_CLASS_README's shape: a table names a class per recipient."""
    r = make(
        tmp_path,
        {
            "rcpts": "protected@mx.example.com restrictive\nopen@mx.example.com permissive\n",
            "senders": "boss@example.org OK\n",
        },
        classes={
            "restrictive": "check_sender_access texthash:senders, reject",
            "permissive": "permit",
            "insiders": "permit_mynetworks",
        },
        smtpd_recipient_restrictions="check_recipient_access texthash:rcpts, insiders, "
        "reject_unauth_destination",
    )
    assert text(rcpt(r, outside(), "protected@mx.example.com")) == (
        "554 5.7.1 <protected@mx.example.com>: Recipient address rejected: Access denied"
    )
    assert rcpt(r, outside(sender="boss@example.org"), "protected@mx.example.com").reply is None
    assert rcpt(r, outside(), "open@mx.example.com").reply is None
    # A class used directly: insiders permits mynetworks clients to relay.
    inside = ClientState(name="lan.example.org", addr="192.0.2.9", helo="lan.example.org")
    inside.sender = "alice@example.org"
    assert rcpt(r, inside, "someone@elsewhere.example").reply is None
    assert text(rcpt(r, outside(), "someone@elsewhere.example")).startswith("454 4.7.1")


def test_restriction_class_errors_stop_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="restriction class `missing' needs a definition"):
        make(tmp_path, classes={"missing": ""}, smtpd_recipient_restrictions="missing, reject")
    with pytest.raises(ValueError, match="refers to itself"):
        make(
            tmp_path,
            classes={"a": "b", "b": "permit_mynetworks, a"},
            smtpd_recipient_restrictions="a, reject_unauth_destination",
        )


def test_check_client_access_with_a_cidr_table(tmp_path: Path) -> None:
    """The usual cidr: use: networks refused or trusted by address; the table answers the
    whole address only (no subnet keys are tried on it)."""
    maps = {"clients.cidr": "198.51.100.0/24  REJECT listed network\n198.51.100.7  OK\n"}
    r = make(
        tmp_path,
        maps,
        smtpd_client_restrictions="check_client_access cidr:clients.cidr",
    )
    d = rcpt(r, outside(), "root@mx.example.com")  # 198.51.100.7: the /24 comes first
    assert str(d.reply) == (
        "554 5.7.1 <client.example.org[198.51.100.7]>: Client host rejected: listed network"
    )
    other = outside()
    other.addr = "203.0.113.9"
    assert rcpt(r, other, "root@mx.example.com").reply is None
