"""`regexp:` and `pcre:` lookup tables, as Postfix's regexp_table(5) and pcre_table(5).

Contract: `compile_rules(kind, path, text)` compiles every rule once and returns
`Rules`; `Rules.lookup(key)` returns the first matching rule's result with
`$1`..`$99` substituted (an unmatched or empty group gives nothing), or None. Called by
`config.tables.open_table` (its `PatternTable`). A pattern table answers only
whole-string queries: `Table.fixed` is False, and callers that search partial keys
(parent domains, `user@`, address prefixes) skip it for those, as Postfix does with
DICT_FLAG_PATTERN.

As in Postfix, a broken rule is skipped with a warning naming `file, line` (in
`Rules.warnings`); the rest of the table works.  Matching runs on the `regex` package,
which does not backtrack for seconds where `re` does (`^(\\w+\\s?)*$` against 29
characters took `re` 21 s here, `regex` under a millisecond) and is bounded: a match that
takes longer than MATCH_TIMEOUT counts as no match, as Postfix treats PCRE's match
limit, and is noted in `Rules.match_errors` (one server process serves every session,
so an unbounded match would stall them all).  Patterns are written for Python's `re`
(which also checks them, for its error messages):
POSIX bracket classes (`[[:alpha:]]`), `\\<`/`\\>`, backslashes inside brackets and
basic regular expressions (the `x` flag of `regexp:`) are translated; PCRE's `\\Q..\\E`,
`(?<name>...)`, `\\x{..}`, `\\h`, `\\R` and the `U` and `E` flags too.  What remains
different (docs/status.md): POSIX leftmost-longest alternation (Python takes the first
alternative that matches), and matching is by character rather than by byte.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass
from typing import Any

import regex as _regex

from .maincf import logical_lines

# Python spellings of the POSIX classes, for use inside a bracket expression.
_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v",
    "blank": " \\t",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "print": "\\x20-\\x7e",
    "graph": "\\x21-\\x7e",
    "cntrl": "\\x00-\\x1f\\x7f",
    "xdigit": "0-9A-Fa-f",
    "word": "\\w",
}
_CLASS_SPECIALS = frozenset("\\]^-[&~|")
_QUANTIFIER = re.compile(r"\*|\+|\?|\{\d+(,\d*)?\}")


class PatternError(ValueError):
    """One rule that cannot be used; the message is Postfix's warning text."""


MATCH_TIMEOUT = 0.1  # seconds per match attempt


class _Pattern:
    """A compiled pattern whose every match is bounded in time."""

    __slots__ = ("_bounded", "_fast", "_where", "errors")

    def __init__(
        self, fast: Any, where: str, errors: collections.deque[str], *, bounded: bool = True
    ) -> None:
        self._fast = fast
        self._where = where
        self._bounded = bounded
        self.errors = errors

    def search(self, key: str) -> Any:
        return self._run(self._fast.search, key)

    def match(self, key: str) -> Any:
        return self._run(self._fast.match, key)

    def _run(self, method: Any, key: str) -> Any:
        if not self._bounded:
            return method(key)
        try:
            return method(key, timeout=MATCH_TIMEOUT)
        except TimeoutError:
            self.errors.append(f"{self._where}: matching error: time limit exceeded")
            return None


@dataclass(slots=True)
class _Rule:
    op: str  # "match", "if", "endif"
    line: int
    regex: re.Pattern[str] | _Pattern | None = None
    match: bool = True  # False for !/pattern/
    anchored: bool = False  # pcre `A`
    second: tuple[re.Pattern[str] | _Pattern, bool] | None = None  # regexp /p1/!/p2/
    result: tuple[str | int, ...] = ()  # literal text and group numbers
    endif: int = -1  # for "if": index of its endif, -1 when it has none


