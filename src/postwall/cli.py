"""The `postwall` command: the server and the tools an administrator's hands know.

Each sub-command exits 0 on success and non-zero with one `postwall: ...` line on
bad input (a usage error: `postwall: fatal: usage: ...`, exit 2; a `ToolError`: exit 1);
`--help` explains it.  Options are spelled as in Postfix where Postfix has them (`-c DIR`
selects the configuration directory).  The commands live in `postwall.tools`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from postwall import __version__, embedded
from postwall.tools import (
    ToolError,
    add_config_option,
    certs,
    check,
    control,
    postconf,
    queue,
    report,
    saslpasswd,
    tlsfinger,
)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, not argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"postwall: fatal: usage: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _config_dir(arg: str | None) -> tuple[Path, embedded.Layout]:
    if arg:
        path = Path(arg).resolve()
        return path, embedded.layout_for(path)
    layout = embedded.default_layout()
    return layout.config_dir, layout


def cmd_start(args: argparse.Namespace) -> int:
    from postwall.master import run_foreground

    config_dir, layout = _config_dir(args.config_dir)
    if not (config_dir / "main.cf").exists():
        created = embedded.initialise(layout)
        _print_welcome(layout, created)
    return run_foreground(config_dir)


def _print_welcome(layout: embedded.Layout, created: list[str]) -> None:
    out = sys.stderr
    print(f"postwall {__version__}: created an embedded default configuration", file=out)
    for path in created:
        print(f"  {path}", file=out)
    print(f"  configuration: {layout.config_dir}", file=out)
    print(f"  data (queue, Maildirs, log): {layout.data_dir}", file=out)
    print(f"  Maildirs: {layout.maildir_root}/<user>/", file=out)
    print(f"  mail log: {layout.maillog}", file=out)
    print(
        "  listening: 127.0.0.1:2525 (STARTTLS), 127.0.0.1:2465 (implicit TLS), "
        "127.0.0.1:2587 (submission: STARTTLS and AUTH)",
        file=out,
    )
    print(
        f"  submission users: postwall saslpasswd -c {layout.config_dir} add USER",
        file=out,
    )
    user = _user()
    print(
        f"Try it: swaks --server 127.0.0.1:2525 --tls --to {user}@localhost "
        f"--tls-cert {layout.certs_dir}/client.pem --tls-key {layout.certs_dir}/client.key",
        file=out,
    )


def _user() -> str:
    import getpass

    return getpass.getuser()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="postwall",
        description="A Postfix-compatible mail transfer agent for SMTP over TLS.",
    )
    parser.add_argument("--version", action="version", version=f"postwall {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    start = sub.add_parser(
        "start",
        help="run the server in the foreground",
        description=(
            "Run the server in the foreground. Without a main.cf in the configuration "
            "directory, an embedded default is created first: a local CA and certificates, "
            "listening on 127.0.0.1:2525, Maildirs under the data directory."
        ),
    )
    add_config_option(start)
    start.set_defaults(func=cmd_start)
    for module in (postconf, check, queue, certs, control, report, tlsfinger, saslpasswd):
        module.register(sub)
    # Listed for --help; main() hands its arguments to tools.sendmail unparsed.
    sub.add_parser("sendmail", help="submit mail as Postfix's sendmail(1) (-t, -bs, -bv, ...)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["sendmail"]:
        # getopt-style options (-oi, -bs, -qIID) that argparse cannot parse.
        from postwall.tools import sendmail

        return sendmail.main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except ToolError as exc:
        print(f"postwall: fatal: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `postwall mailq | head`
        sys.stderr.close()
        return 0
    except OSError as exc:  # an unreadable queue directory, a full disk...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"postwall: fatal: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
