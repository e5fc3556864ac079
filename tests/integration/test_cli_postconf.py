"""`postwall postconf` as a real command on real main.cf/master.cf files."""

from __future__ import annotations

from pathlib import Path

import pytest

import peers

postwall = peers.run_postwall


MAIN_CF = """# A comment that must survive -e
myhostname = mx.example.test
smtpd_banner = $myhostname ESMTP
# TLS
smtpd_tls_security_level = may
smtpd_tls_loglevel =
    2
"""


@pytest.fixture
def cdir(tmp_path: Path) -> Path:
    (tmp_path / "main.cf").write_text(MAIN_CF)
    (tmp_path / "master.cf").write_text(
        "# comment\nsmtp      inet  n       -       y       -       -       smtpd\n"
        "127.0.0.1:2465 inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes\n"
    )
    return tmp_path


def test_non_default_and_selected(cdir: Path) -> None:
    res = postwall("postconf", "-c", str(cdir), "-n")
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout == (
        f"config_directory = {cdir}\nmyhostname = mx.example.test\n"
        "smtpd_banner = $myhostname ESMTP\nsmtpd_tls_loglevel = 2\n"
        "smtpd_tls_security_level = may\n"
    )
    res = postwall("postconf", "-c", str(cdir), "-nx")
    assert "smtpd_banner = mx.example.test ESMTP\n" in res.stdout
    res = postwall("postconf", "-c", str(cdir), "-h", "smtpd_tls_loglevel", "relayhost")
    assert res.stdout == "2\n\n"
    res = postwall("postconf", "-c", str(cdir), "-x", "smtpd_banner")
    assert res.stdout == "smtpd_banner = mx.example.test ESMTP\n"


def test_all_and_defaults(cdir: Path) -> None:
    every = postwall("postconf", "-c", str(cdir)).stdout.splitlines()
    assert "myhostname = mx.example.test" in every and "biff = yes" in every
    assert every == sorted(every)
    res = postwall("postconf", "-d", "smtpd_tls_loglevel", "relayhost")
    assert res.stdout == "smtpd_tls_loglevel = 0\nrelayhost =\n"


def test_unknown_name_warns_and_exits_0_like_postfix(cdir: Path) -> None:
    res = postwall("postconf", "-c", str(cdir), "biff", "no_such_thing")
    assert res.returncode == 0
    assert res.stdout == "biff = yes\n"
    assert res.stderr == "postwall: warning: no_such_thing: unknown parameter\n"
    res = postwall("postconf", "-d", "no_such_thing")
    assert res.returncode == 0 and res.stdout == ""
    assert res.stderr == "postwall: warning: no_such_thing: unknown parameter\n"


def test_unused_parameters_are_warned_about(cdir: Path) -> None:
    (cdir / "main.cf").write_text("biff = no\nmy_unused = 1\n")
    res = postwall("postconf", "-c", str(cdir), "-n")
    assert res.returncode == 0
    assert res.stdout == f"biff = no\nconfig_directory = {cdir}\n"  # hidden, as in Postfix
    assert res.stderr == (
        f"postwall: warning: {cdir}/main.cf:2: my_unused: unused parameter: my_unused=1\n"
    )


def test_edit_keeps_comments_and_order(cdir: Path) -> None:
    res = postwall(
        "postconf", "-c", str(cdir), "-e", "smtpd_tls_loglevel=1", "relayhost=[smart]:587"
    )
    assert res.returncode == 0, res.stderr
    assert (cdir / "main.cf").read_text() == (
        "# A comment that must survive -e\nmyhostname = mx.example.test\n"
        "smtpd_banner = $myhostname ESMTP\n# TLS\nsmtpd_tls_security_level = may\n"
        "smtpd_tls_loglevel = 1\nrelayhost = [smart]:587\n"
    )
    assert postwall("postconf", "-c", str(cdir), "-h", "relayhost").stdout == "[smart]:587\n"
    before = (cdir / "main.cf").read_text()
    res = postwall("postconf", "-c", str(cdir), "-e", "no_equals_sign")
    assert res.returncode == 1
    assert res.stderr == "postwall: fatal: missing '=' after attribute name: \"no_equals_sign\"\n"
    assert (cdir / "main.cf").read_text() == before
    res = postwall("postconf", "-c", str(cdir / "missing"), "-e", "a=b")
    assert res.returncode == 1 and res.stderr.count("\n") == 1


def test_master_entries(cdir: Path) -> None:
    res = postwall("postconf", "-c", str(cdir), "-M")
    assert res.stdout == (
        "smtp       inet  n       -       y       -       -       smtpd\n"
        "127.0.0.1:2465 inet n    -       n       -       -       smtpd "
        "-o smtpd_tls_wrappermode=yes\n"
    )
    res = postwall("postconf", "-c", str(cdir), "-M", "smtp/inet", "nothing")
    assert res.returncode == 0
    assert res.stdout == "smtp       inet  n       -       y       -       -       smtpd\n"
    assert res.stderr == 'postwall: warning: unmatched request: "nothing"\n'


def test_errors_are_one_line(cdir: Path) -> None:
    (cdir / "main.cf").write_text("smtpd_tls_loglevel = lots\n")
    res = postwall("postconf", "-c", str(cdir), "-n")
    assert res.returncode == 1
    assert res.stderr.startswith(f"postwall: fatal: {cdir}/main.cf:1: smtpd_tls_loglevel")
    assert res.stderr.count("\n") == 1
    res = postwall("postconf", "-c", str(cdir), "-Q")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    res = postwall("postconf", "--help")
    assert res.returncode == 0 and "-e" in res.stdout and "-M" in res.stdout
