"""SSRF guard for downloads from arbitrary URLs: refuse private, loopback and link-local hosts."""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from typing import Iterable
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def malformed(url: str) -> str | None:
    """Why `url` is not a fetchable http(s) URL at all (before any address question), else None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as err:
        return f"unparseable url: {err}"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        # file:// would read local files through urllib: never from metadata
        return f"scheme {parts.scheme or 'none'!r} is not http(s)"
    if not host:
        return "url has no host"
    return None


class UrlGuard:
    """Answers "may we fetch this URL?"; `allow` lists networks the recipe explicitly trusts."""

    def __init__(self, allow: Iterable[str] = ()):
        self.allow = tuple(ipaddress.ip_network(a, strict=False) for a in allow)

    def refuse(self, url: str) -> str | None:
        """None when the URL may be fetched, else why not (human text for `detail`)."""
        if why := malformed(url):
            return why
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        try:
            addresses = _resolve(host, port or 80)
        except socket.gaierror:
            return None  # a temporary DNS failure: the egress proxy answers it as transient
        if not addresses:
            return None  # unresolvable: the egress proxy records the unknown host itself
        return self.refuse_addresses(host, addresses)

    def refuse_addresses(self, host: str, addresses: Iterable[IPAddress]) -> str | None:
        """None when every address `host` resolved to may be contacted, else why not."""
        for addr in addresses:
            if any(addr in net for net in self.allow):
                continue
            if not addr.is_global or addr.is_multicast:
                return f"{host} resolves to non-public address {addr}"
        return None

    def checked_address(self, host: str, port: int) -> tuple[IPAddress | None, str | None]:
        """(the address to connect to, None) or (None, why not): one lookup, then that address only.

        The egress proxy connects to exactly the address returned, so a DNS answer that changes
        after the check (rebinding) is never used. (None, None): the name does not exist;
        socket.gaierror: a temporary resolver failure.
        """
        addresses = _resolve(host, port)
        if not addresses:
            return None, None
        why = self.refuse_addresses(host, addresses)
        return (None, why) if why else (addresses[0], None)


@lru_cache(maxsize=65536)
def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    # Hosts repeat (farmN.staticflickr.com): one lookup per host, not per URL.
    try:
        return (ipaddress.ip_address(host.strip("[]")),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as err:
        if err.errno == socket.EAI_AGAIN:
            raise  # a resolver hiccup, not an answer: not cached, the caller may retry
        return ()
    except UnicodeError:
        return ()
    return tuple(sorted({ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}, key=str))
