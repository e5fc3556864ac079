"""Restriction transcripts: tests/transcripts/restrictions/*.txt, byte for byte, against
postwall and a private Postfix given the same main.cf.

Each file names its main.cf lines (`@main name = value`, added to the reference
configuration of test_transcripts.AS_REFERENCE) and its lookup tables (`@map file: key
value`, written as texthash files and named `{maps}/file` in @main values).  Both servers
see 127.0.0.1 as the client; a file that wants an outside client sets mynetworks to
something else.  Postfix proves every reply; postwall must give the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_transcripts import AS_REFERENCE
from transcript_runner import SocketDriver, parse, run

import peers

HERE = Path(__file__).parent / "restrictions"
FILES = sorted(HERE.glob("*.txt"))


def directives(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    params: dict[str, str] = {}
    maps: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("@main "):
            name, _, value = line[6:].partition("=")
            params[name.strip()] = value.strip()
        elif line.startswith("@map "):
            name, _, entry = line[5:].partition(":")
            maps.setdefault(name.strip(), []).append(entry.strip())
    return params, maps


def _configure(path: Path, maps_dir: Path) -> dict[str, str]:
    params, maps = directives(path)
    maps_dir.mkdir(parents=True, exist_ok=True)
    maps_dir.chmod(0o755)
    for name, lines in maps.items():
        table = maps_dir / name
        table.write_text("".join(f"{entry}\n" for entry in lines))
        table.chmod(0o644)
    return {k: v.replace("{maps}", str(maps_dir)) for k, v in params.items()}


@pytest.fixture(params=FILES, ids=[p.stem for p in FILES], scope="module")
def transcript(request: pytest.FixtureRequest) -> Path:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def postfix_server(transcript: Path, certs: peers.TestCerts) -> Iterator[tuple[str, int]]:
    peers.require_root()
    peers.require_tool("postmulti")
    inst = peers.PostfixInstance.reference(certs.server_cert, certs.server_key, certs.ca_cert)
    try:
        inst.postconf(_configure(transcript, inst.workdir / "maps"))
        inst.start()
        yield ("127.0.0.1", inst.port)  # type: ignore[misc]
    finally:
        inst.destroy()


@pytest.fixture(scope="module")
def postwall_server(
    transcript: Path, certs: peers.TestCerts, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    base = tmp_path_factory.mktemp("pw-restrict")
    params = dict(AS_REFERENCE)
    params["smtpd_tls_cert_file"] = str(certs.server_cert)
    params["smtpd_tls_key_file"] = str(certs.server_key)
    params.update(_configure(transcript, base / "maps"))
    server = peers.PostwallServer(config_dir=base / "pw", params=params)
    server.params.update(params)
    server.start()
    try:
        yield ("127.0.0.1", server.port)
    finally:
        server.cleanup()


@pytest.mark.interop
@pytest.mark.parametrize("side", ["postfix", "postwall"])
def test_restriction_transcript(
    side: str, transcript: Path, request: pytest.FixtureRequest
) -> None:
    target = request.getfixturevalue(f"{side}_server")
    _, steps = parse(transcript)
    run(steps, SocketDriver(*target), f"{transcript.name} ({side})")


def test_directives_parse() -> None:
    for path in FILES:
        params, maps = directives(path)
        assert params, f"{path.name} configures nothing"
        for value in params.values():
            for ref in re.findall(r"\{maps\}/(\w+)", value):
                assert ref in maps, f"{path.name}: table {ref} has no @map lines"
