"""regexp: and pcre: tables: semantics, and identical answers to Postfix's `postmap -q`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import peers
from postwall.config.tables import TableError, open_table

# (table text, keys): each key's answer (or no answer) must be Postfix's.
REGEXP_CASES: list[tuple[str, list[str]]] = [
    (
        "# a comment\n"
        "/^Foo$/i\tCASE\n"
        "/^bar(.*)@(.*)$/\tBAR $1 ${2} $(1) $$ end\n"
        "/^neg/\tNEGSTART\n"
        "!/x/\tNOX\n",
        ["Foo", "foo", "FOO", "barX@Y", "BARx@y", "negx", "abc", "xyz"],
    ),
    (
        "if /^user/\n"
        "/@example\\.com$/\tUSER_EXAMPLE\n"
        "if !/^user-b/\n"
        "/^user-a/\tNOT_B_A\n"
        "endif\n"
        "/^user-b/\tUSER_B\n"
        "endif\n"
        "/^user/\tUNREACHED_ONLY_AFTER_IF\n"
        "/./\tANY\n",
        ["user@example.com", "user-a@x", "user-b@x", "user-c@x", "other", "usera"],
    ),
    (
        # other delimiters, a continuation line, the two-pattern form, POSIX classes,
        # GNU word boundaries, bracket backslashes, unmatched and empty groups
        "|^a/b$|\tSLASH\n"
        ",^c#d$,\tCOMMA\n"
        "/^long/\tfirst part\n"
        "  second part\n"
        "/^p1/!/p2/\tP1_NOT_P2\n"
        "/^[[:digit:]]+[[:alpha:]]$/\tDIGITS\n"
        "/\\<word\\>/\tWORD\n"
        "/^[\\.]$/\tBACKSLASH_OR_DOT\n"
        "/^k(a)?z$/\tK[$1]\n"
        "/^(a+)(b*)$/\tAB[$1|$2]\n"
        "/^end$/\tEND_ONLY\n"
        "/^[^[:space:]]+ [[:upper:]]{2}$/\tUPPER\n",
        [
            "a/b",
            "c#d",
            "longer",
            "p1",
            "p1p2",
            "12z",
            "a word here",
            "swords",
            "\\",
            ".",
            "kz",
            "kaz",
            "aa",
            "aab",
            "end",
            "x YY",
            "x yy",
        ],
    ),
    (
        # flags: i toggles case-insensitivity off; m makes . stop at newlines; x is BRE
        "/^CaSe$/i\tSENSITIVE\n"
        "/^q.r$/m\tQ_DOT_R_M\n"
        "/^\\(ab\\)\\{2\\}+$/x\tBRE[$1]\n"
        "/^(ab){2}\\+$/\tERE\n",
        ["CaSe", "case", "qxr", "abab+", "ababab"],
    ),
    (
        # broken rules are skipped, the rest of the table works
        "/a(/\tBROKEN_PAREN\n"
        "/b/q\tUNKNOWN_FLAG\n"
        "/(c)/\t$2\n"
        "!/(d)/\t$1\n"
        "/e/\t$foo\n"
        "/f\n"
        "endif\n"
        "foo bar\n"
        "/\\d/\tPERL_DIGIT\n"
        "/(?:g)/\tPERL_GROUP\n"
        "/./\tFALLBACK\n",
        ["a", "b", "c", "d", "e", "f", "1", "g", "zz"],
    ),
]

PCRE_CASES: list[tuple[str, list[str]]] = [
    (
        "/^\\d+$/\tDIGITS\n"
        "/^[\\.]$/\tDOT\n"
        "/^end$/\tEND\n"
        "/^x.y$/\tXDOTY\n"
        "/^q.r$/s\tQ_DOT_R_NOT_DOTALL\n"
        "/^Foo$/i\tCASE\n"
        "/^a b c$/x\tEXTENDED\n"
        "/^(a+?)(a*)$/U\tUNGREEDY[$1|$2]\n"
        "/z/A\tANCHORED\n"
        "/^(?<n>nm)$/\tNAMED[$1]\n"
        "/^[[:alpha:]]+_$/\tALPHA\n"
        "/^\\Qa.b\\E$/\tQUOTED\n"
        "/^(?i:MiXeD)$/i\tINLINE_FLAG\n"
        "/^(\\w+)@(\\w+)\\.example$/\tUSER=$1 DOMAIN=${2}\n",
        [
            "123",
            "\\",
            ".",
            "end",
            "Foo",
            "foo",
            "abc",
            "aaa",
            "az",
            "za",
            "nm",
            "abc_",
            "a.b",
            "axb",
            "mixed",
            "joe@host.example",
            "none",
        ],
    ),
    (
        "if /^sub/\n"
        "!/^sub-ok/\tSUB_NOT_OK\n"
        "endif\n"
        "/^(x)(y)?$/\tX[$1|$2]\n"
        "/(/\tBROKEN\n"
        "/b/!/c/\tNO_TWO_PATTERN_FORM\n",
        ["sub-ok", "sub-bad", "x", "xy", "b"],
    ),
]
# Keys with a line break, as multi-line header_checks lookups have; postmap reads
# these one by one from -q.
MULTILINE_KEYS = ["end\n", "x\ny", "q\nr", "Subject: a\n\tb"]


def _postmap(kind: str, path: Path, keys: list[str]) -> dict[str, str | None]:
    postmap = peers.require_tool("postmap")
    if kind == "pcre":
        mods = subprocess.run(["postconf", "-m"], capture_output=True, text=True).stdout
        if "pcre" not in mods.split():
            why = "pcre: maps need the Debian package postfix-pcre"
            pytest.fail(why) if peers.in_ci() else pytest.skip(why)
    answers: dict[str, str | None] = {}
    simple = [k for k in keys if "\n" not in k and "\t" not in k]
    out = subprocess.run(
        [postmap, "-q", "-", f"{kind}:{path}"],
        input="".join(k + "\n" for k in simple),
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    found = dict(line.split("\t", 1) for line in out.splitlines())
    for key in simple:
        answers[key] = found.get(key)
    for key in keys:
        if key in answers:
            continue
        run = subprocess.run(
            [postmap, "-q", key, f"{kind}:{path}"], capture_output=True, text=True, check=False
        )
        answers[key] = run.stdout.removesuffix("\n") if run.returncode == 0 else None
    return answers


def _ours(kind: str, path: Path, keys: list[str]) -> dict[str, str | None]:
    table = open_table(f"{kind}:{path}")
    return {key: table.lookup(key) for key in keys}


@pytest.mark.interop
@pytest.mark.parametrize(
    ("kind", "text", "keys"),
    [("regexp", t, k) for t, k in REGEXP_CASES] + [("pcre", t, k) for t, k in PCRE_CASES],
)
def test_same_answers_as_postmap(tmp_path: Path, kind: str, text: str, keys: list[str]) -> None:
    path = tmp_path / f"table.{kind}"
    path.write_text(text + "/^(x\\ny|end)$/\tMULTI\n/^Subject:.*b$/\tHEADER\n")
    keys = keys + MULTILINE_KEYS
    assert _ours(kind, path, keys) == _postmap(kind, path, keys)


def test_pattern_tables_are_not_fixed(tmp_path: Path) -> None:
    path = tmp_path / "access"
    path.write_text("/^spam@/ REJECT\n")
    table = open_table(f"regexp:{path}")
    assert table.fixed is False
    assert open_table("inline:{a=b}").fixed is True
    assert table.results() == ["REJECT"]


def test_broken_rules_warn_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "checks"
    path.write_text("/ok/ OK\n/a(/ X\n/b/q Y\nif /c/\n/d/ D\n  \n")
    table = open_table(f"pcre:{path}")
    assert [w.split(":")[0] for w in table.warnings] == [
        f"pcre map {path}, line 2",
        f"pcre map {path}, line 3",
        f"pcre map {path}, line 4",
    ]
    assert 'unknown regexp option "q": skipping this rule' in table.warnings[1]
    assert table.warnings[2].endswith("IF has no matching ENDIF")
    assert table.lookup("ok") == "OK"
    assert table.lookup("d") is None  # inside an IF that has no ENDIF and did not match


def test_missing_file_is_a_table_error(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="No such file"):
        open_table(f"pcre:{tmp_path}/nothing")


def test_relative_name_and_result_substitution(tmp_path: Path) -> None:
    (tmp_path / "sender_access").write_text(
        "/^(.+)@(example\\.(com|net))$/ 550 5.7.1 $1 at ${2} refused, $$5 fee\n"
    )
    table = open_table("regexp:sender_access", tmp_path)
    assert table.lookup("joe@example.net") == "550 5.7.1 joe at example.net refused, $5 fee"
    assert table.lookup("joe@example.org") is None


def test_a_pathological_pattern_cannot_stall_the_server(tmp_path: Path) -> None:
    """One process serves every session: a header_checks pattern that backtracks
    exponentially on a crafted header must not freeze them.  `^(\\w+\\s?)*$` takes
    Python's re about 20 s on 29 characters; the `regex` engine answers at once, and a
    match that still runs long is cut at MATCH_TIMEOUT and counts as no match, as
    Postfix treats PCRE's match limit."""
    import time

    from postwall.config import regexp

    path = tmp_path / "checks"
    path.write_text(
        "/^Subject: (\\w+\\s?)*$/ REJECT slow one\n"
        "/^X-Spam: (a|aa)+$/ REJECT slower one\n"
        "/^X-Spam: / WARN reached\n"
    )
    table = open_table(f"pcre:{path}")
    started = time.monotonic()
    assert table.lookup("Subject: " + "a" * 29 + "!") is None
    assert time.monotonic() - started < 1
    started = time.monotonic()
    assert table.lookup("X-Spam: " + "a" * 60 + "!") == "WARN reached"
    assert time.monotonic() - started < 10 * regexp.MATCH_TIMEOUT
    assert [e.split(": ", 1)[1] for e in table.rules.match_errors] == [  # type: ignore[attr-defined]
        "matching error: time limit exceeded"
    ]
