"""master: start, reload and stop a postwall server, as Postfix's master(8).

Who calls it: `postwall start` (cli).  One process runs every service on one
asyncio loop: the smtpd listeners named in master.cf, cleanup, the queue manager
and the delivery agents.  Blocking disk work (fsync, Maildir writes) runs in
threads, so a slow disk never stalls the sessions.

Guarantees: configuration errors are reported all at once, before anything
listens; SIGHUP re-reads main.cf, master.cf and the certificates and applies them
to new sessions without dropping open ones (a bad new configuration is logged and
the old one stays in force); SIGTERM/SIGINT stop accepting, let the sessions and
deliveries in progress finish for a few seconds, then exit.  Whatever was answered
250 is already on disk, so even SIGKILL loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postwall import __version__, fsutil, logfmt
from postwall.anvil import Anvil
from postwall.cleanup import ChecksError, Cleanup, ContentChecks, EnvelopeRouting
from postwall.config import Config, ConfigError, Service, load
from postwall.config.network import Networks
from postwall.config.params import Params
from postwall.delivery.agents import (
    Agent,
    LocalAgent,
    SyncAgent,
    discard_agent,
    discard_now,
    error_agent,
    retry_agent,
)
from postwall.delivery.local import DeliveryHelper
from postwall.delivery.smtp import SmtpAgent
from postwall.log import MailLog
from postwall.pickup import PickupServer
from postwall.qmgr import QueueManager
from postwall.queue import wakeup
from postwall.queue.store import QueueStore
from postwall.resolve import AddressResolver
from postwall.sasl.server import SaslServer
from postwall.smtp.sasl import check_security_options
from postwall.smtpd.dnsbl import ClientNames
from postwall.smtpd.limits import AllPortsBusy, ClientLimits
from postwall.smtpd.restrictions import NotSupported, Restrictions
from postwall.smtpd.session import SmtpdService, SmtpSession, core_settings
from postwall.tls import certs as tls_certs
from postwall.tls.policy import ServerTLS, TLSConfigError

PID_FILE = "master.pid"


class StartupError(Exception):
    """Everything that keeps the server from starting, one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class _Listener:
    service: Service
    server: asyncio.Server
    current: SmtpdService
    busy_warned: float = -1e9  # when the process-limit warning was last logged


def _ext_name(service: Service) -> str:
    host, port = service.listen or (None, 0)
    return f"{host}:{port}" if host else str(port)


@dataclass
class Runtime:
    """The objects built from one configuration; rebuilt on reload."""

    config: Config
    smtpd: dict[str, SmtpdService] = field(default_factory=dict)


def build_smtpd_services(
    config: Config, log: MailLog, cleanup: Cleanup, anvil: Anvil
) -> dict[str, SmtpdService]:
    """One SmtpdService per master.cf `inet ... smtpd` line; every problem reported."""
    services: dict[str, SmtpdService] = {}
    problems: list[str] = []
    for svc in config.services:
        if svc.type != "inet" or svc.command != "smtpd":
            continue
        params = svc.params
        where = f"{svc.filename}:{svc.line}"
        try:
            tls = _server_tls(params)
            resolver = AddressResolver.from_params(params)
            networks = Networks(params.mynetworks)
            classes = config.restriction_classes(svc)
            restrictions = Restrictions(params, resolver, networks, classes=classes)
            sasl = SaslServer(params) if params.smtpd_sasl_auth_enable else None
            limits = ClientLimits(svc.name, params, anvil)
        except (TLSConfigError, NotSupported, ValueError, OSError) as exc:
            # A restriction problem names its parameter; point at the main.cf line.
            setting = config.settings.get(str(exc).partition(":")[0])
            if setting is not None and all(o.name != setting.name for o in svc.overrides):
                where = setting.where
            problems.append(f"{where}: service {svc.name}: {exc}")
            continue
        services[svc.name] = SmtpdService(
            name=svc.name,
            params=params,
            log=log,
            cleanup=cleanup,
            restrictions=restrictions,
            resolver=resolver,
            networks=networks,
            tls=tls,
            settings=core_settings(params, tls),
            sessions=set(),
            sasl=sasl,
            limits=limits,
            names=ClientNames(params.postwall_dns_servers, params.postwall_client_name_cache_time),
            # maxproc "-" is $default_process_limit; 0 means no limit, as in Postfix.
            max_sessions=params.default_process_limit if svc.maxproc is None else svc.maxproc,
        )
    if problems:
        raise StartupError(problems)
    for service in services.values():
        for warning in service.restrictions.warnings:  # e.g. a skipped regexp: rule
            log.warning("smtpd", warning)
        if service.tls is not None:
            # As Postfix's smtpd logs when its TLS engine starts, with what it noticed
            # (a private key readable by others, an unusable setting...).
            log.info("smtpd", f"initializing the server-side TLS engine for {service.name}")
            for warning in service.tls.warnings:
                log.warning("smtpd", f"{service.name}: {warning}")
            if service.tls.seed is not None:
                log.info("smtpd", f"tls_random_source: {service.tls.seed.describe()}")
    return services