class Rules:
    """The compiled rules of one regexp: or pcre: table."""

    def __init__(
        self, rules: list[_Rule], warnings: list[str], match_errors: collections.deque[str]
    ) -> None:
        self.warnings = warnings
        self.match_errors = match_errors  # bounded: the latest matches that timed out
        self._rules = rules

    def results(self) -> list[str]:
        """The literal part of every result, for start-up checks of actions."""
        return [
            "".join(p for p in r.result if isinstance(p, str))
            for r in self._rules
            if r.op == "match"
        ]

    def lookup(self, key: str) -> str | None:
        rules = self._rules
        i, n = 0, len(rules)
        while i < n:
            rule = rules[i]
            if rule.op == "match":
                regex = rule.regex
                assert regex is not None
                m = regex.match(key) if rule.anchored else regex.search(key)
                if (m is not None) == rule.match and (
                    rule.second is None
                    or (rule.second[0].search(key) is not None) == rule.second[1]
                ):
                    if len(rule.result) == 1 and isinstance(rule.result[0], str):
                        return rule.result[0]
                    out = []
                    for part in rule.result:
                        if isinstance(part, str):
                            out.append(part)
                        elif m is not None:
                            out.append(m.group(part) or "")
                    return "".join(out)
            elif rule.op == "if":
                regex = rule.regex
                assert regex is not None
                hit = (regex.match(key) if rule.anchored else regex.search(key)) is not None
                if hit != rule.match:
                    if rule.endif < 0:
                        return None
                    i = rule.endif
            i += 1
        return None


def compile_rules(kind: str, path: str, text: str) -> Rules:
    """Compile the text of a regexp: (kind "regexp") or pcre: (kind "pcre") table."""
    rules: list[_Rule] = []
    warnings: list[str] = []
    stack: list[int] = []
    for num, line in logical_lines(text):
        where = f"{kind} map {path}, line {num}"
        if line[:1].isspace():
            # readllines() refuses a continuation with nothing to continue.
            warnings.append(f'{path}: logical line must not start with whitespace: "{line[:30]}"')
            continue
        body = line.rstrip()
        try:
            rule = _parse_rule(kind, where, num, body, len(stack), warnings)
        except PatternError as err:
            warnings.append(f"{where}: {err}")
            continue
        if rule is None:
            continue
        if rule.op == "if":
            stack.append(len(rules))
        elif rule.op == "endif":
            rules[stack.pop()].endif = len(rules)
        rules.append(rule)
    for index in reversed(stack):
        warnings.append(f"{kind} map {path}, line {rules[index].line}: IF has no matching ENDIF")
    errors: collections.deque[str] = collections.deque(maxlen=20)
    for rule in rules:
        where = f"{kind} map {path}, line {rule.line}"
        if isinstance(rule.regex, re.Pattern):
            rule.regex = _bounded(rule.regex, where, errors)
        if rule.second is not None and isinstance(rule.second[0], re.Pattern):
            rule.second = (_bounded(rule.second[0], where, errors), rule.second[1])
    return Rules(rules, warnings, errors)


def _bounded(compiled: re.Pattern[str], where: str, errors: collections.deque[str]) -> _Pattern:
    """The same pattern on the `regex` engine, matched with a time limit."""
    try:
        fast = _regex.compile(compiled.pattern, compiled.flags)
    except Exception:  # a construct only `re` knows: keep it, unbounded (none known)
        return _Pattern(compiled, where, errors, bounded=False)
    return _Pattern(fast, where, errors)


