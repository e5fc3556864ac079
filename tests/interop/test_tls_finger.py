"""`postwall tls-finger` side by side with Postfix's posttls-finger, against real servers.

Each test runs both programs, as an administrator would, against the same server in the
same test: a postwall server (certificate CN localhost, or mx.postwall.test for the MX
test), a real Postfix receiver, smtp-sink (no STARTTLS), or nothing at all (refused). Their
`posttls-finger: ` / `tls-finger: ` lines must be the same, apart from posttls-finger's
session-cache lines, whose keys are a hash of its internal state. On top, postwall's report
and exit status are checked (posttls-finger always exits 0). The MX test asks a real unbound
on loopback; posttls-finger cannot be pointed at it, so only postwall runs there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop

HELO = "probe.postwall.test"
CACHE_LINES = ("looking for session ", "reloaded session ", "save session ")


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Our own main.cf, so a developer's ~/.config/postwall cannot change what is sent.
    d = tmp_path_factory.mktemp("fingerconf")
    (d / "main.cf").write_text(f"myhostname = {HELO}\n")
    return d


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, certs: peers.TestCerts
) -> Iterator[peers.PostwallServer]:
    """postwall with STARTTLS (certificate localhost + CA) and an implicit-TLS service."""
    peers.require_tool("posttls-finger")
    wrapper_port = peers.free_port()
    srv = peers.PostwallServer(
        config_dir=tmp_path_factory.mktemp("fingered"),
        params={
            "smtpd_tls_cert_file": str(certs.server_cert),
            "smtpd_tls_key_file": str(certs.server_key),
            "smtpd_tls_security_level": "may",
        },
        extra_services=[
            f"127.0.0.1:{wrapper_port} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes"
        ],
    )
    srv.wrapper_port = wrapper_port  # type: ignore[attr-defined]
    try:
        yield srv.start()
    finally:
        srv.cleanup()


def finger(confdir: Path, *args: str) -> peers.ToolResult:
    res = peers.run_postwall("tls-finger", "--config-dir", str(confdir), *args)
    return peers.ToolResult(
        ("postwall", "tls-finger", *args), res.returncode, res.stdout, res.stderr
    )


def reference(*args: str) -> peers.ToolResult:
    return peers.run_tool(["posttls-finger", "-o", f"myhostname={HELO}", *args], timeout=60)


def lines(text: str, prefix: str) -> list[str]:
    return [
        ln.removeprefix(prefix)
        for ln in text.splitlines()
        if ln.startswith(prefix) and not ln.removeprefix(prefix).startswith(CACHE_LINES)
    ]


def same_lines(ours: peers.ToolResult, ref: peers.ToolResult) -> list[str]:
    got = lines(ours.stdout, "tls-finger: ")
    want = lines(ref.stdout, "posttls-finger: ")
    assert got == want, f"--- ours:\n{ours.transcript}\n--- posttls-finger:\n{ref.transcript}"
    return got


def field(result: peers.ToolResult, key: str) -> str:
    """A value of postwall's report ("  key:   value")."""
    m = re.search(rf"^\s+{re.escape(key)}:\s+(.*)$", result.stdout, re.M)
    assert m, f"no {key!r} in the report:\n{result.stdout}"
    return m.group(1)


def one_error_line(result: peers.ToolResult) -> str:
    assert "Traceback" not in result.transcript
    err = result.stderr.splitlines()
    assert len(err) == 1, result.stderr
    return err[0]


