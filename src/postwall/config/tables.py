"""Lookup tables named `type:name`, as in Postfix's dict layer.

Contract: `open_table(ref, base)` reads what the table needs once, at open time, and
raises `TableError` (missing file, bad inline syntax) or `NotSupportedError` (a type
postwall does not implement, e.g. ldap:, cidr:). `Table.lookup(key)` never raises: it
returns the value or None. `Table.fixed` is False for pattern tables (regexp:, pcre:,
compiled by `config.regexp`): Postfix queries those with whole strings only, never
with the partial keys of access(5) or transport(5) searches. `Table.results()` lists
the possible results (for start-up checks of actions); `Table.warnings` what Postfix
would warn about when opening it (a skipped rule, a duplicate key).

Indexed types (hash:, btree:, lmdb:, cdb:, dbm:) read the *source* text file the
database would be built from, so `hash:/etc/aliases` reads /etc/aliases;
`aliases=True` selects the aliases(5) `name: value` format that postalias uses
instead of postmap's `key value`. Keys are case-insensitive for file, inline and
static tables (Postfix folds them to lower case); pattern tables get the key as it
is. `proxy:` is stripped. `unix:passwd.byname` looks users up with pwd.getpwnam().
`nis:` tables find nothing, as Postfix's do on a host without a NIS domain. Callers:
local delivery (aliases), smtpd (access and recipient checks), the queue manager
(transport_maps), cleanup (header_checks, body_checks).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
from collections.abc import Callable, Iterable
from pathlib import Path

from .maincf import logical_lines
from .params import split_list
from .regexp import Rules, compile_rules

_FILE_TYPES = ("hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash")


class TableError(ValueError):
    pass


class NotSupportedError(TableError):
    pass


class Table:
    """Base lookup table; `ref` is the name it was opened with."""

    fixed = True  # a fixed-string table; pattern tables say False

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.warnings: list[str] = []

    def lookup(self, key: str) -> str | None:
        raise NotImplementedError

    def query(self, key: str, partial: bool = False) -> str | None:
        """`lookup` for one key of a search: a pattern table answers the whole string
        only, never the partial keys (parent domains, `user@`, address prefixes) that
        access(5), transport(5) and mail_addr_find() searches go on to (Postfix's
        DICT_FLAG_PATTERN)."""
        if partial and not self.fixed:
            return None
        return self.lookup(key)

    def results(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.ref}>"


class DictTable(Table):
    """Entries held in memory; keys folded to lower case."""

    def __init__(self, ref: str, entries: dict[str, str]) -> None:
        super().__init__(ref)
        self.entries = entries

    def lookup(self, key: str) -> str | None:
        return self.entries.get(key.lower())

    def results(self) -> list[str]:
        return list(self.entries.values())


class StaticTable(Table):
    def __init__(self, ref: str, value: str) -> None:
        super().__init__(ref)
        self.value = value

    def lookup(self, key: str) -> str | None:
        return self.value

    def results(self) -> list[str]:
        return [self.value]


class PasswdTable(Table):
    """unix:passwd.byname: the passwd(5) line of a user, as Postfix's dict_unix (which
    folds the key to lower case, like every fixed-string table: ROOT@localhost is root)."""

    def lookup(self, key: str) -> str | None:
        try:
            pw = pwd.getpwnam(key.lower())
        except (KeyError, ValueError):
            return None
        fields = (pw.pw_name, pw.pw_passwd, pw.pw_uid, pw.pw_gid, pw.pw_gecos, pw.pw_dir)
        return ":".join([*map(str, fields), pw.pw_shell])


class PatternTable(Table):
    """regexp: and pcre: (config.regexp): first matching rule wins, whole keys only."""

    fixed = False

    def __init__(self, ref: str, rules: Rules) -> None:
        super().__init__(ref)
        self.rules = rules
        self.warnings = rules.warnings
        self.lookup = rules.lookup  # type: ignore[method-assign]
        self.results = rules.results  # type: ignore[method-assign]


_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class CidrTable(Table):
    """cidr_table(5): `[!]network[/prefix] result` rules in file order, `if [!]network`
    .. `endif` blocks; the first match wins.  A key must be a bare IP address (Postfix
    does not match "[::1]"); a negated rule matches only addresses of its own family.
    A broken rule is skipped with Postfix's warning, the rest of the table works."""

    fixed = False

    def __init__(self, ref: str, path: str, text: str) -> None:
        super().__init__(ref)
        # (op, network, negated, result, index of the matching endif for "if")
        self.rules: list[tuple[str, _Net | None, bool, str, int]] = []
        stack: list[tuple[int, int]] = []  # (rule index, line) of each open "if"
        for num, line in logical_lines(text):
            where = f"cidr map {path}, line {num}"
            word, _, rest = line.strip().partition(" ")
            rest = rest.strip()
            if word.lower() == "endif":
                if not stack:
                    self.warnings.append(f"{where}: ENDIF without IF: skipping this rule")
                    continue
                index, _ = stack.pop()
                op, net, neg, result, _ = self.rules[index]
                self.rules[index] = (op, net, neg, result, len(self.rules))
                self.rules.append(("endif", None, False, "", -1))
                continue
            is_if = word.lower() == "if"
            if is_if:
                pattern, result = (rest.split(None, 1)[0] if rest else ""), ""
            else:
                pattern, result = word, rest
            if not is_if and not result:
                self.warnings.append(f"{where}: no lookup result: skipping this rule")
                continue
            negated = pattern.startswith("!")
            try:
                net = _cidr_pattern(pattern[1:] if negated else pattern)
            except ValueError as err:
                self.warnings.append(f"{where}: {err}: skipping this rule")
                continue
            if is_if:
                stack.append((len(self.rules), num))
            self.rules.append(("if" if is_if else "match", net, negated, result, -1))
        for _index, lineno in reversed(stack):
            self.warnings.append(f"cidr map {path}, line {lineno}: IF has no matching ENDIF")

    def lookup(self, key: str) -> str | None:
        try:
            addr = ipaddress.ip_address(key)
        except ValueError:
            return None
        i = 0
        while i < len(self.rules):
            op, net, negated, result, endif = self.rules[i]
            if op == "endif":
                i += 1
                continue
            assert net is not None
            hit = addr.version == net.version and (addr in net) != negated
            if op == "match":
                if hit:
                    return result
            elif not hit:  # an "if" that does not match skips its block
                if endif < 0:
                    return None
                i = endif
            i += 1
        return None

    def results(self) -> list[str]:
        return [r[3] for r in self.rules if r[0] == "match"]


