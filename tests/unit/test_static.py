"""The code passes its own static checks: ruff (lint and format) and mypy over the package.

Run as tests so that the one test command (and CI) holds every change to them; each check is
a subprocess of the installed tool and fails with its findings as the message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize(
    "check",
    [
        ("ruff", "check", "src", "tests", "bench"),
        ("ruff", "format", "--check", "src", "tests", "bench"),
    ],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(check: tuple[str, ...]) -> None:
    _run(*check)


def test_mypy_finds_no_type_errors_in_the_package() -> None:
    # Settings in pyproject.toml ([tool.mypy]); the cache goes to a throw-away directory so
    # a run as root leaves nothing in the clone.
    _run("mypy", "--cache-dir", "/dev/null", "src/postwall")
