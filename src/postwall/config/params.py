"""The parameter registry: one typed, frozen field per supported Postfix parameter.

Contract: `Params` is the only description of parameter names, types and defaults in
postwall. Each field's metadata holds `raw` (the default text exactly as Postfix 3.7's
`postconf -d` prints it), `doc` (one line), `kind` (str, int, bool, time, list), the
conversion rules (time unit, integer bounds, list separators) and `verbatim` (a raw
parameter, not `$`-expanded at load time: its user expands it per message).
`convert()` turns an expanded value text into the field's Python value or raises
`ValueError` with a message ready to follow `file:line: name: `. Field defaults are
the effective values of an empty main.cf, evaluated as Postfix does but at
postwall's default compatibility_level 3.7 (Postfix's is 0; see DELIBERATE); where
the raw default is an expression, the effective value is written next to it and a
unit test checks that the expansion engine (maincf.py) agrees. Called by
maincf.py, postconf.py and, through `Config.params`, by every daemon.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from dataclasses import dataclass, field
from typing import Any

# Postfix's CHARS_COMMA_SP: list items split on commas and/or white space.
LIST_SEP = ", \t\r\n"
# TLS protocol and cipher-exclusion lists also accept ':' (tls_protocol_mask(), Postfix).
TLS_SEP = ", \t\r\n:"

_TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_UNSET: Any = object()


SHORT_HOSTNAME = socket.gethostname().lower() or "localhost"
# Postfix: myhostname from gethostname(); a name without a dot gets ".localdomain".
HOSTNAME = SHORT_HOSTNAME if "." in SHORT_HOSTNAME else f"{SHORT_HOSTNAME}.localdomain"
DOMAIN = HOSTNAME.split(".", 1)[1]
# postwall does not enumerate interfaces: mynetworks defaults to the loopback networks.
DEFAULT_MYNETWORKS = "127.0.0.0/8 [::1]/128"
# Defaults that depend on the host; `postconf -d` prints them computed, not as text.
HOST_DEPENDENT = frozenset({"myhostname", "mydomain", "mynetworks"})
# Defaults postwall sets differently from `postconf -d`, on purpose (docs/status.md):
# current (3.7) defaults rather than backwards-compatible ones, its own name, and a
# listen backlog for a single process that holds every connection.
DELIBERATE = frozenset(
    {"compatibility_level", "mail_name", "syslog_name", "smtpd_per_request_deadline"}
)


def split_list(text: str, sep: str = LIST_SEP) -> tuple[str, ...]:
    """Split a Postfix list; a `{ ... }` group stays one item, braces kept (mystrtokq)."""
    items: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if depth == 0 and ch in sep:
            if cur:
                items.append("".join(cur))
                cur = []
            continue
        if ch == "{":
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
        cur.append(ch)
    if cur:
        items.append("".join(cur))
    return tuple(items)


def parse_time(text: str, unit: str) -> float:
    """Postfix conv_time(): digits with an optional s/m/h/d/w suffix; bare means `unit`."""
    m = re.fullmatch(r"(\d+)([smhdw]?)", text.strip())
    if not m:
        raise ValueError(f'invalid time value "{text}"')
    return float(int(m.group(1)) * _TIME_UNITS[m.group(2) or unit])


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low == "yes":
        return True
    if low == "no":
        return False
    raise ValueError(f'invalid boolean value "{text}" (expected yes or no)')


def parse_int(text: str, lo: int | None, hi: int | None) -> int:
    t = text.strip()
    if not re.fullmatch(r"-?\d+", t):
        raise ValueError(f'invalid integer value "{text}"')
    n = int(t)
    if lo is not None and n < lo:
        raise ValueError(f"value {n} out of range (minimum {lo})")
    if hi is not None and n > hi:
        raise ValueError(f"value {n} out of range (maximum {hi})")
    return n


def convert(meta: Any, text: str) -> Any:
    """Convert expanded `text` per a field's metadata; ValueError on bad input."""
    kind = meta["kind"]
    choices = meta["choices"]
    if kind == "str":
        value = text.strip()
        if choices:
            # Keyword values are case-insensitive in Postfix (name_code lookups).
            value = value.lower()
            if value not in choices:
                shown = ", ".join(c or '""' for c in choices)
                raise ValueError(f'invalid value "{text.strip()}" (expected one of: {shown})')
        return value
    if kind == "bool":
        return parse_bool(text)
    if kind == "int":
        return parse_int(text, meta["min"], meta["max"])
    if kind == "time":
        secs = parse_time(text, meta["unit"])
        if meta["min"] is not None and secs < meta["min"]:
            raise ValueError(f'time value "{text.strip()}" below minimum {meta["min"]}s')
        return secs
    items = split_list(text, meta["sep"])
    if choices:
        items = tuple(i.lower() for i in items)
        bad = [i for i in items if i not in choices]
        if bad:
            raise ValueError(f'invalid value "{bad[0]}" (expected: {", ".join(choices)})')
    return items


def _f(
    kind: str,
    raw: str,
    doc: str,
    value: Any,
    *,
    unit: str = "s",
    lo: int | None = None,
    hi: int | None = None,
    sep: str = LIST_SEP,
    postwall: bool = False,
    verbatim: bool = False,
    choices: tuple[str, ...] = (),
) -> Any:
    meta = {
        "kind": kind,
        "raw": raw,
        "doc": doc,
        "unit": unit,
        "min": lo,
        "max": hi,
        "sep": sep,
        "postwall": postwall,
        "verbatim": verbatim,
        "choices": choices,
    }
    if value is _UNSET:
        if "$" in raw and not verbatim:
            raise AssertionError(f"expression default {raw!r} needs an effective value")
        value = convert(meta, raw)
    return field(default=value, metadata=meta)


def _s(raw: str, doc: str, value: Any = _UNSET, **kw: Any) -> Any:
    return _f("str", raw, doc, value, **kw)


