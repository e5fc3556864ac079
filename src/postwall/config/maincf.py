"""main.cf syntax, `$name` expansion and conversion into a typed `Params`.

Contract: `parse_main_cf(text, filename)` returns every `name = value` setting with the
file and line it came from, plus syntax problems; it never raises. `Expander` implements
Postfix's macro language (mac_expand(3), Postfix 3.x): `$name`, `${name}`, `$(name)`,
`$$`, `${name?text}`, `${name:text}`, `${name?{a}:{b}}` and relational forms such as
`${{$compatibility_level} <level {2} ? {a} : {b}}`; unknown names expand to "" like
Postfix, a reference loop or bad syntax raises `ExpandError`. `build_params()` expands
and converts every registry field and reports each failure as
`file:line: name: message`, collecting all of them in one pass. Used by config.load()
and by the master.cf `-o` override handling.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import params as P

_NAME = re.compile(r"[A-Za-z0-9_]+")
# Postfix aborts at this nesting depth ("unreasonable macro call nesting").
_MAX_DEPTH = 100
_REL_OPS = ("==", "!=", "<=", ">=", "<", ">")


class ConfigError(Exception):
    """Every problem found while loading a configuration, one `file:line: ...` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ExpandError(ValueError):
    pass


@dataclass(frozen=True)
class Setting:
    """One `name = value` with its origin; value is the raw text, white space trimmed."""

    name: str
    value: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first line number, joined text) per logical line, Postfix readllines() style.

    Comment lines (first non-blank is '#') and blank lines are skipped without ending a
    logical line; a line starting with white space continues the previous one. A leading
    continuation with nothing before it is yielded as-is so the caller can report it.
    """
    start = 0
    buf: list[str] | None = None
    # Only LF ends a line, as in Postfix; a CR before it is trailing white space.
    for num, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace() and buf is not None:
            buf.append(line)
            continue
        if buf is not None:
            yield start, "".join(buf)
        start, buf = num, [line]
    if buf is not None:
        yield start, "".join(buf)


def parse_main_cf(text: str, filename: str) -> tuple[list[Setting], list[str]]:
    """All settings in file order (later ones win when read into a dict) and problems."""
    settings: list[Setting] = []
    problems: list[str] = []
    for num, line in logical_lines(text):
        if line[0].isspace():
            problems.append(f"{filename}:{num}: syntax error: line starts with white space")
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq:
            problems.append(f'{filename}:{num}: syntax error: missing "=" after "{name}"')
            continue
        if not name or any(c.isspace() for c in name):
            problems.append(f'{filename}:{num}: syntax error: bad parameter name "{name}"')
            continue
        settings.append(Setting(name, value.strip(), filename, num))
    return settings, problems


def references(text: str) -> set[str]:
    """Names a value refers to with $name, ${name...} or $(name)."""
    return set(re.findall(r"\$[{(]?([A-Za-z0-9_]+)", text))


def _level(text: str) -> tuple[int, ...]:
    # Compatibility levels compare per dotted component: 3.6 < 3.10 (mac_expand, Postfix).
    if not re.fullmatch(r"\d+(\.\d+){0,2}", text):
        raise ExpandError(f'malformed compatibility level syntax: "{text}"')
    return tuple(int(p) for p in text.split("."))


def _compare(left: str, op: str, right: str) -> bool:
    if op.endswith("level"):
        a: Any = _level(left)
        b: Any = _level(right)
        op = op[: -len("level")]
    elif re.fullmatch(r"-?\d+", left) and re.fullmatch(r"-?\d+", right):
        a, b = int(left), int(right)
    else:
        a, b = left, right
    return {
        "==": a == b,
        "!=": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }[op]


def _match_brace(text: str, i: int, open_: str = "{", close: str = "}") -> int:
    """Index of the bracket closing the one at text[i]."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_:
            depth += 1
        elif text[j] == close:
            depth -= 1
            if depth == 0:
                return j
    raise ExpandError(f'unmatched "{open_}" in "{text}"')


