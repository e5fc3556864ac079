"""Parsing of MAIL FROM / RCPT TO / VRFY arguments and their ESMTP parameters.

Contract: `parse_mail` and `parse_rcpt` take the command argument text (after
the verb) and return the envelope address plus typed parameters, or raise
`ArgumentError` carrying the exact reply Postfix 3.7 smtpd gives for that
input. They never raise anything else, whatever the input. The address is
returned as the client wrote it with the angle brackets, comments and any
RFC 5321 source route removed; `""` is the null sender. Called by
`smtp.server` only.

Leniency matches Postfix with strict_rfc821_envelopes=no (checked against the
reference): `FROM: <a@b>` (space after the colon), a bare `a@b`, nested or
one-sided brackets (`<<a@b>>`, `a@b>`), comments, quoted local parts, address
literals and source routes are accepted; commas, semicolons, an empty domain
or a malformed domain name are not.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from postwall.smtp import replies
from postwall.smtp.replies import Reply


class ArgumentError(Exception):
    """A command argument was refused; `reply` is what the client gets. `path` is the
    address token to name in Postfix's "Illegal address syntax" warning, None when
    Postfix gives none (no address refused, or a token its tokenizer already rejects:
    an unclosed '<' or quote)."""

    def __init__(
        self,
        reply: Reply,
        path: str | None = None,
        *,
        sender: str | None = None,
        warning: str | None = None,
    ) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.path = path
        self.sender = sender  # a MAIL refusal Postfix logs as a reject line (SIZE)
        self.warning = warning  # a warning Postfix logs with the refusal


def _illegal(reply: Reply, path: str) -> ArgumentError:
    unclosed = (path.startswith("<") and ">" not in path) or path.count('"') % 2
    return ArgumentError(reply, None if unclosed else path)


@dataclass(frozen=True, slots=True)
class MailParams:
    """ESMTP parameters of MAIL FROM (RFC 1870, 6152, 3461, 6531, 4954)."""

    size: int | None = None
    body: str | None = None  # "7BIT" or "8BITMIME"
    smtputf8: bool = False
    ret: str | None = None  # "FULL" or "HDRS"
    envid: str | None = None  # xtext-decoded
    auth: str | None = None  # xtext-decoded; "<>" means "no identity"


@dataclass(frozen=True, slots=True)
class RcptParams:
    """ESMTP parameters of RCPT TO (RFC 3461 4.1, 4.2)."""

    notify: tuple[str, ...] = ()  # ("NEVER",) or some of SUCCESS, FAILURE, DELAY
    orcpt: tuple[str, str] | None = None  # (address type, xtext-decoded address)


def split_args(text: str) -> list[str]:
    """Split on white space, keeping `<...>` and `"..."` groups in one token.

    This is how Postfix's smtpd tokenises a command line, which is why
    `MAIL FROM:<a b@c>` is one (bad) address and not an address plus a parameter.
    """
    if '"' not in text and "\\" not in text:
        # The common case: no quotes or escapes, each <...> group inside one word.
        words = [w for w in _BLANKS.split(text) if w]
        if all("<" not in w or (w.count("<") == 1 and ">" in w[w.index("<") :]) for w in words):
            return words
    return _split_args_general(text)


def _split_args_general(text: str) -> list[str]:
    tokens: list[str] = []
    cur: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\":
            cur.append(ch)
            escaped = True
        elif quoted:
            cur.append(ch)
            quoted = ch != '"'
        elif ch == '"':
            cur.append(ch)
            quoted = True
        elif ch in " \t" and depth == 0:
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            if ch == "<":
                depth += 1
            elif ch == ">" and depth > 0:
                depth -= 1
            cur.append(ch)
    if cur:
        tokens.append("".join(cur))
    return tokens


_SPECIALS = set(",;<>():[] \t")
_BLANKS = re.compile(r"[ \t]+")
_COMMENT_OR_QUOTE = re.compile(r'[()"\\]')
_LABEL = re.compile(
    r"[A-Za-z0-9_\x80-\U0010ffff](?:[A-Za-z0-9_\-\x80-\U0010ffff]*"
    r"[A-Za-z0-9_\x80-\U0010ffff])?"
)


def _strip_comments(text: str) -> str | None:
    """Drop RFC 5322 comments outside quotes; None if they do not balance."""
    if not _COMMENT_OR_QUOTE.search(text):
        return text
    return _strip_comments_general(text)


def _strip_comments_general(text: str) -> str | None:
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
        elif quoted:
            out.append(ch)
            quoted = ch != '"'
        elif ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                return None
            depth -= 1
        elif depth == 0:
            if ch == '"':
                quoted = True
            out.append(ch)
    if depth or quoted or escaped:
        return None
    return "".join(out)


def _valid_domain(domain: str) -> bool:
    """Postfix's test of an envelope domain (trivial-rewrite strips one trailing dot,
    then valid_mailhost_literal or valid_hostname): labels of letters, digits, '_' and
    inner '-', at most 63 each and 255 in all, not all digits (user@1.2.3.4 needs
    brackets); a literal holds an IPv4 address or IPv6:address."""
    if domain.startswith("["):
        return domain.endswith("]") and _valid_literal(domain[1:-1])
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain or len(domain) > 255:
        return False
    labels = domain.split(".")
    if not all(len(label) <= 63 and _LABEL.fullmatch(label) for label in labels):
        return False
    return not domain.replace(".", "").isdigit()


def _valid_literal(text: str) -> bool:
    if text[:5].lower() == "ipv6:":
        if "%" in text:
            return False
        try:
            ipaddress.IPv6Address(text[5:])
        except ValueError:
            return False
        return True
    octets = text.split(".")
    return (
        len(octets) == 4
        and all(o.isascii() and o.isdigit() and int(o) <= 255 for o in octets)
        and int(octets[0]) != 0
    )


def _valid_local(local: str) -> bool:
    quoted = escaped = False
    for ch in local:
        if ord(ch) < 32 or ch == "\x7f":
            # RFC 5321 4.1.2: no control characters, quoted or not (a CR here could
            # otherwise travel into replies, logs and headers).
            return False
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch in _SPECIALS or ord(ch) < 32 or ch == "\x7f":
            return False
    return not quoted and not escaped


def _last_at(text: str) -> int:
    """Index of the last '@' outside quotes and escapes, or -1."""
    if '"' not in text and "\\" not in text:
        return text.rfind("@")
    return _last_at_general(text)


def _last_at_general(text: str) -> int:
    pos = -1
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch == "@":
            pos = i
    return pos


def extract_address(token: str) -> str | None:
    """The address inside one path token, "" for `<>`, None if malformed."""
    text = _strip_comments(token)
    if text is None:
        return None
    text = text.strip(" \t")
    if text.startswith("<") and not text.endswith(">"):
        return None
    text = text.lstrip("<").rstrip(">").strip(" \t")
    if not text:
        return ""
    # RFC 5321 4.1.2: a source route "@a,@b:" is accepted and ignored (C.2).
    if text.startswith("@") and ":" in text:
        route, _, text = text.partition(":")
        hops = route.split(",")
        if not all(h.startswith("@") and _valid_domain(h[1:]) for h in hops):
            return None
        if not text:
            return None
    at = _last_at(text)
    if at < 0:
        return text if _valid_local(text) else None
    local, domain = text[:at], text[at + 1 :]
    # Postfix lets an '@' through inside the local part ("a@b@c").
    if not _valid_local(local.replace("@", "")) or not _valid_domain(domain):
        return None
    return text


_XTEXT_CHAR = re.compile(r"[!-*,-<>-~]")  # RFC 3461 4: 33..126 except '+' and '='


def xtext_decode(text: str) -> str | None:
    """Decode RFC 3461 xtext; None if malformed."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "+":
            pair = text[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in "0123456789ABCDEFabcdef" for c in pair):
                return None
            out.append(chr(int(pair, 16)))
            i += 3
        elif _XTEXT_CHAR.fullmatch(ch):
            out.append(ch)
            i += 1
        else:
            return None
    return "".join(out)


