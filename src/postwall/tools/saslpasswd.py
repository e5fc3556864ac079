"""`postwall saslpasswd`: add, delete and list the users of the SASL password file.

Contract: the file is the `smtpd_sasl_path` of the first smtpd service with
`smtpd_sasl_type = postwall` (relative to the configuration directory), or `-f FILE`.
A password is read from the terminal (asked twice) or, when stdin is not a terminal, from
its first line; never from the command line, where `ps` and shell history would show it.
Writes are atomic and serialised with a lock file, so a running server never reads half a
file and two administrators never lose each other's change.  The server re-reads the file
when it changes: no reload is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import sys
from collections.abc import Iterator
from pathlib import Path

from postwall.sasl import passwd

from . import ToolError, add_config_option, load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "saslpasswd",
        help="manage the SASL password file (smtpd_sasl_type = postwall)",
        description="Add, delete or list the users of postwall's SASL password file. "
        "Passwords are read from the terminal, or from stdin's first line, never from "
        "the command line; they are stored as scrypt hashes and SCRAM-SHA-256 keys.",
    )
    add_config_option(p)
    p.add_argument("-f", dest="file", metavar="FILE", help="the password file to edit")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a user or change a password")
    add.add_argument("user")
    add.add_argument(
        "--no-scram",
        action="store_true",
        help="store no SCRAM-SHA-256 keys (PLAIN and LOGIN only; scrypt is all that is kept)",
    )
    delete = actions.add_parser("delete", help="delete a user")
    delete.add_argument("user")
    actions.add_parser("list", help="list the users")
    p.set_defaults(func=cmd_saslpasswd)


def password_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    config = load_config(args.config_dir)
    for svc in config.services:
        params = svc.params
        if svc.command == "smtpd" and params.smtpd_sasl_type == "postwall":
            path = Path(params.smtpd_sasl_path)
            return path if path.is_absolute() else Path(params.config_directory) / path
    raise ToolError(
        "no smtpd service has smtpd_sasl_type = postwall: set it in main.cf or master.cf, "
        "or name the file with -f FILE"
    )


def read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise ToolError("the passwords differ; nothing changed")
        return first
    return sys.stdin.readline().rstrip("\r\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def cmd_saslpasswd(args: argparse.Namespace) -> int:
    path = password_file(args)
    try:
        if args.action == "list":
            for user in sorted(passwd.read_entries(path)):
                print(user)
            return 0
        if args.action == "add":
            passwd.check_user(args.user)
            entry = passwd.make_entry(args.user, read_password(), scram=not args.no_scram)
            with _locked(path):
                entries = passwd.read_entries(path)
                verb = "changed the password of" if args.user in entries else "added"
                entries[args.user] = entry
                passwd.write_entries(path, entries)
            print(f"postwall: {verb} {args.user} in {path}", file=sys.stderr)
            return 0
        with _locked(path):
            entries = passwd.read_entries(path)
            if entries.pop(args.user, None) is None:
                raise ToolError(f"{path}: no user {args.user}")
            passwd.write_entries(path, entries)
        print(f"postwall: deleted {args.user} from {path}", file=sys.stderr)
        return 0
    except passwd.PasswdError as exc:
        raise ToolError(str(exc)) from None