@dataclass
class Delivery:
    """The queue manager's view of one configuration: resolver and agents."""

    resolver: AddressResolver
    agents: dict[str, Agent]
    sync_agents: dict[str, SyncAgent]
    smtp: SmtpAgent


def _where(config: Config, parameter: str) -> str:
    """main.cf:line of a parameter's setting (just main.cf for a default)."""
    setting = config.settings.get(parameter)
    return setting.where if setting else f"{config.params.config_directory}/main.cf"


def _checks(config: Config, log: MailLog) -> ContentChecks:
    """header_checks and body_checks for cleanup; StartupError naming the main.cf line."""
    try:
        checks = ContentChecks(config.params)
    except ChecksError as exc:
        raise StartupError([f"{_where(config, str(exc).partition(':')[0])}: {exc}"]) from None
    for warning in checks.warnings:  # e.g. a skipped regexp: rule
        log.warning("cleanup", warning)
    return checks


def _routing(config: Config, resolver: AddressResolver) -> EnvelopeRouting:
    """always_bcc and the BCC tables for cleanup, with the delivery side's resolver
    (its tables already open); StartupError when a table cannot be used."""
    try:
        return EnvelopeRouting.from_params(config.params, resolver)
    except (ValueError, OSError) as exc:  # TableError is a ValueError
        raise StartupError([f"{config.params.config_directory}/main.cf: {exc}"]) from None


def _shown(value: object) -> str:
    return "yes" if value is True else str(value)


def _smtp_sasl_problems(config: Config) -> list[str]:
    """What Postfix's smtp(8) dies of at its first delivery, said at start-up instead."""
    params = config.params
    problems = []
    if not params.smtp_sasl_password_maps:
        problems.append(
            f"{_where(config, 'smtp_sasl_auth_enable')}: specify a password table via the "
            "`smtp_sasl_password_maps' configuration parameter"
        )
    if params.smtp_sasl_type != "cyrus":
        problems.append(
            f"{_where(config, 'smtp_sasl_type')}: unsupported SASL client implementation: "
            f"{params.smtp_sasl_type}"
        )
    for name in (
        "smtp_sasl_security_options",
        "smtp_sasl_tls_security_options",
        "smtp_sasl_tls_verified_security_options",
    ):
        try:
            check_security_options(getattr(params, name))
        except ValueError as exc:
            problems.append(f"{_where(config, name)}: {name}: {exc}")
    return problems


def build_delivery(config: Config, log: MailLog) -> Delivery:
    """The delivery agents of main.cf; StartupError naming file:line if one cannot start."""
    params = config.params
    # Known to postwall but not acted on: mail would silently go another way (past an
    # after-queue content filter, into the mailbox instead of procmail...), so refuse.
    unsupported = [
        (name, text)
        for name, text in (
            ("content_filter", "an after-queue content filter"),
            ("mailbox_transport", "mailbox delivery through another transport"),
            ("fallback_transport", "a transport for recipients not in passwd"),
            ("luser_relay", "a destination for unknown local users"),
        )
        if getattr(params, name)
    ]
    if params.smtp_sasl_auth_enable:
        unsupported += [
            (name, text)
            for name, text in (("smtp_sasl_auth_cache_name", "a cache of refused SASL passwords"),)
            if getattr(params, name)
        ]
    if unsupported:
        raise StartupError(
            [
                f"{_where(config, name)}: {name} = {_shown(getattr(params, name))}: {text} "
                "is not supported yet"
                for name, text in unsupported
            ]
        )
    problems = _smtp_sasl_problems(config) if params.smtp_sasl_auth_enable else []
    if problems:
        raise StartupError(problems)
    try:
        resolver = AddressResolver.from_params(params)
        local = LocalAgent(params, resolver)
        smtp = SmtpAgent(params, log)
    except TLSConfigError as exc:
        raise StartupError([f"{_where(config, exc.parameter)}: {exc}"]) from None
    except (ValueError, OSError) as exc:  # a lookup table that cannot be opened
        raise StartupError([f"{config.params.config_directory}/main.cf: {exc}"]) from None
    return Delivery(
        resolver,
        # "relay" is Postfix's second smtp(8) transport in the stock master.cf.
        {
            "local": local,
            "discard": discard_agent,
            "smtp": smtp,
            "relay": smtp,
            "error": error_agent,
            "retry": retry_agent,
        },
        {"discard": discard_now},
        smtp,
    )