def _parse_rule(
    kind: str, where: str, num: int, body: str, nesting: int, warnings: list[str]
) -> _Rule | None:
    if not body[:1].isalnum():
        regex, match, anchored, rest = _get_pattern(kind, body)
        _obsolete(kind, where, regex[1], warnings)
        second = None
        if kind == "regexp" and rest.startswith("!"):
            regex2, match2, _, rest = _get_pattern(kind, rest)
            second = (regex2, match2)
        replacement = rest.strip()
        if not replacement:
            warnings.append(f"{where}: no replacement text: using empty string")
        result = _parse_result(replacement)
        max_sub = max((p for p in result if isinstance(p, int)), default=0)
        if max_sub and not match:
            raise PatternError(
                "$number found in negative match replacement text: skipping this rule"
            )
        compiled = _compile(kind, *regex)
        if max_sub > compiled.groups:
            raise PatternError(f'out of range replacement index "{max_sub}": skipping this rule')
        rule = _Rule("match", num, compiled, match, anchored, result=result)
        if second is not None:
            rule.second = (_compile(kind, *second[0]), second[1])
        return rule
    word = body[:5].lower()
    if word[:2] == "if" and not body[2:3].isalnum():
        regex, match, anchored, rest = _get_pattern(kind, body[2:].lstrip())
        _obsolete(kind, where, regex[1], warnings)
        if rest.strip():
            warnings.append(f'{where}: ignoring extra text after IF statement: "{rest.strip()}"')
            warnings.append(
                f"{where}: do not prepend whitespace to statements between IF and ENDIF"
            )
        return _Rule("if", num, _compile(kind, *regex), match, anchored)
    if word == "endif" and not body[5:6].isalnum():
        if nesting == 0:
            raise PatternError("ignoring ENDIF without matching IF")
        if body[5:].strip():
            warnings.append(f"{where}: ignoring extra text after ENDIF")
        return _Rule("endif", num)
    raise PatternError("ignoring unrecognized request")


def _obsolete(kind: str, where: str, flags: str, warnings: list[str]) -> None:
    if kind == "pcre" and "X" in flags:
        warnings.append(f'{where}: ignoring obsolete regexp option "X"')


def _get_pattern(kind: str, text: str) -> tuple[tuple[str, str], bool, bool, str]:
    """(pattern source, flags), positive?, anchored?, the text after the flags."""
    p = 0
    match = True
    while p < len(text) and (text[p] == "!" or text[p].isspace()):
        if text[p] == "!":
            match = not match
        p += 1
    if p == len(text):
        raise PatternError("no regexp: skipping this rule")
    delim = text[p]
    start = p = p + 1
    while p < len(text):
        if text[p] == "\\":
            if p + 1 >= len(text):
                break
            p += 1
        elif text[p] == delim:
            break
        p += 1
    if p >= len(text):
        verb = "ignoring" if kind == "pcre" else "skipping"
        raise PatternError(f'no closing regexp delimiter "{delim}": {verb} this rule')
    source = text[start:p]
    p += 1
    flags_start = p
    stops = " \t\n\r\f\v" + ("!" if kind == "regexp" else "")
    allowed = "imx" if kind == "regexp" else "imsxAEUX"
    while p < len(text) and text[p] not in stops:
        if text[p] not in allowed:
            raise PatternError(f'unknown regexp option "{text[p]}": skipping this rule')
        p += 1
    flags = text[flags_start:p]
    return (source, flags), match, flags.count("A") % 2 == 1, text[p:]


def _parse_result(text: str) -> tuple[str | int, ...]:
    """mac_parse(): `$$` is `$`; `$N`, `${N}`, `$(N)` are group references."""
    parts: list[str | int] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            literal.append(c)
            i += 1
            continue
        if text[i + 1 : i + 2] == "$":
            literal.append("$")
            i += 2
            continue
        i += 1
        if text[i : i + 1] in ("{", "("):
            close = "}" if text[i] == "{" else ")"
            end = text.find(close, i + 1)
            if end < 0:
                raise PatternError("bad replacement syntax: skipping this rule")
            name, i = text[i + 1 : end], end + 1
        else:
            end = i
            while end < len(text) and (text[end].isalnum() or text[end] == "_"):
                end += 1
            name, i = text[i:end], end
        if not name:
            raise PatternError("bad replacement syntax: skipping this rule")
        if not name.isdigit():
            raise PatternError(
                f'non-numeric replacement index "{name}": bad replacement syntax: '
                "skipping this rule"
            )
        if int(name) < 1:
            raise PatternError(f'out of range replacement index "{name}": skipping this rule')
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(int(name))
    if literal or not parts:
        parts.append("".join(literal))
    return tuple(parts)