def _cidr_pattern(text: str) -> _Net:
    """Postfix cidr_match_parse() wording for the two ways a pattern can be wrong (it
    quotes the pattern with its brackets removed)."""
    host, slash, length = text.partition("/")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    bare = f"{host}{slash}{length}"
    try:
        addr = ipaddress.ip_address(host)
        if not slash:
            return ipaddress.ip_network(addr)
        if not length.isdigit():
            raise ValueError
        return ipaddress.ip_network(f"{addr}/{length}", strict=True)
    except ValueError as err:
        if slash and length.isdigit() and "host bits set" in str(err):
            fixed = ipaddress.ip_network(f"{host}/{length}", strict=False)
            raise ValueError(
                f'non-null host address bits in "{bare}", '
                f'perhaps you should use "{fixed.network_address}/{length}" instead'
            ) from None
        raise ValueError(f'bad network value in "{bare}"') from None


class EmptyTable(Table):
    def lookup(self, key: str) -> str | None:
        return None


def _add(table: DictTable, key: str, value: str, where: str) -> None:
    k = key.lower()
    if k in table.entries:
        # postmap/postalias keep the first entry and warn about later ones.
        table.warnings.append(f"{where}: duplicate entry: {key}")
        return
    table.entries[k] = value


def parse_source(text: str, ref: str, filename: str, *, aliases: bool = False) -> DictTable:
    """A postmap(1) (`key value`) or postalias(1) (`name: value`) source file."""
    table = DictTable(ref, {})
    for num, line in logical_lines(text):
        where = f"{filename}:{num}"
        body = line.strip()
        if aliases:
            if body.startswith('"') and body.find('"', 1) > 0:
                end = body.find('"', 1)
                key, rest = body[1:end], body[end + 1 :].lstrip()
                sep = ":" if rest.startswith(":") else ""
                value = rest[1:]
            else:
                key, sep, value = body.partition(":")
            key = key.strip()
            if not sep or not key:
                table.warnings.append(f"{where}: need name:value pair")
                continue
            _add(table, key, " ".join(value.split()), where)
        else:
            parts = body.split(None, 1)
            if len(parts) < 2:
                table.warnings.append(f'{where}: expected format: key whitespace value: "{body}"')
                continue
            _add(table, parts[0], parts[1].strip(), where)
    return table


