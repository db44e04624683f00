"""`exchange.client_address`: who the client is, from the peer and X-Forwarded-For, the
same under any server. Scopes are written by hand as an ASGI server would hand them."""

from __future__ import annotations

from typing import Any

import pytest

from exchange.client_address import TrustedProxies, client_address, is_local
from exchange.config import Settings

DEFAULT = Settings().trusted_proxies  # 127.0.0.1 and ::1
NGINX_ON_A_LAN = TrustedProxies.parse("10.0.0.0/8")


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 51234),
        "headers": [(b"host", b"exchange.test")]
        + [(b"x-forwarded-for", value.encode("latin-1")) for value in forwarded],
    }


def address(peer: str | None, *forwarded: str, trusted: TrustedProxies = DEFAULT) -> str:
    found = client_address(scope(peer, *forwarded), trusted)
    return "unknown" if found is None else str(found)


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # No proxy header: the peer, wherever it is.
        ("127.0.0.1", (), "127.0.0.1"),
        ("203.0.113.9", (), "203.0.113.9"),
        ("::1", (), "::1"),
        # A local proxy relays a remote client: the client it names.
        ("127.0.0.1", ("203.0.113.9",), "203.0.113.9"),
        ("::1", ("2001:db8::7",), "2001:db8::7"),
        ("127.0.0.1", ("2001:db8::7",), "2001:db8::7"),
        # A local proxy relays a local client (an agent scraping through it).
        ("127.0.0.1", ("127.0.0.1",), "127.0.0.1"),
        # A chain: read from the right, trusted proxies skipped, the first other one wins.
        ("127.0.0.1", ("198.51.100.4, 127.0.0.1",), "198.51.100.4"),
        ("127.0.0.1", ("198.51.100.4, ::1, 127.0.0.1",), "198.51.100.4"),
        # Every hop trusted: the leftmost is the client (a proxy calling for itself).
        ("127.0.0.1", ("::1, 127.0.0.1",), "::1"),
        # Several X-Forwarded-For fields are one list, in order.
        ("127.0.0.1", ("198.51.100.4", "127.0.0.1"), "198.51.100.4"),
        # Ports, as some proxies write them.
        ("127.0.0.1", ("203.0.113.9:40000",), "203.0.113.9"),
        ("127.0.0.1", ("[2001:db8::7]:443",), "2001:db8::7"),
        ("127.0.0.1", ("[2001:db8::7]",), "2001:db8::7"),
    ],
)
def test_the_client_is_the_peer_or_the_first_untrusted_hop_from_the_right(
    peer: str, forwarded: tuple[str, ...], expected: str
) -> None:
    assert address(peer, *forwarded) == expected


@pytest.mark.parametrize(
    "forwarded",
    [
        "127.0.0.1, 203.0.113.9",  # the client wrote 127.0.0.1, the proxy appended the truth
        "::1, 203.0.113.9",
        "localhost, 203.0.113.9",  # left of the client: never read, malformed or not
        "127.0.0.1, 203.0.113.9, 127.0.0.1",
    ],
)
def test_entries_the_client_wrote_itself_are_never_believed(forwarded: str) -> None:
    found = client_address(scope("127.0.0.1", forwarded), DEFAULT)
    assert str(found) == "203.0.113.9"
    assert not is_local(found)


@pytest.mark.parametrize("forwarded", ["127.0.0.1", "::1", "10.1.2.3", "10.0.0.1, 127.0.0.1"])
def test_a_peer_that_is_no_trusted_proxy_cannot_claim_an_address(forwarded: str) -> None:
    assert address("203.0.113.9", forwarded) == "203.0.113.9"
    # ... nor can a machine on the LAN unless it is the configured proxy.
    lan_proxy = TrustedProxies.parse("10.0.0.1")
    assert address("10.9.9.9", forwarded, trusted=lan_proxy) == "10.9.9.9"


def test_a_proxy_on_another_host_is_trusted_by_network() -> None:
    assert address("10.0.0.5", "198.51.100.4, 10.0.0.6", trusted=NGINX_ON_A_LAN) == "198.51.100.4"
    # Under the default, only loopback proxies are believed.
    assert address("10.0.0.5", "198.51.100.4") == "10.0.0.5"


def test_with_no_trusted_proxy_the_header_is_ignored() -> None:
    assert address("127.0.0.1", "203.0.113.9", trusted=TrustedProxies()) == "127.0.0.1"
    assert address("::1", "203.0.113.9", trusted=TrustedProxies()) == "::1"


@pytest.mark.parametrize(
    "forwarded",
    [
        "unknown",  # what nginx writes for a client it could not name
        "_hidden",  # an obfuscated identifier (RFC 7239)
        "proxy.example",
        "",
        "203.0.113.9,",  # an empty entry where the last proxy's should be
        "203.0.113.9:99999",
        "[2001:db8::7",
        "203.0.113.9, garbage, 127.0.0.1",  # reached before the client: the chain is unreadable
    ],
)
def test_a_malformed_entry_on_the_way_makes_the_client_unknown_and_not_local(
    forwarded: str,
) -> None:
    found = client_address(scope("127.0.0.1", forwarded), DEFAULT)
    assert found is None
    assert not is_local(found)


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # a dual-stack socket's IPv4 loopback client
        ("203.0.113.9", False),
        ("::ffff:203.0.113.9", False),
        ("/run/exchange.sock", False),  # a unix socket: not provably local
        (None, False),
    ],
)
def test_loopback_is_judged_on_the_address_decided(peer: str | None, local: bool) -> None:
    assert is_local(client_address(scope(peer), DEFAULT)) is local


def test_an_ipv4_mapped_proxy_is_trusted_as_its_ipv4_address() -> None:
    assert address("::ffff:127.0.0.1", "203.0.113.9") == "203.0.113.9"