# Each flag letter toggles its default (regexp_table(5), pcre_table(5)); pcre's A
# (anchored) is applied by the caller, X is obsolete (warned about).
_FLAG_DEFAULTS = {
    "regexp": {"i": True, "m": False, "x": True},
    "pcre": {"i": True, "s": True, "m": False, "x": False, "U": False, "E": False},
}


def _compile(kind: str, source: str, flags: str) -> re.Pattern[str]:
    on = dict(_FLAG_DEFAULTS[kind])
    for f in flags:
        if f in on:
            on[f] = not on[f]
    options = re.ASCII | (re.IGNORECASE if on["i"] else 0)
    if kind == "regexp":
        python = _posix_to_python(source, extended=on["x"], newline=on["m"])
        options |= re.MULTILINE if on["m"] else re.DOTALL
    else:
        python = _pcre_to_python(source, ungreedy=on["U"], dollar_end=on["E"] and not on["m"])
        options |= (
            (re.DOTALL if on["s"] else 0)
            | (re.MULTILINE if on["m"] else 0)
            | (re.VERBOSE if on["x"] else 0)
        )
    try:
        return re.compile(python, options)
    except (re.error, OverflowError, RecursionError) as err:
        if kind == "pcre":
            raise PatternError(f"error in regex: {err}") from None
        raise PatternError(str(err)) from None


# -- translation ----------------------------------------------------------------


def _bracket(source: str, i: int, *, posix: bool, newline: bool = False) -> tuple[str, int]:
    """Translate the bracket expression opening at source[i] == "["; (text, next index)."""
    j = i + 1
    negate = source[j : j + 1] == "^"
    if negate:
        j += 1
    items: list[str] = []
    first = True
    while j < len(source):
        c = source[j]
        if c == "]" and not first:
            break
        first = False
        if c == "[" and source[j + 1 : j + 2] in (":", ".", "="):
            kind = source[j + 1]
            end = source.find(kind + "]", j + 2)
            if end < 0:
                raise PatternError("unterminated character class")
            name = source[j + 2 : end]
            j = end + 2
            if kind == ":":
                if name not in _POSIX_CLASSES:
                    raise PatternError(f"invalid character class [:{name}:]")
                items.append(_POSIX_CLASSES[name])
            else:
                items.append("".join(_class_char(ch) for ch in name))
            continue
        if c == "\\" and not posix:
            if j + 1 >= len(source):
                raise PatternError("unterminated character class")
            text, j = _pcre_escape(source, j, in_class=True)
            items.append(text)
            continue
        if c == "-" and items and source[j + 1 : j + 2] not in ("]", ""):
            items.append("-")
            j += 1
            continue
        items.append(_class_char(c))
        j += 1
    else:
        raise PatternError("unterminated character class" if not posix else "Unmatched [, [^")
    body = "".join(items)
    if negate and newline:
        body += "\\n"
    return "[" + ("^" if negate else "") + body + "]", j + 1


def _class_char(c: str) -> str:
    return "\\" + c if c in _CLASS_SPECIALS else c


