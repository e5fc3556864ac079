"""`postwall report` on real Postfix 3.7.11 logs (tests/golden/report, see its README) and on
logs derived from them: other time-stamp formats, instance names, gzip, garbage, size.

Every command runs as an administrator would run it: `python3 -m postwall report` in a
subprocess, its JSON output checked against what happened in the captured run.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import peers

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "report"
INBOUND = GOLDEN / "postfix-inbound-loglevel2.txt"


def report(*args: str, stdin: str | bytes | None = None) -> dict:
    """Run `postwall report --json ARGS`; return the parsed JSON (the command must succeed)."""
    proc = subprocess.run(
        [sys.executable, "-m", "postwall", "report", "--json", *args],
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(peers.SRC)),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def golden(name: str) -> str:
    return str(GOLDEN / f"postfix-{name}.txt")


# --------------------------------------------------------------------------- inbound


def test_inbound_sessions_messages_trust_and_subjects():
    out = report(str(INBOUND))
    inbound = out["inbound"]
    # connect-only, plaintext message, failed handshake: 3 plaintext of 8
    assert inbound["sessions"] == {"total": 8, "tls": 5, "plaintext": 3, "tls_percent": 62.5}
    assert inbound["messages"] == {"total": 5, "tls": 4, "plaintext": 1, "tls_percent": 80.0}
    assert inbound["protocols"] == {"TLSv1.3": 3, "TLSv1.1": 1, "TLSv1.2": 1}
    assert inbound["ciphers"] == {
        "TLS_AES_256_GCM_SHA384": 3,
        "ECDHE-RSA-AES256-GCM-SHA384": 1,
        "ECDHE-RSA-AES256-SHA": 1,
    }
    assert inbound["trust"] == {"Anonymous": 3, "Untrusted": 1, "Trusted": 1, "Verified": 0}
    assert inbound["certificates"] == [
        {
            "subject": "/CN=Julien Vehent",
            "issuer": "Reference CA",
            "trust": "Trusted",
            "sessions": 1,
        },
        {
            "subject": "/CN=Untrusted Client",
            "issuer": "Untrusted Client",
            "trust": "Untrusted",
            "sessions": 1,
        },
    ]
    assert inbound["plaintext_clients"] == [{"peer": "unknown[127.0.0.1]", "sessions": 3}]
    failures = inbound["failures"]
    assert failures["sessions"] == 2
    assert failures["kinds"] == {
        "lost connection after STARTTLS": 2,
        "SSL_accept error: lost connection": 1,
    }
    assert out["outbound"]["sessions"]["total"] == 0
    assert out["input"] | {"files": None} == {
        "files": None,
        "lines": 141,
        "mail_lines": 141,
        "other_lines": 0,
        "unparsed_lines": 0,
        "first": "Nov 28 09:13:12",
        "last": "Nov 28 09:29:39",
        "instances": {"postfix": 141},
        "services": {"smtpd": 141},
    }


def test_failed_handshakes_count_once_per_session_with_every_kind():
    inbound = report(golden("inbound-protocol-mismatch"))["inbound"]
    assert inbound["sessions"] == {"total": 3, "tls": 0, "plaintext": 3, "tls_percent": 0.0}
    assert inbound["messages"]["total"] == 1
    assert inbound["failures"] == {
        "sessions": 2,
        "kinds": {
            "SSL_accept error: -1": 2,
            "TLS library problem: unsupported protocol": 2,
            "lost connection after STARTTLS": 2,
        },
        "peers": [{"peer": "localhost[127.0.0.1]", "sessions": 2}],
    }


# --------------------------------------------------------------------------- outbound


def test_offered_but_not_used_is_not_listed_as_without_starttls():
    out = report(golden("outbound-offered"))["outbound"]
    # two recipients, one connection
    assert out["sessions"] == {"total": 1, "tls": 0, "plaintext": 1, "tls_percent": 0.0}
    assert out["deliveries"]["total"] == 2
    assert out["messages"]["total"] == 1
    assert out["no_starttls"] == []
    assert out["starttls_not_used"] == [{"peer": "127.0.0.1[127.0.0.1]:53409", "sessions": 1}]


def test_handshake_failure_then_plaintext_fallback():
    out = report(golden("outbound-handshake-fallback"))["outbound"]
    assert out["sessions"]["total"] == 2 and out["sessions"]["tls"] == 0
    assert out["messages"] == {"total": 1, "tls": 0, "plaintext": 1, "tls_percent": 0.0}
    assert out["no_starttls"] == []
    assert out["starttls_not_used"] == [{"peer": "127.0.0.1[127.0.0.1]:54357", "sessions": 2}]
    assert out["failures"]["kinds"] == {
        "Cannot start TLS: handshake failure": 2,
        "SSL_connect error: -1": 2,
        "TLS library problem: tlsv1 alert protocol version": 2,
    }


def test_tls_required_but_not_offered_lists_the_server_once_per_attempt():
    out = report(golden("outbound-tls-required"))["outbound"]
    # five attempts of one message, each a connection (qmgr's "queue active" separates them)
    assert out["sessions"]["total"] == 5
    assert out["messages"] == {"total": 1, "tls": 0, "plaintext": 1, "tls_percent": 0.0}
    assert out["no_starttls"] == [{"peer": "127.0.0.1[127.0.0.1]:50659", "sessions": 5}]
    assert out["failures"]["kinds"] == {"TLS required but not offered": 5}


def test_untrusted_server_certificate_and_verified_session():
    out = report(golden("outbound-not-verified"), golden("outbound-verified"))
    outbound = out["outbound"]
    assert outbound["sessions"] == {"total": 5, "tls": 5, "plaintext": 0, "tls_percent": 100.0}
    assert outbound["trust"] == {"Anonymous": 0, "Untrusted": 4, "Trusted": 0, "Verified": 1}
    assert outbound["certificates"] == [
        {
            "subject": "CN=localhost",
            "issuer": "postwall test CA",
            "trust": "Untrusted",
            "sessions": 4,
        }
    ]
    assert outbound["failures"]["kinds"] == {"Server certificate not verified": 4}
    # the deferred message is still queued: counted as it stands at the end of the log
    assert outbound["messages"] == {"total": 2, "tls": 2, "plaintext": 0, "tls_percent": 100.0}
    assert len(out["input"]["instances"]) == 2


def test_cached_connections_are_not_new_sessions():
    out = report(golden("outbound-connection-cache"))["outbound"]
    # four messages: two fresh connections, then conn_use=2 and conn_use=3
    assert out["deliveries"]["total"] == 4
    assert out["messages"]["total"] == 4
    assert out["sessions"]["total"] == 2
    assert out["no_starttls"] == [{"peer": "127.0.0.1[127.0.0.1]:50659", "sessions": 2}]


# --------------------------------------------------------------------------- formats


def _iso(line: str) -> str:
    """journald's short-iso time stamp in place of syslog's (same day, the run's year)."""
    months = "JanFebMarAprMayJunJulAugSepOctNovDec"
    mon, day, clock = line[:15].split()
    return f"2026-{months.index(mon) // 3 + 1:02d}-{int(day):02d}T{clock}+0100{line[15:]}"


def test_iso_timestamps_give_the_same_report(tmp_path):
    plain = report(str(INBOUND))
    iso = tmp_path / "iso.log"
    iso.write_text("".join(_iso(line) + "\n" for line in INBOUND.read_text().splitlines()))
    again = report(str(iso))
    assert again["inbound"] == plain["inbound"]
    assert again["input"]["first"] == "2026-11-28T09:13:12+0100"


def test_multi_instance_names_and_submission_services(tmp_path):
    text = INBOUND.read_text()
    renamed = tmp_path / "multi.log"
    # the same sessions written by "postfix-postwall/smtpd" and "postfix/submission/smtpd"
    renamed.write_text(
        text.replace(" postfix/smtpd[", " postfix-postwall/smtpd[")
        + text.replace(" postfix/smtpd[", " postfix/submission/smtpd[").replace(" vm ", " vm2 ")
    )
    out = report(str(renamed))
    assert out["inbound"]["sessions"]["total"] == 16
    assert out["inbound"]["trust"]["Trusted"] == 2
    assert out["input"]["instances"] == {"postfix": 141, "postfix-postwall": 141}
    only = report("--syslog-name", "postfix-postwall", str(renamed))
    assert only["inbound"]["sessions"]["total"] == 8
    assert only["input"]["other_lines"] == 141


def test_garbage_truncated_and_foreign_lines_are_skipped(tmp_path):
    lines = INBOUND.read_text().splitlines(keepends=True)
    noisy = tmp_path / "noisy.log"
    with noisy.open("wb") as f:
        f.write(b"\x00\xff\xfe garbage \x1b[31m\n")
        f.write(b"Nov 28 09:00:00 vm sshd[42]: Accepted publickey for root\n")
        f.write(b"Nov 28 09:00:00 vm kernel: [1.0] eth0 up\n")
        f.write(b"Nov 28 09:00:00 vm postfix/anvil[7]: statistics: max cache size 1 at x\n")
        f.write(b"x" * 100_000 + b"\n")  # far over Postfix's line length
        for i, line in enumerate(lines):
            f.write(line.encode())
            if i % 10 == 0:
                f.write(line[: len(line) // 2].encode() + b"\n")  # a line cut short
        f.write(b"Nov 28 11:59:59 vm postfix/smtpd[1]: Trusted TLS connection establ")  # no EOL
    out = report(str(noisy))
    counts = out["input"]
    assert counts["lines"] == 5 + 141 + 15 + 1
    assert counts["other_lines"] == 2  # sshd, kernel
    assert (
        counts["mail_lines"] + counts["other_lines"] + counts["unparsed_lines"] == counts["lines"]
    )
    assert counts["unparsed_lines"] >= 2  # the binary line, the long one, halves cut in the tag
    assert counts["services"]["anvil"] == 1
    # half lines may open or close sessions early, but never add TLS that was not there
    assert out["inbound"]["sessions"]["tls"] == 5
    assert out["inbound"]["trust"]["Trusted"] == 1


def test_gzip_files_stdin_and_a_damaged_gzip(tmp_path):
    packed = tmp_path / "maillog.2.gz"
    packed.write_bytes(gzip.compress(INBOUND.read_bytes()))
    from_gz = report(str(packed), golden("outbound-verified"))
    assert from_gz["inbound"]["sessions"]["total"] == 8
    assert from_gz["outbound"]["sessions"]["total"] == 1
    from_stdin = report(stdin=INBOUND.read_bytes())
    assert from_stdin["input"]["files"] == ["-"]
    assert from_stdin["inbound"] == report(str(INBOUND))["inbound"]
    cut = tmp_path / "maillog.1.gz"
    cut.write_bytes(packed.read_bytes()[:-200])
    proc = peers.run_postwall("report", str(cut))
    assert proc.returncode == 0
    assert re.fullmatch(r"postwall: warning: \S+maillog\.1\.gz: compressed data .*\n", proc.stderr)
    assert "== Inbound (smtpd)" in proc.stdout


def test_text_output_is_aligned_tables():
    proc = peers.run_postwall("report", str(INBOUND), golden("outbound-tls-required"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "  sessions      8    5  62.5%          3" in out
    assert "/CN=Julien Vehent     Reference CA      Trusted    1" in out
    assert "Servers that did not offer STARTTLS (sessions)\n  127.0.0.1[127.0.0.1]:50659  5" in out
    assert "TLS required but not offered  5  100.0%" in out


def test_bad_input_is_one_line():
    proc = peers.run_postwall("report", "/nonexistent/maillog")
    assert proc.returncode == 1
    assert proc.stderr == "postwall: fatal: /nonexistent/maillog: No such file or directory\n"
    proc = peers.run_postwall("report", "--top", "-1", str(INBOUND))
    assert proc.returncode == 1
    assert proc.stderr == "postwall: fatal: --top must be 0 or more\n"


# --------------------------------------------------------------------------- HTML


def test_html_has_png_charts(tmp_path):
    page = tmp_path / "tls.html"
    proc = peers.run_postwall(
        "report", "--html", str(page), str(INBOUND), golden("outbound-offered")
    )
    assert proc.returncode == 0, proc.stderr
    html = page.read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    titles = [t for t, _ in images]
    assert titles[0] == "Share of TLS"
    assert "Inbound TLS sessions by trust" in titles
    for _, data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert "/CN=Julien Vehent" in html


def test_html_without_matplotlib_says_so_in_one_line(tmp_path):
    # the interpreter as it would be without the extra: importing matplotlib fails
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from postwall.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "report", "--html", str(tmp_path / "x.html"), str(INBOUND)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(peers.SRC)),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "postwall: fatal: --html needs matplotlib, which is not installed: "
        "pip install 'postwall[report]'\n"
    )
    assert not (tmp_path / "x.html").exists()


# --------------------------------------------------------------------------- size


def generated_log(sessions: int) -> Iterator[bytes]:
    """A large log made of the real sessions of INBOUND and outbound-verified, each copy
    with its own pid and queue id; per copy: 8 inbound sessions (5 TLS, 1 Trusted) and one
    outbound TLS delivery."""
    inbound = INBOUND.read_text().splitlines()
    outbound = Path(golden("outbound-verified")).read_text().splitlines()
    pid = re.compile(r"\[(\d+)\]: ")
    qid = re.compile(r"\b([0-9A-F]{10,12}):")
    for n in range(sessions):
        for line in inbound + outbound:
            line = pid.sub(f"[{1000 + n % 30000}]: ", line, count=1)
            yield (qid.sub(f"{n:011X}:", line, count=1) + "\n").encode()


@pytest.mark.slow
def test_streams_a_million_lines_in_bounded_memory(tmp_path):
    """7,000 copies (1,036,000 lines, 150 MB uncompressed) from a gzip file: exact counts,
    and the process's peak memory stays far below the size of the log."""
    copies = 7_000
    packed = tmp_path / "big.log.gz"
    with gzip.open(packed, "wb", compresslevel=1) as f:
        f.writelines(generated_log(copies))
    result = tmp_path / "out.json"
    # The peak is the child's own VmHWM, read at its exit: wait4's ru_maxrss would also
    # count the parent's memory at the time of the fork (Linux records it at exec).
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['postwall', 'report', '--json', {str(packed)!r}]\n"
        "try:\n    runpy.run_module('postwall', run_name='__main__')\n"
        "finally:\n    sys.stderr.write(open('/proc/self/status').read())\n"
    )
    with result.open("wb") as stdout:
        proc = subprocess.run(
            [sys.executable, "-c", probe],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(peers.SRC)),
            check=False,
        )
    peak_kib = int(re.search(rb"VmHWM:\s+(\d+) kB", proc.stderr).group(1))
    assert proc.returncode == 0
    out = json.loads(result.read_text())
    assert out["input"]["lines"] == copies * 148
    assert out["inbound"]["sessions"]["total"] == copies * 8
    assert out["inbound"]["sessions"]["tls"] == copies * 5
    assert out["inbound"]["trust"]["Trusted"] == copies
    assert out["outbound"]["messages"] == {
        "total": copies,
        "tls": copies,
        "plaintext": 0,
        "tls_percent": 100.0,
    }
    assert peak_kib < 80 * 1024, f"peak RSS {peak_kib} KiB"
