"""Who is calling, by address: one rule whichever HTTP server runs the app.

granian hands the app the socket peer; uvicorn, left to itself, replaces the peer with
an `X-Forwarded-For` entry when the peer is 127.0.0.1. A rule built on the server's
answer (the loopback rule of `/metrics`) then meant one thing under uvicorn and another
under granian: behind a reverse proxy on the same host, every request looked local to
granian. So `exchange serve` runs uvicorn with `proxy_headers=False` and the app decides
here, from the raw peer and `EXCHANGE_TRUSTED_PROXIES`:

- the peer is not a trusted proxy, or sent no `X-Forwarded-For`: the peer is the client
  (a client elsewhere cannot claim another address in a header);
- the peer is a trusted proxy: `X-Forwarded-For` is read from the right, since each
  proxy appends the address it saw, skipping trusted proxies; the first untrusted
  entry is the client. Entries to its left were written by the client itself and are
  never read, so a spoofed `127.0.0.1` at the front changes nothing. Every entry is
  trusted: the leftmost is the client (a proxy calling for itself).

`None` means the address cannot be known: no peer, a peer that is not an IP address (a
unix socket), or a malformed entry on the way. Callers treat it as remote, never local.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["IPAddress", "IPNetwork", "TrustedProxies", "client_address", "is_local"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The reverse proxies whose `X-Forwarded-For` is believed (EXCHANGE_TRUSTED_PROXIES).

    A plain class, not a tuple of networks in the settings: litestar hands `Services` (and
    so `Settings`) to handlers through msgspec, which refuses a union of two custom types
    such as `IPv4Network | IPv6Network` in a field."""

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(networks)

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """`127.0.0.1,::1,10.0.0.0/8`: addresses or CIDR networks; `none` trusts no proxy.
        A network with host bits set (`10.0.0.1/8`) is refused: more likely a typo than a
        network, and trusting the wrong one lets clients choose their own address."""
        if text.strip().lower() == "none":
            return cls()
        networks = []
        for part in text.split(","):
            entry = part.strip()
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from None
            if ipaddress.ip_interface(entry).ip != network.network_address:
                raise ValueError(f"{entry!r} has host bits set (the network is {network})")
            networks.append(network)
        return cls(networks)

    def __contains__(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrustedProxies) and self.networks == other.networks

    def __hash__(self) -> int:
        return hash(self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({','.join(map(str, self.networks)) or 'none'})"


# `[2001:db8::1]:443` or `[2001:db8::1]`: what some proxies write for IPv6, as uvicorn read it.
_BRACKETED = re.compile(r"\[([^\]]+)\](?::(\d{1,5}))?")
# `203.0.113.9:51234`: an IPv4 address with its port (one colon; IPv6 has several).
_WITH_PORT = re.compile(r"([0-9.]+):(\d{1,5})")


def client_address(scope: Mapping[str, Any], trusted: TrustedProxies) -> IPAddress | None:
    """The calling client's address by the rule above, or None when it cannot be known."""
    peer = scope.get("client")
    address = _parse(str(peer[0])) if peer else None
    if address is None or address not in trusted:
        return address
    forwarded = [
        value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"
    ]
    if not forwarded:
        return address
    entries = [entry.strip() for entry in ",".join(forwarded).split(",")]
    hop: IPAddress | None = address
    for entry in reversed(entries):
        hop = _parse(entry)
        if hop is None or hop not in trusted:
            return hop
    return hop  # every hop a trusted proxy: the leftmost called for itself


def is_local(address: IPAddress | None) -> bool:
    """A loopback address (127.0.0.0/8, ::1, or 127.x written as IPv4-mapped IPv6)."""
    return address is not None and address.is_loopback


def _parse(text: str) -> IPAddress | None:
    """One address as a peer or an `X-Forwarded-For` entry writes it; None if it is not one
    (`unknown`, a name, an obfuscated RFC 7239 identifier, a port out of range)."""
    host = text
    for form in (_BRACKETED, _WITH_PORT):
        matched = form.fullmatch(text)
        if matched:
            host, port = matched.group(1), matched.group(2)
            if port is not None and int(port) > 65535:
                return None
            break
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d: judge the IPv4 one.
        return address.ipv4_mapped
    return address
