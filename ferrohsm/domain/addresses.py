"""Which client a source address stands for, for counting requests per client.

One IPv6 host is usually given a whole /64 (a home line, a cloud instance), so counting per
IPv6 address would hand one client 2**64 fresh budgets; an IPv4 address mapped into IPv6 is the
IPv4 client it carries. Both the rate limiter and the sealed server's unseal limit count by this.
"""

from __future__ import annotations

import ipaddress

IPV6_GROUP_PREFIX = 64


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an address (brackets and spaces allowed), an IPv4-mapped one as IPv4; None
    when it is not one."""
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_key(ip: str) -> str:
    """The key one client's requests are counted under: its IPv4 address, its IPv6 /64, or the
    text cut short when it is no address at all (a Unix socket's peer)."""
    addr = parse_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{addr}/{IPV6_GROUP_PREFIX}", strict=False))
    return str(addr) if addr is not None else ip[:64]
