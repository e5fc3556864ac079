"""virtual(5) alias rewriting and the virtual alias domain class (postwall.resolve).

The end-to-end comparison with Postfix is tests/interop/test_virtual_alias_postfix.py;
here each rule alone: lookup order, extensions, nesting, limits, the error transport
for an address of a virtual alias domain that no alias names.
"""

from __future__ import annotations

import pytest

from postwall.config import default_params
from postwall.config.tables import DictTable
from postwall.resolve import AddressClass, AddressResolver, AliasExpansionError, VirtualAliases


def resolver(entries: dict[str, str], **params: object) -> AddressResolver:
    values = {
        "myhostname": "mx.example.com",
        "myorigin": "example.com",
        "mydestination": "example.com, localhost",
        "recipient_delimiter": "+",
    }
    values.update({k: str(v) for k, v in params.items()})
    r = AddressResolver.from_params(default_params(**values))
    table = DictTable("inline:test", entries)
    r.virtual = VirtualAliases(
        r,
        [table],
        propagate=params.get("propagate", True) is not False,
        recursion_limit=int(params.get("recursion", 1000)),  # type: ignore[call-overload]
        expansion_limit=int(params.get("expansion", 1000)),  # type: ignore[call-overload]
    )
    return r


def test_lookup_order_and_extensions() -> None:
    r = resolver(
        {
            "a+x@example.com": "exact@example.com",
            "a@example.com": "plain@remote.test",
            "b": "local-key@example.com",
            "@virt.test": "catchall@example.com",
        }
    )
    v = r.virtual
    assert v.lookup("a+x@example.com") == ["exact@example.com"]
    assert v.lookup("a+y@example.com") == ["plain+y@remote.test"]  # extension carried over
    assert v.lookup("b@example.com") == ["local-key@example.com"]  # local domain: user key
    assert v.lookup("b@remote.test") is None  # not a local domain: no user key
    assert v.lookup("c") is None  # qualified with myorigin: c@example.com
    assert v.lookup("anyone@virt.test") == ["catchall@example.com"]


def test_no_extension_carried_when_propagation_is_off() -> None:
    r = resolver({"a@example.com": "plain@remote.test"}, propagate=False)
    assert r.virtual.lookup("a+y@example.com") == ["plain@remote.test"]


def test_expansion_nests_keeps_self_references_and_drops_duplicates() -> None:
    r = resolver(
        {
            "list@example.com": "a@example.com, b@example.com, a@example.com",
            "a@example.com": "a@example.com, archive@example.com",
            "b@example.com": "c@remote.test",
            "outer@example.com": "list@example.com",
        }
    )
    assert r.virtual.expand("outer@example.com") == [
        "a@example.com",
        "c@remote.test",
        "archive@example.com",
    ]
    assert r.virtual.expand("nobody@example.com") == ["nobody@example.com"]


def test_loops_and_expansion_size_are_refused() -> None:
    r = resolver({"x@example.com": "y@example.com", "y@example.com": "x@example.com"})
    with pytest.raises(AliasExpansionError, match=r"map nesting for x@example\.com"):
        r.virtual.expand("x@example.com")
    many = ", ".join(f"u{i}@remote.test" for i in range(11))
    r = resolver({"big@example.com": many}, expansion=10)
    with pytest.raises(AliasExpansionError, match=r"map expansion size for big@example\.com"):
        r.virtual.expand("big@example.com")


def test_virtual_alias_domains_are_final_destinations() -> None:
    r = resolver({}, virtual_alias_domains="virt.test")
    resolved = r.resolve("nobody@virt.test")
    assert resolved.cls is AddressClass.VIRTUAL
    d = r.destination("nobody@virt.test")
    assert (d.transport, d.nexthop) == ("error", "5.1.1 User unknown in virtual alias table")
    assert r.resolve("someone@other.test").cls is AddressClass.REMOTE
    assert r.resolve("x@sub.virt.test").cls is AddressClass.REMOTE  # exact names only


def test_sender_dependent_relayhost() -> None:
    table = DictTable(
        "inline:relays",
        {
            "alice@example.com": "[smtp.alice.test]:587",
            "@partner.test": "[relay.partner.test]",
            "quiet@partner.test": "DUNNO",
            "<>": "[bounces.example.com]",
        },
    )
    r = AddressResolver.from_params(
        default_params(
            myorigin="example.com",
            mydestination="example.com",
            relayhost="[smarthost.example.com]",
            recipient_delimiter="+",
        )
    )
    r._sender_relayhosts = [table]
    hop = lambda sender: r.destination("bob@remote.test", sender).nexthop  # noqa: E731
    assert hop("alice@example.com") == "[smtp.alice.test]:587"
    assert hop("alice+list@example.com") == "[smtp.alice.test]:587"  # without the extension
    assert hop("carol@partner.test") == "[relay.partner.test]"
    assert hop("quiet@partner.test") == "[smarthost.example.com]"  # DUNNO: the global one
    assert hop("") == "[bounces.example.com]"  # the null sender's key
    assert hop("dave@example.com") == "[smarthost.example.com]"
    assert hop(None) == "[smarthost.example.com]"  # no sender known: the global one
    assert r.destination("bob@example.com", "alice@example.com").transport == "local"


def test_relocated_users_go_to_the_error_transport() -> None:
    """trivial-rewrite's rule for every class, so mail that never met smtpd's RCPT check
    (sendmail, notices) bounces as Postfix's error(8) bounces it: dsn=5.1.6."""
    import asyncio

    from postwall.delivery.agents import error_agent

    r = resolver({})
    r.relocated_maps = [
        DictTable("inline:moved", {"gone@example.com": "new@elsewhere.test", "@old.test": "x"})
    ]
    d = r.destination("gone+tag@example.com")
    assert (d.transport, d.nexthop) == ("error", "5.1.6 User has moved to new@elsewhere.test")
    assert r.destination("anyone@old.test").nexthop == "5.1.6 User has moved to x"
    assert r.destination("here@example.com").transport == "local"
    (result,) = asyncio.run(error_agent(None, [0], d))  # type: ignore[arg-type]
    assert (result.result.status, result.result.dsn, result.result.text) == (
        "bounced",
        "5.1.6",
        "User has moved to new@elsewhere.test",
    )
