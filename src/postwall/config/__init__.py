"""Configuration layer: main.cf + master.cf -> a typed, validated `Config`.

Contract: `load(config_dir)` reads `config_dir/main.cf` (required) and
`config_dir/master.cf` (optional) and nothing else; it returns a `Config` or raises
`ConfigError` listing every problem as `file:line: name: message` in one pass. Unknown
parameters that nothing refers to become warnings (Postfix: "unused parameter"), as do
Postfix parameters postwall does not implement (ignored) and duplicate definitions (the
later one wins, as in Postfix). `config_directory` is set to
`config_dir`, as `postconf -c DIR` and the daemons started with MAIL_CONFIG do. Each
master.cf service gets its own `Params`: main.cf plus its `-o` overrides, expanded
again so `$name` sees the overrides, with `service_name`/`process_name` defined.
Called by the master process, the daemons and the postconf command.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import params as P
from .maincf import (
    DERIVED,
    ConfigError,
    Expander,
    Setting,
    build_params,
    make_lookup,
    parse_main_cf,
    references,
)
from .mastercf import Service, parse_master_cf
from .network import NetworkError, Networks
from .params import Params, split_list
from .postfix_names import is_postfix_parameter

__all__ = ["Config", "ConfigError", "Params", "Service", "Setting", "default_params", "load"]

_RUNTIME_NAMES = frozenset({"service_name", "process_name", "process_id"})


@dataclass(frozen=True)
class Config:
    directory: Path
    params: Params
    services: list[Service]
    warnings: list[str]
    settings: dict[str, Setting]  # main.cf (and `extra`) settings by name, later wins
    unused: frozenset[str] = frozenset()  # unknown main.cf names nothing refers to
    raw: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw", {n: s.value for n, s in self.settings.items()})

    def params_with(self, overrides: Mapping[str, str]) -> Params:
        """main.cf plus `overrides` (re-expanded); ConfigError on a bad value."""
        merged = dict(self.settings)
        for name, value in overrides.items():
            merged[name] = Setting(name, value.strip(), "(override)", 0)
        result, problems = build_params(merged)
        if problems:
            raise ConfigError(problems)
        return result

    def expand(self, text: str, runtime: Mapping[str, str] | None = None) -> str:
        """Expand `text` against main.cf, as `postconf -x` does."""
        return Expander(make_lookup(self.settings, runtime), DERIVED).expand(text)

    def restriction_classes(self, svc: Service | None = None) -> dict[str, str]:
        """smtpd_restriction_classes: each class name with its definition, a main.cf (or
        the service's -o) parameter of that name, expanded; "" when it has none."""
        params = svc.params if svc is not None else self.params
        overrides = {o.name: o.value for o in svc.overrides} if svc is not None else {}
        out: dict[str, str] = {}
        for name in params.smtpd_restriction_classes:
            raw = overrides.get(name)
            if raw is None:
                setting = self.settings.get(name)
                raw = setting.value if setting is not None else ""
            out[name] = self.expand(raw)
        return out

    def service(self, name: str, type_: str = "inet") -> Service | None:
        return next((s for s in self.services if s.name == name and s.type == type_), None)


def _used_names(settings: Iterable[Setting], services: Iterable[Service]) -> set[str]:
    used: set[str] = set(_RUNTIME_NAMES)
    for s in settings:
        used |= references(s.value)
        if s.name == "smtpd_restriction_classes":  # each class is a parameter of its own
            used.update(split_list(s.value))
    for svc in services:
        for o in svc.overrides:
            used |= references(o.value)
            if o.name == "smtpd_restriction_classes":
                used.update(split_list(o.value))
    return used


def _merge(items: Iterable[Setting], warnings: list[str]) -> dict[str, Setting]:
    merged: dict[str, Setting] = {}
    for s in items:
        if s.name in merged:
            warnings.append(
                f"{s.where}: {s.name}: overriding earlier entry at line {merged[s.name].line}"
            )
        merged[s.name] = s
    return merged


def _check_networks(p: Params, settings: Mapping[str, Setting], problems: list[str]) -> None:
    origin = settings.get("mynetworks")
    try:
        Networks(p.mynetworks)
    except NetworkError as err:
        where = origin.where if origin else "(default)"
        problems.append(f"{where}: mynetworks: {err}")


def load(config_dir: Path, *, extra: Mapping[str, str] | None = None) -> Config:
    config_dir = Path(config_dir)
    main_path = config_dir / "main.cf"
    try:
        text = main_path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as err:
        raise ConfigError([f"{main_path}: cannot open: {err.strerror}"]) from None
    items, problems = parse_main_cf(text, str(main_path))
    warnings: list[str] = []
    settings = _merge(items, warnings)
    settings.setdefault(
        "config_directory", Setting("config_directory", str(config_dir), "(config_dir)", 0)
    )
    for name, value in (extra or {}).items():
        settings[name] = Setting(name, value.strip(), "(extra)", 0)

    services: list[Service] = []
    master_path = config_dir / "master.cf"
    if master_path.exists():
        try:
            mtext = master_path.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as err:
            problems.append(f"{master_path}: cannot open: {err.strerror}")
        else:
            services, mproblems, mwarnings = parse_master_cf(mtext, str(master_path))
            problems += mproblems
            warnings += mwarnings

    main_params, pproblems = build_params(settings)
    problems += pproblems
    if not pproblems:
        _check_networks(main_params, settings, problems)

    used = _used_names(settings.values(), services)
    used |= set(main_params.smtpd_restriction_classes)
    service_names = [svc.name for svc in services]

    def classify(s: Setting) -> bool:
        """Warn about a name postwall does not implement; True when nothing uses it."""
        if P.is_known(s.name):
            return False
        what = _CHANGES_MAIL.get(s.name)
        if what and s.value.strip() and not _REFERENCE.fullmatch(s.value.strip()):
            # Ignored, it would change where mail goes or what it carries: refuse.
            problems.append(f"{s.where}: {s.name} = {s.value}: {what} is not supported yet")
            return False
        if is_postfix_parameter(s.name, service_names):
            warnings.append(f"{s.where}: {s.name}: Postfix parameter not supported by postwall")
            return False
        if s.name in used:
            return False
        warnings.append(f"{s.where}: {s.name}: unused parameter: {s.name}={s.value}")
        return True

    unused = frozenset(s.name for s in settings.values() if classify(s))

    built: list[Service] = []
    for svc in services:
        merged = dict(settings)
        for o in svc.overrides:
            merged[o.name] = o
            classify(o)
        runtime = {"service_name": svc.name, "process_name": svc.command}
        sp, sproblems = build_params(merged, runtime)
        problems += [f"{m} (service {svc.label})" for m in sproblems if m not in pproblems]
        if not sproblems and any(o.name == "mynetworks" for o in svc.overrides):
            _check_networks(sp, merged, problems)
        maxproc = svc.maxproc if svc.maxproc is not None else sp.default_process_limit
        built.append(dataclasses.replace(svc, params=sp, maxproc=maxproc))

    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return Config(config_dir, main_params, built, warnings, settings, unused)


# Postfix parameters postwall does not implement whose absence changes where mail goes or
# what is done to it; set, they stop start-up rather than being ignored with a warning.
_CHANGES_MAIL = {
    "virtual_mailbox_domains": "virtual mailbox delivery",
    "virtual_mailbox_maps": "virtual mailbox delivery",
    "canonical_maps": "canonical address rewriting",
    "sender_canonical_maps": "canonical address rewriting",
    "recipient_canonical_maps": "canonical address rewriting",
    "masquerade_domains": "address masquerading",
    "smtp_generic_maps": "outbound address rewriting",
    "sender_dependent_default_transport_maps": "per-sender transport selection",
    "smtpd_milters": "a milter (mail filter)",
    "non_smtpd_milters": "a milter (mail filter)",
}
_REFERENCE = re.compile(r"\$\{?\w+\}?")  # e.g. virtual_alias_domains = $virtual_alias_maps


def default_params(**raw: str) -> Params:
    """Params from an empty main.cf plus `raw` settings; handy for tests of other layers."""
    settings = {n: Setting(n, v, "(default_params)", 0) for n, v in raw.items()}
    result, problems = build_params(settings)
    if problems:
        raise ConfigError(problems)
    return result
