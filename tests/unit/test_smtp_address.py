"""MAIL/RCPT/VRFY argument parsing; expectations observed on Postfix 3.7.11."""

from __future__ import annotations

import pytest

from postwall.smtp import replies
from postwall.smtp.address import (
    ArgumentError,
    MailParams,
    RcptParams,
    parse_mail,
    parse_rcpt,
    parse_vrfy,
    split_args,
    xtext_decode,
    xtext_encode,
)

ACCEPTED = {
    "FROM:<a@b>": "a@b",
    "FROM:a@b": "a@b",
    "FROM: <a@b>": "a@b",
    "from:<>": "",
    "FROM:<@r1,@r2:a@b>": "a@b",
    "FROM:<a>": "a",
    "FROM:<@b>": "@b",
    "FROM:<a@b@c>": "a@b@c",
    "FROM:<a..b@c>": "a..b@c",
    "FROM:<a@[1.2.3.4]>": "a@[1.2.3.4]",
    "FROM:<a@[ipv6:::1]>": "a@[ipv6:::1]",
    "FROM:<a@b.>": "a@b.",
    "FROM:<a(c)@b>": "a@b",
    "FROM:<<a@b>>": "a@b",
    "FROM:a@b>": "a@b",
    'FROM:<"a\\"b"@c>': '"a\\"b"@c',
    'FROM:<"a b"@c>': '"a b"@c',
    "FROM:<ü@b>": "ü@b",
    "FROM:<.a@b>": ".a@b",
    "FROM:<a@b_c>": "a@b_c",
    "FROM:<a\\ b@c>": "a\\ b@c",
    "FROM:<a@b (x)>": "a@b",
    "FROM:<a@[IPv6:2001:db8::1]>": "a@[IPv6:2001:db8::1]",
    "FROM:<a@1b.c>": "a@1b.c",
    "FROM:<a@b.123>": "a@b.123",
    "FROM:<a@" + "b" * 63 + ".c>": "a@" + "b" * 63 + ".c",
    "FROM:<" + "a" * 65 + "@b>": "a" * 65 + "@b",  # Postfix does not limit the local part
}


@pytest.mark.parametrize(("arg", "address"), ACCEPTED.items())
def test_sender_forms_postfix_accepts(arg: str, address: str) -> None:
    assert parse_mail(arg)[0] == address


@pytest.mark.parametrize(
    "arg",
    [
        "FROM:<a@>",
        "FROM:<a,b@c>",
        "FROM:<a;b@c>",
        "FROM:<a@b>SIZE=1",
        "FROM:<a@b..c>",
        "FROM:<a@-b>",
        'FROM:<"a b"@c d>',
        "FROM:<a@b)>",
        "FROM:<a@b",
        "FROM:<a b@c>",
        # Domains as trivial-rewrite checks them (each one refused by Postfix 3.7 with
        # 501 5.1.7 on the reference instance): a literal with no address in it, a bare
        # IP address, a label over 63 characters, an all-digit name.
        "FROM:<a@[300.1.1.1]>",
        "FROM:<a@[foo]>",
        "FROM:<a@[0.1.2.3]>",
        "FROM:<a@[IPv6:::1%eth0]>",
        "FROM:<a@[]>",
        "FROM:<a@127.0.0.1>",
        "FROM:<a@" + "b" * 64 + ".c>",
        "FROM:<a@" + "b" * 255 + ">",
        "FROM:<a@123>",
        "FROM:<a@b->",
    ],
)
def test_sender_forms_postfix_refuses(arg: str) -> None:
    with pytest.raises(ArgumentError) as err:
        parse_mail(arg)
    assert err.value.reply is replies.BAD_SENDER


@pytest.mark.parametrize("arg", ["", "FROM", "FROM:", "TO:<a@b>", "FROMX:<a@b>"])
def test_mail_syntax(arg: str) -> None:
    with pytest.raises(ArgumentError) as err:
        parse_mail(arg)
    assert err.value.reply is replies.MAIL_SYNTAX


def test_mail_parameters_are_typed() -> None:
    address, params = parse_mail(
        "FROM:<a@b> size=100 body=8bitmime RET=hdrs ENVID=a+2Bb SMTPUTF8 AUTH=<>",
        sasl_enabled=True,
    )
    assert address == "a@b"
    assert params == MailParams(
        size=100, body="8BITMIME", smtputf8=True, ret="HDRS", envid="a+b", auth="<>"
    )


@pytest.mark.parametrize(
    ("arg", "wire"),
    [
        ("FROM:<a@b> SIZE=99999999999", b"552 5.3.4 Message size exceeds fixed limit"),
        ("FROM:<a@b> SIZE=abc", b"501 5.5.4 Bad message size syntax"),
        ("FROM:<a@b> SIZE=", b"501 5.5.4 Bad message size syntax"),
        ("FROM:<a@b> FOO=bar", b"555 5.5.4 Unsupported option: FOO=bar"),
        ("FROM:<a@b> BODY=9BIT", b"555 5.5.4 Unsupported option: BODY=9BIT"),
        ("FROM:<a@b> BODY=BINARYMIME", b"555 5.5.4 Unsupported option: BODY=BINARYMIME"),
        ("FROM:<a@b> RET=XX", b"501 5.5.4 Bad RET parameter syntax"),
        ("FROM:<a@b> RET=HDRS RET=FULL", b"501 5.5.4 Bad RET parameter syntax"),
        ("FROM:<a@b> ENVID=a+zz", b"501 5.5.4 Bad ENVID parameter syntax"),
        ("FROM:<a@b> ENVID=a ENVID=b", b"501 5.5.4 Bad ENVID parameter syntax"),
        ("FROM:<a@b> SMTPUTF8=yes", b"555 5.5.4 Unsupported option: SMTPUTF8=yes"),
        ("FROM:<a@b> SIZE", b"555 5.5.4 Unsupported option: SIZE"),
        ("FROM:<a@b> BODY", b"555 5.5.4 Unsupported option: BODY"),
        ("FROM:<a@b> =x", b"555 5.5.4 Unsupported option: =x"),
        ("FROM:<a@b> ENVID=", b"501 5.5.4 Bad ENVID parameter syntax"),
        ("FROM:<a@b> RET=", b"501 5.5.4 Bad RET parameter syntax"),
        ("FROM:<a@b> <c@d>", b"555 5.5.4 Unsupported option: <c@d>"),
    ],
)
def test_mail_parameter_errors(arg: str, wire: bytes) -> None:
    with pytest.raises(ArgumentError) as err:
        parse_mail(arg, size_limit=10240000)
    assert err.value.reply.to_bytes() == wire + b"\r\n"