def xtext_encode(text: str) -> str:
    return "".join(ch if _XTEXT_CHAR.fullmatch(ch) else f"+{ord(ch):02X}" for ch in text)


def _split_verb_arg(arg: str, keyword: str, syntax: Reply) -> tuple[str, list[str]]:
    """Find the path token after FROM:/TO: and return it with the parameters."""
    tokens = split_args(arg)
    if not tokens or tokens[0][: len(keyword)].upper() != keyword:
        raise ArgumentError(syntax)
    first = tokens[0][len(keyword) :]
    if first:
        return first, tokens[1:]
    # strict_rfc821_envelopes=no: "MAIL FROM: <a@b>" is accepted.
    if len(tokens) < 2:
        raise ArgumentError(syntax)
    return tokens[1], tokens[2:]


def parse_mail(
    arg: str, *, size_limit: int = 0, smtputf8_enable: bool = True, sasl_enabled: bool = False
) -> tuple[str, MailParams]:
    """Parse `FROM:<addr> params...`; raise ArgumentError with Postfix's reply."""
    path, params = _split_verb_arg(arg, "FROM:", replies.MAIL_SYNTAX)
    address = extract_address(path)
    if address is None:
        raise _illegal(replies.BAD_SENDER, path)
    fields: dict[str, object] = {}
    for param in params:
        name, eq, value = param.partition("=")
        key = name.upper()
        if key == "SIZE" and eq:
            if not value.isascii() or not value.isdigit():
                raise ArgumentError(replies.BAD_SIZE)
            fields["size"] = int(value)
        elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
            fields["body"] = value.upper()
        elif key == "SMTPUTF8" and not eq and smtputf8_enable:
            fields["smtputf8"] = True
        elif key == "RET":
            if "ret" in fields or value.upper() not in ("FULL", "HDRS"):
                raise ArgumentError(replies.BAD_RET)
            fields["ret"] = value.upper()
        elif key == "ENVID":
            decoded = xtext_decode(value)
            if "envid" in fields or not value or decoded is None or not decoded.isprintable():
                raise ArgumentError(replies.BAD_ENVID)
            fields["envid"] = decoded
        elif key == "AUTH" and eq and not sasl_enabled:
            pass  # Postfix ignores AUTH= (RFC 4954 5) unless SASL is on
        elif key == "AUTH" and eq:
            if "auth" in fields:
                raise ArgumentError(replies.MULTIPLE_AUTH)
            decoded = xtext_decode(value)
            if decoded is None:
                raise ArgumentError(Reply(501, "5.5.4", f"Bad AUTH parameter syntax: {value}"))
            fields["auth"] = decoded
        else:
            raise ArgumentError(replies.unsupported_option(param))
    size = fields.get("size")
    if size_limit and isinstance(size, int) and size > size_limit:
        raise ArgumentError(replies.SIZE_EXCEEDS, sender=address)
    return address, MailParams(**fields)  # type: ignore[arg-type]


