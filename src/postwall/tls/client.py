"""Outbound SMTP client TLS policy: smtp_tls_* parameters turned into pyOpenSSL contexts.

Contract: `client_tls(settings_or_params) -> ClientTLS` validates the client parameters at
load and raises `policy.TLSConfigError` naming the parameter; `ClientTLS.new_session(peer,
nexthop=, mx_hostname=, level=, session=)` returns a client-side engine `TLSSession`.
Levels none/may/encrypt/verify/secure (legacy smtp_use_tls=yes -> may, smtp_enforce_tls=yes
-> encrypt); dane and fingerprint are not supported and say so. The TLSSession never aborts
on a bad server certificate: `info.trust` is Untrusted / Trusted / Verified (chain and name
matched) and the smtp client decides, as Postfix's smtp does per security level.
Caller: the smtp delivery agent (delivery/smtp.py) and tools.
"""

from __future__ import annotations

from dataclasses import dataclass

from OpenSSL import SSL

from postwall.tls.engine import LogFn, TLSSession
from postwall.tls.policy import (
    DEFAULT_CIPHERLISTS,
    TLSConfigError,
    _apply_ciphers,
    _apply_protocols,
    _from_params,
    _level_lists,
    _load_cert_key,
    _validate_digest,
    cipher_list,
    load_verify,
)


@dataclass(frozen=True)
class ClientTLSSettings:
    """The smtp-client TLS parameters, named as in Postfix, with Postfix 3.7 defaults."""

    smtp_tls_security_level: str = ""
    smtp_use_tls: bool = False
    smtp_enforce_tls: bool = False
    smtp_tls_wrappermode: bool = False
    smtp_tls_cert_file: str = ""
    smtp_tls_key_file: str = ""
    smtp_tls_CAfile: str = ""
    smtp_tls_CApath: str = ""
    smtp_tls_protocols: str = ">=TLSv1"
    smtp_tls_mandatory_protocols: str = ">=TLSv1"
    smtp_tls_ciphers: str = "medium"
    smtp_tls_mandatory_ciphers: str = "medium"
    smtp_tls_exclude_ciphers: tuple[str, ...] = ()
    smtp_tls_mandatory_exclude_ciphers: tuple[str, ...] = ()
    smtp_tls_fingerprint_digest: str = "sha256"
    smtp_tls_loglevel: int = 0
    smtp_tls_scert_verifydepth: int = 9
    smtp_tls_verify_cert_match: tuple[str, ...] = ("hostname",)
    smtp_tls_secure_cert_match: tuple[str, ...] = ("nexthop", "dot-nexthop")
    smtp_tls_servername: str = ""
    tls_high_cipherlist: str = DEFAULT_CIPHERLISTS["high"]
    tls_medium_cipherlist: str = DEFAULT_CIPHERLISTS["medium"]
    tls_low_cipherlist: str = DEFAULT_CIPHERLISTS["low"]
    tls_export_cipherlist: str = DEFAULT_CIPHERLISTS["export"]
    tls_null_cipherlist: str = DEFAULT_CIPHERLISTS["null"]

    @classmethod
    def from_params(cls, params: object) -> ClientTLSSettings:
        return _from_params(cls, params)

    @property
    def level(self) -> str:
        level = self.smtp_tls_security_level.strip().lower()
        if level:
            return level
        if self.smtp_enforce_tls:
            return "encrypt"
        return "may" if self.smtp_use_tls else "none"


