"""Every postwall module imports only from its own layer or the layers below it.

The layer table is parsed from docs/design.md (the fenced block whose lines start with a layer
number), so the document and the check cannot drift apart. Each module under src/postwall is
read with `ast` (never imported), its imports resolved (relative ones too) to a top-level
component (`smtpd`, `queue`, `cli`, ...) and compared by layer. Layer-1 modules must not import
socket, asyncio, ssl, OpenSSL, threading or subprocess (design.md: "Layer 1 is pure").
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DESIGN = REPO / "docs" / "design.md"
PACKAGE = REPO / "src" / "postwall"

# Modules that exist but that the table in docs/design.md does not list yet; the lead should
# move them into the table (then delete them here: a conflict with the table fails the test).
NOT_IN_TABLE: dict[str, int] = {}
# The package root (version string) sits below everything; `python -m postwall` above.
FIXED = {"": 0, "__main__": 5}
LAYER1_FORBIDDEN = {"socket", "asyncio", "ssl", "OpenSSL", "threading", "subprocess"}
# A forbidden module a layer-1 module may still import, limited to the attributes listed.
LAYER1_ALLOWED_USES = {
    # Postfix derives the myhostname default from gethostname(); no socket is opened.
    ("config.params", "socket"): {"gethostname"},
}


def parse_layers(text: str) -> dict[str, int]:
    """{component: layer} from design.md's layer diagram ("3  smtpd/ (...)  cleanup.py ...")."""
    layers: dict[str, int] = {}
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        for line in block.splitlines():
            m = re.match(r"\s*(\d)\s+(.*)", line)
            if not m:
                continue
            body = re.sub(r"\([^)]*\)", " ", m.group(2))  # drop "(session, restrictions)"
            for name in re.findall(r"\b([a-z_]+)(?:\.py|/)", body):
                layers[name] = int(m.group(1))
    return layers


@dataclass(frozen=True)
class Import:
    module: str  # dotted, absolute
    names: tuple[str, ...]  # for `from X import a, b`
    line: int


@dataclass(frozen=True)
class Module:
    dotted: str  # e.g. "postwall.smtpd.session"
    path: Path

    @property
    def tree(self) -> ast.Module:
        # Parsed per test, so one module with a syntax error fails alone.
        return ast.parse(self.path.read_text(), str(self.path))

    @property
    def component(self) -> str:
        parts = self.dotted.split(".")
        return parts[1] if len(parts) > 1 and parts[1] != "__init__" else ""

    @property
    def relname(self) -> str:
        return self.dotted.removeprefix("postwall.")


def load_modules(package: Path) -> list[Module]:
    mods = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods.append(Module(".".join(parts), path))
    return mods


def imports_of(mod: Module, tree: ast.Module) -> list[Import]:
    is_pkg = mod.path.name == "__init__.py"
    package = mod.dotted if is_pkg else mod.dotted.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                if node.level - 1 > len(anchor) - 1:
                    raise AssertionError(f"{mod.path}:{node.lineno}: relative import escapes")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(base, tuple(a.name for a in node.names), node.lineno))
    return found


def layer_of(component: str, table: dict[str, int]) -> int | None:
    if component in FIXED:
        return FIXED[component]
    return table.get(component, NOT_IN_TABLE.get(component))


def targets(imp: Import) -> list[str]:
    """postwall components an import reaches: `from postwall import logfmt` reaches logfmt."""
    parts = imp.module.split(".")
    if parts[0] != "postwall":
        return []
    if len(parts) > 1:
        return [parts[1]]
    return [n if n and not n.startswith("__") else "" for n in imp.names] or [""]