def _posix_to_python(source: str, *, extended: bool, newline: bool) -> str:
    """POSIX ERE (or BRE, extended=False) with GNU extensions, as Python syntax."""
    out: list[str] = []
    i = 0
    n = len(source)
    # Where a BRE `*` is literal: at the start, after `\(`, `\|` or an anchoring `^`.
    at_start = True
    while i < n:
        c = source[i]
        if c == "[":
            text, i = _bracket(source, i, posix=True, newline=newline)
            out.append(text)
            at_start = False
            continue
        if c == "\\":
            if i + 1 >= n:
                raise PatternError("Trailing backslash")
            d = source[i + 1]
            i += 2
            if not extended and d in "(){}|+?":
                out.append(d)
                at_start = d in "(|"
                continue
            at_start = False
            if d == "<":
                out.append(r"\b(?=\w)")
            elif d == ">":
                out.append(r"\b(?<=\w)")
            elif d == "`":
                out.append(r"\A")
            elif d == "'":
                out.append(r"\Z")
            elif d.isdigit() or d in "wWsSbB":
                out.append("\\" + d)
            elif d.isalpha():
                # glibc's regcomp takes e.g. \d without matching a digit; say so.
                raise PatternError(f"\\{d} is not a POSIX regular expression operator")
            else:
                out.append(re.escape(d))
            continue
        if c == "$" and (extended or i == n - 1 or source[i + 1 : i + 3] in ("\\)", "\\|")):
            out.append("$" if newline else r"\Z")
            i += 1
            continue
        if c == "^" and (extended or at_start):
            out.append("^")
            i += 1
            continue
        if extended:
            if c == "(" and source[i + 1 : i + 2] == "?":
                raise PatternError("Invalid preceding regular expression")
            if c == "{" and not re.match(r"\{\d+(,\d*)?\}", source[i:]):
                raise PatternError("Invalid preceding regular expression")
            out.append(c)
            at_start = c in "(|"
        elif c == "*" and at_start:
            out.append(r"\*")
            at_start = False
        elif c in "*.":
            out.append(c)
            at_start = False
        else:
            out.append(re.escape(c))
            at_start = False
        i += 1
    return "".join(out)


def _pcre_escape(source: str, i: int, *, in_class: bool = False) -> tuple[str, int]:
    """One backslash sequence at source[i]; (Python text, next index)."""
    d = source[i + 1]
    if d == "x" and source[i + 2 : i + 3] == "{":
        end = source.find("}", i + 3)
        if end < 0:
            raise PatternError("missing } in \\x{}")
        return f"\\U{int(source[i + 3 : end] or '0', 16):08x}", end + 1
    if d == "h":
        return (" \\t" if in_class else "[ \\t]"), i + 2
    if d == "e":
        return "\\x1b", i + 2
    if not in_class:
        if d == "z":
            return "\\Z", i + 2
        if d == "Z":
            return "(?=\\n?\\Z)", i + 2
        if d == "R":
            return "(?:\\r\\n|\\n|\\r)", i + 2
        if d == "k" and source[i + 2 : i + 3] in ("<", "{", "'"):
            close = {"<": ">", "{": "}", "'": "'"}[source[i + 2]]
            end = source.find(close, i + 3)
            if end < 0:
                raise PatternError("syntax error in subpattern name (missing terminator?)")
            return f"(?P={source[i + 3 : end]})", end + 1
    return source[i : i + 2], i + 2


def _pcre_to_python(source: str, *, ungreedy: bool, dollar_end: bool) -> str:
    out: list[str] = []
    i = 0
    n = len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            if i + 1 >= n:
                raise PatternError("\\ at end of pattern")
            if source[i + 1] == "Q":
                end = source.find("\\E", i + 2)
                end = n if end < 0 else end
                out.append(re.escape(source[i + 2 : end]))
                i = end + 2
                continue
            if source[i + 1] == "E":
                i += 2
                continue
            text, i = _pcre_escape(source, i)
            out.append(text)
            continue
        if c == "[":
            text, i = _bracket(source, i, posix=False)
            out.append(text)
            continue
        if c == "(" and source.startswith("(?<", i) and source[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        if c == "(" and source.startswith("(?'", i):
            end = source.find("'", i + 3)
            if end < 0:
                raise PatternError("syntax error in subpattern name (missing terminator?)")
            out.append(f"(?P<{source[i + 3 : end]}>")
            i = end + 1
            continue
        if c == "$" and dollar_end:
            out.append("\\Z")
            i += 1
            continue
        q = _QUANTIFIER.match(source, i) if ungreedy else None
        if q is not None and not (c == "?" and out and out[-1] == "("):
            out.append(q.group())
            i = q.end()
            if source[i : i + 1] == "?":
                i += 1  # lazy under U means greedy
            elif source[i : i + 1] == "+":
                out.append("+")
                i += 1
            else:
                out.append("?")
            continue
        out.append(c)
        i += 1
    return "".join(out)
