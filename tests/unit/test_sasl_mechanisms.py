"""SASL mechanisms byte for byte, the mechanism filter, and the password file.

The SCRAM-SHA-256 exchange is RFC 7677 section 3's test vector (user "user", password
"pencil"); PLAIN and LOGIN follow RFC 4616 and the LOGIN draft.  The password file is
written and read back, and its hashes are checked against hashlib directly.
"""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from postwall.sasl import passwd
from postwall.smtp import sasl

# RFC 7677 3.
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
RFC_KEYS = sasl.scram_keys("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)


def test_scram_sha256_rfc7677_vector() -> None:
    m = sasl.ScramSha256(nonce=SERVER_NONCE)
    assert m.start(CLIENT_FIRST) == sasl.NeedScramKeys("user")
    assert m.provide(RFC_KEYS) == sasl.Challenge(SERVER_FIRST)
    assert m.respond(CLIENT_FINAL) == sasl.Challenge(SERVER_FINAL)
    assert m.respond(b"") == sasl.Success("user")


def test_scram_without_initial_response_asks_for_it() -> None:
    m = sasl.ScramSha256(nonce=SERVER_NONCE)
    assert m.start(None) == sasl.Challenge(b"")
    assert m.respond(CLIENT_FIRST) == sasl.NeedScramKeys("user")


def test_scram_wrong_password_fails() -> None:
    m = sasl.ScramSha256(nonce=SERVER_NONCE)
    m.start(CLIENT_FIRST)
    wrong = sasl.scram_keys("pencil!", RFC_KEYS.salt, 4096)
    m.provide(wrong)
    assert m.respond(CLIENT_FINAL) == sasl.Failure(sasl.AUTH_FAILURE, "user")


def test_scram_unknown_user_gets_a_consistent_fake_challenge() -> None:
    first = sasl.ScramSha256(nonce=SERVER_NONCE)
    first.start(CLIENT_FIRST)
    challenge = first.provide(None)
    again = sasl.ScramSha256(nonce=SERVER_NONCE)
    again.start(CLIENT_FIRST)
    # Same salt for the same unknown name: a prober cannot tell it from a real user.
    assert again.provide(None) == challenge
    assert isinstance(challenge, sasl.Challenge) and b",s=" in challenge.data
    assert first.respond(CLIENT_FINAL) == sasl.Failure(sasl.AUTH_FAILURE, "user")


@pytest.mark.parametrize(
    "final",
    [
        CLIENT_FINAL.replace(b"c=biws", b"c=eSws"),  # channel binding header changed
        CLIENT_FINAL.replace(b"r=rOpr", b"r=XOpr"),  # nonce changed
        CLIENT_FINAL.replace(b"p=dHzb", b"p=!!!!"),  # proof not base64
        CLIENT_FINAL.split(b",p=")[0],  # no proof
    ],
)
def test_scram_tampered_final_message_fails(final: bytes) -> None:
    m = sasl.ScramSha256(nonce=SERVER_NONCE)
    m.start(CLIENT_FIRST)
    m.provide(RFC_KEYS)
    assert isinstance(m.respond(final), sasl.Failure)


@pytest.mark.parametrize(
    "first",
    [b"p=tls-unique,,n=user,r=abc", b"n,,r=abc", b"n,,n=us=3Der=2C,r=", b"x,,n=a,r=b", b""],
)
def test_scram_bad_first_message_fails_or_waits(first: bytes) -> None:
    step = sasl.ScramSha256().start(first)
    assert isinstance(step, sasl.Failure | sasl.Challenge)


def test_scram_saslname_escapes() -> None:
    m = sasl.ScramSha256()
    assert m.start(b"n,,n=a=2Cb=3Dc,r=xyz") == sasl.NeedScramKeys("a,b=c")
    assert isinstance(sasl.ScramSha256().start(b"n,,n=a=2Xb,r=xyz"), sasl.Failure)


def test_plain() -> None:
    m = sasl.Plain()
    assert m.start(b"\0bob\0secret") == sasl.CheckPassword("bob", "secret")
    assert m.verified(True) == sasl.Success("bob")
    m = sasl.Plain()
    assert m.start(None) == sasl.Challenge(b"")
    assert m.respond(b"bob\0bob\0secret") == sasl.CheckPassword("bob", "secret")
    assert m.verified(False) == sasl.Failure(sasl.AUTH_FAILURE, "bob")
    # Another identity than the one authenticated: no proxy authorisation.
    assert sasl.Plain().start(b"alice\0bob\0secret") == sasl.Failure(sasl.AUTHZ_FAILURE, "bob")
    for bad in (b"", b"bob", b"\0bob", b"\0\0secret", b"\0bob\0", b"\0b\xffb\0x", b"a\0b\0c\0d"):
        assert isinstance(sasl.Plain().start(bad), sasl.Failure), bad


def test_login() -> None:
    m = sasl.Login()
    assert m.start(None) == sasl.Challenge(b"Username:")
    assert m.respond(b"bob") == sasl.Challenge(b"Password:")
    assert m.respond(b"secret") == sasl.CheckPassword("bob", "secret")
    assert m.verified(True) == sasl.Success("bob")
    m = sasl.Login()
    assert m.start(b"bob") == sasl.Challenge(b"Password:")  # RFC 4954 initial response
    assert m.respond(b"") == sasl.Failure(sasl.AUTH_FAILURE, "bob")
    assert sasl.Login().start(b"") == sasl.Failure(sasl.AUTH_FAILURE)


def test_saslprep() -> None:
    assert sasl.saslprep("I\u00adX") == "IX"  # RFC 4013 3: soft hyphen mapped to nothing
    assert sasl.saslprep("user") == "user"
    assert sasl.saslprep("\u00aa") == "a"  # NFKC
    assert sasl.saslprep("\u2168") == "IX"
    with pytest.raises(ValueError):
        sasl.saslprep("\u0007")
    with pytest.raises(ValueError):
        sasl.saslprep("\u0627\u0031")  # bidi rule


OFFERED = [
    ("PLAIN", frozenset({"plaintext"})),
    ("LOGIN", frozenset({"plaintext"})),
    ("SCRAM-SHA-256", frozenset({"mutual_auth"})),
    ("CRAM-MD5", frozenset({"dictionary", "active"})),
    ("ANONYMOUS", frozenset({"anonymous"})),
]


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (("noanonymous",), ("PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5")),
        ((), ("PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5", "ANONYMOUS")),
        (("noanonymous", "noplaintext"), ("SCRAM-SHA-256", "CRAM-MD5")),
        (("noanonymous", "nodictionary"), ("PLAIN", "LOGIN", "SCRAM-SHA-256")),
        (("noactive",), ("PLAIN", "LOGIN", "SCRAM-SHA-256", "ANONYMOUS")),
        (("mutual_auth",), ("SCRAM-SHA-256",)),
    ],
)
def test_security_options_filter(options: tuple[str, ...], names: tuple[str, ...]) -> None:
    assert sasl.filter_mechanisms(OFFERED, options) == names


