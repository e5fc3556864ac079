"""The smtp client's SASL mechanisms (postwall.sasl.client) against the RFCs' own
examples, the mechanism choice under Postfix's security options, and hostile servers."""

from __future__ import annotations

import base64

import pytest

from postwall.sasl import client as sc


def test_scram_sha_256_matches_rfc_7677_example() -> None:
    m = sc.Scram("user", "pencil", "sha256", nonce="rOprNGfwEbeRWgbNEkqO")
    assert m.initial() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert m.step(server_first) == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    )
    assert not m.done
    assert m.step(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=") == b""
    assert m.done


def test_scram_sha_1_matches_rfc_5802_example() -> None:
    m = sc.Scram("user", "pencil", "sha1", nonce="fyko+d2lbbFgONRv9qkxdawL")
    assert m.initial() == b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"
    reply = m.step(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
    assert reply == (
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    )
    m.step(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
    assert m.done


@pytest.mark.parametrize(
    ("server_first", "why"),
    [
        (b"r=someoneelse,s=QSXCR+Q6sek8bf92,i=4096", "doesn't start from the nonce sent"),
        (b"r=abc,s=QSXCR+Q6sek8bf92,i=4096", "doesn't start from the nonce sent"),
        (b"r=abcX,s=QSXCR+Q6sek8bf92,i=65537", "iteration-count is too big"),  # Cyrus's
        (b"r=abcX,s=QSXCR+Q6sek8bf92,i=0", "Invalid iteration-count"),
        (b"r=abcX,s=***,i=4096", "SCRAM-SHA-256"),
        (b"e=unknown-user", "server error unknown-user"),
        (b"\xff\xfe", "not ASCII"),
    ],
)
def test_scram_refuses_a_hostile_server_first_message(server_first: bytes, why: str) -> None:
    m = sc.Scram("user", "pencil", "sha256", nonce="abc")
    with pytest.raises(sc.SaslClientError, match=why) as err:
        m.step(server_first)
    assert err.value.reason == "bad protocol / cancel"


def test_scram_refuses_a_server_that_does_not_know_the_password() -> None:
    m = sc.Scram("user", "pencil", "sha256", nonce="rOprNGfwEbeRWgbNEkqO")
    m.step(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    wrong = base64.b64encode(b"\0" * 32)
    with pytest.raises(sc.SaslClientError, match="server signature is wrong") as err:
        m.step(b"v=" + wrong)
    assert err.value.reason == "server failed mutual authentication step"
    assert not m.done


def test_cram_md5_matches_rfc_2195_example() -> None:
    m = sc.CramMd5("tim", "tanstaaftanstaaf")
    assert m.initial() is None
    answer = m.step(b"<1896.697170952@postoffice.reston.mci.net>")
    assert answer == b"tim b913a602c7eda7a495b4e6e7334d3890"
    with pytest.raises(sc.SaslClientError):
        m.step(b"again")


def test_plain_and_login() -> None:
    assert sc.Plain("alice", "s3cret").initial() == b"\0alice\0s3cret"
    login = sc.Login("alice", "s3cret")
    assert login.initial() is None
    assert login.step(b"Username:") == b"alice"
    assert not login.done
    assert login.step(b"Password:") == b"s3cret" and login.done
    with pytest.raises(sc.SaslClientError):
        login.step(b"Anything else:")


def test_choice_follows_postfix_security_options() -> None:
    offered = ("PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256")
    default = ("noplaintext", "noanonymous")  # Postfix's smtp_sasl_security_options
    assert sc.choose(offered, (), default) == "SCRAM-SHA-256"
    assert sc.choose(("PLAIN", "LOGIN"), (), default) is None
    assert sc.choose(("LOGIN", "PLAIN"), (), ("noanonymous",)) == "PLAIN"
    assert sc.choose(("plain", "cram-md5"), (), ("noanonymous",)) == "CRAM-MD5"
    assert sc.choose(offered, (), ("noactive",)) == "SCRAM-SHA-256"
    assert sc.choose(("CRAM-MD5", "PLAIN"), (), ("noactive",)) is None
    assert sc.choose(offered, (), ("mutual_auth",)) == "SCRAM-SHA-256"
    # smtp_sasl_mechanism_filter narrows what the server offers, without case.
    assert sc.choose(offered, ("login", "plain"), ("noanonymous",)) == "PLAIN"
    assert sc.choose(offered, ("cram-md5",), ("noanonymous",)) == "CRAM-MD5"
    assert sc.choose(("GSSAPI", "XOAUTH2"), (), ()) is None  # not ours
    with pytest.raises(ValueError, match="unknown SASL security option"):
        sc.choose(offered, (), ("noplaintxt",))