def test_may_shows_chat_and_untrusted_chain_as_posttls_finger(
    server: peers.PostwallServer, confdir: Path, certs: peers.TestCerts
) -> None:
    dest = f"[127.0.0.1]:{server.port}"
    ours, ref = finger(confdir, "-l", "may", dest), reference("-l", "may", dest)
    got = same_lines(ours, ref)
    assert got[0] == f"Connected to 127.0.0.1[127.0.0.1]:{server.port}"
    assert f"> EHLO {HELO}" in got and "> STARTTLS" in got and "< 221 2.0.0 Bye" in got
    assert any(ln.startswith("Untrusted TLS connection established to ") for ln in got)
    assert (ours.returncode, ref.returncode) == (0, 0)
    # postwall's report: the chain with fingerprints, the extensions, the verdict.
    assert field(ours, "extensions").startswith("PIPELINING, SIZE 10240000")
    assert "STARTTLS" in field(ours, "extensions")
    assert "STARTTLS" not in field(ours, "extensions in TLS")
    assert field(ours, "protocol") == "TLSv1.3"
    assert field(ours, "key exchange") == "X25519"
    assert field(ours, "SHA-256") == peers.cert_fingerprint(certs.server_cert)
    assert field(ours, "subject") == "/CN=localhost"
    assert field(ours, "issuer") == "/CN=postwall test CA"
    assert field(ours, "names") == "DNS:localhost"
    assert "days left" in field(ours, "valid until")
    assert field(ours, "chain vs system CAs").endswith(
        "does not verify: self-signed certificate in certificate chain"
    )
    assert field(ours, "trust") == "Untrusted"
    assert field(ours, "verdict") == "security level may satisfied"


def test_secure_with_the_ca_is_verified_and_c_hides_the_chat(
    server: peers.PostwallServer, confdir: Path, certs: peers.TestCerts
) -> None:
    args = ("-c", "-F", str(certs.ca_cert), f"[127.0.0.1]:{server.port}", "localhost")
    ours, ref = finger(confdir, *args), reference(*args)
    got = same_lines(ours, ref)
    assert got[0] == f"127.0.0.1[127.0.0.1]:{server.port}: matched peername: localhost"
    assert got[-1].startswith("Verified TLS connection established to 127.0.0.1[127.0.0.1]")
    assert not any(ln.startswith(("<", ">", "Connected")) for ln in got)
    assert ours.returncode == 0 and ours.stderr == ""
    assert field(ours, "chain vs -F/-P") == f"{certs.ca_cert}: verifies"
    assert field(ours, "name match") == "yes: localhost (certificate: localhost)"
    assert field(ours, "verdict") == "security level secure satisfied"
    # -c hides the chat only: both still say EHLO again inside TLS, then QUIT.
    done = re.findall(r"disconnect from localhost\[127.0.0.1\] (.*)", server.log_text())
    assert done[-2:] == ["ehlo=2 starttls=1 quit=1 commands=4"] * 2


@pytest.mark.parametrize(
    ("options", "matches", "error"),
    [
        # No CA: untrusted (and the leaf's name mismatch outranks the untrusted CA).
        ((), (), "Server certificate not verified"),
        (("-l", "verify"), ("wrong.postwall.test",), "Server certificate not verified"),
        (("-l", "verify"), (), "Server certificate not verified"),  # IP address mismatch
        (("-l", "secure"), ("localhost.example",), "Server certificate not verified"),
    ],
)
def test_certificate_policy_failures_exit_3(
    server: peers.PostwallServer,
    confdir: Path,
    certs: peers.TestCerts,
    options: tuple[str, ...],
    matches: tuple[str, ...],
    error: str,
) -> None:
    ca = ("-F", str(certs.ca_cert)) if options else ()
    args = ("-c", *options, *ca, f"[127.0.0.1]:{server.port}", *matches)
    ours, ref = finger(confdir, *args), reference(*args)
    got = same_lines(ours, ref)
    assert "verification failed for 127.0.0.1[127.0.0.1]" in got[0]
    level = options[1] if options else "secure"
    assert ours.returncode == 3 and ref.returncode == 0
    verdict = f"security level {level} not satisfied: {error}"
    assert one_error_line(ours) == f"postwall: tls-finger: {verdict}"
    assert field(ours, "verdict") == verdict


def test_native_lookup_and_nexthop_match(
    server: peers.PostwallServer, confdir: Path, certs: peers.TestCerts
) -> None:
    # /etc/hosts knows localhost; at secure the nexthop "localhost" is the name to match.
    args = ("-c", "-h", "native", "-F", str(certs.ca_cert), f"[localhost]:{server.port}")
    ours, ref = finger(confdir, *args), reference(*args)
    got = same_lines(ours, ref)
    assert got[0] == f"localhost[127.0.0.1]:{server.port}: matched peername: localhost"
    assert ours.returncode == 0


