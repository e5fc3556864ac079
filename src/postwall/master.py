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
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from postwall import __version__, logfmt
from postwall.cleanup import Cleanup
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
from postwall.delivery.smtp import SmtpAgent
from postwall.log import MailLog
from postwall.qmgr import QueueManager
from postwall.queue import wakeup
from postwall.queue.store import QueueStore
from postwall.resolve import AddressResolver
from postwall.sasl.server import SaslServer
from postwall.smtpd.restrictions import NotSupported, Restrictions
from postwall.smtpd.session import SmtpdService, SmtpSession, core_settings
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


@dataclass
class Runtime:
    """The objects built from one configuration; rebuilt on reload."""

    config: Config
    smtpd: dict[str, SmtpdService] = field(default_factory=dict)


def build_smtpd_services(config: Config, log: MailLog, cleanup: Cleanup) -> dict[str, SmtpdService]:
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
            restrictions = Restrictions(params, resolver, networks)
            sasl = SaslServer(params) if params.smtpd_sasl_auth_enable else None
        except (TLSConfigError, NotSupported, ValueError, OSError) as exc:
            # A restriction problem names its parameter; point at the main.cf line.
            setting = config.settings.get(str(exc).partition(":")[0])
            if setting is not None and all(o.name != setting.name for o in svc.overrides):
                where = f"{setting.file}:{setting.line}"
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
        )
    if problems:
        raise StartupError(problems)
    for service in services.values():
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


def build_delivery(config: Config, log: MailLog) -> Delivery:
    """The delivery agents of main.cf; StartupError naming file:line if one cannot start."""
    params = config.params
    try:
        resolver = AddressResolver.from_params(params)
        local = LocalAgent(params, resolver)
        smtp = SmtpAgent(params, log)
    except TLSConfigError as exc:
        setting = config.settings.get(exc.parameter)
        where = setting.where if setting else f"{config.params.config_directory}/main.cf"
        raise StartupError([f"{where}: {exc}"]) from None
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
        self.cleanup = Cleanup(params, self.store, self.log, on_commit=self.qmgr.wake)
        self.qmgr.attach_cleanup(self.cleanup)
        services = build_smtpd_services(config, self.log, self.cleanup)
        if not services:
            raise StartupError([f"{self.config_dir}/master.cf: no smtpd inet service to run"])
        await self._listen(config, services)
        self._write_pid(params)
        self.log.info("master", logfmt.master_started(__version__, str(self.config_dir)))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        # postqueue -f / -i: look at the queue now instead of at the next periodic scan.
        loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(self.qmgr.flush()))
        # sendmail's "look at incoming/ now" (Postfix's public/qmgr); only a hint.
        try:
            wake_sock = wakeup.listen(params.queue_directory, self.qmgr.wake)
        except OSError as exc:
            wake_sock = None
            self.log.warning("master", f"wake-up socket {params.queue_directory}: {exc}")
        qmgr_task = loop.create_task(self.qmgr.run())
        self.ready.set()
        await self.stop_event.wait()
        self.log.info("master", logfmt.master_terminating(signal.SIGTERM))
        if wake_sock is not None:
            wakeup.close(wake_sock, params.queue_directory)
        await self._shutdown(qmgr_task)
        with contextlib.suppress(OSError):
            (Path(params.data_directory) / PID_FILE).unlink()
        self.log.close()

    async def _listen(self, config: Config, services: dict[str, SmtpdService]) -> None:
        loop = asyncio.get_running_loop()
        problems = []
        for svc in config.services:
            if svc.name not in services:
                continue
            host, port = svc.listen
            try:
                listener = _Listener(svc, None, services[svc.name])  # type: ignore[arg-type]
                listener.server = await loop.create_server(
                    lambda lst=listener: SmtpSession(lst.current),
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

    def _write_pid(self, params: Params) -> None:
        data_dir = Path(params.data_directory)
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / PID_FILE).write_text(f"{os.getpid()}\n")

    # -- reload and stop -------------------------------------------------------

    async def reload(self) -> None:
        try:
            config = self.load()
            services = build_smtpd_services(config, self.log, self.cleanup)
            delivery = build_delivery(config, self.log)
        except StartupError as exc:
            for problem in exc.problems:
                self.log.warning(
                    "master", f"reload failed, keeping the old configuration: {problem}"
                )
            return
        self.log.reopen()
        for name, listener in self.listeners.items():
            if name in services:
                # New sessions get the new settings; open sessions keep theirs.
                listener.current = services[name]
        old, self.delivery = self.delivery, delivery
        self.qmgr.reconfigure(
            config.params, delivery.resolver, delivery.agents, delivery.sync_agents
        )
        await old.smtp.close()
        self.log.info("master", logfmt.master_reload(__version__, str(self.config_dir)))

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
        await self.qmgr.stop()
        await self.delivery.smtp.close()
        qmgr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await qmgr_task
        self.store.close()


def run_foreground(config_dir: Path) -> int:
    """Run until stopped; the exit status of `postwall start`."""
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