def _braced(text: str) -> str | None:
    t = text.strip()
    if t.startswith("{") and t.endswith("}"):
        return t[1:-1].strip()
    return None


def _inline(ref: str, name: str) -> DictTable:
    body = _braced(name)
    if body is None:
        raise TableError(f'{ref}: inline table must be enclosed in {{ }}: "{name}"')
    table = DictTable(ref, {})
    for item in split_list(body):
        inner = _braced(item)
        key, eq, value = (inner if inner is not None else item).partition("=")
        if not eq or not key.strip():
            raise TableError(f'{ref}: need "name=value" instead of "{item}"')
        _add(table, key.strip(), value.strip(), ref)
    return table


def open_table(
    ref: str,
    base: Path | None = None,
    *,
    aliases: bool = False,
    read: Callable[[str], bytes] | None = None,
) -> Table:
    """Open `type:name`; relative file names resolve against `base` when given.  `read`
    replaces open(2) for the file (the root helper's, for a root-only file after the
    privilege drop)."""
    spec = ref.strip()
    while spec.startswith("proxy:"):
        spec = spec[len("proxy:") :]
    kind, colon, name = spec.partition(":")
    if not colon or not kind:
        raise TableError(f'table "{ref}" must be of the form type:name')
    kind = kind.lower()
    if kind in _FILE_TYPES or kind in ("regexp", "pcre", "cidr"):
        path = Path(name)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            if read is None:
                text = path.read_text(encoding="utf-8", errors="surrogateescape")
            else:
                text = read(str(path)).decode("utf-8", errors="surrogateescape")
        except OSError as err:
            raise TableError(f"{ref}: open {path}: {err.strerror}") from None
        if kind in ("regexp", "pcre"):
            return PatternTable(ref, compile_rules(kind, str(path), text))
        if kind == "cidr":
            return CidrTable(ref, str(path), text)
        return parse_source(text, ref, str(path), aliases=aliases)
    if kind == "inline":
        return _inline(ref, name)
    if kind == "static":
        inner = _braced(name)
        return StaticTable(ref, inner if inner is not None else name)
    if kind == "unix":
        if name != "passwd.byname":
            raise NotSupportedError(f"{ref}: unix table not supported: {name}")
        return PasswdTable(ref)
    if kind == "nis":
        return EmptyTable(ref)
    raise NotSupportedError(f'{ref}: table type "{kind}" is not supported by postwall yet')


def open_maps(
    items: Iterable[str] | str,
    base: Path | None = None,
    *,
    aliases: bool = False,
    read: Callable[[str], bytes] | None = None,
) -> list[Table]:
    """Open a maps list (a parameter value or its split items), in order."""
    if isinstance(items, str):
        items = split_list(items)
    return [open_table(i, base, aliases=aliases, read=read) for i in items]


def table_files(items: Iterable[str] | str, base: Path | None = None) -> list[str]:
    """The files a maps list reads (absolute), for the root helper's allow-list."""
    if isinstance(items, str):
        items = split_list(items)
    out = []
    for item in items:
        kind, colon, name = item.strip().removeprefix("proxy:").partition(":")
        if colon and (kind.lower() in _FILE_TYPES or kind.lower() in ("regexp", "pcre")):
            path = Path(name)
            if base is not None and not path.is_absolute():
                path = base / path
            out.append(os.path.abspath(path))
    return out


def lookup_maps(tables: Iterable[Table], key: str) -> str | None:
    """First answer from a list of tables, as Postfix's maps_find()."""
    for table in tables:
        value = table.lookup(key)
        if value is not None:
            return value
    return None
