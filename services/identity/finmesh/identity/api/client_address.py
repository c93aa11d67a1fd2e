"""Who is calling from where, for the login throttle: the gRPC peer's address, or behind a trusted proxy
the client address it forwarded. The use case stores and compares it only as a keyed hash."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import unquote

from finmesh.identity.api.requests import Context
from finmesh.identity.config import Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# An IPv6 host gets a whole /64 from any ISP: addresses inside it are one client, or rotating through
# them would reset the throttle at will.
_IPV6_PREFIX = 64


def _parse(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_address(context: Context) -> Address | None:
    """The peer's IP ("ipv4:203.0.113.9:5555", "ipv6:%5B2001:db8::1%5D:5555"); None for other transports."""
    peer = unquote(context.peer() or "")
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    return _parse(rest.rsplit(":", 1)[0])


def client_address(context: Context, trusted: Sequence[Network]) -> str:
    """The client's address as the throttle keys it: IPv4 whole, IPv6 by its /64.

    X-Forwarded-For is read only when the peer is a trusted proxy, from the right: each trusted hop
    is skipped, and the first address not trusted is the client (what is left of it, the client
    could have written itself).
    """
    address = peer_address(context)
    if address is None:
        return unquote(context.peer() or "unknown")[:100]
    if any(address in network for network in trusted):
        forwarded = [value for key, value in context.invocation_metadata() or () if key == "x-forwarded-for"]
        hops = [_parse(hop) for hop in ",".join(str(v) for v in forwarded).split(",") if hop.strip()]
        for hop in reversed(hops):
            if hop is None:
                break  # garbage in the chain: stop believing it, keep the last good hop
            address = hop
            if not any(hop in network for network in trusted):
                break
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/{_IPV6_PREFIX}", strict=False))
    return str(address)
