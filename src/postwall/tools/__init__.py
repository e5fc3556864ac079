"""Operator commands (`postwall postconf`, `mailq`, `postsuper`, `certs`, `check`, ...).

Contract: each module registers its sub-commands on the cli's argparse sub-parsers
(`register(sub)`) and implements them as `cmd_*(args) -> int` functions. Bad input
(unknown queue id, bad parameter name, unreadable file) raises `ToolError`; the cli
prints it as one `postwall: fatal: ...` line and exits 1, never with a traceback.
Layer 4: called only by cli.py; reads the configuration through `postwall.config`, the
queue through `QueueStore`'s sync API, certificates through `postwall.tls.certs`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from postwall import embedded
from postwall.config import Config, ConfigError, load


class ToolError(Exception):
    """Bad input to a command; the message is printed after `postwall: fatal: `."""


def config_dir(arg: str | None) -> Path:
    """`-c DIR`, else $MAIL_CONFIG (as Postfix's tools), else the embedded default's."""
    chosen = arg or os.environ.get("MAIL_CONFIG")
    return Path(chosen).resolve() if chosen else embedded.default_layout().config_dir


def load_config(arg: str | None) -> Config:
    """The configuration, or ToolError naming the first problem (all are in `check`)."""
    try:
        return load(config_dir(arg))
    except ConfigError as exc:
        problems = list(exc.problems)
        more = f" (and {len(problems) - 1} more; see postwall check)" if len(problems) > 1 else ""
        raise ToolError(f"{problems[0]}{more}") from None


def warn(text: str) -> None:
    print(f"postwall: warning: {text}", file=sys.stderr)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Postfix's `-c DIR`, which every command takes."""
    parser.add_argument("-c", dest="config_dir", metavar="DIR", help="configuration directory")
