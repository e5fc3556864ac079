"""sslscan against the shipped defaults: `postwall start` on a new directory (the embedded
default's main.cf and master.cf), on its three ports: STARTTLS (2525), submission (2587)
and implicit TLS (2465).  No SSLv2/SSLv3, no NULL, anonymous, EXPORT, RC4 or MD5 suite."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import peers

pytestmark = pytest.mark.interop
PORTS = (2525, 2587, 2465)


def _check(out: str) -> None:
    assert re.search(r"^SSLv2\s+disabled", out, re.M), out
    assert re.search(r"^SSLv3\s+disabled", out, re.M), out
    assert re.search(r"^TLSv1\.3\s+enabled", out, re.M), out
    accepted = re.findall(r"^(?:Preferred|Accepted)\s+\S+\s+\S+ bits\s+(\S+)", out, re.M)
    assert accepted, out
    weak = [c for c in accepted if re.search(r"NULL|EXP|RC4|MD5|ADH|AECDH|anon", c)]
    assert not weak, weak


def test_sslscan_at_the_embedded_defaults(tmp_path: Path) -> None:
    sslscan = peers.require_tool("sslscan")
    if any(peers.port_open("127.0.0.1", port) for port in PORTS):
        pytest.skip("127.0.0.1:2525, :2465 or :2587 is taken by another server on this machine")
    # Its stderr (the log) goes to a file: an undrained pipe would fill up and stall it.
    output = (tmp_path / "stderr.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "postwall", "start", "-c", str(tmp_path / "fresh")],
        stdout=output,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(peers.SRC)},
        start_new_session=True,
    )
    try:
        for port in PORTS:
            peers.wait_for(lambda p=port: peers.port_open("127.0.0.1", p), 30, f"port {port}")
        for port, starttls in ((2525, True), (2587, True), (2465, False)):
            argv = [sslscan, "--no-colour", f"127.0.0.1:{port}"]
            if starttls:
                argv.insert(2, "--starttls-smtp")
            res = peers.run_tool(argv, timeout=120)
            _check(res.stdout + res.stderr)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        output.close()
    assert proc.returncode == 0, (tmp_path / "stderr.log").read_text()


def _suites(port: int) -> list[str]:
    """sslscan's protocol lines and accepted suites (with key-exchange sizes), in order."""
    res = peers.run_tool(
        [peers.require_tool("sslscan"), "--no-colour", "--starttls-smtp", f"127.0.0.1:{port}"],
        timeout=120,
    )
    out = res.stdout + res.stderr
    lines = re.findall(
        r"^(?:(?:SSL|TLS)v[\d.]+\s+(?:en|dis)abled|(?:Preferred|Accepted)\s.*)$", out, re.M
    )
    assert lines, out
    return [" ".join(line.split()) for line in lines]


def test_sslscan_sees_the_reference_postfix_s_protocols_and_suites(
    reference_postfix: peers.PostfixInstance, postwall_tls: peers.PostwallServer
) -> None:
    """Both at smtpd_tls_security_level = may, asking for client certificates, with the
    same certificate: the same protocols (TLS 1.0 and 1.1 included, as Postfix 3.7 offers
    them), the same suites in the same order, the same DHE group size; no anonymous
    suite."""
    assert reference_postfix.port is not None
    reference = _suites(reference_postfix.port)
    assert "TLSv1.0 enabled" in reference  # what this comparison is about
    assert _suites(postwall_tls.port) == reference
