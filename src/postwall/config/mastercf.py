"""master.cf: one `Service` per service line, Postfix master(5) syntax.

Contract: `parse_master_cf(text, filename)` never raises; it returns the services in file
order, every problem as `file:line: service/type: message`, and warnings (a repeated
name/type replaces the earlier entry, as master(5) says). Lines continue when the
next line starts with white space; comment and blank lines are skipped (as main.cf).
Arguments may be grouped with `{ ... }` (Postfix 3.0): the braces go, the inside is kept
with its spaces, so `-o { name = value }` carries a value with spaces. Only `-o` changes
parameters; other daemon flags (-v, -D, -S, ...) are kept in `Service.flags`, and
arguments after the first non-option stay in `Service.args` (pipe's argv=...). A `-`
field takes Postfix's default: private y, unpriv y, chroot n (Postfix >= 3.0), wakeup 0,
maxproc $default_process_limit (resolved by config.load()). inet service names may be
`port`, `host:port`, `[ipv6]:port`, a service name (smtp, submission, smtps,
submissions, lmtp) or `host:name`; `Service.listen` is (host or None, port).
`Service.params` is filled in by config.load() (main.cf + this service's overrides).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .maincf import Setting, logical_lines
from .params import Params

# The /etc/services entries postwall needs; layer 1 reads no other file.
SERVICE_PORTS = {"smtp": 25, "lmtp": 24, "submission": 587, "smtps": 465, "submissions": 465}
TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")
_FLAGS_WITH_ARG = ("-o", "-t", "-n", "-s", "-c")


@dataclass(frozen=True)
class Service:
    name: str
    type: str
    private: bool
    unpriv: bool
    chroot: bool
    wakeup: int
    wakeup_conditional: bool
    maxproc: int | None  # None: "-", i.e. $default_process_limit
    command: str
    args: tuple[str, ...]
    overrides: tuple[Setting, ...]
    flags: tuple[str, ...]
    listen: tuple[str | None, int] | None
    file: str
    line: int
    params: Params = field(default_factory=Params, repr=False, compare=False)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def filename(self) -> str:
        # Alias of `file`, the name master.py uses.
        return self.file

    @property
    def label(self) -> str:
        return f"{self.name}/{self.type}"


def tokenize(line: str) -> list[str]:
    """Split on white space; a `{ ... }` group is one token without its braces."""
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        if line[i] == "{":
            depth, j = 0, i
            while j < n:
                if line[j] == "{":
                    depth += 1
                elif line[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth:
                raise ValueError(f'missing "}}" in "{line[i:]}"')
            tokens.append(line[i + 1 : j].strip())
            i = j + 1
            continue
        j = i
        while j < n and not line[j].isspace():
            j += 1
        tokens.append(line[i:j])
        i = j
    return tokens


def parse_listen(name: str) -> tuple[str | None, int]:
    """inet service name -> (host or None, port); ValueError when malformed."""
    host: str | None = None
    port = name
    if name.startswith("["):
        end = name.find("]")
        if end < 0 or name[end + 1 : end + 2] != ":":
            raise ValueError(f'bad inet service name "{name}"')
        host, port = name[1:end], name[end + 2 :]
    elif ":" in name:
        host, port = name.rsplit(":", 1)
        if not host:
            raise ValueError(f'bad inet service name "{name}"')
    if port.isdigit():
        num = int(port)
        if not 0 < num < 65536:
            raise ValueError(f'port out of range in "{name}"')
        return host, num
    if port in SERVICE_PORTS:
        return host, SERVICE_PORTS[port]
    raise ValueError(f'unknown service "{port}" in "{name}"')


def _yes_no(text: str, default: bool, what: str) -> bool:
    if text == "-":
        return default
    if text in ("y", "n"):
        return text == "y"
    raise ValueError(f'bad {what} field value "{text}" (expected y, n or -)')


def _service(tokens: list[str], filename: str, num: int) -> Service:
    name, kind, private, unpriv, chroot, wakeup, maxproc = tokens[:7]
    if kind not in TYPES:
        raise ValueError(f'unknown service type "{kind}"')
    is_private = _yes_no(private, True, "private")
    if kind == "inet" and is_private:
        raise ValueError("inet service cannot be private")
    cond = wakeup.endswith("?") and wakeup not in ("-?", "0?")
    wake = wakeup[:-1] if cond else wakeup
    if wake == "-":
        wake = "0"
    if not wake.isdigit():
        raise ValueError(f'bad wakeup field value "{wakeup}"')
    if maxproc != "-" and not maxproc.isdigit():
        raise ValueError(f'bad maxproc field value "{maxproc}"')
    rest = tokens[8:]
    overrides: list[Setting] = []
    flags: list[str] = []
    i = 0
    while i < len(rest) and rest[i].startswith("-") and len(rest[i]) > 1:
        opt = rest[i]
        if opt[:2] in _FLAGS_WITH_ARG:
            arg = opt[2:]
            if not arg:
                if i + 1 >= len(rest):
                    raise ValueError(f'option "{opt}" requires an argument')
                i += 1
                arg = rest[i]
            if opt[:2] == "-o":
                key, eq, value = arg.partition("=")
                if not eq or not key.strip():
                    raise ValueError(f'-o option requires "name=value", got "{arg}"')
                overrides.append(Setting(key.strip(), value.strip(), filename, num))
            else:
                flags.extend((opt[:2], arg))
        else:
            flags.append(opt)
        i += 1
    return Service(
        name=name,
        type=kind,
        private=is_private,
        unpriv=_yes_no(unpriv, True, "unpriv"),
        chroot=_yes_no(chroot, False, "chroot"),
        wakeup=int(wake),
        wakeup_conditional=cond,
        maxproc=None if maxproc == "-" else int(maxproc),
        command=tokens[7],
        args=tuple(rest[i:]),
        overrides=tuple(overrides),
        flags=tuple(flags),
        listen=parse_listen(name) if kind == "inet" else None,
        file=filename,
        line=num,
    )


def parse_master_cf(text: str, filename: str) -> tuple[list[Service], list[str], list[str]]:
    """(services, problems, warnings); a later service with the same name/type wins."""
    services: list[Service] = []
    problems: list[str] = []
    warnings: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    for num, line in logical_lines(text):
        where = f"{filename}:{num}"
        try:
            tokens = tokenize(line)
        except ValueError as err:
            problems.append(f"{where}: syntax error: {err}")
            continue
        label = "/".join(tokens[:2]) if len(tokens) >= 2 else tokens[0]
        if line[0].isspace():
            problems.append(f"{where}: syntax error: line starts with white space")
            continue
        if len(tokens) < 8:
            problems.append(f"{where}: {label}: expected 8 or more fields, got {len(tokens)}")
            continue
        try:
            svc = _service(tokens, filename, num)
        except ValueError as err:
            problems.append(f"{where}: {label}: {err}")
            continue
        key = (svc.name, svc.type)
        if key in seen:
            # master(5): "only the last one is remembered".
            warnings.append(f"{where}: {svc.label}: overriding earlier entry at line {seen[key]}")
            services = [s for s in services if (s.name, s.type) != key]
        seen[key] = num
        services.append(svc)
    return services, problems, warnings
