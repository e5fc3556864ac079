"""Fixtures for tests against real external peers; every test here is marked `interop`.

Contract: the factories start private Postfix instances (postmulti, as root) and smtp-sink
processes and destroy/stop every one at teardown, even when the test failed; instances a
killed run left behind are swept when the next one is created (tests/peers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peers

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture
def postfix_factory() -> Iterator[Callable[..., peers.PostfixInstance]]:
    """make("relay_client", relay_port, ...) or make("receiver", cert=..., key=...): a started
    private Postfix instance, destroyed at teardown."""
    made: list[peers.PostfixInstance] = []

    def make(kind: str, *args: object, start: bool = True, **kw: object) -> peers.PostfixInstance:
        peers.require_root()
        for tool in ("postmulti", "postconf", "postqueue", "postsuper"):
            peers.require_tool(tool)
        constructor = {
            "relay_client": peers.PostfixInstance.relay_client,
            "receiver": peers.PostfixInstance.receiver,
        }[kind]
        inst = constructor(*args, **kw)  # type: ignore[arg-type]
        made.append(inst)
        return inst.start() if start else inst

    yield make
    errors = []
    for inst in made:
        try:
            inst.destroy()
        except peers.PeerError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("teardown: " + "\n".join(errors), pytrace=False)


@pytest.fixture
def postfix_receiver(
    postfix_factory: Callable[..., peers.PostfixInstance], certs: peers.TestCerts
) -> peers.PostfixInstance:
    """A receiving Postfix with STARTTLS (the test server certificate, client certs asked
    for and verified against the test CA), delivering USER@example.test to maildir(USER)."""
    return postfix_factory(
        "receiver", cert=certs.server_cert, key=certs.server_key, ca_file=certs.ca_cert
    )


@pytest.fixture(scope="session")
def shared_postfix_receiver(certs: peers.TestCerts) -> Iterator[peers.PostfixInstance]:
    """Like postfix_receiver, but one instance for the whole session (creating and destroying
    an instance costs seconds). Tests share its log and Maildirs: tell your messages apart by
    a unique Subject, and do not reconfigure it."""
    peers.require_root()
    peers.require_tool("postmulti")
    inst = peers.PostfixInstance.receiver(
        cert=certs.server_cert, key=certs.server_key, ca_file=certs.ca_cert
    )
    try:
        yield inst.start()
    finally:
        inst.destroy()


@pytest.fixture
def smtp_sink_factory() -> Iterator[Callable[..., peers.SmtpSink]]:
    sinks: list[peers.SmtpSink] = []

    def make(options: tuple[str, ...] = ()) -> peers.SmtpSink:
        sink = peers.SmtpSink(options=options)
        sinks.append(sink)
        return sink.start()

    yield make
    for sink in sinks:
        sink.stop()
