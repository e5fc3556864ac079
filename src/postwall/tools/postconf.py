"""`postwall postconf`: Postfix's postconf(1) for postwall's parameters.

Contract: prints exactly what Postfix 3.7's postconf prints for the same request
(formatting in `postwall.config.postconf`): all parameters, `-n` those set in main.cf,
`-d` defaults, `-x` expanded, `-h` values only, `name ...` selected ones, `-M` master.cf
entries. An unknown name prints `postwall: warning: NAME: unknown parameter` and the
command still exits 0, as postconf does. `-e name=value ...` rewrites main.cf in place
(comments and order kept), atomically: written to a temporary file, fsynced, renamed.
A malformed `-e` argument or an unreadable main.cf is a ToolError (exit 1).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from postwall import fsutil
from postwall.config import params as P
from postwall.config.maincf import logical_lines
from postwall.config.postconf import (
    edit_main_cf,
    format_all,
    format_defaults,
    format_non_default,
    format_selected,
)

from . import ToolError, add_config_option, config_dir, load_config, warn

# postconf -M column starts (name, type, private, unpriv, chroot, wakeup, maxproc, command),
# as Postfix 3.7 prints them; a long field pushes the next one right by one space.
_MASTER_COLUMNS = (0, 11, 17, 25, 33, 41, 49, 57)
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "postconf",
        help="print or edit main.cf parameters (Postfix postconf)",
        description="Print parameters (all, -n set in main.cf, -d defaults), master.cf "
        "services (-M), or edit main.cf (-e name=value ...), as Postfix's postconf.",
        add_help=False,  # -h is postconf's "values only"
    )
    p.add_argument("--help", action="help", help="show this help message and exit")
    add_config_option(p)
    p.add_argument("-n", action="store_true", help="only parameters set in main.cf")
    p.add_argument("-d", action="store_true", help="default values")
    p.add_argument("-x", action="store_true", help="expand $name in values")
    p.add_argument("-h", action="store_true", help="values only, without 'name = '")
    p.add_argument("-e", action="store_true", help="edit main.cf: arguments are name=value")
    p.add_argument("-M", action="store_true", help="print master.cf entries")
    p.add_argument("names", nargs="*", metavar="name", help="parameters (or name=value with -e)")
    p.set_defaults(func=cmd_postconf)


def cmd_postconf(args: argparse.Namespace) -> int:
    if args.e:
        return _edit(config_dir(args.config_dir), args.names)
    if args.M:
        return _master(config_dir(args.config_dir), args.names)
    if args.d:
        known = [n for n in args.names if P.is_known(n)]
        for name in args.names:
            if not P.is_known(name):
                warn(f"{name}: unknown parameter")
        text = format_defaults(known if args.names else None)
    else:
        config = load_config(args.config_dir)
        for warning in config.warnings:
            warn(warning)  # postconf, too, reports unused and duplicate entries
        if args.names:
            text, warnings = format_selected(config, args.names, expand=args.x)
            for warning in warnings:
                warn(warning)
        elif args.n:
            text = format_non_default(config, expand=args.x)
        else:
            text = format_all(config, expand=args.x)
    if args.h:
        text = "".join(_value_only(line) + "\n" for line in text.splitlines())
    sys.stdout.write(text)
    return 0


def _value_only(line: str) -> str:
    _, sep, value = line.partition(" = ")
    return value if sep else ""  # "name =" is an empty value


def _edit(directory: Path, assignments: list[str]) -> int:
    wanted: dict[str, str] = {}
    for arg in assignments:
        name, sep, value = arg.partition("=")
        name = name.strip()
        if not sep or not _NAME_RE.fullmatch(name):
            # postconf's own wording for the same mistake.
            raise ToolError(f"missing '=' after attribute name: \"{arg}\"")
        wanted[name] = value
    path = directory / "main.cf"
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        mode = os.stat(path).st_mode & 0o777
    except OSError as exc:
        raise ToolError(f"open {path}: {exc.strerror}") from None
    new = edit_main_cf(text, wanted).encode("utf-8", "surrogateescape")
    try:
        fsutil.atomic_write(path, new, mode)
    except OSError as exc:
        raise ToolError(f"write {path}: {exc.strerror}") from None
    return 0


def _master(directory: Path, selectors: list[str]) -> int:
    path = directory / "master.cf"
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise ToolError(f"open {path}: {exc.strerror}") from None
    entries = [line.split() for _, line in logical_lines(text)]
    out: list[str] = []
    for selector in selectors or [""]:
        name, _, type_ = selector.partition("/")
        matched = [
            e
            for e in entries
            if not selector or (e[0] == name and (not type_ or e[1:2] == [type_]))
        ]
        if not matched:
            warn(f'unmatched request: "{selector}"')
        out += [format_master_entry(e) for e in matched]
    sys.stdout.write("".join(line + "\n" for line in out))
    return 0


def format_master_entry(fields: list[str]) -> str:
    """One master.cf entry on one line, in postconf -M's columns."""
    line = ""
    for column, field in zip(_MASTER_COLUMNS, fields[:8], strict=False):
        if line:
            line += " " * max(1, column - len(line))
        line += field
    return " ".join([line, *fields[8:]])