def test_unknown_security_option_is_refused() -> None:
    with pytest.raises(ValueError, match="noplain"):
        sasl.filter_mechanisms(OFFERED, ("noplain",))


# -- the password file ---------------------------------------------------------------


def test_entry_round_trip_and_hashes(tmp_path: Path) -> None:
    entry = passwd.make_entry("bob@example.test", "s3cret")
    line = entry.format()
    assert "s3cret" not in line
    assert line.startswith("bob@example.test:$scrypt$ln=15,r=8,p=1$")
    assert ":$scram-sha-256$i=65536$" in line
    back = passwd.parse_line(line, "x")
    assert back == entry
    # The stored hash is scrypt of the password with the stored salt and figures.
    expect = hashlib.scrypt(
        b"s3cret", salt=back.password.salt, n=2**15, r=8, p=1, maxmem=2**28, dklen=32
    )
    assert back.password.digest == expect
    assert back.password.verify("s3cret") and not back.password.verify("s3cret ")
    assert back.scram == sasl.scram_keys("s3cret", back.scram.salt, 65_536)  # type: ignore[union-attr]


def test_password_file_write_read_verify(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "sasl_passwd"
    entries = {"bob": passwd.make_entry("bob", "one"), "amy": passwd.make_entry("amy", "two")}
    passwd.write_entries(path, entries)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert passwd.read_entries(path) == entries
    pw = passwd.PasswordFile(path)
    assert pw.verify("bob", "one") and not pw.verify("bob", "two")
    assert not pw.verify("nobody", "one")
    # The server sees a change without a reload.
    del entries["bob"]
    passwd.write_entries(path, entries)
    assert pw.lookup("bob") is None and pw.lookup("amy") is not None


def test_scram_against_the_stored_verifier() -> None:
    entry = passwd.make_entry("user", "pencil")
    m = sasl.ScramSha256()
    m.start(b"n,,n=user,r=clientnonce")
    challenge = m.provide(entry.scram)
    assert isinstance(challenge, sasl.Challenge)
    attrs = dict(kv.split(b"=", 1) for kv in challenge.data.split(b","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", b"pencil", base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
    )
    import hmac

    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = b"c=biws,r=" + attrs[b"r"]
    auth_message = b"n=user,r=clientnonce," + challenge.data + b"," + without_proof
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = m.respond(without_proof + b",p=" + base64.b64encode(proof))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    assert final == sasl.Challenge(
        b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
    )


@pytest.mark.parametrize(
    "line",
    [
        "bob",
        "bob:plaintext",
        "bob:$scrypt$ln=15,r=8,p=1$AAAA",
        "bad user:$scrypt$ln=15,r=8,p=1$AAAA$AAAA:",
        "bob:$scrypt$ln=99,r=8,p=1$AAAA$AAAA:",
        "bob:$scrypt$ln=15,r=8,p=1$AAAA$AAAA:$scram-sha-256$i=4096$AAAA$AAAA$AAAA",
        "bob:$md5$abc:",
    ],
)
def test_malformed_lines_name_file_and_line(line: str, tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("# comment\n\n" + line + "\n")
    with pytest.raises(passwd.PasswdError, match=f"{path}:3: "):
        passwd.read_entries(path)


@pytest.mark.parametrize("user", ["", "a b", "a:b", "a\tb", "x" * 256])
def test_bad_user_names_are_refused(user: str) -> None:
    with pytest.raises(passwd.PasswdError):
        passwd.make_entry(user, "pw", scram=False)


def test_bad_passwords_are_refused() -> None:
    for bad in ("", "a\nb", "a\0b"):
        with pytest.raises(passwd.PasswdError):
            passwd.make_entry("bob", bad, scram=False)