_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")
_ALL_NOTIFY = (*_NOTIFY, "NEVER")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def parse_rcpt(arg: str) -> tuple[str, RcptParams]:
    """Parse `TO:<addr> params...`; raise ArgumentError with Postfix's reply."""
    path, params = _split_verb_arg(arg, "TO:", replies.RCPT_SYNTAX)
    address = extract_address(path)
    if not address:
        raise _illegal(replies.BAD_RECIPIENT, path)
    notify: tuple[str, ...] = ()
    orcpt: tuple[str, str] | None = None
    for param in params:
        name, eq, value = param.partition("=")
        key = name.upper()
        if key == "NOTIFY":
            words = tuple(w.upper() for w in value.split(","))
            ok = words == ("NEVER",) or (
                all(w in _NOTIFY for w in words) and len(set(words)) == len(words)
            )
            if notify or not eq or not ok:
                given = value.split(",")  # as typed: the warning quotes the word
                unknown = next((w for w in given if w and w.upper() not in _ALL_NOTIFY), None)
                warning = (
                    f'unknown DSN NOTIFY command value "{unknown}" in "{value}"'
                    if unknown is not None and not notify
                    else None
                )
                raise ArgumentError(replies.BAD_NOTIFY, warning=warning)
            notify = words
        elif key == "ORCPT":
            kind, semi, raw = value.partition(";")
            decoded = xtext_decode(raw)
            if orcpt or not semi or not _ADDR_TYPE.fullmatch(kind) or decoded is None:
                raise ArgumentError(replies.BAD_ORCPT)
            orcpt = (kind.lower(), decoded)
        else:
            raise ArgumentError(replies.unsupported_option(param))
    return address, RcptParams(notify=notify, orcpt=orcpt)


def parse_vrfy(arg: str, *, smtputf8_enable: bool = True) -> str:
    """The address of `VRFY address [SMTPUTF8]`, as Postfix checks it."""
    tokens = split_args(arg)
    if not tokens:
        raise ArgumentError(replies.vrfy_syntax(smtputf8_enable))
    extra = tokens[1:]
    if extra and not (len(extra) == 1 and extra[0].upper() == "SMTPUTF8" and smtputf8_enable):
        # Postfix joins the words into one address (collapse_args), which then fails.
        raise _illegal(replies.BAD_RECIPIENT, " ".join(tokens))
    if not extract_address(tokens[0]):
        raise _illegal(replies.BAD_RECIPIENT, tokens[0])
    return tokens[0]