def test_reconnect_reports_resumption(
    server: peers.PostwallServer, confdir: Path, certs: peers.TestCerts
) -> None:
    args = ("-r", "1", "-F", str(certs.ca_cert), f"[127.0.0.1]:{server.port}", "localhost")
    ours, ref = finger(confdir, *args), reference(*args)
    got = same_lines(ours, ref)
    tail = got[got.index("Reconnecting after 1 seconds") :]
    assert tail[0:2] == ["Reconnecting after 1 seconds", "< 220 postwall.test ESMTP postwall"]
    assert f"127.0.0.1[127.0.0.1]:{server.port}: Reusing old session" in tail
    assert tail[-1] == "Found a previously used server.  Done reconnecting."
    assert field(ours, "resumption") == "session reused on the second connection"
    assert ours.returncode == 0


def test_chain_in_pem_as_posttls_finger(
    server: peers.PostwallServer, confdir: Path, certs: peers.TestCerts
) -> None:
    args = ("-c", "-C", "-l", "may", f"[127.0.0.1]:{server.port}")
    ours, ref = finger(confdir, *args), reference(*args)
    ours_text = ours.stdout.split("postwall tls-finger report")[0].replace("tls-finger: ", "")
    assert ours_text == ref.stdout.replace("posttls-finger: ", "")
    assert ours_text.count("-----BEGIN CERTIFICATE-----") == 2
    ca_pem = certs.ca_cert.read_text().strip()
    assert ca_pem in ours_text


def test_debug_log_options_as_posttls_finger(server: peers.PostwallServer, confdir: Path) -> None:
    args = ("-c", "-L", "debug", "-l", "may", f"[127.0.0.1]:{server.port}")
    got = same_lines(finger(confdir, *args), reference(*args))
    assert "SSL_connect:before SSL initialization" in got
    assert any(": depth=0 verify=1 subject=/CN=localhost" in ln for ln in got)


def test_wrapper_mode(server: peers.PostwallServer, confdir: Path) -> None:
    port = server.wrapper_port  # type: ignore[attr-defined]
    args = ("-w", "-l", "may", f"[127.0.0.1]:{port}")
    ours, ref = finger(confdir, *args), reference(*args)
    got = same_lines(ours, ref)
    assert got[2].startswith("Untrusted TLS connection established")
    assert got[3] == "< 220 postwall.test ESMTP postwall"  # the greeting comes inside TLS
    assert ours.returncode == 0
    # Wrapper mode against the STARTTLS port: the handshake fails; exit 3.
    args = ("-c", "-w", "-l", "may", f"[127.0.0.1]:{server.port}")
    ours, ref = finger(confdir, *args), reference(*args)
    assert lines(ours.stdout, "tls-finger: ")[0] == lines(ref.stdout, "posttls-finger: ")[0]
    assert lines(ours.stdout, "tls-finger: ")[0].startswith("SSL_connect error to 127.0.0.1")
    assert ours.returncode == 3
    assert one_error_line(ours).endswith("not satisfied: Cannot start TLS: handshake failure")


def test_postfix_receiver_as_posttls_finger_sees_it(
    shared_postfix_receiver: peers.PostfixInstance, confdir: Path, certs: peers.TestCerts
) -> None:
    peers.require_tool("posttls-finger")
    dest = f"[127.0.0.1]:{shared_postfix_receiver.port}"
    args = ("-F", str(certs.ca_cert), dest, "localhost")
    ours, ref = finger(confdir, *args), reference(*args)
    got = same_lines(ours, ref)
    assert any(ln.startswith("Verified TLS connection established") for ln in got)
    assert ours.returncode == 0
    assert field(ours, "trust") == "Verified"
    assert field(ours, "SHA-256") == peers.cert_fingerprint(certs.server_cert)


