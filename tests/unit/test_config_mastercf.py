"""master.cf parsing and per-service parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postwall.config import ConfigError, load
from postwall.config.mastercf import parse_listen, parse_master_cf, tokenize

PROTO = Path("/etc/postfix/master.cf.proto")


def setup(tmp_path: Path, main: str, master: str) -> Path:
    (tmp_path / "main.cf").write_text(main)
    (tmp_path / "master.cf").write_text(master)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "listen"),
    [
        ("smtp", (None, 25)),
        ("2525", (None, 2525)),
        ("127.0.0.1:10025", ("127.0.0.1", 10025)),
        ("[::1]:587", ("::1", 587)),
        ("localhost:submission", ("localhost", 587)),
        ("smtps", (None, 465)),
        ("submissions", (None, 465)),
    ],
)
def test_inet_service_names(name: str, listen: tuple[str | None, int]) -> None:
    assert parse_listen(name) == listen


@pytest.mark.parametrize("name", ["nosuchservice", "[::1]25", ":25", "70000", "[::1"])
def test_bad_inet_service_names(name: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(name)


def test_tokenize_brace_groups() -> None:
    assert tokenize("smtpd -o { smtpd_banner = a  b } -o x=y {  }") == [
        "smtpd",
        "-o",
        "smtpd_banner = a  b",
        "-o",
        "x=y",
        "",
    ]


def test_service_fields_options_and_continuations() -> None:
    text = (
        "# comment\n"
        "submission inet n - y 1000? 5 smtpd\n"
        "  -o syslog_name=postfix/submission\n"
        "# interleaved comment\n"
        "  -o { smtpd_banner = $myhostname ready for you } -v -D\n"
        "maildrop unix - n n - - pipe\n"
        "  flags=DRXhu user=vmail argv=/usr/bin/maildrop -d ${recipient}\n"
    )
    services, problems, warnings = parse_master_cf(text, "/x/master.cf")
    assert problems == warnings == []
    sub, pipe = services
    assert (sub.name, sub.type, sub.private, sub.unpriv, sub.chroot) == (
        "submission",
        "inet",
        False,
        True,
        True,
    )
    assert (sub.wakeup, sub.wakeup_conditional, sub.maxproc) == (1000, True, 5)
    assert sub.listen == (None, 587) and sub.line == 2 and sub.where == "/x/master.cf:2"
    assert [(o.name, o.value, o.line) for o in sub.overrides] == [
        ("syslog_name", "postfix/submission", 2),
        ("smtpd_banner", "$myhostname ready for you", 2),
    ]
    assert sub.flags == ("-v", "-D") and sub.args == ()
    assert pipe.command == "pipe" and pipe.listen is None and pipe.maxproc is None
    assert pipe.args == (
        "flags=DRXhu",
        "user=vmail",
        "argv=/usr/bin/maildrop",
        "-d",
        "${recipient}",
    )
    assert (pipe.private, pipe.chroot) == (True, False)


def test_master_errors_name_file_line_and_service() -> None:
    text = (
        "smtp inet n - y - - smtpd\n"
        "bad inet x - y - - smtpd\n"
        "short unix - -\n"
        "odd weird - - - - - cmd\n"
        "smtp inet n - y - - smtpd -v\n"
        "opt inet n - y - - smtpd -o novalue\n"
        "wake unix - - - 1x - cmd\n"
        "pub inet - - - - - smtpd\n"
    )
    services, problems, warnings = parse_master_cf(text, "/x/master.cf")
    assert problems == [
        '/x/master.cf:2: bad/inet: bad private field value "x" (expected y, n or -)',
        "/x/master.cf:3: short/unix: expected 8 or more fields, got 4",
        '/x/master.cf:4: odd/weird: unknown service type "weird"',
        '/x/master.cf:6: opt/inet: -o option requires "name=value", got "novalue"',
        '/x/master.cf:7: wake/unix: bad wakeup field value "1x"',
        "/x/master.cf:8: pub/inet: inet service cannot be private",
    ]
    # master(5): of two entries with the same name and type, the last one is remembered.
    assert warnings == ["/x/master.cf:5: smtp/inet: overriding earlier entry at line 1"]
    assert [(s.label, s.flags) for s in services] == [("smtp/inet", ("-v",))]


def test_service_params_see_overrides_and_main_cf(tmp_path: Path) -> None:
    d = setup(
        tmp_path,
        "myhostname = mx.example.com\nmua_restrictions = permit_sasl_authenticated, reject\n"
        "smtpd_banner = $myhostname ESMTP $syslog_name\ndefault_process_limit = 7\n",
        "smtp inet n - y - - smtpd\n"
        "submission inet n - y - - smtpd -o syslog_name=postfix/$service_name\n"
        "  -o smtpd_client_restrictions=$mua_restrictions -o smtpd_tls_security_level=encrypt\n"
        "  -o myhostname=sub.example.com\n",
    )
    cfg = load(d)
    smtp, sub = cfg.services
    assert cfg.warnings == []
    assert smtp.params.smtpd_banner == "mx.example.com ESMTP postfix-postwall"
    assert smtp.maxproc == 7
    assert sub.params.syslog_name == "postfix/submission"
    assert sub.params.smtpd_banner == "sub.example.com ESMTP postfix/submission"
    assert sub.params.smtpd_client_restrictions == ("permit_sasl_authenticated", "reject")
    assert sub.params.smtpd_tls_security_level == "encrypt"
    assert cfg.params.smtpd_tls_security_level == ""
    assert cfg.service("submission") is sub


def test_bad_override_value_names_master_cf_line(tmp_path: Path) -> None:
    d = setup(
        tmp_path,
        "smtpd_timeout = 5x\n",
        "smtp inet n - y - - smtpd\n  -o smtpd_tls_wrappermode=perhaps\n",
    )
    with pytest.raises(ConfigError) as exc:
        load(d)
    assert exc.value.problems == [
        f'{d}/main.cf:1: smtpd_timeout: invalid time value "5x"',
        f"{d}/master.cf:1: smtpd_tls_wrappermode: invalid boolean value "
        f'"perhaps" (expected yes or no) (service smtp/inet)',
    ]


def test_unknown_override_warns(tmp_path: Path) -> None:
    d = setup(tmp_path, "", "smtp inet n - y - - smtpd -o no_such_thing=1\n")
    assert load(d).warnings == [
        f"{d}/master.cf:1: no_such_thing: unused parameter: no_such_thing=1"
    ]


@pytest.mark.skipif(not PROTO.exists(), reason="Postfix's master.cf.proto is not installed")
def test_debian_master_cf_loads(tmp_path: Path) -> None:
    d = setup(tmp_path, "compatibility_level = 3.6\n", PROTO.read_text())
    cfg = load(d)
    names = [(s.name, s.type) for s in cfg.services]
    assert ("smtp", "inet") in names and ("local", "unix") in names
    relay = cfg.service("relay", "unix")
    assert relay is not None and relay.params.syslog_name == "postfix/relay"
    smtp = cfg.service("smtp", "inet")
    assert smtp is not None and smtp.listen == (None, 25) and smtp.command == "smtpd"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(alphabet="smtp inet unix-ny?0123456789:[]{}=-o \n\t#$x", max_size=200))
def test_random_master_cf_fails_only_with_config_error(tmp_path: Path, text: str) -> None:
    d = setup(tmp_path, "", "smtp inet n - - - - smtpd\n" + text)
    try:
        load(d)
    except ConfigError as err:
        assert err.problems and all(p.startswith(str(d)) for p in err.problems)
