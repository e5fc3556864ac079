"""TLS for postwall (layer 2): the only package that builds TLS contexts.

- `policy`: Postfix smtpd_tls_* parameters -> pyOpenSSL contexts (`server_tls`,
  `ServerTLS`, `ServerTLSSettings`, `TLSConfigError`, `seed_prng`).
- `client`: the same for the outbound client's smtp_tls_* (`client_tls`, `ClientTLS`).
- `engine`: `TLSSession`, a sans-I/O OpenSSL connection over memory BIOs; `TLSInfo`;
  `TLSError`.
- `describe`: Postfix 3.7's wording for TLS log lines and Received header clauses.
- `certs`: CA, server and client certificates with `cryptography`; `inspect`.
Callers: smtpd (STARTTLS, wrapper mode), the smtp client (later), master (reload), CLI.
"""
