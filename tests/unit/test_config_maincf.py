"""main.cf syntax, `$` expansion and typed conversion, checked against Postfix's postconf."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import peers
from postwall.config import ConfigError, default_params, load
from postwall.config import params as P
from postwall.config.maincf import Expander, logical_lines, parse_main_cf
from postwall.config.params import Params


def write(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.cf").write_text(text)
    return directory


def real_postconf(directory: Path, *args: str) -> str:
    return real_postconf_many([(directory, args)])[0]


def real_postconf_many(calls: list[tuple[Path, tuple[str, ...]]]) -> list[str]:
    """Run postconf for each (directory, args) in parallel: a first run in a new directory
    is slow on this host (about two seconds) however little it reads."""
    exe = peers.require_tool("postconf")
    procs = [
        subprocess.Popen(
            [exe, "-c", str(d), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for d, args in calls
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out)
    return outputs


# --- physical and logical lines


def test_logical_lines_skip_comments_and_blank_lines_inside_continuations() -> None:
    text = "a = 1\n   # indented comment\n  two\n\n  \n\tthree\n# c\nb=2\n"
    assert list(logical_lines(text)) == [(1, "a = 1  two\tthree"), (8, "b=2")]


def test_parse_trims_and_keeps_inner_white_space() -> None:
    settings, problems = parse_main_cf("x =  a   b  \ny=\n", "/m/main.cf")
    assert problems == []
    assert [(s.name, s.value, s.line) for s in settings] == [("x", "a   b", 1), ("y", "", 2)]


def test_syntax_errors_name_file_and_line() -> None:
    _, problems = parse_main_cf("  leading = 1\nok = 1\nnoequals\n", "/m/main.cf")
    assert problems == [
        "/m/main.cf:1: syntax error: line starts with white space",
        '/m/main.cf:3: syntax error: missing "=" after "noequals"',
    ]


# --- expansion: each case is checked against the real postconf when it is installed

EXPANSIONS = [
    ("$a1", "x"),
    ("${a1}", "x"),
    ("$(a1)", "x"),
    ("${a1?yes}", "yes"),
    ("${a1:no}", ""),
    ("${zz?yes}", ""),
    ("${zz:no}", "no"),
    ("${a1?{Y Y}:{N N}}", "Y Y"),
    ("${zz?{Y}:{N}}", "N"),
    ("${a1 ? {Y} : {N}}", "Y"),
    ("${a1?{$a1 is set}}", "x is set"),
    ("a$${a1}b", "a${a1}b"),
    ("x${zz}y $nope.", "xy ."),
    ("${{3} == {3} ? {eq} : {ne}}", "eq"),
    ("${{10} < {9} ? {lt} : {ge}}", "ge"),
    ("${{abc} < {abd} ? {lt} : {ge}}", "lt"),
    ("${{ 5 } == {5} ? {eq} : {ne}}", "ne"),
    ("${{3.6} <level {3.10} ? {lt} : {ge}}", "lt"),
    ("${{1} <level {2} ? {x} : {y}}", "x"),
    ("${{a}=={a}?{Y}}", "Y"),
    ("${{a}=={a}?Y:N}", "Y:N"),
    ("${empty?{set}:{unset}} ${empty:dflt}", "unset dflt"),
    ("$mail_name/$a1", "postwall/x"),
]


def _expander(text: str) -> Expander:
    settings, _ = parse_main_cf(text, "main.cf")
    table = {s.name: s.value for s in settings}
    return Expander(lambda n: table.get(n, P.raw_default(n) if P.is_known(n) else None))


@pytest.mark.parametrize(("expr", "expected"), EXPANSIONS)
def test_expansion(expr: str, expected: str) -> None:
    assert _expander("a1 = x\nempty =\n").expand(expr) == expected


@pytest.mark.interop
def test_expansion_matches_postconf(tmp_path: Path) -> None:
    dirs = [
        # mail_name set as postwall's default, so both sides expand it alike.
        write(tmp_path / str(i), f"a1 = x\nempty =\nmail_name = postwall\nmyorigin = {expr}\n")
        for i, (expr, _) in enumerate(EXPANSIONS)
    ]
    reals = real_postconf_many([(d, ("-xh", "myorigin")) for d in dirs])
    for (expr, expected), real in zip(EXPANSIONS, reals, strict=True):
        # postconf prints white-space runs as one space.
        assert real.rstrip("\n") == " ".join(expected.split()), expr


def test_loop_is_an_error_with_location(tmp_path: Path) -> None:
    write(tmp_path, "myorigin = $loop1\nloop1 = $loop2\nloop2 = $loop1\n")
    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    assert exc.value.problems == [
        f"{tmp_path}/main.cf:1: myorigin: parameter reference loop: loop1 -> loop2 -> loop1"
    ]


def test_bad_macro_syntax(tmp_path: Path) -> None:
    write(tmp_path, "myorigin = a $ b\n")
    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    assert exc.value.problems == [f'{tmp_path}/main.cf:1: myorigin: empty macro name: "a $ b"']


# --- conversion


def test_all_errors_collected_in_one_pass(tmp_path: Path) -> None:
    write(
        tmp_path,
        "smtpd_timeout = 5x\nbiff = maybe\n# c\nsmtpd_recipient_limit = 0\n"
        "message_size_limit = ten\nqueue_run_delay = 1.5h\n",
    )
    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    m = f"{tmp_path}/main.cf"
    assert sorted(exc.value.problems) == sorted(
        [
            f'{m}:1: smtpd_timeout: invalid time value "5x"',
            f'{m}:2: biff: invalid boolean value "maybe" (expected yes or no)',
            f"{m}:4: smtpd_recipient_limit: value 0 out of range (minimum 1)",
            f'{m}:5: message_size_limit: invalid integer value "ten"',
            f'{m}:6: queue_run_delay: invalid time value "1.5h"',
        ]
    )


def test_time_units_and_default_units() -> None:
    p = default_params(
        smtpd_timeout="300",
        maximal_queue_lifetime="5",
        bounce_queue_lifetime="2h",
        delay_warning_time="4",
        minimal_backoff_time="1w",
        smtp_connect_timeout="2m",
    )
    assert p.smtpd_timeout == 300.0
    assert p.maximal_queue_lifetime == 5 * 86400.0
    assert p.bounce_queue_lifetime == 7200.0
    assert p.delay_warning_time == 4 * 3600.0
    assert p.minimal_backoff_time == 604800.0
    assert p.smtp_connect_timeout == 120.0


def test_booleans_are_case_insensitive() -> None:
    p = default_params(biff="NO", smtpd_tls_auth_only="Yes")
    assert p.biff is False and p.smtpd_tls_auth_only is True


def test_lists_split_on_commas_and_space_keeping_brace_groups() -> None:
    p = default_params(
        smtpd_recipient_restrictions="permit_mynetworks,\n reject_unauth_destination "
        "check_sender_access inline:{ {a = b}, c=d },reject",
        smtpd_tls_mandatory_exclude_ciphers="aNULL, MD5:RC4",
    )
    assert p.smtpd_recipient_restrictions == (
        "permit_mynetworks",
        "reject_unauth_destination",
        "check_sender_access",
        "inline:{ {a = b}, c=d }",
        "reject",
    )
    assert p.smtpd_tls_mandatory_exclude_ciphers == ("aNULL", "MD5", "RC4")


def test_later_definition_wins_with_warning(tmp_path: Path) -> None:
    write(tmp_path, "mail_name = one\nmail_name = two\n")
    cfg = load(tmp_path)
    assert cfg.params.mail_name == "two"
    assert cfg.warnings == [f"{tmp_path}/main.cf:2: mail_name: overriding earlier entry at line 1"]


def test_unknown_parameter_warns_unless_referenced(tmp_path: Path) -> None:
    write(
        tmp_path,
        "my_networks_var = 10.0.0.0/8\nmynetworks = 127.0.0.0/8 $my_networks_var\n"
        "smtpd_restriction_classes = cls\ncls = reject\nstray = 1\ndisable_dns_lookups = no\n",
    )
    cfg = load(tmp_path)
    assert cfg.params.mynetworks == ("127.0.0.0/8", "10.0.0.0/8")
    assert cfg.warnings == [
        f"{tmp_path}/main.cf:5: stray: unused parameter: stray=1",
        f"{tmp_path}/main.cf:6: disable_dns_lookups: Postfix parameter not supported by postwall",
    ]
    assert cfg.unused == {"stray"}


def test_postfix_features_that_change_the_mail_stop_start_up(tmp_path: Path) -> None:
    """Ignoring them would deliver elsewhere or differently (an alias not followed, a BCC
    copy not made, a milter not run): one error per setting, with its line."""
    write(
        tmp_path,
        "canonical_maps = hash:/etc/postfix/canonical\n"
        "virtual_mailbox_domains = $virtual_mailbox_maps\n"  # only follows the maps: no error
        "masquerade_domains =\n"  # empty: nothing is asked for
        "recipient_canonical_maps = hash:/etc/postfix/rcanonical\n",
    )
    (tmp_path / "master.cf").write_text(
        "smtp inet n - n - - smtpd\nsubmission inet n - n - - smtpd\n"
        "  -o smtpd_milters=inet:localhost:8891\n"
    )
    with pytest.raises(ConfigError) as err:
        load(tmp_path)
    assert err.value.problems == [
        f"{tmp_path}/main.cf:1: canonical_maps = hash:/etc/postfix/canonical: "
        "canonical address rewriting is not supported yet",
        f"{tmp_path}/main.cf:4: recipient_canonical_maps = hash:/etc/postfix/rcanonical: "
        "canonical address rewriting is not supported yet",
        f"{tmp_path}/master.cf:2: smtpd_milters = inet:localhost:8891: "
        "a milter (mail filter) is not supported yet",
    ]


def test_registry_defaults_equal_an_empty_main_cf(tmp_path: Path) -> None:
    # Fails if a recorded effective default disagrees with the expansion of its raw text.
    write(tmp_path, "")
    assert load(tmp_path).params == Params(config_directory=str(tmp_path))
    assert default_params() == Params()


def test_compatibility_level_drives_expression_defaults() -> None:
    old, new = default_params(compatibility_level="0"), default_params()
    assert (old.mynetworks_style, new.mynetworks_style) == ("subnet", "host")
    assert old.relay_domains == old.mydestination and new.relay_domains == ()
    assert new.smtpd_relay_restrictions == (
        "permit_mynetworks",
        "permit_sasl_authenticated",
        "defer_unauth_destination",
    )
    assert (old.smtpd_tls_fingerprint_digest, new.smtpd_tls_fingerprint_digest) == ("md5", "sha256")
    assert (old.append_dot_mydomain, new.append_dot_mydomain) == (True, False)
    assert (old.smtputf8_enable, new.smtputf8_enable) == (False, True)


def test_stress_and_references_follow_settings() -> None:
    p = default_params(stress="yes", smtpd_tls_cert_file="/c.pem", default_process_limit="7")
    assert p.smtpd_timeout == 10.0 and p.smtpd_hard_error_limit == 1
    assert p.smtpd_tls_key_file == "/c.pem"


def test_hostname_and_domain_derive_from_each_other() -> None:
    p = default_params(myhostname="mail.example.com")
    assert p.mydomain == "example.com"
    assert p.mydestination == ("mail.example.com", "localhost.example.com", "localhost")
    assert p.smtpd_banner == "mail.example.com ESMTP postwall"
    q = default_params(mydomain="example.org")
    if "." not in P.SHORT_HOSTNAME:
        assert q.myhostname == f"{P.SHORT_HOSTNAME}.example.org"


@pytest.mark.interop
def test_derived_host_names_match_postconf(tmp_path: Path) -> None:
    texts = ["", "myhostname = mail.example.com\n", "mydomain = ex.org\n"]
    dirs = [write(tmp_path / str(i), text) for i, text in enumerate(texts)]
    names = ("-x", "myhostname", "mydomain", "mydestination")
    for d, real in zip(dirs, real_postconf_many([(d, names) for d in dirs]), strict=True):
        p = load(d).params
        assert real == (
            f"myhostname = {p.myhostname}\nmydomain = {p.mydomain}\n"
            f"mydestination = {', '.join(p.mydestination)}\n"
        )


def test_verbatim_parameters_keep_their_dollar_text() -> None:
    p = default_params(luser_relay="$user@other.example", myhostname="h.example")
    assert p.luser_relay == "$user@other.example"
    assert p.forward_path == ("$home/.forward${recipient_delimiter}${extension}", "$home/.forward")


def test_missing_main_cf(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    assert exc.value.problems == [f"{tmp_path}/main.cf: cannot open: No such file or directory"]


def test_extra_settings_override_main_cf(tmp_path: Path) -> None:
    write(tmp_path, "mail_name = A\nsmtpd_banner = $mail_name here\n")
    cfg = load(tmp_path, extra={"mail_name": "B"})
    assert cfg.params.smtpd_banner == "B here"
    assert cfg.params_with({"mail_name": "C"}).smtpd_banner == "C here"
    with pytest.raises(ConfigError):
        cfg.params_with({"biff": "perhaps"})


# --- hostile input never escapes as anything but ConfigError

_ALPHABET = "ab_ =${}():?<>!#,\t\n\\x1 myhostnamelevel{}"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(alphabet=_ALPHABET, max_size=200))
def test_random_main_cf_fails_only_with_config_error(tmp_path: Path, text: str) -> None:
    write(tmp_path, text + "\nmyorigin = " + text.replace("\n", " ") + "\n")
    try:
        load(tmp_path)
    except ConfigError as err:
        assert err.problems and all(
            p.startswith(str(tmp_path)) or p.startswith("(") for p in err.problems
        )


def test_deep_nesting_is_an_error_not_a_crash(tmp_path: Path) -> None:
    write(tmp_path, "myorigin = " + "${a1?" * 5000 + "x" + "}" * 5000 + "\na1 = 1\n")
    with pytest.raises(ConfigError, match="unreasonable macro call nesting"):
        load(tmp_path)


def test_keyword_values_are_checked_and_lowered(tmp_path: Path) -> None:
    p = default_params(
        smtpd_tls_security_level="MAY",
        inet_protocols="IPv4, ipv6",
        smtpd_forbid_bare_newline="Reject",
    )
    assert p.smtpd_tls_security_level == "may"
    assert p.inet_protocols == ("ipv4", "ipv6")
    assert p.smtpd_forbid_bare_newline == "reject"
    write(tmp_path, "smtpd_tls_security_level = verify\ninet_protocols = ipv5\n")
    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    m = f"{tmp_path}/main.cf"
    assert exc.value.problems == [
        f'{m}:2: inet_protocols: invalid value "ipv5" (expected: all, ipv4, ipv6)',
        f'{m}:1: smtpd_tls_security_level: invalid value "verify" '
        '(expected one of: "", none, may, encrypt)',
    ]


def _random_expression(rnd: random.Random, depth: int = 0) -> str:
    """Balanced macro text over a few names; every construct the expander supports."""
    if depth > 3 or rnd.random() < 0.25:
        return rnd.choice(["x", " ", "y z", "", ":", "?", "w", "3", "10", "3.6"])
    name = rnd.choice(["a1", "empty", "zz", "mail_name", "biff"])
    sub = lambda: _random_expression(rnd, depth + 1)  # noqa: E731
    kind = rnd.randrange(8)
    if kind == 0:
        return rnd.choice([f"${name}", f"${{{name}}}", f"$({name})"])
    if kind == 1:
        return f"${{{name}{rnd.choice('?:')}{sub()}}}"
    if kind == 2:
        return f"${{{name}?{{{sub()}}}:{{{sub()}}}}}"
    if kind == 3:
        return f"${{{name}:{{{sub()}}}}}"
    if kind == 4:
        op = rnd.choice(["==", "!=", "<", "<=", ">", ">="])
        return f"${{{{{sub()}}} {op} {{{sub()}}} ? {{{sub()}}} : {{{sub()}}}}}"
    return sub() + sub()


@pytest.mark.interop
def test_random_expressions_match_postconf(tmp_path: Path) -> None:
    rnd = random.Random(20240304)
    exprs = [e for e in (_random_expression(rnd) for _ in range(60)) if e.strip()]
    dirs = [
        write(tmp_path / str(i), f"a1 = x\nempty =\nmail_name = postwall\nmyorigin = {e}\n")
        for i, e in enumerate(exprs)
    ]
    reals = real_postconf_many([(d, ("-xh", "myorigin")) for d in dirs])
    for expr, real in zip(exprs, reals, strict=True):
        ours = _expander("a1 = x\nempty =\n").expand(expr)
        assert " ".join(ours.split()) == real.rstrip("\n"), expr