def attribute_uses(tree: ast.Module, name: str) -> set[str]:
    """Attributes read from `name` (socket.gethostname -> gethostname); a bare use is '*'."""
    uses: set[str] = set()
    prefixes: set[int] = set()
    for node in ast.walk(tree):
        value = node.value if isinstance(node, ast.Attribute) else None
        if isinstance(value, ast.Name) and value.id == name:
            uses.add(node.attr)  # type: ignore[attr-defined]
            prefixes.add(id(value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == name and id(node) not in prefixes:
            uses.add("*")
    return uses


def violations(mod: Module, table: dict[str, int]) -> list[str]:
    here = layer_of(mod.component, table)
    tree = mod.tree
    if here is None:
        return [f"{mod.path}: component {mod.component!r} has no layer in docs/design.md"]
    problems = []
    for imp in imports_of(mod, tree):
        for comp in targets(imp):
            there = layer_of(comp, table)
            where = f"{mod.path}:{imp.line}"
            if there is None:
                problems.append(f"{where}: imports {comp!r}, which has no layer")
            elif there > here:
                problems.append(
                    f"{where}: layer {here} ({mod.relname}) imports layer {there} ({imp.module})"
                )
        top = imp.module.split(".")[0]
        if here == 1 and top in LAYER1_FORBIDDEN:
            allowed = LAYER1_ALLOWED_USES.get((mod.relname, top))
            used = attribute_uses(tree, top)
            if allowed is None or imp.names or not used <= allowed:
                problems.append(
                    f"{mod.path}:{imp.line}: layer-1 module imports {imp.module}"
                    + (f" and uses {sorted(used - (allowed or set()))}" if allowed else "")
                )
    return problems


TABLE = parse_layers(DESIGN.read_text())
MODULES = load_modules(PACKAGE)


def test_design_table_parses() -> None:
    assert TABLE["cli"] == TABLE["master"] == 4
    assert TABLE["smtpd"] == TABLE["cleanup"] == TABLE["qmgr"] == TABLE["delivery"] == 3
    assert TABLE["queue"] == TABLE["tls"] == TABLE["log"] == TABLE["fsutil"] == 2
    assert TABLE["smtp"] == TABLE["config"] == TABLE["logfmt"] == 1
    # parenthesised sub-module lists are not components
    assert "session" not in TABLE and "engine" not in TABLE


def test_not_in_table_does_not_contradict_design() -> None:
    clash = {k: (v, TABLE[k]) for k, v in NOT_IN_TABLE.items() if k in TABLE}
    assert not clash, f"now in docs/design.md, drop from NOT_IN_TABLE: {clash}"


@pytest.mark.parametrize("mod", MODULES, ids=lambda m: m.relname or "postwall")
def test_module_respects_layers(mod: Module) -> None:
    problems = violations(mod, TABLE)
    assert not problems, "\n".join(problems)


# The checker must be able to fail: run it on a small synthetic package.


def fake_package(tmp_path: Path, files: dict[str, str]) -> list[Module]:
    root = tmp_path / "postwall"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return load_modules(root)


def all_violations(mods: list[Module]) -> list[str]:
    return [p for m in mods for p in violations(m, TABLE)]


def test_checker_flags_upward_and_impure_imports(tmp_path: Path) -> None:
    mods = fake_package(
        tmp_path,
        {
            "__init__.py": "",
            "smtp/__init__.py": "",
            "smtp/server.py": "from ..queue import store\nimport asyncio\n",
            "queue/__init__.py": "",
            "queue/store.py": "from postwall import cli\nfrom postwall.config import load\n",
            "config/params.py": "import socket\nS = socket.socket()\n",
            "cli.py": "from .smtpd import session\nfrom postwall import logfmt\n",
            "mystery.py": "",
        },
    )
    found = "\n".join(all_violations(mods))
    assert "layer 1 (smtp.server) imports layer 2 (postwall.queue)" in found
    assert "smtp/server.py:2: layer-1 module imports asyncio" in found
    assert "layer 2 (queue.store) imports layer 4 (postwall)" in found
    assert "config/params.py:1: layer-1 module imports socket and uses ['socket']" in found
    assert "component 'mystery' has no layer" in found
    assert "cli.py" not in found  # downward imports are fine
    assert "postwall.config" not in found


def test_checker_accepts_allowed_attribute(tmp_path: Path) -> None:
    mods = fake_package(tmp_path, {"config/params.py": "import socket\nH = socket.gethostname()\n"})
    assert all_violations(mods) == []
