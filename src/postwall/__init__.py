"""postwall: a Postfix-compatible MTA for SMTP over TLS."""

__version__ = "0.1.0"
