"""Postfix TLS parameters -> contexts: parsing, validation messages, random seeding."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from postwall.tls import certs
from postwall.tls.client import ClientTLS
from postwall.tls.policy import (
    DEFAULT_CIPHERLISTS,
    ServerTLS,
    ServerTLSSettings,
    TLSConfigError,
    cipher_list,
    parse_protocols,
    seed_prng,
    server_tls,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("policy")
    ca = certs.make_ca("Policy CA")
    certs.write_pem(ca, d / "ca.pem", d / "ca.key", with_chain=False)
    certs.write_pem(certs.make_server_cert(ca, "mx.test"), d / "a.pem", d / "a.key")
    certs.write_pem(certs.make_server_cert(ca, "mx.test"), d / "b.pem", d / "b.key")
    certs.write_pem(certs.make_server_cert(ca, "mx.test"), d / "chain.pem")  # key first
    certs.write_pem(
        certs.make_server_cert(ca, "mx.test", key_type="ecdsa"), d / "ec.pem", d / "ec.key"
    )
    return {p.name: str(p) for p in d.iterdir()}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (">=TLSv1", ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]),
        ("!SSLv2", ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]),
        ("!SSLv2, !SSLv3", ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]),
        ("!SSLv2:!SSLv3:!TLSv1:!TLSv1.1", ["TLSv1.2", "TLSv1.3"]),
        (">=TLSv1.2", ["TLSv1.2", "TLSv1.3"]),
        (">=TLSv1.2 <=TLSv1.2", ["TLSv1.2"]),
        ("<=TLSv1.3, >=TLSv1.3", ["TLSv1.3"]),
        ("TLSv1.2 TLSv1.3", ["TLSv1.2", "TLSv1.3"]),
        ("SSLv3 TLSv1.3", ["TLSv1.3"]),  # SSLv3 is never enabled
        ("", ["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]),
    ],
)
def test_protocol_lists(value: str, expected: list[str]) -> None:
    assert parse_protocols("smtpd_tls_protocols", value) == expected


@pytest.mark.parametrize("value", [">=TLSv9", "TLSv1.4", "!tls", ">=TLSv1.3 <=TLSv1.2", "SSLv2"])
def test_bad_protocol_lists(value: str) -> None:
    with pytest.raises(TLSConfigError) as exc:
        parse_protocols("smtpd_tls_mandatory_protocols", value)
    assert exc.value.parameter == "smtpd_tls_mandatory_protocols"
    assert str(exc.value).startswith("smtpd_tls_mandatory_protocols: ")


def test_cipher_lists_match_postfix() -> None:
    # Observed on the reference 3.7 with smtpd_tls_ask_ccert = yes at level may.
    assert (
        cipher_list("smtpd_tls_ciphers", "medium", ("aNULL",), DEFAULT_CIPHERLISTS)
        == "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH:!aNULL"
    )
    assert (
        cipher_list("x", "HIGH", ("aNULL", "MD5"), DEFAULT_CIPHERLISTS)
        == "aNULL:-aNULL:HIGH:@STRENGTH:!aNULL:!MD5"
    )
    with pytest.raises(TLSConfigError, match='invalid cipher grade: "strong"'):
        cipher_list("smtpd_tls_ciphers", "strong", (), DEFAULT_CIPHERLISTS)
    with pytest.raises(TLSConfigError, match="invalid unary"):
        cipher_list("smtpd_tls_exclude_ciphers", "high", ("!RC4",), DEFAULT_CIPHERLISTS)


def test_howto_block_from_params(files: dict[str, str]) -> None:
    # The how-to's block, as raw strings the way main.cf spells them.
    params = SimpleNamespace(
        smtpd_tls_security_level="may",
        smtpd_tls_cert_file=files["a.pem"],
        smtpd_tls_key_file=files["a.key"],
        smtpd_tls_CAfile=files["ca.pem"],
        smtpd_tls_ask_ccert="yes",
        smtpd_tls_req_ccert="no",
        smtpd_tls_loglevel="2",
        smtpd_tls_mandatory_protocols="!SSLv2",
        smtpd_tls_mandatory_ciphers="high",
        smtpd_tls_mandatory_exclude_ciphers="aNULL, MD5",
        smtpd_tls_session_cache_timeout="3600s",
        smtpd_tls_session_cache_database="btree:/var/lib/postfix/smtpd_tls_session_cache",
        tls_random_source="dev:/dev/urandom",
        unrelated_parameter="ignored",
    )
    st = server_tls(params)
    assert st.offered and not st.required and not st.wrappermode
    assert st.settings.smtpd_tls_mandatory_exclude_ciphers == ("aNULL", "MD5")
    assert st.session_timeout == 3600
    assert st.cipher_list == "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH:!aNULL"
    assert any(w.startswith("smtpd_tls_session_cache_database:") for w in st.warnings)
    assert st.seed is not None and (st.seed.kind, st.seed.nbytes) == ("dev", 32)


def test_mandatory_settings_apply_at_encrypt(files: dict[str, str]) -> None:
    s = ServerTLSSettings(
        smtpd_tls_security_level="encrypt",
        smtpd_tls_cert_file=files["a.pem"],
        smtpd_tls_key_file=files["a.key"],
        smtpd_tls_protocols=">=TLSv1.3",
        smtpd_tls_mandatory_protocols=">=TLSv1.2",
        smtpd_tls_mandatory_ciphers="high",
        smtpd_tls_exclude_ciphers=("RC4",),
        smtpd_tls_mandatory_exclude_ciphers=("aNULL", "MD5"),
    )
    st = ServerTLS(s)
    assert st.required
    assert st.protocols == ["TLSv1.2", "TLSv1.3"]
    assert st.cipher_list == "aNULL:-aNULL:HIGH:@STRENGTH:!aNULL:!MD5:!RC4"
    may = ServerTLS(ServerTLSSettings(**{**s.__dict__, "smtpd_tls_security_level": "may"}))
    assert may.protocols == ["TLSv1.3"]
    assert may.cipher_list == "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH:!RC4"


def test_legacy_and_wrappermode_levels(files: dict[str, str]) -> None:
    cert = {"smtpd_tls_cert_file": files["a.pem"], "smtpd_tls_key_file": files["a.key"]}
    assert not ServerTLS(ServerTLSSettings()).offered
    assert ServerTLS(ServerTLSSettings(smtpd_use_tls=True, **cert)).level == "may"
    enforce = ServerTLS(ServerTLSSettings(smtpd_use_tls=True, smtpd_enforce_tls=True, **cert))
    assert enforce.level == "encrypt" and enforce.required
    wrapped = ServerTLS(ServerTLSSettings(smtpd_tls_wrappermode=True, **cert))
    assert wrapped.offered and wrapped.required and wrapped.wrappermode
    with pytest.raises(TLSConfigError) as exc:
        ServerTLS(ServerTLSSettings(smtpd_tls_security_level="verify", **cert))
    assert exc.value.parameter == "smtpd_tls_security_level"


def test_req_ccert_needs_encrypt(files: dict[str, str]) -> None:
    cert = {"smtpd_tls_cert_file": files["a.pem"], "smtpd_tls_key_file": files["a.key"]}
    may = ServerTLS(
        ServerTLSSettings(smtpd_tls_security_level="may", smtpd_tls_req_ccert=True, **cert)
    )
    assert not may.req_ccert and not may.ask_ccert
    assert any(w.startswith("smtpd_tls_req_ccert:") for w in may.warnings)
    enc = ServerTLS(
        ServerTLSSettings(smtpd_tls_security_level="encrypt", smtpd_tls_req_ccert=True, **cert)
    )
    assert enc.req_ccert and enc.ask_ccert


def test_missing_files_name_the_parameter(files: dict[str, str], tmp_path: Path) -> None:
    base = {"smtpd_tls_security_level": "may"}
    cases = [
        ({"smtpd_tls_cert_file": str(tmp_path / "nope.pem")}, "smtpd_tls_cert_file"),
        (
            {"smtpd_tls_cert_file": files["a.pem"], "smtpd_tls_key_file": str(tmp_path / "x")},
            "smtpd_tls_key_file",
        ),
        (
            {"smtpd_tls_cert_file": files["a.pem"], "smtpd_tls_key_file": files["b.key"]},
            "smtpd_tls_key_file",
        ),
        (
            {"smtpd_tls_cert_file": files["a.key"], "smtpd_tls_key_file": files["a.key"]},
            "smtpd_tls_cert_file",
        ),
        ({}, "smtpd_tls_cert_file"),
        (
            {
                "smtpd_tls_cert_file": files["a.pem"],
                "smtpd_tls_key_file": files["a.key"],
                "smtpd_tls_CAfile": str(tmp_path / "ca"),
            },
            "smtpd_tls_CAfile",
        ),
        (
            {
                "smtpd_tls_cert_file": files["a.pem"],
                "smtpd_tls_key_file": files["a.key"],
                "smtpd_tls_fingerprint_digest": "sha3",
            },
            "smtpd_tls_fingerprint_digest",
        ),
    ]
    for extra, param in cases:
        with pytest.raises(TLSConfigError) as exc:
            ServerTLS(ServerTLSSettings(**{**base, **extra}))  # type: ignore[arg-type]
        assert exc.value.parameter == param, (extra, str(exc.value))
    with pytest.raises(TLSConfigError, match="does not match the certificate"):
        ServerTLS(
            ServerTLSSettings(
                smtpd_tls_security_level="may",
                smtpd_tls_cert_file=files["a.pem"],
                smtpd_tls_key_file=files["b.key"],
            )
        )


def test_key_readable_by_others_is_a_warning(files: dict[str, str], tmp_path: Path) -> None:
    key = tmp_path / "open.key"
    key.write_bytes(Path(files["a.key"]).read_bytes())
    key.chmod(0o644)
    st = ServerTLS(
        ServerTLSSettings(
            smtpd_tls_security_level="may",
            smtpd_tls_cert_file=files["a.pem"],
            smtpd_tls_key_file=str(key),
        )
    )
    assert st.offered
    assert any(w.startswith("smtpd_tls_key_file:") and "0644" in w for w in st.warnings)
    key.chmod(0o600)
    st.reload()
    assert not [w for w in st.warnings if "key" in w]


def test_chain_files_and_dual_certificates(files: dict[str, str]) -> None:
    st = ServerTLS(
        ServerTLSSettings(
            smtpd_tls_security_level="may", smtpd_tls_chain_files=(files["chain.pem"],)
        )
    )
    assert st.offered
    dual = ServerTLS(
        ServerTLSSettings(
            smtpd_tls_security_level="may",
            smtpd_tls_cert_file=files["a.pem"],
            smtpd_tls_key_file=files["a.key"],
            smtpd_tls_eccert_file=files["ec.pem"],
            smtpd_tls_eckey_file=files["ec.key"],
        )
    )
    assert dual.offered


def test_eecdh_grades(files: dict[str, str]) -> None:
    cert = {"smtpd_tls_cert_file": files["a.pem"], "smtpd_tls_key_file": files["a.key"]}
    auto = ServerTLS(ServerTLSSettings(smtpd_tls_security_level="may", **cert))
    assert auto.curves[0] == "X25519"
    strong = ServerTLS(
        ServerTLSSettings(smtpd_tls_security_level="may", smtpd_tls_eecdh_grade="strong", **cert)
    )
    assert strong.curves == ["prime256v1"]
    odd = ServerTLS(
        ServerTLSSettings(
            smtpd_tls_security_level="may", tls_eecdh_auto_curves=("nosuchcurve", "X25519"), **cert
        )
    )
    assert odd.curves == ["X25519"]  # unknown curves are skipped, as Postfix does
    with pytest.raises(TLSConfigError) as exc:
        ServerTLS(
            ServerTLSSettings(smtpd_tls_security_level="may", smtpd_tls_eecdh_grade="bogus", **cert)
        )
    assert exc.value.parameter == "smtpd_tls_eecdh_grade"


def test_from_params_rejects_bad_values() -> None:
    with pytest.raises(TLSConfigError) as exc:
        ServerTLSSettings.from_params(SimpleNamespace(smtpd_tls_ask_ccert="perhaps"))
    assert exc.value.parameter == "smtpd_tls_ask_ccert"
    with pytest.raises(TLSConfigError) as exc:
        ServerTLSSettings.from_params(SimpleNamespace(smtpd_tls_session_cache_timeout="soon"))
    assert exc.value.parameter == "smtpd_tls_session_cache_timeout"
    s = ServerTLSSettings.from_params(SimpleNamespace(smtpd_tls_session_cache_timeout="1h"))
    assert s.smtpd_tls_session_cache_timeout == 3600.0


def test_client_levels(files: dict[str, str]) -> None:
    legacy = ClientTLS.from_params(SimpleNamespace(smtp_use_tls="yes"))
    assert legacy.level == "may"
    enforce = ClientTLS.from_params(SimpleNamespace(smtp_use_tls="yes", smtp_enforce_tls="yes"))
    assert enforce.level == "encrypt"
    with pytest.raises(TLSConfigError) as exc:
        ClientTLS.from_params(SimpleNamespace(smtp_tls_security_level="dane"))
    assert exc.value.parameter == "smtp_tls_security_level"
    sec = ClientTLS.from_params(
        SimpleNamespace(smtp_tls_security_level="secure", smtp_tls_CAfile=files["ca.pem"])
    )
    assert sec.match_names("Example.COM", "mx1.example.com") == ("example.com", ".example.com")


def test_seed_from_device_and_file(tmp_path: Path) -> None:
    rep = seed_prng("dev:/dev/urandom", 32)
    assert (rep.kind, rep.nbytes, rep.seeded) == ("dev", 32, True)
    assert "32 bytes" in rep.describe()
    f = tmp_path / "entropy"
    f.write_bytes(os.urandom(10))
    rep = seed_prng(str(f), 32)
    assert (rep.kind, rep.nbytes) == ("file", 10)
    with pytest.raises(TLSConfigError) as exc:
        seed_prng("dev:/dev/nonexistent-entropy")
    assert exc.value.parameter == "tls_random_source"


def test_bad_random_source_is_only_a_warning(files: dict[str, str]) -> None:
    st = ServerTLS(
        ServerTLSSettings(
            smtpd_tls_security_level="may",
            smtpd_tls_cert_file=files["a.pem"],
            smtpd_tls_key_file=files["a.key"],
            tls_random_source="dev:/dev/nonexistent-entropy",
        )
    )
    assert st.offered and st.seed is None
    assert any(w.startswith("tls_random_source: cannot open entropy device") for w in st.warnings)


def test_seed_from_egd_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "egd.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    seen: list[bytes] = []

    def egd() -> None:
        conn, _ = srv.accept()
        with conn:
            req = conn.recv(2)
            seen.append(req)
            conn.sendall(bytes([req[1]]) + os.urandom(req[1]))

    t = threading.Thread(target=egd)
    t.start()
    rep = seed_prng(f"egd:{path}", 16)
    t.join(5)
    srv.close()
    assert seen == [bytes([0x01, 16])]
    assert (rep.kind, rep.nbytes) == ("egd", 16)
    with pytest.raises(TLSConfigError, match="cannot connect to EGD server"):
        seed_prng(f"egd:{tmp_path / 'absent.sock'}")


def test_from_real_params(files: dict[str, str]) -> None:
    params_mod = pytest.importorskip("postwall.config.params")
    import dataclasses

    params = dataclasses.replace(
        params_mod.Params(),
        smtpd_tls_security_level="encrypt",
        smtpd_tls_cert_file=files["a.pem"],
        smtpd_tls_key_file=files["a.key"],
        smtpd_tls_mandatory_protocols=("!SSLv2", "!SSLv3", "!TLSv1", "!TLSv1.1"),
        smtpd_tls_mandatory_exclude_ciphers=("aNULL", "MD5"),
        smtpd_tls_fingerprint_digest="sha256",
    )
    st = server_tls(params)
    assert st.required and st.protocols == ["TLSv1.2", "TLSv1.3"]
    assert st.cipher_list.endswith(":!aNULL:!MD5")
    assert st.fingerprint_digest == "sha256"
