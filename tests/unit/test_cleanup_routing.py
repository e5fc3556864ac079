"""What cleanup does to the envelope before queueing (postwall.cleanup.EnvelopeRouting):
BCC copies for mail from outside only, virtual aliases for every address including the
copies, duplicates dropped; the comparison with Postfix is
tests/interop/test_virtual_alias_postfix.py."""

from __future__ import annotations

from pathlib import Path

from postwall.cleanup import Cleanup, Submission
from postwall.config import default_params
from postwall.queue.records import Recipient


class _NoStore:
    def release_queue_id(self, queue_id: str) -> None:
        pass


def _cleanup(tmp_path: Path, **params: str) -> Cleanup:
    (tmp_path / "bcc").write_text("bob@example.com  bob-copy@example.com\n")
    (tmp_path / "virtual").write_text("bob-copy@example.com  archive@example.com\n")
    values = {
        "myorigin": "example.com",
        "mydestination": "example.com",
        "config_directory": str(tmp_path),
        "recipient_bcc_maps": "texthash:bcc",
        "virtual_alias_maps": "texthash:virtual",
        **params,
    }
    return Cleanup(default_params(**values), _NoStore(), None)  # type: ignore[arg-type]


def _sub(*rcpts: str, internal: bool = False) -> Submission:
    return Submission(
        "Q1",
        "alice@example.com",
        [Recipient(r) for r in rcpts],
        b"\r\n",
        0.0,
        "localhost",
        "127.0.0.1",
        0,
        None,
        "ESMTP",
        internal=internal,
    )


def test_bcc_copies_go_through_the_aliases_once(tmp_path: Path) -> None:
    c = _cleanup(tmp_path, always_bcc="archive")
    got = [(r.address, r.original) for r in c._route(_sub("bob@example.com", "carol@example.com"))]
    assert got == [
        ("bob@example.com", ""),
        ("carol@example.com", ""),
        ("archive@example.com", ""),  # always_bcc
        ("archive@example.com", "bob-copy@example.com"),  # bob's copy, an alias of archive
    ]


def test_no_bcc_for_postwall_s_own_messages(tmp_path: Path) -> None:
    c = _cleanup(tmp_path, always_bcc="archive")
    got = [r.address for r in c._route(_sub("bob@example.com", internal=True))]
    assert got == ["bob@example.com"]