def test_server_without_starttls(smtp_sink_factory: object, confdir: Path) -> None:
    sink = smtp_sink_factory()  # type: ignore[operator]
    dest = f"[127.0.0.1]:{sink.port}"
    ours, ref = finger(confdir, dest), reference(dest)
    got = same_lines(ours, ref)
    assert "< 220 smtp-sink ESMTP" in got and "> STARTTLS" not in got
    assert ref.returncode == 0 and ours.returncode == 3
    assert one_error_line(ours) == (
        "postwall: tls-finger: security level secure not satisfied: "
        f"TLS is required, but was not offered by host 127.0.0.1[127.0.0.1]:{sink.port}"
    )
    may = finger(confdir, "-c", "-l", "may", dest)
    assert may.returncode == 0 and may.stderr == ""
    assert field(may, "STARTTLS") == "not offered"


def test_refused_connection(confdir: Path) -> None:
    peers.require_tool("posttls-finger")
    dest = f"[127.0.0.1]:{peers.free_port()}"
    ours, ref = finger(confdir, "-c", dest), reference("-c", dest)
    same_lines(ours, ref)  # "Failed to establish session to ... Connection refused"
    assert ours.returncode == 1
    assert one_error_line(ours).startswith(f"postwall: fatal: no session with {dest}: connect to")


@pytest.fixture
def unbound(tmp_path: Path) -> Iterator[peers.Unbound]:
    (tmp_path / "unbound").mkdir()
    dns = peers.Unbound(tmp_path / "unbound", {"postwall.test": peers.POSTWALL_TEST_ZONE})
    try:
        yield dns.start()
    finally:
        dns.stop()


def test_mx_lookup_through_a_real_name_server(
    unbound: peers.Unbound, postwall_factory: object, confdir: Path, certs: peers.TestCerts
) -> None:
    mx = postwall_factory(  # type: ignore[operator]
        params={
            "smtpd_tls_cert_file": str(certs.mx_cert),
            "smtpd_tls_key_file": str(certs.mx_key),
            "smtpd_tls_security_level": "may",
        }
    )
    ns = f"127.0.0.1:{unbound.port}"
    # secure: nexthop postwall.test, dot-nexthop .postwall.test covers mx.postwall.test.
    ours = finger(confdir, "--nameserver", ns, "-F", str(certs.ca_cert), f"postwall.test:{mx.port}")
    got = lines(ours.stdout, "tls-finger: ")
    assert got[0] == f"Connected to mx.postwall.test[127.0.0.1]:{mx.port}"
    assert f"mx.postwall.test[127.0.0.1]:{mx.port}: matched peername: mx.postwall.test" in got
    assert ours.returncode == 0, ours.transcript
    assert field(ours, "names to match") == "postwall.test, .postwall.test"
    # The same name server from main.cf's postwall_dns_servers.
    viaconf = finger(confdir, "-c", "-o", f"postwall_dns_servers={ns}", f"postwall.test:{mx.port}")
    assert "Untrusted TLS connection established to mx.postwall.test" in viaconf.stdout
    # Brackets: no MX lookup, and postwall.test itself has no address.
    for dest, returncode in (("[postwall.test]", 1), ("nosuch.postwall.test", 1)):
        res = finger(confdir, "-c", "--nameserver", ns, dest)
        assert res.returncode == returncode
        assert "Host or domain name not found" in one_error_line(res)
        assert lines(res.stdout, "tls-finger: ")[0].startswith("Destination address lookup failed")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-l", "dane", "example.test"), 'security level "dane" is not supported'),
        (("-L", "ssl-expert", "example.test"), "packet dumps are not supported"),
        (("-S", "example.test"), "LMTP (-S): not supported"),
        (("-L", "chatty", "example.test"), "-L chatty: unknown TLS log option"),
        (("[127.0.0.1",), "bad destination"),
        (("--nameserver", "dns.example", "example.test"), "name server must be an IP address"),
    ],
)
def test_bad_input_is_one_line(confdir: Path, args: tuple[str, ...], message: str) -> None:
    res = finger(confdir, *args)
    assert res.returncode == 1
    assert message in one_error_line(res)


def test_help() -> None:
    res = peers.run_postwall("tls-finger", "--help")
    assert res.returncode == 0 and "posttls-finger" in res.stdout and "-F CAFILE" in res.stdout