def _check_fd_limit(services: dict[str, SmtpdService], log: MailLog) -> None:
    """Sessions past the open-files limit would fail at accept() (EMFILE) instead of
    getting 421: say so at start-up."""
    import resource

    bounds = [s.max_sessions for s in services.values()]
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or 0 in bounds:
        return
    # Each session holds one descriptor; keep some for the queue, log and helper.
    if sum(bounds) + 256 > soft:
        log.warning(
            "master",
            f"open files limit {soft} is too low for the {sum(bounds)} sessions master.cf"
            " allows (maxproc): raise it (LimitNOFILE) or lower maxproc",
        )


def _mail_owner(params: Params) -> pwd.struct_passwd | None:
    """The account to run as after start-up (None: mail_owner is root, stay root)."""
    try:
        owner = pwd.getpwnam(params.mail_owner)
    except KeyError:
        raise StartupError(
            [
                f"mail_owner = {params.mail_owner}: no such user; create it"
                f" (useradd --system --home-dir {params.queue_directory} --shell"
                f" /usr/sbin/nologin {params.mail_owner}) or set mail_owner"
            ]
        ) from None
    if owner.pw_uid == 0:
        # Postfix refuses this; postwall allows it for a trial layout in root's home
        # (which mail_owner could not reach) and says so in the log.
        return None
    if owner.pw_gid == 0:
        raise StartupError([f"mail_owner = {params.mail_owner}: must not be in group root"])
    return owner


def _server_tls(params: Params) -> ServerTLS | None:
    tls = ServerTLS.from_params(params)
    if not tls.offered and not tls.wrappermode:
        return None
    return tls


