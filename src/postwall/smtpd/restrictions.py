"""smtpd access restrictions: Postfix's restriction lists, evaluated per stage.

Who calls it: the smtpd session, at each command, with what it knows of the client.
What it guarantees: each list is evaluated left to right and stops at the first
PERMIT or reject, exactly as Postfix's smtpd_check.c; the recipient stage runs
smtpd_relay_restrictions, then smtpd_recipient_restrictions, then the implicit
local recipient check (smtpd_reject_unlisted_recipient).  Restrictions that are
not implemented yet make start-up fail with a clear "not supported" error instead
of being silently ignored, because an ignored restriction can open a relay.

With smtpd_delay_reject = yes (the default) client, HELO and sender restrictions
are evaluated at RCPT time, so their rejections are reported against RCPT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from postwall.config.network import Networks
from postwall.config.params import Params
from postwall.resolve import AddressClass, AddressResolver
from postwall.smtp.replies import Reply, printable


class Stage(Enum):
    CONNECT = "CONNECT"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    END_OF_MESSAGE = "END-OF-MESSAGE"


class NotSupported(ValueError):
    """A restriction name postwall recognises but does not implement yet."""


@dataclass(slots=True)
class ClientState:
    """What the restrictions may look at; the session keeps it up to date."""

    name: str
    addr: str
    helo: str | None = None
    sender: str | None = None
    sasl_username: str | None = None
    tls_trusted_cert: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class _Permit:
    pass


PERMIT = _Permit()
Verdict = Reply | _Permit | None  # None: DUNNO, go on


# A check sees the client, the stage's argument and how a reject names it,
# e.g. ("<a@b>", "Sender address").
Check = Callable[[ClientState, str | None, tuple[str, str]], Verdict]


@dataclass(frozen=True, slots=True)
class Rejection:
    stage: Stage
    reply: Reply


class Restrictions:
    """The restriction lists of one smtpd service, compiled once at start-up."""

    def __init__(
        self,
        params: Params,
        resolver: AddressResolver,
        networks: Networks,
    ) -> None:
        self._resolver = resolver
        self._networks = networks
        self._unlisted = params.smtpd_reject_unlisted_recipient
        self._unknown_code = params.unknown_local_recipient_reject_code
        self._relay_code = params.relay_domains_reject_code
        self.delay_reject = params.smtpd_delay_reject
        self.client = self._compile("smtpd_client_restrictions", params.smtpd_client_restrictions)
        self.helo = self._compile("smtpd_helo_restrictions", params.smtpd_helo_restrictions)
        self.sender = self._compile("smtpd_sender_restrictions", params.smtpd_sender_restrictions)
        self.relay = self._compile("smtpd_relay_restrictions", params.smtpd_relay_restrictions)
        self.recipient = self._compile(
            "smtpd_recipient_restrictions", params.smtpd_recipient_restrictions
        )
        self.data = self._compile("smtpd_data_restrictions", params.smtpd_data_restrictions)
        if not params.smtpd_relay_restrictions and not any(
            name in _RELAY_GUARDS for name in params.smtpd_recipient_restrictions
        ):
            # Postfix refuses to start the same way: without one of these, anyone relays.
            raise ValueError(
                "smtpd_relay_restrictions is empty and smtpd_recipient_restrictions has no "
                "reject_unauth_destination or defer_unauth_destination: this would be an open relay"
            )

    # -- compilation -------------------------------------------------------

    def _compile(self, list_name: str, names: Sequence[str]) -> list[Check]:
        checks: list[Check] = []
        for name in names:
            factory = _CHECKS.get(name.lower())
            if factory is None:
                raise NotSupported(f"{list_name}: restriction {name!r} is not supported")
            checks.append(factory(self))
        return checks

    # -- evaluation --------------------------------------------------------

    @staticmethod
    def _run(
        checks: list[Check], client: ClientState, arg: str | None, what: tuple[str, str]
    ) -> Verdict:
        for check in checks:
            verdict = check(client, arg, what)
            if verdict is not None:
                return verdict
        return None

    def check_connect(self, client: ClientState) -> Reply | None:
        if self.delay_reject:
            return None
        return _as_reject(self._run(self.client, client, None, _client_what(client)))

    def check_helo(self, client: ClientState) -> Reply | None:
        if self.delay_reject:
            return None
        return _as_reject(self._run(self.helo, client, client.helo, _helo_what(client)))

    def check_mail(self, client: ClientState) -> Reply | None:
        if self.delay_reject:
            return None
        return _as_reject(self._run(self.sender, client, client.sender, _sender_what(client)))

    def check_rcpt(self, client: ClientState, recipient: str) -> Reply | None:
        if self.delay_reject:
            for checks, arg, what in (
                (self.client, None, _client_what(client)),
                (self.helo, client.helo, _helo_what(client)),
                (self.sender, client.sender, _sender_what(client)),
            ):
                reply = _as_reject(self._run(checks, client, arg, what))
                if reply is not None:
                    return reply
        what = (f"<{recipient}>", "Recipient address")
        for checks in (self.relay, self.recipient):
            reply = _as_reject(self._run(checks, client, recipient, what))
            if reply is not None:
                return reply
        if self._unlisted:
            return self._unlisted_recipient(recipient)
        return None

    def check_vrfy(self, address: str) -> Reply | None:
        """VRFY gets the same local recipient check as RCPT (smtpd_reject_unlisted_recipient)."""
        return self._unlisted_recipient(address) if self._unlisted else None

    def check_data(self, client: ClientState) -> Reply | None:
        return _as_reject(self._run(self.data, client, None, ("<DATA>", "Data command")))

    # -- the individual restrictions ---------------------------------------

    def _unlisted_recipient(self, recipient: str) -> Reply | None:
        if self._resolver.classify(recipient) is not AddressClass.LOCAL:
            return None
        if self._resolver.is_known_local(recipient):
            return None
        code = self._unknown_code
        return Reply(
            code,
            _status(code, "1.1"),
            f"<{printable(recipient)}>: Recipient address rejected: "
            "User unknown in local recipient table",
        )

    def _unauth_destination(self, code: int, recipient: str | None) -> Verdict:
        if recipient is None:
            return None
        if self._resolver.classify(recipient) is not AddressClass.REMOTE:
            return None
        return Reply(code, _status(code, "7.1"), f"<{printable(recipient)}>: Relay access denied")

    def in_mynetworks(self, client: ClientState) -> bool:
        return self._networks.match(client.addr)


def _client_what(client: ClientState) -> tuple[str, str]:
    return (f"<{client.name}[{client.addr}]>", "Client host")


def _helo_what(client: ClientState) -> tuple[str, str]:
    return (f"<{client.helo or ''}>", "Helo command")


def _sender_what(client: ClientState) -> tuple[str, str]:
    return (f"<{client.sender or ''}>", "Sender address")


def _status(code: int, detail: str) -> str:
    return f"{str(code)[0]}.{detail}"


def _as_reject(verdict: Verdict) -> Reply | None:
    return verdict if isinstance(verdict, Reply) else None


def _permit_mynetworks(r: Restrictions) -> Check:
    return lambda client, _arg, _what: PERMIT if r.in_mynetworks(client) else None


def _permit_sasl(r: Restrictions) -> Check:
    return lambda client, _arg, _what: PERMIT if client.sasl_username else None


def _permit_tls_clientcerts(r: Restrictions) -> Check:
    return lambda client, _arg, _what: PERMIT if client.tls_trusted_cert else None


def _reject_unauth(r: Restrictions) -> Check:
    return lambda _client, rcpt, _what: r._unauth_destination(r._relay_code, rcpt)


def _defer_unauth(r: Restrictions) -> Check:
    # Postfix: as reject_unauth_destination with the code's first digit made 4 (454).
    return lambda _client, rcpt, _what: r._unauth_destination(r._relay_code - 100, rcpt)


def _permit(r: Restrictions) -> Check:
    return lambda _client, _arg, _what: PERMIT


def _generic(code: int) -> Callable[[Restrictions], Check]:
    def factory(r: Restrictions) -> Check:
        def check(_client: ClientState, _arg: str | None, what: tuple[str, str]) -> Verdict:
            shown, label = what
            text = f"{printable(shown)}: {label} rejected: Access denied"
            return Reply(code, _status(code, "7.1"), text)

        return check

    return factory


_CHECKS: dict[str, Callable[[Restrictions], Check]] = {
    "permit_mynetworks": _permit_mynetworks,
    "permit_sasl_authenticated": _permit_sasl,
    "permit_tls_clientcerts": _permit_tls_clientcerts,
    "reject_unauth_destination": _reject_unauth,
    "defer_unauth_destination": _defer_unauth,
    "permit": _permit,
    "reject": _generic(554),
    "defer": _generic(450),
}
_RELAY_GUARDS = {"reject_unauth_destination", "defer_unauth_destination", "reject", "defer"}
