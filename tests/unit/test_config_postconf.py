"""postconf output and `postconf -e` edits, compared with the installed Postfix postconf."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import peers
from postwall.config import load
from postwall.config import params as P
from postwall.config.postconf import (
    edit_main_cf,
    format_all,
    format_defaults,
    format_non_default,
    format_selected,
)

DEBIAN_MAIN_CF = peers.DEBIAN_MAIN_CF
PROTO_MAIN_CF = peers.PROTO_MAIN_CF
MASTER_PROTO = peers.MASTER_PROTO


def base_main_cf() -> str:
    for candidate in (DEBIAN_MAIN_CF, PROTO_MAIN_CF):
        if candidate.exists():
            return candidate.read_text()
    pytest.skip("neither main.cf.debian nor main.cf.proto is installed")


@pytest.fixture
def howto_dir(tmp_path: Path) -> Path:
    d = tmp_path / "howto"
    d.mkdir()
    (d / "main.cf").write_text(base_main_cf() + peers.HOWTO_TLS_BLOCK)
    if MASTER_PROTO.exists():
        shutil.copy(MASTER_PROTO, d / "master.cf")
    else:
        (d / "master.cf").write_text("smtp inet n - y - - smtpd\n")
    return d


def postconf(directory: Path, *args: str) -> str:
    """Postfix's postconf on `directory`, with postwall's deliberately different defaults
    (P.DELIBERATE) given as -o overrides where main.cf leaves them unset."""
    exe = peers.require_tool("postconf")
    main_cf = (directory / "main.cf").read_text()
    unset = [n for n in sorted(P.DELIBERATE) if not re.search(rf"^{n}\s*=", main_cf, re.M)]
    overrides = [a for n in unset for a in ("-o", f"{n}={P.raw_default(n)}")]
    if "-e" in args:
        overrides = []  # postconf -e edits the file; -o is for reading
    res = subprocess.run(
        [exe, "-c", str(directory), *overrides, *args], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    if any(a.startswith("-") and "n" in a for a in args):
        # -o settings count as set for -n; they are defaults for postwall.
        lines = res.stdout.splitlines(keepends=True)
        return "".join(x for x in lines if x.split(" = ", 1)[0] not in unset)
    return res.stdout


def test_howto_main_cf_loads_with_typed_tls_values(howto_dir: Path) -> None:
    cfg = load(howto_dir)
    p = cfg.params
    assert cfg.warnings == []
    assert p.smtpd_tls_security_level == "may" and p.smtpd_tls_auth_only is True
    assert p.smtpd_tls_key_file == "/etc/postfix/certs/smtp.key"
    assert p.smtpd_tls_CAfile == "/etc/postfix/certs/ca.crt"
    assert p.smtpd_tls_loglevel == 2 and p.smtp_tls_loglevel == 1
    assert p.smtpd_tls_session_cache_timeout == 3600.0
    assert p.smtpd_tls_mandatory_protocols == ("!SSLv2",)
    assert p.smtpd_tls_mandatory_ciphers == "high"
    assert p.smtpd_tls_mandatory_exclude_ciphers == ("aNULL", "MD5")
    assert (p.smtp_use_tls, p.smtp_tls_note_starttls_offer, p.biff) == (True, True, False)
    assert p.smtpd_banner.endswith(" ESMTP postwall (Debian/GNU)")
    assert p.compatibility_level == "3.6" and p.smtpd_tls_fingerprint_digest == "sha256"
    assert cfg.service("smtp") is not None


def test_non_default_output_lists_main_cf_settings(howto_dir: Path) -> None:
    out = format_non_default(load(howto_dir))
    assert "smtpd_tls_mandatory_protocols = !SSLv2\n" in out
    assert f"config_directory = {howto_dir}\n" in out
    assert out.splitlines() == sorted(out.splitlines())


@pytest.mark.interop
def test_non_default_matches_postconf_n(howto_dir: Path) -> None:
    cfg = load(howto_dir)
    assert format_non_default(cfg) == postconf(howto_dir, "-n")
    assert format_non_default(cfg, expand=True) == postconf(howto_dir, "-nx")


@pytest.mark.interop
def test_every_registry_value_matches_postconf(tmp_path: Path) -> None:
    # mynetworks is set: Postfix computes its default from this host's interfaces.
    (tmp_path / "main.cf").write_text(
        base_main_cf() + peers.HOWTO_TLS_BLOCK + "mynetworks = 127.0.0.0/8 [::1]/128\n"
        "user_var = 2\nsmtpd_soft_error_limit = $user_var\n"
    )
    # Postfix knows smtp_destination_* only with an smtp service in master.cf.
    (tmp_path / "master.cf").write_text("smtp unix - - y - - smtp\n")
    cfg = load(tmp_path)
    names = sorted(n for n in P.FIELDS if not P.is_postwall_only(n))
    ours, warnings = format_selected(cfg, names)
    assert warnings == []
    assert ours == postconf(tmp_path, *names)
    assert format_selected(cfg, names, expand=True)[0] == postconf(tmp_path, "-x", *names)
    only = ("smtpd_listen_backlog = 4096\n", "postwall_dns_servers =\n")
    everything = format_all(cfg)
    for line in only:
        everything = everything.replace(line, "")
    assert everything == ours


def test_selected_reports_unknown_names(howto_dir: Path) -> None:
    out, warnings = format_selected(load(howto_dir), ["biff", "no_such_name"])
    assert out == "biff = no\n" and warnings == ["no_such_name: unknown parameter"]


def test_defaults_print_empty_values_without_trailing_space() -> None:
    assert format_defaults(["relayhost", "biff"]) == "relayhost =\nbiff = yes\n"


EDIT_INPUT = "# head\nmail_name = a\n  b\n# mid\nbiff = no\nmail_name = c\nfoo = 1\n# tail\n"
EDITS = {"mail_name": "new  value", "relayhost": "[x]:25", "biff": "yes", "empty_one": ""}


def test_edit_main_cf_replaces_in_place_and_appends() -> None:
    assert edit_main_cf(EDIT_INPUT, EDITS) == (
        "# head\nmail_name = new  value\n# mid\nbiff = yes\nmail_name = new  value\n"
        "foo = 1\n# tail\nrelayhost = [x]:25\nempty_one = \n"
    )
    assert edit_main_cf("# only a comment", {"biff": "no"}) == "# only a comment\nbiff = no\n"


@pytest.mark.interop
def test_edit_main_cf_matches_postconf_e(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text(EDIT_INPUT)
    (tmp_path / "master.cf").write_text("")
    postconf(tmp_path, "-e", *(f"{k}={v}" for k, v in EDITS.items()))
    ours = edit_main_cf(EDIT_INPUT, EDITS).splitlines(keepends=True)
    real = (tmp_path / "main.cf").read_text().splitlines(keepends=True)
    kept = len(EDIT_INPUT.splitlines()) - 1  # the continuation line goes
    assert ours[:kept] == real[:kept]
    # postconf appends new names in its hash table's order; postwall keeps the given order.
    assert sorted(ours[kept:]) == sorted(real[kept:])


@pytest.mark.interop
def test_non_default_shows_user_names_used_anywhere(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text(
        "mua_x = permit\nunused_y = 1\nsmtpd_restriction_classes = cls\ncls = reject\n"
    )
    (tmp_path / "master.cf").write_text(
        "smtp inet n - y - - smtpd -o smtpd_client_restrictions=$mua_x\n"
    )
    cfg = load(tmp_path)
    assert cfg.unused == {"unused_y"}
    assert format_non_default(cfg) == postconf(tmp_path, "-n")
