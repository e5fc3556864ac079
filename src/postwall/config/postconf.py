"""Text of `postconf` output and `postconf -e` edits; pure formatting, no I/O.

Contract: every function returns the exact text Postfix 3.7's postconf prints for the
same request, restricted to the parameters postwall knows: one `name = value` line per
parameter, sorted by name, white-space runs in a value shown as one space and an empty
value shown as `name =` (pcf_print_line). `-n` shows the parameters set in main.cf that
are known or used (referenced from main.cf or master.cf, or a restriction class; Postfix
hides unused unknown ones) plus `config_directory`, as `postconf -c DIR -n` does.
`edit_main_cf()` follows `postconf -e`: every existing definition (with its continuation
lines) is replaced in place; new names are appended at the end in the order given
(postconf uses hash-table order). Called by the `postwall postconf` command.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from . import Config
from . import params as P


def _line(name: str, value: str) -> str:
    shown = " ".join(value.split())
    return f"{name} = {shown}" if shown else f"{name} ="


def _value(config: Config, name: str, expand: bool) -> str:
    raw = config.raw[name] if name in config.raw else P.raw_default(name)
    # Raw parameters stay unexpanded under -x too, as in Postfix.
    verbatim = P.is_known(name) and P.FIELDS[name].metadata["verbatim"]
    return config.expand(raw) if expand and not verbatim else raw


def _join(lines: Iterable[str]) -> str:
    out = "\n".join(lines)
    return out + "\n" if out else ""


def format_defaults(names: Iterable[str] | None = None) -> str:
    """`postconf -d [names]`: registry defaults as Postfix prints them."""
    selected = sorted(P.FIELDS) if names is None else list(names)
    for name in selected:
        if not P.is_known(name):
            raise KeyError(f"{name}: unknown parameter")
    return _join(_line(n, P.raw_default(n)) for n in selected)


def format_all(config: Config, *, expand: bool = False) -> str:
    """`postconf [-x]`: every known parameter with its effective value."""
    return _join(_line(n, _value(config, n, expand)) for n in sorted(P.FIELDS))


def non_default_names(config: Config) -> list[str]:
    return sorted(n for n in config.raw if n not in config.unused)


def format_non_default(config: Config, *, expand: bool = False) -> str:
    """`postconf -n [-x]`."""
    return _join(_line(n, _value(config, n, expand)) for n in non_default_names(config))


def format_selected(
    config: Config, names: Iterable[str], *, expand: bool = False
) -> tuple[str, list[str]]:
    """`postconf [-x] name...` in the order given; unknown names become warnings."""
    lines: list[str] = []
    warnings: list[str] = []
    for name in names:
        if P.is_known(name) or name in config.raw:
            lines.append(_line(name, _value(config, name, expand)))
        else:
            warnings.append(f"{name}: unknown parameter")
    return _join(lines), warnings


def edit_main_cf(text: str, assignments: Mapping[str, str]) -> str:
    """`postconf -e name=value...` applied to main.cf text."""
    wanted = {name.strip(): value.strip() for name, value in assignments.items()}
    out: list[str] = []
    done: set[str] = set()
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if skipping and line[:1].isspace() and stripped and not stripped.startswith("#"):
            continue  # continuation of a replaced entry
        skipping = False
        if stripped and not stripped.startswith("#") and not line[0].isspace():
            name = line.partition("=")[0].strip()
            if "=" in line and name in wanted:
                out.append(f"{name} = {wanted[name]}")
                done.add(name)
                skipping = True
                continue
        out.append(line)
    # Unlike postconf, start appended lines on a fresh line when the file lacks a newline.
    # postconf -e writes "name = " even for an empty value.
    out += [f"{n} = {v}" for n, v in wanted.items() if n not in done]
    return "\n".join(out) + "\n" if out else ""
