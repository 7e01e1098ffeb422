"""SSRF guard for downloads from arbitrary URLs: refuse private, loopback and link-local hosts."""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from typing import Iterable
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")


class UrlGuard:
    """Answers "may we fetch this URL?"; `allow` lists networks the recipe explicitly trusts."""

    def __init__(self, allow: Iterable[str] = ()):
        self.allow = tuple(ipaddress.ip_network(a, strict=False) for a in allow)

    def refuse(self, url: str) -> str | None:
        """None when the URL may be fetched, else why not (human text for `detail`)."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            port = parts.port
        except ValueError as err:
            return f"unparseable url: {err}"
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            # file:// would read local files through urllib: never from metadata
            return f"scheme {parts.scheme or 'none'!r} is not http(s)"
        if not host:
            return "url has no host"
        addresses = _resolve(host, port or 80)
        if not addresses:
            return None  # unresolvable: img2dataset records the DNS error itself
        for addr in addresses:
            if any(addr in net for net in self.allow):
                continue
            if not addr.is_global or addr.is_multicast:
                return f"{host} resolves to non-public address {addr}"
        return None


@lru_cache(maxsize=65536)
def _resolve(host: str, port: int) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    # Hosts repeat (farmN.staticflickr.com): one lookup per host, not per URL.
    try:
        return (ipaddress.ip_address(host.strip("[]")),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return ()
    return tuple(sorted({ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}, key=str))
