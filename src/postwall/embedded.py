"""The embedded default: a ready-to-run configuration for `postwall start`.

Who calls it: the cli, when the configuration directory has no main.cf yet.
What it guarantees: it writes a commented main.cf and master.cf that follow the
how-to's TLS block, a local CA, a server certificate whose CN and subjectAltName
are $myhostname, and a client certificate signed by that CA (keys mode 0600);
it never overwrites an existing file.  The server it describes listens on
127.0.0.1:2525 (and implicit TLS on 127.0.0.1:2465), accepts mail for localhost
and $myhostname and delivers it to Maildirs under the data directory; a submission
port on 127.0.0.1:2587 requires STARTTLS and SMTP AUTH (users in
$config_directory/sasl_passwd, added with `postwall saslpasswd add USER`) and relays
only for authenticated clients.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from postwall.config.params import HOSTNAME
from postwall.tls import certs

SMTP_PORT = 2525
SMTPS_PORT = 2465
SUBMISSION_PORT = 2587


@dataclass(frozen=True)
class Layout:
    config_dir: Path
    data_dir: Path

    @property
    def certs_dir(self) -> Path:
        return self.config_dir / "certs"

    @property
    def main_cf(self) -> Path:
        return self.config_dir / "main.cf"

    @property
    def maildir_root(self) -> Path:
        return self.data_dir / "mail"

    @property
    def maillog(self) -> Path:
        return self.data_dir / "maillog"


def default_layout() -> Layout:
    """XDG locations for the user running postwall."""
    home = Path.home()
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "postwall"
    data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "postwall"
    return Layout(config, data)


def layout_for(config_dir: Path) -> Layout:
    """With `-c DIR`, the data lives in DIR/data."""
    return Layout(config_dir, config_dir / "data")


def default_hostname() -> str:
    # Postfix's rule: gethostname(), with ".localdomain" when it has no dot.
    return HOSTNAME


def initialise(layout: Layout, hostname: str | None = None) -> list[str]:
    """Create whatever is missing; return the paths created, for the user."""
    created: list[str] = []
    hostname = hostname or default_hostname()
    layout.config_dir.mkdir(parents=True, exist_ok=True)
    layout.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.certs_dir.mkdir(exist_ok=True, mode=0o700)
    created += _write_new(layout.main_cf, main_cf_text(layout, hostname))
    created += _write_new(layout.config_dir / "master.cf", MASTER_CF)
    created += _write_new(layout.config_dir / "aliases", ALIASES)
    created += make_certificates(layout.certs_dir, hostname)
    return created


def make_certificates(directory: Path, hostname: str) -> list[str]:
    ca_path = directory / "ca.crt"
    if ca_path.exists():
        return []
    ca = certs.make_ca(f"postwall local CA for {hostname}")
    certs.write_pem(ca, ca_path, directory / "ca.key")
    certs.write_pem(
        certs.make_server_cert(ca, hostname), directory / "smtp.pem", directory / "smtp.key"
    )
    client = certs.make_client_cert(ca, getpass.getuser())
    certs.write_pem(client, directory / "client.pem", directory / "client.key")
    return [
        str(directory / n)
        for n in ("ca.crt", "ca.key", "smtp.pem", "smtp.key", "client.pem", "client.key")
    ]


def _write_new(path: Path, text: str) -> list[str]:
    if path.exists():
        return []
    path.write_text(text)
    return [str(path)]


def main_cf_text(layout: Layout, hostname: str) -> str:
    text = MAIN_CF.format(
        hostname=hostname,
        data=layout.data_dir,
        certs=layout.certs_dir,
    )
    if os.geteuid() == 0:
        text += ROOT_TRIAL
    return text


MAIN_CF = """\
# postwall main.cf -- Postfix syntax: "name = value", "$name" expands, lines that
# start with white space continue the previous one.  `postwall postconf -d` lists
# every parameter with its default; only what differs from it is set here.

# Postfix 3.7 defaults rather than the backwards-compatible ones.
compatibility_level = 3.7
myhostname = {hostname}
mydestination = $myhostname, localhost
# Clients that may relay to any destination (Postfix's default: the loopback networks).
mynetworks = 127.0.0.0/8 [::1]/128

# Where postwall keeps its state.  Maildirs: mail_spool_directory ending in "/"
# means one Maildir per user, <directory>/<user>/{{cur,new,tmp}}.
data_directory = {data}
queue_directory = $data_directory/queue
mail_spool_directory = $data_directory/mail/
maillog_file = $data_directory/maillog
alias_maps = texthash:$config_directory/aliases
local_recipient_maps = unix:passwd.byname $alias_maps

# TLS server options, as in the how-to (STARTTLS, RFC 3207).
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_key_file = {certs}/smtp.key
smtpd_tls_cert_file = {certs}/smtp.pem
smtpd_tls_CAfile = {certs}/ca.crt
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_session_cache_timeout = 3600s
# The how-to's on-disk cache: postwall keeps sessions and tickets in memory only, so
# this is accepted with a warning; resumption works until a restart (docs/status.md).
#smtpd_tls_session_cache_database = btree:$data_directory/smtpd_tls_session_cache
tls_random_source = dev:/dev/urandom
smtpd_tls_ask_ccert = yes
smtpd_tls_req_ccert = no
smtpd_tls_mandatory_protocols = !SSLv2, !SSLv3
smtpd_tls_mandatory_ciphers = high
smtpd_tls_mandatory_exclude_ciphers = aNULL, MD5

# TLS client options (outbound delivery).
smtp_tls_security_level = may
smtp_tls_note_starttls_offer = yes
smtp_tls_loglevel = 1

# SMTP AUTH, turned on for the submission service in master.cf.  Users and their
# scrypt-hashed passwords: `postwall saslpasswd add USER` (no reload needed).
smtpd_sasl_type = postwall
smtpd_sasl_path = sasl_passwd
"""

# Started as root, postwall drops to mail_owner after binding its ports; this trial
# layout lives in root's home, which that account cannot reach.
ROOT_TRIAL = """
# This trial layout is in root's home, out of reach of the unprivileged mail_owner
# (postfix) that postwall runs as after start-up when started as root; so it stays
# root.  For a system service use /etc/postwall and the unit file (docs/admin.md).
mail_owner = root
"""

MASTER_CF = """\
# postwall master.cf -- Postfix syntax.  Only smtpd "inet" services are run by
# postwall's single process; the other columns are accepted and ignored.
# service                type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:2525           inet  n       -       n       -       -       smtpd
# Implicit TLS (as on port 465):
127.0.0.1:2465           inet  n       -       n       -       -       smtpd
  -o smtpd_tls_wrappermode=yes
# Submission (RFC 6409): STARTTLS first, then AUTH; only authenticated clients get in.
127.0.0.1:2587           inet  n       -       n       -       -       smtpd
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
"""

ALIASES = """\
# Aliases in Postfix's aliases(5) format; RFC 5321 requires postmaster.
postmaster: root
"""