class Master:
    def __init__(self, config_dir: Path, *, stderr_log: bool = True) -> None:
        self.config_dir = config_dir
        self.stderr_log = stderr_log
        self.listeners: dict[str, _Listener] = {}
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()

    # -- start-up ------------------------------------------------------------

    def load(self) -> Config:
        try:
            return load(self.config_dir)
        except ConfigError as exc:
            raise StartupError(list(exc.problems)) from None

    async def run(self) -> None:
        config = self.load()
        params = config.params
        try:
            self.log = MailLog.from_params(params, stderr=self.stderr_log)
        except OSError as exc:
            raise StartupError([f"maillog_file = {params.maillog_file}: {exc}"]) from None
        self.log.attach(asyncio.get_running_loop())
        for warning in config.warnings:
            self.log.warning("postwall", warning)
        owner = _mail_owner(params) if os.geteuid() == 0 else None
        if os.geteuid() == 0 and owner is None:
            self.log.warning(
                "master", f"mail_owner = {params.mail_owner}: running as root, no privilege drop"
            )
        self.store = QueueStore(Path(params.queue_directory))
        self.delivery = build_delivery(config, self.log)
        self.qmgr = QueueManager(
            params,
            self.store,
            self.log,
            self.delivery.resolver,
            agents=self.delivery.agents,
            sync_agents=self.delivery.sync_agents,
        )
        self.cleanup = Cleanup(
            params,
            self.store,
            self.log,
            on_commit=self.qmgr.wake,
            checks=_checks(config, self.log),
            resolver=self.delivery.resolver,
        )
        self.qmgr.attach_cleanup(self.cleanup)
        # One anvil for the server's life: counts and rates survive a reload.
        self.anvil = Anvil(params.anvil_rate_time_unit)
        services = build_smtpd_services(config, self.log, self.cleanup, self.anvil)
        if not services:
            raise StartupError([f"{self.config_dir}/master.cf: no smtpd inet service to run"])
        await self._listen(config, services)
        _check_fd_limit(services, self.log)
        self._write_pid(params)
        self.helper: DeliveryHelper | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        if owner is not None:
            self._drop_privileges(params, owner)
        self.log.info("master", logfmt.master_started(__version__, str(self.config_dir)))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        # postqueue -f / -i: look at the queue now instead of at the next periodic scan.
        loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(self.qmgr.flush()))
        # sendmail's "look at incoming/ now" (Postfix's public/qmgr); only a hint.
        try:
            wake_sock = wakeup.listen(params.queue_directory, self.qmgr.wake, self.qmgr.flush_site)
        except OSError as exc:
            wake_sock = None
            self.log.warning("master", f"wake-up socket {params.queue_directory}: {exc}")
        # Local users' sendmail (Postfix's postdrop and pickup): public/pickup.
        self.pickup = PickupServer(params, self.cleanup, self.log)
        try:
            await self.pickup.listen(params.queue_directory)
        except OSError as exc:
            self.log.warning("master", f"submission socket {params.queue_directory}: {exc}")
        qmgr_task = loop.create_task(self.qmgr.run())
        stats_task = loop.create_task(self._anvil_statistics(params.anvil_status_update_time))
        self.ready.set()
        sd_notify("READY=1")
        await self.stop_event.wait()
        sd_notify("STOPPING=1")
        self.log.info("master", logfmt.master_terminating(signal.SIGTERM))
        if wake_sock is not None:
            wakeup.close(wake_sock, params.queue_directory)
        self.pickup.close(params.queue_directory)
        stats_task.cancel()
        await self._shutdown(qmgr_task)
        self._log_anvil_statistics()
        with contextlib.suppress(OSError):
            (Path(params.data_directory) / PID_FILE).unlink()
        if self.helper is not None:
            tls_certs.set_file_reader(None)
            self.log.set_file_opener(None)
            self.helper.stop()
        self.log.close()

    async def _listen(self, config: Config, services: dict[str, SmtpdService]) -> None:
        loop = asyncio.get_running_loop()
        problems = []
        for svc in config.services:
            if svc.name not in services or svc.listen is None:  # inet services only
                continue
            host, port = svc.listen
            try:
                listener = _Listener(svc, None, services[svc.name])  # type: ignore[arg-type]
                listener.server = await loop.create_server(
                    lambda lst=listener: self._new_session(lst),
                    host=host or None,
                    port=port,
                    reuse_address=True,
                    backlog=config.params.smtpd_listen_backlog,
                )
            except OSError as exc:
                problems.append(f"{svc.filename}:{svc.line}: {svc.name}: cannot listen: {exc}")
                continue
            self.listeners[svc.name] = listener
        if problems:
            for lst in self.listeners.values():
                lst.server.close()
            raise StartupError(problems)

    def _drop_privileges(self, params: Params, owner: pwd.struct_passwd) -> None:
        """Started as root: the ports are bound, the private keys and the log file open;
        hand the queue and data directories to mail_owner, start the root delivery
        helper, and become mail_owner for good (Postfix's set_ugid) before any session."""
        self.helper = DeliveryHelper.start(
            home_mailbox=params.home_mailbox,
            mail_spool_directory=params.mail_spool_directory,
            recipient_delimiter=params.recipient_delimiter,
            config_dir=str(self.config_dir),
        )
        # A reload must still read root-only keys: the helper reads what main.cf names.
        tls_certs.set_file_reader(self.helper.read_file)
        self.log.set_file_opener(self.helper.open_log)
        for directory in (params.queue_directory, params.data_directory):
            fsutil.chown_tree(directory, owner.pw_uid, owner.pw_gid)
        os.setgroups([owner.pw_gid])
        os.setgid(owner.pw_gid)
        os.setuid(owner.pw_uid)
        os.umask(0o077)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover - the kernel would have to be broken
            raise StartupError(["privilege drop failed: setuid(0) still works"])
        self.log.info(
            "master",
            f"dropped privileges to mail_owner {owner.pw_name}"
            f" (uid {owner.pw_uid}, gid {owner.pw_gid})",
        )

    def _new_session(self, listener: _Listener) -> SmtpSession | AllPortsBusy:
        """Bound the sessions of a service (master.cf maxproc): the excess is told 421 at
        once and closed, where Postfix's master would leave it waiting in the listen
        queue, and the sessions in progress go on."""
        svc = listener.current
        if svc.max_sessions and len(svc.sessions) >= svc.max_sessions:
            now = time.monotonic()
            if now - listener.busy_warned > 1000:  # as master_spawn.c: not on every client
                listener.busy_warned = now
                name, ext = listener.service.name, _ext_name(listener.service)
                for text in (
                    f'service "{name}" ({ext}) has reached its process limit'
                    f' "{svc.max_sessions}": new clients may experience noticeable delays',
                    "to avoid this condition, increase the process count in master.cf or"
                    " reduce the service time per client",
                    "see http://www.postfix.org/STRESS_README.html for examples of"
                    " stress-adapting configuration settings",
                ):
                    self.log.warning("master", text)
            return AllPortsBusy(svc.log, wrappermode=svc.tls is not None and svc.tls.wrappermode)
        session = SmtpSession(svc)
        # Counted now, not at connection_made: a burst of accepts creates several
        # protocols before the first one is told its connection.
        svc.sessions.add(session)
        return session

    async def _anvil_statistics(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._log_anvil_statistics()

    def _log_anvil_statistics(self) -> None:
        for line in self.anvil.status_lines():
            self.log.info("anvil", line)

    def _write_pid(self, params: Params) -> None:
        data_dir = Path(params.data_directory)
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / PID_FILE).write_text(f"{os.getpid()}\n")

    # -- reload and stop -------------------------------------------------------

    async def reload(self) -> None:
        sd_notify(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        try:
            config = self.load()
            services = build_smtpd_services(config, self.log, self.cleanup, self.anvil)
            delivery = build_delivery(config, self.log)
            checks = _checks(config, self.log)
            routing = _routing(config, delivery.resolver)
        except StartupError as exc:
            for problem in exc.problems:
                self.log.warning(
                    "master", f"reload failed, keeping the old configuration: {problem}"
                )
            sd_notify("READY=1")
            return
        self.log.reopen()
        self.cleanup.checks = checks
        self.cleanup.routing = routing
        self.anvil.time_unit = config.params.anvil_rate_time_unit
        self.pickup.params = config.params
        for name, listener in self.listeners.items():
            if name in services:
                # New sessions get the new settings; open sessions keep theirs, and still
                # count towards the service's bound.
                services[name].sessions = listener.current.sessions
                old_svc, listener.current = listener.current, services[name]
                if old_svc.sasl is not None:
                    task = asyncio.get_running_loop().create_task(self._retire(old_svc))
                    self._retiring.add(task)
                    task.add_done_callback(self._retiring.discard)
        old, self.delivery = self.delivery, delivery
        self.qmgr.reconfigure(
            config.params, delivery.resolver, delivery.agents, delivery.sync_agents
        )
        await old.smtp.close()
        self.log.info("master", logfmt.master_reload(__version__, str(self.config_dir)))
        sd_notify("READY=1")

    @staticmethod
    async def _retire(svc: SmtpdService) -> None:
        """Close a replaced service's SASL backend (its Dovecot connection) once the
        sessions that still use it have ended."""
        while any(session.svc is svc for session in svc.sessions):
            await asyncio.sleep(1)
        if svc.sasl is not None:
            with contextlib.suppress(Exception):
                await svc.sasl.close()

    async def _shutdown(self, qmgr_task: asyncio.Task[None]) -> None:
        for listener in self.listeners.values():
            listener.server.close()
        sessions = {s for lst in self.listeners.values() for s in lst.current.sessions}
        deadline = time.monotonic() + 5
        while sessions and time.monotonic() < deadline:
            sessions = {s for s in sessions if not s.closed}
            await asyncio.sleep(0.05)
        for session in sessions:
            session.abort()
        for task in list(self._retiring):
            task.cancel()
        for listener in self.listeners.values():
            if listener.current.sasl is not None:
                with contextlib.suppress(Exception):
                    await listener.current.sasl.close()
        await self.qmgr.stop()
        await self.delivery.smtp.close()
        qmgr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await qmgr_task
        self.store.close()


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) how we are: READY=1, RELOADING=1, STOPPING=1.  A
    datagram to $NOTIFY_SOCKET (sd_notify(3)); nothing when not run by systemd."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "@/":
        return
    address = "\0" + path[1:] if path[0] == "@" else path
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), address)


def run_foreground(config_dir: Path) -> int:
    """Run until stopped; the exit status of `postwall start`."""
    runner: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # uvloop is optional: it only makes the loop faster
        runner = asyncio.run
    _raise_fd_limit()
    master = Master(config_dir)
    try:
        runner(master.run())
    except StartupError as exc:
        for problem in exc.problems:
            print(f"postwall: fatal: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _raise_fd_limit() -> None:
    """One process holds every connection (Postfix spreads them over processes), so
    take the hard limit on open files rather than the usual soft 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