def _i(raw: str, doc: str, value: Any = _UNSET, *, lo: int | None = 0, **kw: Any) -> Any:
    return _f("int", raw, doc, value, lo=lo, **kw)


def _b(raw: str, doc: str, value: Any = _UNSET, **kw: Any) -> Any:
    return _f("bool", raw, doc, value, **kw)


def _t(raw: str, doc: str, value: Any = _UNSET, *, unit: str = "s", **kw: Any) -> Any:
    return _f("time", raw, doc, value, unit=unit, **kw)


def _l(raw: str, doc: str, value: Any = _UNSET, **kw: Any) -> Any:
    return _f("list", raw, doc, value, **kw)


_CLIENT_DEFAULT_TLS = "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH"
# Postfix's cipher grades (tls_cipher_grade names).
_GRADES = ("export", "low", "medium", "high", "null")
_CLIENT_LEVELS = (
    "",
    "none",
    "may",
    "encrypt",
    "dane",
    "dane-only",
    "fingerprint",
    "verify",
    "secure",
)


@dataclass(frozen=True)
class Params:
    """Every supported parameter, typed; see the module docstring for the metadata."""

    # --- identity, naming, directories
    myhostname: str = _s("", "Internet host name of this mail system.", HOSTNAME)
    mydomain: str = _s("", "Internet domain name of this mail system.", DOMAIN)
    myorigin: str = _s("$myhostname", "Domain appended to unqualified sender addresses.", HOSTNAME)
    mydestination: tuple[str, ...] = _l(
        "$myhostname, localhost.$mydomain, localhost",
        "Domains delivered locally.",
        (HOSTNAME, f"localhost.{DOMAIN}", "localhost"),
    )
    mynetworks: tuple[str, ...] = _l(
        DEFAULT_MYNETWORKS, "Trusted client networks (postwall default: loopback only)."
    )
    # Effective values below are those of postwall's compatibility_level 3.7.
    mynetworks_style: str = _s(
        "${{$compatibility_level} <level {2} ? {subnet} : {host}}",
        "How mynetworks is computed when not set: host, subnet or class.",
        "host",
    )
    inet_interfaces: tuple[str, ...] = _l("all", "Addresses on which to receive mail.")
    inet_protocols: tuple[str, ...] = _l(
        "all", "IP protocols used: ipv4, ipv6, all.", choices=("all", "ipv4", "ipv6")
    )
    relay_domains: tuple[str, ...] = _l(
        "${{$compatibility_level} <level {2} ? {$mydestination} : {}}",
        "Destination domains this system relays mail to.",
        (),
    )
    relayhost: str = _s("", "Next-hop destination of non-local mail.")
    fast_flush_domains: tuple[str, ...] = _l(
        "$relay_domains", "Destinations a client may ask to flush with ETRN (names).", ()
    )
    transport_maps: tuple[str, ...] = _l("", "Lookup tables: recipient to transport:nexthop.")
    virtual_alias_maps: tuple[str, ...] = _l(
        "$virtual_maps", "virtual(5) tables: address to addresses.", ()
    )
    virtual_alias_domains: tuple[str, ...] = _l(
        "$virtual_alias_maps", "Domains whose every address is a virtual alias.", ()
    )
    sender_dependent_relayhost_maps: tuple[str, ...] = _l(
        "", "Per-sender relayhost: by envelope sender address, then @domain."
    )
    empty_address_relayhost_maps_lookup_key: str = _s(
        "<>", "Key for the null sender in sender_dependent_relayhost_maps."
    )
    relocated_maps: tuple[str, ...] = _l("", "Addresses that moved: new address or text.")
    always_bcc: str = _s("", "Address that gets a copy of every message from outside.")
    sender_bcc_maps: tuple[str, ...] = _l("", "Copy address by envelope sender.")
    recipient_bcc_maps: tuple[str, ...] = _l("", "Copy address by envelope recipient.")
    virtual_alias_expansion_limit: int = _i("1000", "Addresses one recipient may expand to.", lo=1)
    virtual_alias_recursion_limit: int = _i("1000", "Depth of nested virtual aliases.", lo=1)
    propagate_unmatched_extensions: tuple[str, ...] = _l(
        "canonical, virtual", "Where an address extension carries over to the result."
    )
    local_recipient_maps: tuple[str, ...] = _l(
        "proxy:unix:passwd.byname $alias_maps",
        "Tables of valid local recipients.",
        ("proxy:unix:passwd.byname", "hash:/etc/aliases", "nis:mail.aliases"),
    )
    alias_maps: tuple[str, ...] = _l(
        "hash:/etc/aliases, nis:mail.aliases", "Alias tables used by local delivery."
    )
    alias_database: tuple[str, ...] = _l(
        "hash:/etc/aliases", "Alias databases built by newaliases."
    )
    home_mailbox: str = _s("", "Mailbox path relative to home; ending in / means Maildir.")
    mail_spool_directory: str = _s("/var/mail", "Directory of UNIX-style mailboxes.")
    mailbox_size_limit: int = _i("51200000", "Maximal mailbox or maildir file size in bytes.")
    mailbox_delivery_lock: tuple[str, ...] = _l(
        "fcntl, dotlock", "Locks taken on a mailbox file: fcntl, flock, dotlock."
    )
    deliver_lock_attempts: int = _i("20", "Attempts to take a mailbox lock.", lo=1)
    deliver_lock_delay: float = _t("1s", "Time between attempts to take a mailbox lock.", lo=1)
    stale_lock_time: float = _t("500s", "Age after which a mailbox dot-lock is removed.", lo=1)
    strict_mailbox_ownership: bool = _b(
        "yes", "Defer delivery to a mailbox file not owned by its recipient."
    )
    recipient_delimiter: str = _s("", "Separators between user name and address extension.")
    queue_directory: str = _s("/var/spool/postfix", "Root of the mail queue.")
    data_directory: str = _s("/var/lib/postfix", "Directory for writable data (caches).")
    config_directory: str = _s("/etc/postfix", "Directory holding main.cf and master.cf.")
    command_directory: str = _s("/usr/sbin", "Location of the administrative commands.")
    daemon_directory: str = _s("/usr/lib/postfix/sbin", "Location of the daemon programs.")
    meta_directory: str = _s("/etc/postfix", "Location of non-executable support files.")
    shlib_directory: str = _s("/usr/lib/postfix", "Location of shared libraries.")
    sendmail_path: str = _s("/usr/sbin/sendmail", "Full path of the sendmail command.")
    newaliases_path: str = _s("/usr/bin/newaliases", "Full path of the newaliases command.")
    mailq_path: str = _s("/usr/bin/mailq", "Full path of the mailq command.")
    setgid_group: str = _s("postdrop", "Group of the mail submission programs.")
    mail_owner: str = _s("postfix", "Owner of the queue and most daemon processes.")
    mail_name: str = _s("postwall", "Mail system name in banners and bounces.")
    mail_version: str = _s("3.7.11", "Postfix version whose behaviour postwall follows.")
    multi_instance_name: str = _s("", "Optional instance name, used in syslog_name.")
    syslog_name: str = _s(
        "${multi_instance_name?{$multi_instance_name}:{postfix-postwall}}",
        "Prefix of mail log program names (postwall: a Postfix multi-instance style name).",
        "postfix-postwall",
    )
    maillog_file: str = _s("", "Log file written instead of syslog when set.")
    compatibility_level: str = _s(
        "3.7", "Backwards-compatibility level for defaults (postwall 3.7, Postfix 0)."
    )
    stress: str = _s("", "Set to yes by master when the service is overloaded.")
    biff: bool = _b("yes", "Notify local biff service on delivery.")
    append_dot_mydomain: bool = _b(
        "${{$compatibility_level} <level {1} ? {yes} : {no}}",
        "Append .$mydomain to user@host addresses.",
        False,
    )
    readme_directory: str = _s("/usr/share/doc/postfix", "Location of README files.")
    soft_bounce: bool = _b("no", "Turn hard rejects and bounces into soft ones.")
    notify_classes: tuple[str, ...] = _l("resource, software", "Problems reported to postmaster.")
    bounce_notice_recipient: str = _s("postmaster", "Recipient of bounce notices.")
    bounce_size_limit: int = _i("50000", "Largest original message returned in full in a bounce.")
    error_notice_recipient: str = _s("postmaster", "Recipient of error notices.")
    delay_notice_recipient: str = _s("postmaster", "Recipient of delay notices.")
    double_bounce_sender: str = _s("double-bounce", "Sender of double-bounce notices.")
    empty_address_recipient: str = _s("MAILER-DAEMON", "Recipient of mail to <>.")
    default_database_type: str = _s("hash", "Default lookup table type.")
    smtputf8_enable: bool = _b(
        "${{$compatibility_level} <level {1} ? {no} : {yes}}",
        "Enable SMTPUTF8 support.",
        True,
    )
    hopcount_limit: int = _i("50", "Maximal number of Received: headers.", lo=1)
    header_size_limit: int = _i("102400", "Maximal size of one message header.", lo=1)
    max_idle: float = _t("100s", "Time an idle daemon waits for a new request.", lo=1)
    max_use: int = _i("100", "Requests a daemon serves before exiting.", lo=1)
    daemon_timeout: float = _t("18000s", "Time a daemon may spend on one request.", lo=1)
    ipc_timeout: float = _t("3600s", "Time limit for internal communication.", lo=1)
    in_flow_delay: float = _t("1s", "Time to pause before accepting a new message.")

    # --- smtpd: protocol, limits, restrictions
    smtpd_banner: str = _s(
        "$myhostname ESMTP $mail_name",
        "Text after the 220 code in the greeting.",
        f"{HOSTNAME} ESMTP postwall",
    )
    smtpd_client_restrictions: tuple[str, ...] = _l("", "Restrictions at connect time.")
    smtpd_helo_restrictions: tuple[str, ...] = _l("", "Restrictions on HELO/EHLO.")
    smtpd_sender_restrictions: tuple[str, ...] = _l("", "Restrictions on MAIL FROM.")
    smtpd_recipient_restrictions: tuple[str, ...] = _l("", "Restrictions on RCPT TO.")
    smtpd_relay_restrictions: tuple[str, ...] = _l(
        "${{$compatibility_level} <level {1} ? {} : "
        "{permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination}}",
        "Relay-control restrictions on RCPT TO, before smtpd_recipient_restrictions.",
        ("permit_mynetworks", "permit_sasl_authenticated", "defer_unauth_destination"),
    )
    smtpd_data_restrictions: tuple[str, ...] = _l("", "Restrictions on DATA.")
    smtpd_end_of_data_restrictions: tuple[str, ...] = _l("", "Restrictions after end of data.")
    smtpd_etrn_restrictions: tuple[str, ...] = _l("", "Restrictions on ETRN.")
    smtpd_restriction_classes: tuple[str, ...] = _l("", "User-defined restriction class names.")
    smtpd_delay_reject: bool = _b("yes", "Delay client/helo/sender rejects until RCPT TO.")
    smtpd_helo_required: bool = _b("no", "Require HELO or EHLO before MAIL FROM.")
    strict_rfc821_envelopes: bool = _b("no", "Require <> around MAIL FROM/RCPT TO addresses.")
    smtpd_reject_unlisted_recipient: bool = _b("yes", "Reject unknown recipients.")
    smtpd_reject_unlisted_sender: bool = _b("no", "Reject unknown sender addresses.")
    unknown_local_recipient_reject_code: int = _i("550", "Code for unknown local recipients.")
    unknown_relay_recipient_reject_code: int = _i("550", "Code for unknown relay recipients.")
    unknown_virtual_alias_reject_code: int = _i("550", "Code for unknown virtual aliases.")
    relay_recipient_maps: tuple[str, ...] = _l("", "Valid recipients in relay_domains.")
    relay_domains_reject_code: int = _i("554", "Code for relay access denied.", lo=400, hi=599)
    access_map_reject_code: int = _i("554", "Code for REJECT in access(5) tables.")
    access_map_defer_code: int = _i("450", "Code for DEFER in access(5) tables.")
    reject_code: int = _i("554", "Code for the reject restriction.")
    defer_code: int = _i("450", "Code for the defer restriction.")
    unknown_address_reject_code: int = _i("450", "Code for unknown sender/recipient domains.")
    unknown_hostname_reject_code: int = _i("450", "Code for reject_unknown_helo_hostname.")
    unknown_client_reject_code: int = _i(
        "450", "Code for reject_unknown_client_hostname and reject_unknown_reverse_client_hostname."
    )
    maps_rbl_reject_code: int = _i("554", "Code ($rbl_code) for a listed DNS deny-list entry.")
    # Raw (Postfix expands it per reply, with the $rbl_* names): kept unexpanded.
    default_rbl_reply: str = _s(
        "$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using $rbl_domain"
        "${rbl_reason?; $rbl_reason}",
        "Reply template for the reject_rbl_* and reject_rhsbl_* restrictions.",
        verbatim=True,
    )
    rbl_reply_maps: tuple[str, ...] = _l("", "Tables: DNS list argument to a reply template.")
    smtpd_expansion_filter: str = _s(
        "\\t\\40!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\\\]^_`"
        "abcdefghijklmnopqrstuvwxyz{|}~",
        "Characters allowed in $name values of smtpd reply templates (others become _).",
        verbatim=True,
    )
    invalid_hostname_reject_code: int = _i("501", "Code for reject_invalid_helo_hostname.")
    non_fqdn_reject_code: int = _i("504", "Code for the reject_non_fqdn_* restrictions.")
    plaintext_reject_code: int = _i("450", "Code for reject_plaintext_session.")
    multi_recipient_bounce_reject_code: int = _i("550", "Code for reject_multi_recipient_bounce.")
    reject_tempfail_action: str = _s(
        "defer_if_permit",
        "Action when a reject-type restriction fails temporarily.",
        choices=("defer", "defer_if_permit"),
    )
    unknown_address_tempfail_action: str = _s(
        "$reject_tempfail_action",
        "Action when reject_unknown_*_domain fails temporarily.",
        "defer_if_permit",
        choices=("defer", "defer_if_permit"),
    )
    unknown_helo_hostname_tempfail_action: str = _s(
        "$reject_tempfail_action",
        "Action when reject_unknown_helo_hostname fails temporarily.",
        "defer_if_permit",
        choices=("defer", "defer_if_permit"),
    )
    smtpd_sender_login_maps: tuple[str, ...] = _l("", "Tables: sender address to owning logins.")
    smtpd_null_access_lookup_key: str = _s("<>", "Access table key for the null sender.")
    parent_domain_matches_subdomains: tuple[str, ...] = _l(
        "debug_peer_list,fast_flush_domains,mynetworks,permit_mx_backup_networks,"
        "qmqpd_authorized_clients,relay_domains,smtpd_access_maps",
        "Features where a parent domain also matches its subdomains.",
    )
    allow_untrusted_routing: bool = _b("no", "Relay source-routed mail from untrusted clients.")
    allow_percent_hack: bool = _b("yes", "Rewrite user%domain@here to user@domain.")
    swap_bangpath: bool = _b("yes", "Rewrite site!user@here to user@site.")
    show_user_unknown_table_name: bool = _b("yes", "Name the table in user unknown replies.")
    smtpd_relay_before_recipient_restrictions: bool = _b(
        "${{$compatibility_level} <level {3.6} ? {no} : {yes}}",
        "Evaluate smtpd_relay_restrictions before smtpd_recipient_restrictions.",
        True,
    )
    smtpd_timeout: float = _t(
        "${stress?{10}:{300}}s", "Time limit for client requests and replies.", 300.0, lo=1
    )
    smtpd_recipient_limit: int = _i("1000", "Recipients accepted per message.", lo=1)
    smtpd_listen_backlog: int = _i(
        "4096",
        "postwall only: listen(2) backlog of inet services (Postfix has no parameter).",
        lo=1,
        postwall=True,
    )
    smtpd_hard_error_limit: int = _i(
        "${stress?{1}:{20}}", "Errors after which the session is closed.", 20, lo=1
    )
    smtpd_soft_error_limit: int = _i("10", "Errors after which replies are delayed.")
    smtpd_junk_command_limit: int = _i(
        "${stress?{1}:{100}}",
        "NOOP/VRFY/ETRN/RSET/HELO/EHLO before they count as errors.",
        100,
        lo=1,
    )
    smtpd_starttls_timeout: float = _t(
        "${stress?{10}:{300}}s", "Time limit for the TLS handshake.", 300.0, lo=1
    )
    # postwall: deadlines on by default, so a client trickling bytes cannot hold a session.
    smtpd_per_request_deadline: bool = _b(
        "${smtpd_per_record_deadline?{$smtpd_per_record_deadline}:{yes}}",
        "smtpd_timeout and smtpd_starttls_timeout bound a whole request, not one read.",
        True,
    )
    smtpd_min_data_rate: int = _i(
        "500", "DATA/BDAT bytes per second that extend the deadline.", lo=1
    )
    smtpd_error_sleep_time: float = _t("1s", "Delay before replying after an error.")
    smtpd_forbid_bare_newline: str = _s(
        "no",
        "Bare LF handling: no, normalize (yes is an alias), reject.",
        choices=("no", "normalize", "yes", "reject"),
    )
    smtpd_forbid_bare_newline_reject_code: int = _i(
        "550", "Code for bare LF rejects.", lo=400, hi=599
    )
    smtpd_forbid_bare_newline_exclusions: tuple[str, ...] = _l(
        "$mynetworks",
        "Clients exempt from smtpd_forbid_bare_newline.",
        tuple(DEFAULT_MYNETWORKS.split()),
    )
    smtpd_forbid_unauth_pipelining: bool = _b("no", "Disconnect clients that pipeline early.")
    smtpd_peername_lookup: bool = _b("yes", "Look up the client's host name.")
    postwall_client_name_cache_time: float = _t(
        "10s",
        "postwall only: how long a client's name (PTR and forward check) is remembered "
        "for its next connections; never longer than the DNS TTL, never a temporary "
        "failure; 0: look up every connection, as Postfix.",
        postwall=True,
    )
    smtpd_client_port_logging: bool = _b("no", "Log the client port with its address.")
    smtpd_reject_footer: str = _s("", "Text appended to 4xx/5xx replies.")
    message_size_limit: int = _i("10240000", "Maximal message size in bytes (0: none).")
    queue_minfree: int = _i("0", "Queue file system space (bytes) below which smtpd refuses MAIL.")
    line_length_limit: int = _i("2048", "Lines longer than this are broken up.", lo=1)
    disable_vrfy_command: bool = _b("no", "Disable the VRFY command.")
    smtpd_discard_ehlo_keywords: tuple[str, ...] = _l("", "EHLO keywords not announced.")
    always_add_missing_headers: bool = _b("no", "Add missing From:/To:/Date:/Message-ID:.")
    header_checks: tuple[str, ...] = _l("", "cleanup: tables for message header lines.")
    mime_header_checks: tuple[str, ...] = _l(
        "$header_checks", "cleanup: tables for MIME headers (Content-*, MIME-Version).", ()
    )
    nested_header_checks: tuple[str, ...] = _l(
        "$header_checks", "cleanup: tables for the headers of attached messages.", ()
    )
    body_checks: tuple[str, ...] = _l("", "cleanup: tables for message body lines.")
    body_checks_size_limit: int = _i("51200", "Body bytes per MIME part body_checks inspect.")
    local_header_rewrite_clients: tuple[str, ...] = _l(
        "permit_inet_interfaces", "Clients whose headers get local rewriting."
    )

    # --- smtpd: SASL
    smtpd_sasl_auth_enable: bool = _b("no", "Offer SMTP AUTH.")
    smtpd_sasl_type: str = _s("cyrus", "SASL plug-in type.")
    smtpd_sasl_path: str = _s("smtpd", "SASL plug-in configuration name or socket.")
    smtpd_sasl_security_options: tuple[str, ...] = _l("noanonymous", "SASL mechanism filter.")
    smtpd_sasl_tls_security_options: tuple[str, ...] = _l(
        "$smtpd_sasl_security_options", "SASL mechanism filter over TLS.", ("noanonymous",)
    )
    smtpd_sasl_local_domain: str = _s("", "SASL authentication realm.")
    smtpd_sasl_authenticated_header: bool = _b("no", "Report the SASL user in Received:.")
    smtpd_sasl_exceptions_networks: tuple[str, ...] = _l("", "Clients not offered AUTH.")
    smtpd_sasl_service: str = _s("smtp", "SASL service name.")
    smtpd_sasl_response_limit: int = _i("12288", "Maximal SASL response length.", lo=1)
    broken_sasl_auth_clients: bool = _b("no", "Also announce AUTH=mechs (Outlook Express 4).")

    # --- smtpd: policy delegation (check_policy_service) and permit_mx_backup
    smtpd_policy_service_timeout: float = _t("100s", "Policy request time limit.", lo=1)
    smtpd_policy_service_max_idle: float = _t("300s", "Idle policy connection lifetime.", lo=1)
    smtpd_policy_service_max_ttl: float = _t("1000s", "Policy connection lifetime.", lo=1)
    smtpd_policy_service_request_limit: int = _i("0", "Requests per policy connection (0: any).")
    smtpd_policy_service_default_action: str = _s(
        "451 4.3.5 Server configuration problem", "Action when the policy server fails."
    )
    smtpd_policy_service_try_limit: int = _i("2", "Attempts per policy request.", lo=1)
    smtpd_policy_service_retry_delay: float = _t("1s", "Delay between policy attempts.", lo=1)
    smtpd_policy_service_policy_context: str = _s("", "policy_context sent with each request.")
    permit_mx_backup_networks: tuple[str, ...] = _l("", "Networks of the primary MX hosts.")
    proxy_interfaces: tuple[str, ...] = _l("", "Proxy or NAT addresses of this host.")

    # --- smtpd: client rate limits (anvil)
    smtpd_client_connection_count_limit: int = _i("50", "Simultaneous connections per client.")
    smtpd_client_connection_rate_limit: int = _i("0", "Connections per client per time unit.")
    smtpd_client_message_rate_limit: int = _i("0", "Messages per client per time unit.")
    smtpd_client_recipient_rate_limit: int = _i("0", "Recipients per client per time unit.")
    smtpd_client_new_tls_session_rate_limit: int = _i("0", "New TLS sessions per time unit.")
    smtpd_client_auth_rate_limit: int = _i("0", "AUTH requests per client per time unit.")
    anvil_rate_time_unit: float = _t("60s", "Time unit of the client rate limits.", lo=1)
    anvil_status_update_time: float = _t("600s", "Interval of anvil's statistics lines.", lo=1)
    # smtpd_client_connection_limit_exceptions is unset, so this falls back to $mynetworks.
    smtpd_client_event_limit_exceptions: tuple[str, ...] = _l(
        "${smtpd_client_connection_limit_exceptions:$mynetworks}",
        "Clients exempt from the rate and count limits.",
        tuple(DEFAULT_MYNETWORKS.split()),
    )
    relay_clientcerts: tuple[str, ...] = _l("", "Client certificate fingerprints allowed to relay.")

    # --- smtpd: TLS
    smtpd_tls_security_level: str = _s(
        "", "SMTP server TLS level: none, may, encrypt.", choices=("", "none", "may", "encrypt")
    )
    smtpd_use_tls: bool = _b("no", "Obsolete: offer STARTTLS (level may).")
    smtpd_enforce_tls: bool = _b("no", "Obsolete: require STARTTLS (level encrypt).")
    smtpd_tls_auth_only: bool = _b("no", "Offer AUTH only after STARTTLS.")
    smtpd_tls_cert_file: str = _s("", "Server RSA certificate file (PEM).")
    smtpd_tls_key_file: str = _s("$smtpd_tls_cert_file", "Server RSA private key file.", "")
    smtpd_tls_dcert_file: str = _s("", "Server DSA certificate file (PEM).")
    smtpd_tls_dkey_file: str = _s("$smtpd_tls_dcert_file", "Server DSA private key file.", "")
    smtpd_tls_eccert_file: str = _s("", "Server ECDSA certificate file (PEM).")
    smtpd_tls_eckey_file: str = _s("$smtpd_tls_eccert_file", "Server ECDSA private key.", "")
    smtpd_tls_chain_files: tuple[str, ...] = _l("", "Files of keys and certificate chains.")
    smtpd_tls_CAfile: str = _s("", "CA certificates for client certificate verification.")
    smtpd_tls_CApath: str = _s("", "Directory of CA certificates.")
    smtpd_tls_loglevel: int = _i("0", "SMTP server TLS logging level (0-4).")
    smtpd_tls_received_header: bool = _b("no", "Record TLS details in Received:.")
    smtpd_tls_session_cache_timeout: float = _t("3600s", "Lifetime of cached TLS sessions.")
    smtpd_tls_session_cache_database: str = _s("", "Server TLS session cache table.")
    smtpd_tls_always_issue_session_ids: bool = _b("yes", "Issue session ids without a cache.")
    smtpd_tls_ask_ccert: bool = _b("no", "Ask the client for a certificate.")
    smtpd_tls_req_ccert: bool = _b("no", "Require a client certificate (level encrypt).")
    smtpd_tls_ccert_verifydepth: int = _i("9", "Verification depth of client certificates.")
    smtpd_tls_wrappermode: bool = _b("no", "TLS from the first byte (port 465).")
    smtpd_tls_fingerprint_digest: str = _s(
        "${{$compatibility_level} <level {3.6} ? {md5} : {sha256}}",
        "Digest of certificate fingerprints.",
        "sha256",
    )
    smtpd_tls_protocols: tuple[str, ...] = _l(
        ">=TLSv1", "TLS protocols with opportunistic TLS.", sep=TLS_SEP
    )
    smtpd_tls_mandatory_protocols: tuple[str, ...] = _l(
        ">=TLSv1", "TLS protocols with mandatory TLS.", sep=TLS_SEP
    )
    smtpd_tls_ciphers: str = _s("medium", "Cipher grade with opportunistic TLS.", choices=_GRADES)
    smtpd_tls_mandatory_ciphers: str = _s(
        "medium", "Cipher grade with mandatory TLS.", choices=_GRADES
    )
    smtpd_tls_exclude_ciphers: tuple[str, ...] = _l(
        "", "Ciphers excluded with any TLS.", sep=TLS_SEP
    )
    smtpd_tls_mandatory_exclude_ciphers: tuple[str, ...] = _l(
        "", "Ciphers excluded with mandatory TLS.", sep=TLS_SEP
    )
    smtpd_tls_eecdh_grade: str = _s(
        "auto", "ECDHE curve selection.", choices=("auto", "strong", "ultra", "none")
    )
    smtpd_tls_dh1024_param_file: str = _s("", "File of DH parameters.")
    tls_random_source: str = _s("dev:/dev/urandom", "Source of entropy for the TLS library.")
    tls_high_cipherlist: str = _s("aNULL:-aNULL:HIGH:@STRENGTH", "OpenSSL list for 'high'.")
    tls_medium_cipherlist: str = _s(_CLIENT_DEFAULT_TLS, "OpenSSL list for 'medium'.")
    tls_low_cipherlist: str = _s(
        "aNULL:-aNULL:HIGH:MEDIUM:LOW:+RC4:@STRENGTH", "OpenSSL list for 'low'."
    )
    tls_export_cipherlist: str = _s(
        "aNULL:-aNULL:HIGH:MEDIUM:LOW:EXPORT:+RC4:@STRENGTH", "OpenSSL list for 'export'."
    )
    tls_null_cipherlist: str = _s("eNULL:!aNULL", "OpenSSL list for 'null'.")
    tls_preempt_cipherlist: bool = _b("no", "Server cipher order takes precedence.")
    tls_eecdh_strong_curve: str = _s("prime256v1", "Curve of the 'strong' ECDHE grade.")
    tls_eecdh_ultra_curve: str = _s("secp384r1", "Curve of the 'ultra' ECDHE grade.")
    tls_ssl_options: tuple[str, ...] = _l("", "Extra OpenSSL options by name.")
    tls_daemon_random_bytes: int = _i("32", "Random bytes a daemon seeds with.", lo=1)

    # --- queue manager
    queue_run_delay: float = _t("300s", "Interval between deferred queue scans.", lo=1)
    minimal_backoff_time: float = _t("300s", "Minimal retry delay of deferred mail.", lo=1)
    maximal_backoff_time: float = _t("4000s", "Maximal retry delay of deferred mail.", lo=1)
    maximal_queue_lifetime: float = _t(
        "5d", "Age after which deferred mail bounces.", unit="d", lo=0
    )
    bounce_queue_lifetime: float = _t("5d", "Lifetime of undeliverable bounces.", unit="d", lo=0)
    delay_warning_time: float = _t("0h", "Delay before a warning (0: none).", unit="h")
    default_destination_concurrency_limit: int = _i("20", "Parallel deliveries per site.")
    initial_destination_concurrency: int = _i("5", "Initial parallel deliveries per site.", lo=1)
    default_destination_recipient_limit: int = _i("50", "Recipients per delivery.")
    default_process_limit: int = _i("100", "Default maxproc of master.cf services.", lo=1)
    qmgr_message_active_limit: int = _i("20000", "Messages in the active queue.", lo=1)
    qmgr_message_recipient_limit: int = _i("20000", "Recipients held in memory.", lo=1)

    # --- transports and local delivery
    default_transport: str = _s("smtp", "Transport for non-local destinations.")
    relay_transport: str = _s("relay", "Transport for relay_domains.")
    local_transport: str = _s(
        "local:$myhostname", "Transport for local destinations.", f"local:{HOSTNAME}"
    )
    local_destination_concurrency_limit: int = _i("2", "Parallel local deliveries per user.")
    local_destination_recipient_limit: int = _i("1", "Recipients per local delivery.")
    smtp_destination_concurrency_limit: int = _i(
        "$default_destination_concurrency_limit", "Parallel SMTP deliveries per site.", 20
    )
    smtp_destination_recipient_limit: int = _i(
        "$default_destination_recipient_limit", "Recipients per SMTP delivery.", 50
    )
    # Raw parameters (Postfix local(8) raw_table): local delivery expands them per recipient.
    forward_path: tuple[str, ...] = _l(
        "$home/.forward${recipient_delimiter}${extension}, $home/.forward",
        "Forward files searched by local delivery (kept unexpanded).",
        verbatim=True,
    )
    allow_mail_to_commands: tuple[str, ...] = _l("alias, forward", "Where |command is allowed.")
    allow_mail_to_files: tuple[str, ...] = _l("alias, forward", "Where /file is allowed.")
    luser_relay: str = _s(
        "", "Destination of mail to unknown users (kept unexpanded).", verbatim=True
    )
    mailbox_command: str = _s(
        "", "Command delivering to a mailbox (kept unexpanded).", verbatim=True
    )
    mailbox_command_maps: tuple[str, ...] = _l(
        "", "Per-user mailbox commands (looked up by user name), before mailbox_command."
    )
    local_command_shell: str = _s("", "Shell for local(8) commands; empty: /bin/sh only if needed.")
    command_time_limit: float = _t("1000s", "Time limit of a local(8) command delivery.", lo=1)
    command_execution_directory: str = _s(
        "", "Working directory of local(8) commands (kept unexpanded).", verbatim=True
    )
    command_expansion_filter: str = _s(
        "1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "Characters allowed in a command's environment values; others become _.",
    )
    execution_directory_expansion_filter: str = _s(
        "1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "Characters allowed in command_execution_directory expansions.",
    )
    export_environment: tuple[str, ...] = _l(
        "TZ MAIL_CONFIG LANG", "Environment names passed on to delivery commands."
    )
    import_environment: tuple[str, ...] = _l(
        "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ XAUTHORITY DISPLAY LANG=C POSTLOG_SERVICE "
        "POSTLOG_HOSTNAME",
        "Environment names (and NAME=value) Postfix's daemons start with.",
    )
    default_privs: str = _s("nobody", "Rights of commands and files run for root or aliases.")
    mailbox_transport: str = _s("", "Transport for mailbox delivery.")
    fallback_transport: str = _s("", "Transport for recipients not in passwd.")
    owner_request_special: bool = _b("yes", "Treat owner-x and x-request specially.")
    expand_owner_alias: bool = _b("no", "Use owner-x aliases as envelope sender.")
    content_filter: str = _s("", "Transport:nexthop of an after-queue content filter.")
    receive_override_options: tuple[str, ...] = _l("", "Per-service receive options.")

    # --- smtp client
    smtp_use_tls: bool = _b("no", "Obsolete: use TLS when offered (level may).")
    smtp_enforce_tls: bool = _b("no", "Obsolete: require TLS (level encrypt).")
    smtp_tls_security_level: str = _s(
        "",
        "SMTP client TLS level.",
        choices=_CLIENT_LEVELS,
    )
    smtp_tls_note_starttls_offer: bool = _b("no", "Log hosts that offer STARTTLS.")
    smtp_tls_loglevel: int = _i("0", "SMTP client TLS logging level (0-4).")
    smtp_tls_CAfile: str = _s("", "CA certificates for server verification.")
    smtp_tls_CApath: str = _s("", "Directory of CA certificates.")
    smtp_tls_cert_file: str = _s("", "Client certificate file (PEM).")
    smtp_tls_key_file: str = _s("$smtp_tls_cert_file", "Client private key file.", "")
    smtp_tls_chain_files: tuple[str, ...] = _l("", "Client key and certificate chain files.")
    smtp_tls_protocols: tuple[str, ...] = _l(
        ">=TLSv1", "TLS protocols with opportunistic TLS.", sep=TLS_SEP
    )
    smtp_tls_mandatory_protocols: tuple[str, ...] = _l(
        ">=TLSv1", "TLS protocols with mandatory TLS.", sep=TLS_SEP
    )
    smtp_tls_ciphers: str = _s("medium", "Cipher grade with opportunistic TLS.", choices=_GRADES)
    smtp_tls_mandatory_ciphers: str = _s(
        "medium", "Cipher grade with mandatory TLS.", choices=_GRADES
    )
    smtp_tls_exclude_ciphers: tuple[str, ...] = _l(
        "", "Ciphers excluded with any TLS.", sep=TLS_SEP
    )
    smtp_tls_mandatory_exclude_ciphers: tuple[str, ...] = _l(
        "", "Ciphers excluded with mandatory TLS.", sep=TLS_SEP
    )
    smtp_tls_policy_maps: tuple[str, ...] = _l("", "Per-destination TLS policy tables.")
    smtp_tls_session_cache_database: str = _s("", "Client TLS session cache table.")
    smtp_tls_session_cache_timeout: float = _t("3600s", "Lifetime of cached client sessions.")
    smtp_tls_fingerprint_digest: str = _s(
        "${{$compatibility_level} <level {3.6} ? {md5} : {sha256}}",
        "Digest of certificate fingerprints.",
        "sha256",
    )
    smtp_tls_verify_cert_match: tuple[str, ...] = _l("hostname", "Names matched at 'verify'.")
    smtp_tls_secure_cert_match: tuple[str, ...] = _l(
        "nexthop, dot-nexthop", "Names matched at 'secure'."
    )
    smtp_tls_wrappermode: bool = _b("no", "TLS from the first byte.")
    smtp_tls_servername: str = _s("", "SNI name sent to servers.")
    smtp_connect_timeout: float = _t("30s", "Time limit for connecting.")
    smtp_helo_timeout: float = _t("300s", "Time limit for the greeting and HELO reply.", lo=1)
    smtp_mail_timeout: float = _t("300s", "Time limit for the MAIL FROM reply.", lo=1)
    smtp_rcpt_timeout: float = _t("300s", "Time limit for the RCPT TO reply.", lo=1)
    smtp_data_init_timeout: float = _t("120s", "Time limit for the DATA reply.", lo=1)
    smtp_data_xfer_timeout: float = _t("180s", "Time limit for sending content.", lo=1)
    smtp_data_done_timeout: float = _t("600s", "Time limit for the end-of-data reply.", lo=1)
    smtp_quit_timeout: float = _t("300s", "Time limit for the QUIT reply.", lo=1)
    smtp_starttls_timeout: float = _t("300s", "Time limit for the TLS handshake.", lo=1)
    smtp_connection_cache_on_demand: bool = _b("yes", "Cache connections under load.")
    smtp_connection_cache_time_limit: float = _t("2s", "Lifetime of a cached connection.", lo=1)
    smtp_connection_reuse_time_limit: float = _t(
        "300s", "Time after which a connection is no longer reused.", lo=1
    )
    smtp_connection_reuse_count_limit: int = _i("0", "Transactions per connection (0: any).")
    smtp_tls_connection_reuse: bool = _b("no", "Reuse TLS connections (postwall always may).")
    smtp_rset_timeout: float = _t("20s", "Time limit for the RSET reply.", lo=1)
    smtp_mx_address_limit: int = _i("5", "Addresses tried per delivery (0: any).")
    smtp_mx_session_limit: int = _i("2", "Sessions tried per delivery (0: any).")
    smtp_host_lookup: tuple[str, ...] = _l(
        "dns", "Lookup mechanisms: dns, native.", choices=("dns", "native")
    )
    postwall_dns_servers: tuple[str, ...] = _l(
        "",
        "postwall only: name servers (address[:port]) for MX, restriction and client-name "
        "lookups; empty: /etc/resolv.conf (client names: libc).",
        postwall=True,
    )
    smtp_helo_name: str = _s("$myhostname", "Name sent in EHLO/HELO.", HOSTNAME)
    smtp_skip_5xx_greeting: bool = _b("yes", "Try the next MX after a 5xx greeting.")
    smtp_always_send_ehlo: bool = _b("yes", "Always send EHLO.")
    smtp_line_length_limit: int = _i("998", "Longer lines are folded.")
    smtp_bind_address: str = _s("", "Local IPv4 address for outgoing connections.")
    smtp_bind_address6: str = _s("", "Local IPv6 address for outgoing connections.")
    smtp_sasl_auth_enable: bool = _b("no", "Authenticate to servers.")
    smtp_sasl_password_maps: tuple[str, ...] = _l(
        "", "user:password per server name or next hop ([host]:port)."
    )
    smtp_sasl_security_options: tuple[str, ...] = _l(
        "noplaintext, noanonymous", "Mechanisms refused without TLS."
    )
    smtp_sasl_tls_security_options: tuple[str, ...] = _l(
        "$smtp_sasl_security_options",
        "Mechanisms refused over TLS.",
        ("noplaintext", "noanonymous"),
    )
    smtp_sasl_tls_verified_security_options: tuple[str, ...] = _l(
        "$smtp_sasl_tls_security_options",
        "Mechanisms refused over TLS with a verified server.",
        ("noplaintext", "noanonymous"),
    )
    smtp_sasl_mechanism_filter: tuple[str, ...] = _l("", "Mechanisms the client may use.")
    smtp_sasl_auth_soft_bounce: bool = _b("yes", "Defer, not bounce, when AUTH is refused.")
    smtp_sasl_type: str = _s("cyrus", "SASL client plug-in (Cyrus's mechanisms, built in).")
    smtp_sasl_path: str = _s("", "SASL client plug-in configuration (unused).")
    smtp_sasl_auth_cache_name: str = _s("", "Table of servers that refused the password.")
    smtp_sasl_auth_cache_time: float = _t("90d", "How long a refusal is remembered.")
    smtp_sender_dependent_authentication: bool = _b("no", "Credentials per sender.")
    smtp_send_dummy_mail_auth: bool = _b("no", "Send AUTH=<> with MAIL FROM.")


FIELDS: dict[str, dataclasses.Field[Any]] = {f.name: f for f in dataclasses.fields(Params)}


def is_known(name: str) -> bool:
    return name in FIELDS


def is_postwall_only(name: str) -> bool:
    """True for parameters Postfix does not have (their doc starts "postwall only")."""
    return bool(FIELDS[name].metadata["postwall"])


def raw_default(name: str) -> str:
    """The default exactly as `postconf -d` prints it (host values computed here)."""
    meta = FIELDS[name].metadata
    if name == "myhostname":
        return HOSTNAME
    if name == "mydomain":
        return DOMAIN
    return str(meta["raw"])


def doc(name: str) -> str:
    return str(FIELDS[name].metadata["doc"])