class Expander:
    """Expands values; `lookup(name)` gives a name's raw text or None when undefined."""

    def __init__(
        self,
        lookup: Callable[[str], str | None],
        derived: Mapping[str, Callable[[Expander], str]] | None = None,
    ) -> None:
        self._lookup = lookup
        self._derived = derived or {}
        self._cache: dict[str, str] = {}
        self._stack: list[str] = []
        self._nest = 0  # bounds recursion on deeply nested text as well as on names

    def value(self, name: str) -> str:
        """The fully expanded value of `name` ("" when undefined)."""
        if name in self._cache:
            return self._cache[name]
        if name in self._stack:
            loop = " -> ".join([*self._stack[self._stack.index(name) :], name])
            raise ExpandError(f"parameter reference loop: {loop}")
        raw = self._lookup(name)
        if raw is None and name not in self._derived:
            return ""
        if len(self._stack) >= _MAX_DEPTH:
            raise ExpandError(f'unreasonable macro call nesting: "{name}"')
        self._stack.append(name)
        try:
            out = self.expand(raw) if raw is not None else self._derived[name](self)
        finally:
            self._stack.pop()
        self._cache[name] = out
        return out

    def defined(self, name: str) -> bool:
        """True when `name` has explicit or registry text (derived defaults excluded)."""
        return self._lookup(name) is not None

    def expand(self, text: str) -> str:
        if self._nest >= _MAX_DEPTH:
            raise ExpandError(f'unreasonable macro call nesting: "{text[:40]}"')
        self._nest += 1
        try:
            return self._expand(text)
        finally:
            self._nest -= 1

    def _expand(self, text: str) -> str:
        out: list[str] = []
        i = 0
        n = len(text)
        while i < n:
            ch = text[i]
            if ch != "$":
                out.append(ch)
                i += 1
                continue
            nxt = text[i + 1] if i + 1 < n else ""
            if nxt == "$":
                out.append("$")
                i += 2
            elif nxt == "{":
                end = _match_brace(text, i + 1)
                out.append(self._braced(text[i + 2 : end]))
                i = end + 1
            elif nxt == "(":
                end = _match_brace(text, i + 1, "(", ")")
                out.append(self._braced(text[i + 2 : end]))
                i = end + 1
            else:
                m = _NAME.match(text, i + 1)
                if not m:
                    raise ExpandError(f'empty macro name: "{text}"')
                out.append(self.value(m.group()))
                i = m.end()
        return "".join(out)

    def _braced(self, inner: str) -> str:
        body = inner.strip()
        if body.startswith("{"):
            return self._relational(body)
        m = _NAME.match(body)
        if not m:
            raise ExpandError(f'empty macro name: "{inner}"')
        name = m.group()
        rest = body[m.end() :].lstrip()
        if not rest:
            return self.value(name)
        if rest[0] not in "?:":
            raise ExpandError(f'unexpected text after macro name "{name}": "{rest}"')
        nonempty = self.value(name) != ""
        op, arg = rest[0], rest[1:].strip()
        if arg.startswith("{"):
            when, other = self._branches(arg)
            if op == "?":
                return self.expand(when) if nonempty else self.expand(other)
            return self.expand(when) if not nonempty else ""
        keep = nonempty if op == "?" else not nonempty
        return self.expand(rest[1:]) if keep else ""

    def _branches(self, arg: str) -> tuple[str, str]:
        """Parse `{a}` or `{a} : {b}`; returns (a, b) with b empty when absent."""
        end = _match_brace(arg, 0)
        first = arg[1:end]
        tail = arg[end + 1 :].strip()
        if not tail:
            return first, ""
        if not tail.startswith(":"):
            raise ExpandError(f'expected ":" in "{arg}"')
        tail = tail[1:].strip()
        if not tail.startswith("{") or _match_brace(tail, 0) != len(tail) - 1:
            raise ExpandError(f'expected "{{value}}" after ":" in "{arg}"')
        return first, tail[1:-1]

    def _relational(self, body: str) -> str:
        end = _match_brace(body, 0)
        left = self.expand(body[1:end])
        rest = body[end + 1 :].lstrip()
        op = next((o for o in _REL_OPS if rest.startswith(o)), None)
        if op is None:
            raise ExpandError(f'unknown relational operator in "{body}"')
        rest = rest[len(op) :]
        if rest.startswith("level"):
            op += "level"
            rest = rest[len("level") :]
        rest = rest.lstrip()
        if not rest.startswith("{"):
            raise ExpandError(f'expected "{{value}}" after "{op}" in "{body}"')
        end = _match_brace(rest, 0)
        right = self.expand(rest[1:end])
        rest = rest[end + 1 :].strip()
        if not rest.startswith("?"):
            raise ExpandError(f'expected "?" in "{body}"')
        arg = rest[1:].strip()
        if not arg.startswith("{"):
            return self.expand(arg) if _compare(left, op, right) else ""
        when, other = self._branches(arg)
        return self.expand(when if _compare(left, op, right) else other)


def make_lookup(
    settings: Mapping[str, Setting], runtime: Mapping[str, str] | None = None
) -> Callable[[str], str | None]:
    """Name -> raw text: explicit settings, then runtime names, then registry defaults.

    myhostname and mydomain defaults are not text: `derived_defaults()` computes them.
    """
    runtime = runtime or {}

    def lookup(name: str) -> str | None:
        if name in settings:
            return settings[name].value
        if name in runtime:
            return runtime[name]
        if name in ("myhostname", "mydomain"):
            return None
        if P.is_known(name):
            return P.raw_default(name)
        return None

    return lookup


def _default_myhostname(exp: Expander) -> str:
    # Postfix check_myhostname(): a short host name gets ".$mydomain" or ".localdomain".
    if "." in P.SHORT_HOSTNAME:
        return P.SHORT_HOSTNAME
    if exp.defined("mydomain"):
        return f"{P.SHORT_HOSTNAME}.{exp.value('mydomain')}"
    return f"{P.SHORT_HOSTNAME}.localdomain"


def _default_mydomain(exp: Expander) -> str:
    # Postfix check_mydomainname(): the effective myhostname minus its first label.
    host = exp.value("myhostname")
    return host.split(".", 1)[1] if "." in host else "localdomain"


DERIVED: dict[str, Callable[[Expander], str]] = {
    "myhostname": _default_myhostname,
    "mydomain": _default_mydomain,
}


def build_params(
    settings: Mapping[str, Setting],
    runtime: Mapping[str, str] | None = None,
) -> tuple[P.Params, list[str]]:
    """Expand and convert every registry field; returns (params, problems)."""
    from .network import style_networks  # network imports nothing from here

    lookup = make_lookup(settings, runtime)
    exp = Expander(lookup, DERIVED)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, fld in P.FIELDS.items():
        setting = settings.get(name)
        where, blame = (setting.where if setting else "(default)"), name
        try:
            if name == "mynetworks" and setting is None:
                # An unset mynetworks comes from mynetworks_style; blame that setting.
                style = settings.get("mynetworks_style")
                where = style.where if style else where
                blame = "mynetworks_style"
                text = style_networks(exp.value("mynetworks_style"))
            elif fld.metadata["verbatim"]:
                text = lookup(name) or ""
            else:
                text = exp.value(name)
            values[name] = P.convert(fld.metadata, text)
        except ValueError as err:
            problems.append(f"{where}: {blame}: {err}")
    if problems:
        return P.Params(), problems
    return P.Params(**values), problems
