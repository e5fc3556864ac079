"""Sans-I/O SMTP protocol core (layer 1): replies, addresses, message readers, server.

Nothing here does I/O. `smtp.server.ServerConnection` is the entry point for
the smtpd glue; `smtp.replies` holds the fixed Postfix replies; `smtp.events`
the event types it produces.
"""