def test_auth_parameter() -> None:
    # Without SASL, Postfix accepts and ignores AUTH= whatever its value.
    assert parse_mail("FROM:<a@b> AUTH=a+zz AUTH=x")[1].auth is None
    assert parse_mail("FROM:<a@b> AUTH=a+2Bb", sasl_enabled=True)[1].auth == "a+b"
    with pytest.raises(ArgumentError) as err:
        parse_mail("FROM:<a@b> AUTH=<> AUTH=<>", sasl_enabled=True)
    assert err.value.reply.to_bytes() == b"503 5.5.4 Error: multiple AUTH= options\r\n"


def test_smtputf8_refused_when_disabled() -> None:
    with pytest.raises(ArgumentError) as err:
        parse_mail("FROM:<a@b> SMTPUTF8", smtputf8_enable=False)
    assert err.value.reply.code == 555


def test_size_limit_zero_means_unlimited() -> None:
    assert parse_mail("FROM:<a@b> SIZE=99999999999", size_limit=0)[1].size == 99999999999


def test_rcpt_parameters_are_typed() -> None:
    address, params = parse_rcpt("TO: <root@vm> NOTIFY=success,FAILURE ORCPT=rfc822;root+40vm")
    assert address == "root@vm"
    assert params == RcptParams(notify=("SUCCESS", "FAILURE"), orcpt=("rfc822", "root@vm"))
    assert parse_rcpt("TO:<a@b> NOTIFY=never")[1].notify == ("NEVER",)
    # An empty original address is accepted, as by Postfix (xtext of nothing).
    assert parse_rcpt("TO:<a@b> ORCPT=rfc822;")[1].orcpt == ("rfc822", "")


@pytest.mark.parametrize(
    ("arg", "reply"),
    [
        ("TO:<>", replies.BAD_RECIPIENT),
        ("TO:<a b@vm>", replies.BAD_RECIPIENT),
        ("TO:<root@vm", replies.BAD_RECIPIENT),
        ("FROM:<root@vm>", replies.RCPT_SYNTAX),
        ("", replies.RCPT_SYNTAX),
        ("TO:<a@b> NOTIFY=NEVER,SUCCESS", replies.BAD_NOTIFY),
        ("TO:<a@b> NOTIFY=BAD", replies.BAD_NOTIFY),
        ("TO:<a@b> NOTIFY=SUCCESS,SUCCESS", replies.BAD_NOTIFY),
        ("TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER", replies.BAD_NOTIFY),
        ("TO:<a@b> NOTIFY", replies.BAD_NOTIFY),
        ("TO:<a@b> ORCPT=bad", replies.BAD_ORCPT),
        ("TO:<a@b> ORCPT=rfc822;a+zz", replies.BAD_ORCPT),
    ],
)
def test_rcpt_errors(arg: str, reply: object) -> None:
    with pytest.raises(ArgumentError) as err:
        parse_rcpt(arg)
    assert err.value.reply == reply


def test_rcpt_unknown_parameter() -> None:
    with pytest.raises(ArgumentError) as err:
        parse_rcpt("TO:<a@b> SIZE=10")
    assert err.value.reply.to_bytes() == b"555 5.5.4 Unsupported option: SIZE=10\r\n"


def test_vrfy() -> None:
    assert parse_vrfy("root") == "root"
    assert parse_vrfy("<root>") == "<root>"
    assert parse_vrfy("root SMTPUTF8") == "root"
    for bad in ("a b", "<a,b>"):
        with pytest.raises(ArgumentError) as err:
            parse_vrfy(bad)
        assert err.value.reply is replies.BAD_RECIPIENT
    with pytest.raises(ArgumentError) as err:
        parse_vrfy("")
    assert err.value.reply.to_bytes() == b"501 5.5.4 Syntax: VRFY address [SMTPUTF8]\r\n"


def test_split_args_groups_brackets_and_quotes() -> None:
    assert split_args('FROM:<a b@c> "x y" z') == ["FROM:<a b@c>", '"x y"', "z"]
    assert split_args("  a\t b ") == ["a", "b"]


def test_xtext_round_trip() -> None:
    for text in ("plain", "a+b=c", "sp ace", "\x01"):
        assert xtext_decode(xtext_encode(text)) == text
    assert xtext_decode("a+2") is None
    assert xtext_decode("a=b") is None


@pytest.mark.parametrize(
    "arg", ['TO:<"a\rb"@localhost>', 'TO:<"a\x00b"@localhost>', 'TO:<"a\x7fb"@x>']
)
def test_control_characters_are_refused_even_inside_quotes(arg: str) -> None:
    # Found by a random-session load: a CR in a quoted local part reached a reply text.
    with pytest.raises(ArgumentError) as exc:
        parse_rcpt(arg)
    assert str(exc.value.reply) == "501 5.1.3 Bad recipient address syntax"
