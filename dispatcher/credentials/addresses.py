"""Which API server addresses a cluster may not have unless it allows them; pure, no I/O.

A credential from Vault decides where the dispatcher sends a bearer token (and the
secrets its pods receive). Pointing it at the dispatcher's own host (loopback), at the
node's link-local neighbours or at a cloud metadata service turns whoever can write that
Vault path into someone who can reach those from inside the dispatcher. So these are
refused unless the cluster sets ``allow_insecure.allow_private_addresses``:

- loopback ``127.0.0.0/8``, ``::1`` and ``localhost`` (also ``*.localhost``);
- link-local ``169.254.0.0/16`` (with the metadata address ``169.254.169.254``) and
  ``fe80::/10``;
- unspecified ``0.0.0.0`` and ``::`` (a connect to them reaches the local host);
- the metadata addresses ``fd00:ec2::254`` and names ``metadata.google.internal``,
  ``metadata.goog``, ``metadata``;
- IPv4 addresses in IPv6 clothing (``::ffff:127.0.0.1``, NAT64) and in legacy notations
  the resolver accepts (``127.1``, ``2130706433``, ``0x7f.1``) count as what they encode.

Hostnames are not resolved here: ``clients`` judges the address each connection actually
reached, before TLS starts, so a name that resolves (or re-resolves, DNS rebinding) to one
of these is refused at connect time too.
"""

from __future__ import annotations

import ipaddress
import re
import socket

__all__ = ["private_address"]

_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
_METADATA_IPS = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# What inet_aton accepts: up to four parts, each decimal, octal (0...) or hex (0x...).
_LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}", re.IGNORECASE)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _as_ip(host: str) -> IPAddress | None:
    text = host.strip("[]").split("%", 1)[0]  # an IPv6 zone id does not change the address
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))  # pure parsing, no lookup
        except OSError:
            return None
    return None


def _unwrap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def private_address(host: str) -> str | None:
    """Why ``host`` (a name or an address literal) is not allowed, or ``None``."""
    name = host.strip().rstrip(".").lower()
    if name in _METADATA_NAMES:
        return "a cloud metadata service name"
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback name"
    ip = _as_ip(name)
    if ip is None:
        return None
    ip = _unwrap(ip)
    if ip in _METADATA_IPS:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address (it reaches the local host)"
    return None