class ClientTLS:
    """The outbound SMTP client's TLS: one context per security level, built on demand.

    Postfix's smtp client appends "eNULL" to the cipher exclusions at may/encrypt and
    "aNULL" at verify/secure (observed with posttls-finger -L 2: `TLS cipher list
    "...:!eNULL"` / `"...:!aNULL"`); mandatory protocols/ciphers apply from encrypt up.
    """

    LEVELS = ("none", "may", "encrypt", "verify", "secure")

    def __init__(self, settings: ClientTLSSettings) -> None:
        self.settings = settings
        self.warnings: list[str] = []
        self.level = self._check_level(settings.level)
        self.fingerprint_digest = _validate_digest(
            "smtp_tls_fingerprint_digest", settings.smtp_tls_fingerprint_digest
        )
        self.cipher_lists: dict[str, str] = {}
        self._contexts: dict[str, SSL.Context] = {}
        if self.level != "none":
            self.context_for(self.level)  # fail at load, not at the first delivery

    @classmethod
    def from_params(cls, params: object) -> ClientTLS:
        return cls(ClientTLSSettings.from_params(params))

    def _check_level(self, level: str) -> str:
        if level in ("dane", "dane-only", "fingerprint"):
            raise TLSConfigError(
                "smtp_tls_security_level", f'security level "{level}" is not supported'
            )
        if level not in self.LEVELS:
            raise TLSConfigError(
                "smtp_tls_security_level",
                f'invalid security level "{level}" (supported: none, may, encrypt, verify, secure)',
            )
        return level

    def context_for(self, level: str) -> SSL.Context:
        ctx = self._contexts.get(level)
        if ctx is None:
            ctx = self._contexts[level] = self._build(self._check_level(level))
        return ctx

    def _build(self, level: str) -> SSL.Context:
        s = self.settings
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        if s.smtp_tls_cert_file:
            w = _load_cert_key(
                ctx,
                "smtp_tls_cert_file",
                s.smtp_tls_cert_file,
                "smtp_tls_key_file",
                s.smtp_tls_key_file or s.smtp_tls_cert_file,
                "RSA",
            )
            self.warnings += [x for x in w if x not in self.warnings]
        if s.smtp_tls_CAfile or s.smtp_tls_CApath:
            load_verify(ctx, "smtp_tls_CAfile", s.smtp_tls_CAfile, s.smtp_tls_CApath)
        ctx.set_verify_depth(s.smtp_tls_scert_verifydepth)
        if level != "may":
            pp, gp = "smtp_tls_mandatory_protocols", "smtp_tls_mandatory_ciphers"
            proto, grade = s.smtp_tls_mandatory_protocols, s.smtp_tls_mandatory_ciphers
            excl = s.smtp_tls_mandatory_exclude_ciphers + s.smtp_tls_exclude_ciphers
        else:
            pp, gp = "smtp_tls_protocols", "smtp_tls_ciphers"
            proto, grade = s.smtp_tls_protocols, s.smtp_tls_ciphers
            excl = s.smtp_tls_exclude_ciphers
        excl = (*excl, "aNULL" if level in ("verify", "secure") else "eNULL")
        protocols = _apply_protocols(ctx, pp, proto)
        self.cipher_lists[level] = cipher_list(gp, grade, excl, _level_lists(s))
        # Old protocols (security level 0) only where nothing is verified: a
        # verify/secure certificate check keeps OpenSSL's default level.
        legacy_ok = protocols if level in ("may", "encrypt") else ()
        _apply_ciphers(ctx, gp, self.cipher_lists[level], legacy_ok)
        return ctx

    def match_names(
        self,
        nexthop: str,
        mx_hostname: str,
        level: str | None = None,
        strategies: tuple[str, ...] | None = None,
    ) -> tuple[str, ...]:
        """Names the server certificate must match at verify/secure: smtp_tls_*_cert_match,
        or `strategies` (a policy table's match= attribute) when given."""
        level = level or self.level
        if level not in ("verify", "secure"):
            return ()
        if strategies is None:
            strategies = (
                self.settings.smtp_tls_verify_cert_match
                if level == "verify"
                else self.settings.smtp_tls_secure_cert_match
            )
        names: list[str] = []
        for strategy in strategies:
            if strategy == "hostname":
                names.append(mx_hostname)
            elif strategy == "nexthop":
                names.append(nexthop)
            elif strategy == "dot-nexthop":
                names.append("." + nexthop)
            else:
                names.append(strategy)
        return tuple(n.lower().rstrip(".") for n in names if n)

    def new_session(
        self,
        peer: str,
        *,
        nexthop: str = "",
        mx_hostname: str = "",
        level: str | None = None,
        log: LogFn | None = None,
        session: SSL.Session | None = None,
        match: tuple[str, ...] | None = None,
    ) -> TLSSession:
        """A client-side session; peer is "host[addr]:port" for log lines.

        level overrides smtp_tls_security_level (a policy table's answer); session is
        a previous `TLSSession.get_session()` to offer for resumption.
        """
        level = level or self.level
        if level == "none":
            raise TLSConfigError("smtp_tls_security_level", "TLS is disabled (level none)")
        sni = self.settings.smtp_tls_servername
        if sni == "hostname":
            sni = mx_hostname
        elif sni == "nexthop":
            sni = nexthop
        return TLSSession(
            self.context_for(level),
            server_side=False,
            peer=peer,
            fingerprint_digest=self.fingerprint_digest,
            loglevel=self.settings.smtp_tls_loglevel,
            log=log,
            match_names=self.match_names(nexthop, mx_hostname, level, match),
            server_name=sni or None,
            session=session,
        )


def client_tls(settings: ClientTLSSettings | object) -> ClientTLS:
    if not isinstance(settings, ClientTLSSettings):
        settings = ClientTLSSettings.from_params(settings)
    return ClientTLS(settings)
