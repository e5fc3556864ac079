"""The one place that words TLS facts for humans: log lines and Received header clauses.

Contract: pure functions of a `TLSInfo` (and a few names); no I/O, no failures for any
TLSInfo the engine produces. The wording is Postfix 3.7.11's, checked byte for byte
against the reference instance (smtpd_tls_loglevel = 2, smtpd_tls_received_header = yes):
- `established()` is tls_log_summary(): "Trusted TLS connection established from
  unknown[127.0.0.1]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)
  key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256";
  for TLS 1.2 it stops after the bits.
- `peer_cert_lines()` are the loglevel-2 lines smtpd writes after the handshake:
  "subject=/CN=..", "issuer=/C=../CN=..", "host[addr]: subject_CN=.., issuer=..,
  fingerprint=.., pkey_fingerprint=.." (the client side says issuer_CN=).
- `received_clauses()` are the header continuation lines smtpd.c adds to Received:
  "\\t(using TLSv1.3 with cipher ... (256/256 bits)", "\\t key-exchange ... server-digest
  SHA256", "\\t client-signature ...)", then the client-certificate clause.
Callers: smtpd (log and Received header via cleanup), the smtp client, the CLI.
"""

from __future__ import annotations

from postwall.tls.engine import TLSInfo


def _kex(info: TLSInfo) -> str:
    if not info.kex_name:
        return ""
    out = f"key-exchange {info.kex_name}"
    if info.kex_curve:
        out += f" ({info.kex_curve})"
    elif info.kex_bits > 0:
        out += f" ({info.kex_bits} bits)"
    return out


def _sig(who: str, name: str, curve: str, bits: int, digest: str) -> str:
    if not name:
        return ""
    out = f"{who}-signature {name}"
    if curve:
        out += f" ({curve})"
    elif bits > 0:
        out += f" ({bits} bits)"
    if digest:
        out += f" {who}-digest {digest}"
    return out


def _server_sig(info: TLSInfo) -> str:
    return _sig(
        "server",
        info.server_sig_name,
        info.server_sig_curve,
        info.server_sig_bits,
        info.server_sig_digest,
    )


def _client_sig(info: TLSInfo) -> str:
    return _sig(
        "client",
        info.client_sig_name,
        info.client_sig_curve,
        info.client_sig_bits,
        info.client_sig_digest,
    )


def established(
    info: TLSInfo, direction: str | None = None, peer: str | None = None, *, reused: bool = False
) -> str:
    """The loglevel-1 summary line (tls_log_summary()).

    Postfix says "established" even for a resumed session; "reused" is only for a
    re-used connection (smtp_tls_connection_reuse), hence the explicit flag.
    """
    if direction is None:
        direction = "from" if info.server_side else "to"
    if direction not in ("from", "to"):
        raise ValueError(f"direction must be 'from' or 'to', not {direction!r}")
    peer = info.peer if peer is None else peer
    line = (
        f"{info.trust} TLS connection {'reused' if reused else 'established'} "
        f"{direction} {peer}: {info.protocol} with cipher {info.cipher_name} "
        f"({info.cipher_usebits}/{info.cipher_algbits} bits)"
    )
    for part in (_kex(info), _server_sig(info), _client_sig(info)):
        if part:
            line += " " + part
    return line


def peer_cert_lines(info: TLSInfo, loglevel: int = 2) -> list[str]:
    """Lines logged about the peer certificate after the handshake (loglevel >= 2)."""
    cert = info.peer_cert
    if cert is None or loglevel < 2:
        return []
    # tls_server.c logs the full names too and says "issuer"; tls_client.c says "issuer_CN".
    if not info.server_side:
        return [
            f"{info.peer}: subject_CN={cert.subject_cn}, issuer_CN={cert.issuer_cn}, "
            f"fingerprint={cert.fingerprint}, pkey_fingerprint={cert.pkey_fingerprint}"
        ]
    return [
        f"subject={cert.subject}",
        f"issuer={cert.issuer}",
        f"{info.peer}: subject_CN={cert.subject_cn}, issuer={cert.issuer_cn}, "
        f"fingerprint={cert.fingerprint}, pkey_fingerprint={cert.pkey_fingerprint}",
    ]


def reuse_line(info: TLSInfo) -> str | None:
    """Postfix's loglevel-2 note for a resumed session (our server always issues tickets;
    tls_client.c does not say how the session came back)."""
    if not info.reused:
        return None
    if not info.server_side:
        return f"{info.peer}: Reusing old session"
    return f"{info.peer}: Reusing old session (RFC 5077 session ticket)"


def after_handshake(info: TLSInfo, loglevel: int) -> list[str]:
    """Every line Postfix 3.7 logs once the handshake is over, in its order."""
    lines: list[str] = []
    if loglevel >= 2:
        reuse = reuse_line(info)
        if reuse:
            lines.append(reuse)
        lines += peer_cert_lines(info, loglevel)
    if loglevel >= 1:
        lines.append(established(info))
    return lines


def cipher_list_line(peer: str, cipher_list: str) -> str:
    return f'{peer}: TLS cipher list "{cipher_list}"'


def setting_up(peer: str, server_side: bool = True) -> str:
    return f"setting up TLS connection {'from' if server_side else 'to'} {peer}"


def received_clauses(info: TLSInfo, ask_ccert: bool) -> list[str]:
    """Received-header continuation lines (each starts with a TAB, no line ending).

    smtpd.c layout: the "(using ..." line; key-exchange starts a new line and the server
    signature follows on it (or starts it); the client signature always starts its own
    line; the last of these lines gets the closing parenthesis. Then one clause about the
    client certificate.
    """
    lines = [
        f"\t(using {info.protocol} with cipher {info.cipher_name} "
        f"({info.cipher_usebits}/{info.cipher_algbits} bits)"
    ]
    kex, ssig, csig = _kex(info), _server_sig(info), _client_sig(info)
    if kex:
        lines.append(f"\t {kex}")
    if ssig:
        if kex:
            lines[-1] += f" {ssig}"
        else:
            lines.append(f"\t {ssig}")
    if csig:
        lines.append(f"\t {csig}")
    lines[-1] += ")"
    cert = info.peer_cert
    if cert is not None:
        verdict = "verified OK" if info.trusted else "not verified"
        lines.append(f'\t(Client CN "{cert.subject_cn}", Issuer "{cert.issuer_cn}" ({verdict}))')
    elif ask_ccert:
        lines.append("\t(Client did not present a certificate)")
    else:
        lines.append("\t(No client certificate requested)")
    return lines
