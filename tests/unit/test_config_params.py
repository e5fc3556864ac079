"""The parameter registry against Postfix 3.7's own defaults (golden file and live postconf)."""

from __future__ import annotations

import dataclasses
import subprocess
import typing
from pathlib import Path

import pytest

import peers
from postwall.config import params as P
from postwall.config.params import Params
from postwall.config.postconf import format_defaults
from postwall.config.postfix_names import is_postfix_parameter

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "config" / "postconf-d.txt"
# Host-dependent defaults (and process_* which postconf computes at run time) are left out.
SELECTION = sorted(
    n for n in P.FIELDS if n not in P.HOST_DEPENDENT | P.DELIBERATE and not P.is_postwall_only(n)
)
KIND_TYPES = {"str": str, "int": int, "bool": bool, "time": float, "list": tuple[str, ...]}


def test_format_defaults_matches_golden_file() -> None:
    assert format_defaults(SELECTION) == GOLDEN.read_text()


@pytest.mark.interop
def test_golden_file_matches_installed_postconf() -> None:
    exe = peers.require_tool("postconf")
    res = subprocess.run([exe, "-d", *SELECTION], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout == GOLDEN.read_text()
    assert format_defaults(SELECTION) == res.stdout


@pytest.mark.interop
def test_host_dependent_defaults_match_postconf() -> None:
    exe = peers.require_tool("postconf")
    res = subprocess.run(
        [exe, "-d", "myhostname", "mydomain"], capture_output=True, text=True, timeout=60
    )
    assert res.stdout == format_defaults(["myhostname", "mydomain"])


def test_every_field_is_typed_documented_and_consistent() -> None:
    hints = typing.get_type_hints(Params)
    for f in dataclasses.fields(Params):
        meta = f.metadata
        assert meta["doc"] and "\n" not in meta["doc"], f.name
        assert hints[f.name] == KIND_TYPES[meta["kind"]], f.name
        default = f.default
        if meta["kind"] == "list":
            assert isinstance(default, tuple), f.name
        else:
            assert type(default) is KIND_TYPES[meta["kind"]], f.name


def test_params_is_frozen() -> None:
    p = Params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.biff = False  # type: ignore[misc]


def test_format_defaults_rejects_unknown_names() -> None:
    with pytest.raises(KeyError):
        format_defaults(["no_such_parameter"])


HOWTO_PARAMETERS = [
    "smtpd_tls_security_level",
    "smtpd_tls_auth_only",
    "smtpd_tls_key_file",
    "smtpd_tls_cert_file",
    "smtpd_tls_CAfile",
    "smtpd_tls_loglevel",
    "smtpd_tls_received_header",
    "smtpd_tls_session_cache_timeout",
    "smtpd_tls_session_cache_database",
    "tls_random_source",
    "smtpd_tls_ask_ccert",
    "smtpd_tls_req_ccert",
    "smtpd_tls_mandatory_protocols",
    "smtpd_tls_mandatory_ciphers",
    "smtpd_tls_mandatory_exclude_ciphers",
    "smtp_use_tls",
    "smtp_tls_note_starttls_offer",
    "smtp_tls_loglevel",
]


def test_required_howto_parameters_are_registered() -> None:
    assert [n for n in HOWTO_PARAMETERS if not P.is_known(n)] == []


def test_registry_names_are_postfix_parameters() -> None:
    services = ["smtp"]  # smtp_destination_* exist for the smtp transport only
    missing = [n for n in P.FIELDS if not is_postfix_parameter(n, services)]
    assert (
        missing
        == [n for n in P.FIELDS if P.is_postwall_only(n)]
        == [
            "smtpd_listen_backlog",
            "postwall_client_name_cache_time",
            "postwall_dns_servers",
        ]
    )
    assert all(P.doc(n).startswith("postwall only") for n in missing)
    assert not is_postfix_parameter("smtp_destination_concurrency_limit")
    assert is_postfix_parameter("relay_time_limit", ["relay"])
    assert not is_postfix_parameter("relay_time_limit", ["smtp"])
