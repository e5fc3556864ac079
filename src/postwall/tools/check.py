"""`postwall check`: validate the configuration and the files it points to (`postfix check`).

Contract: loads main.cf and master.cf (every syntax and value problem, with file:line),
then for each smtpd service builds what the server would build at start-up: its TLS
context (certificates, keys, CA file: readable, parseable, key matching; tls.policy),
its lookup tables (alias_maps, local_recipient_maps), networks and restrictions; then
inspects the server certificate for expiry. Prints every problem as `postwall: error:
FILE:LINE: ...` and every soft one as `postwall: warning: ...`; exits 1 when there is
an error, 0 otherwise. Nothing is started and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from postwall.anvil import Anvil
from postwall.cleanup import ChecksError, ContentChecks
from postwall.config import Config, ConfigError, Service, load
from postwall.config import params as P
from postwall.config.network import Networks
from postwall.config.tables import TableError
from postwall.delivery.agents import LocalAgent
from postwall.log import MailLog
from postwall.master import StartupError, build_delivery
from postwall.resolve import AddressResolver
from postwall.sasl.server import SaslServer
from postwall.smtpd.limits import ClientLimits
from postwall.smtpd.restrictions import NotSupported, Restrictions
from postwall.tls import certs
from postwall.tls.policy import ServerTLS, TLSConfigError

from . import add_config_option, config_dir, warn


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="validate main.cf, master.cf and the files they name (postfix check)",
        description="Validate main.cf and master.cf, the certificates, keys and lookup "
        "tables they name; print every problem with file:line; exit 1 on errors.",
    )
    add_config_option(p)
    p.set_defaults(func=cmd_check)


def check(directory: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) for the configuration in `directory`."""
    try:
        config = load(directory)
    except ConfigError as exc:
        return list(exc.problems), []
    errors: list[str] = []
    warnings = list(config.warnings)
    smtpd = [s for s in config.services if s.type == "inet" and s.command == "smtpd"]
    if not smtpd:
        warnings.append(f"{directory / 'master.cf'}: no smtpd inet service: nothing will listen")
    for svc in smtpd:
        _check_service(config, svc, errors, warnings)
    try:
        LocalAgent(config.params, AddressResolver.from_params(config.params))
    except (TableError, ValueError, OSError) as exc:
        errors.append(f"{_table_where(config, None, str(exc))}: {exc}")
    try:  # the delivery agents exactly as start-up builds them (smtp client TLS...)
        build_delivery(config, MailLog())
    except StartupError as exc:
        errors += exc.problems
    except (TableError, ValueError, OSError):
        pass  # the LocalAgent check above said it with a better file:line
    try:
        warnings.extend(ContentChecks(config.params).warnings)
    except ChecksError as exc:  # header_checks, body_checks
        errors.append(f"{_where(config, None, str(exc).partition(':')[0])}: {exc}")
    queue = Path(config.params.queue_directory)
    if not queue.is_dir() and not queue.parent.is_dir():
        errors.append(
            f"{_where(config, None, 'queue_directory')}: queue_directory: "
            f"{queue.parent} does not exist"
        )
    return list(dict.fromkeys(errors)), list(dict.fromkeys(warnings))


def _where(config: Config, svc: Service | None, name: str) -> str:
    """file:line of the setting in force for `name` (a -o override, main.cf, or default)."""
    if svc is not None:
        for o in svc.overrides:
            if o.name == name:
                return o.where
    setting = config.settings.get(name)
    if setting is not None and setting.line:
        return setting.where
    return f"{config.directory / 'main.cf'}: (default {name})"


def _table_where(config: Config, svc: Service | None, message: str) -> str:
    """The setting that names the table in `message` ("type:name: why"), else master.cf."""
    ref = message.split(": ", 1)[0]
    settings = [*(svc.overrides if svc else ()), *config.settings.values()]
    for s in settings:
        if ref in s.value and s.line:
            return f"{s.where}: {s.name}"
    return svc.where if svc else str(config.directory / "main.cf")


def _check_service(config: Config, svc: Service, errors: list[str], warnings: list[str]) -> None:
    params = svc.params
    try:
        tls = ServerTLS.from_params(params)
    except TLSConfigError as exc:
        errors.append(f"{_where(config, svc, exc.parameter)}: {exc} (service {svc.label})")
        tls = None
    if tls is not None:
        for w in tls.warnings:
            param = w.split(":", 1)[0]
            where = _where(config, svc, param) if P.is_known(param) else svc.where
            warnings.append(f"{where}: {w} (service {svc.label})")
        if tls.offered and params.smtpd_tls_cert_file:
            _check_cert(config, svc, errors, warnings)
    try:
        resolver = AddressResolver.from_params(params)
        restrictions = Restrictions(
            params,
            resolver,
            Networks(params.mynetworks),
            classes=config.restriction_classes(svc),
        )
        warnings.extend(restrictions.warnings)  # e.g. a skipped regexp: rule
        if params.smtpd_sasl_auth_enable:
            SaslServer(params)
        ClientLimits(svc.name, params, Anvil())
    except TableError as exc:
        errors.append(f"{_table_where(config, svc, str(exc))}: {exc}")
    except (NotSupported, ValueError, OSError) as exc:
        errors.append(f"{svc.where}: service {svc.label}: {exc}")


def _check_cert(config: Config, svc: Service, errors: list[str], warnings: list[str]) -> None:
    p = svc.params
    try:
        report = certs.inspect(p.smtpd_tls_cert_file, p.smtpd_tls_key_file or None)
    except certs.CertError as exc:
        errors.append(f"{_where(config, svc, 'smtpd_tls_cert_file')}: {exc}")
        return
    where = _where(config, svc, "smtpd_tls_cert_file")
    for problem in report.problems:
        errors.append(f"{where}: smtpd_tls_cert_file: {report.path}: {problem}")


def cmd_check(args: argparse.Namespace) -> int:
    errors, warnings = check(config_dir(args.config_dir))
    for w in warnings:
        warn(w)
    for e in errors:
        print(f"postwall: error: {e}", file=sys.stderr)
    return 1 if errors else 0
