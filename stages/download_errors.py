"""Which download failures are final: img2dataset's per-row error strings → permanent or transient.

A transient failure is one a crash or a passing fault can cause (the server or network down, a
timeout, HTTP 408/425/429/5xx, a dead worker): the row is retried on resume, up to the stage's
`max_attempts`. A permanent one says something about the URL itself (404/410 and other 4xx, not
an image, a blocked address, a bad or unknown URL, an opt-out header, a bad certificate) and stays
final. Anything not recognised as permanent counts as transient: the attempt bound keeps that
cheap, and it never loses a row to a fault we did not foresee.
"""

from __future__ import annotations

import re

# What stages/egress_proxy.py puts in its refusals (urllib carries it into img2dataset's message).
GUARD_MARK = "egress guard refused"
UNKNOWN_HOST_MARK = "egress proxy: unknown host"

TRANSIENT_HTTP = {408, 425, 429}
_HTTP_CODE = re.compile(r"HTTP Error (\d{3})|Tunnel connection failed: (\d{3})")
_PERMANENT_TEXT = (
    "unknown url type",  # urllib: no scheme / unsupported scheme
    "no host given",
    "name or service not known",  # NXDOMAIN (EAI_NONAME); "temporary failure in name resolution" is transient
    "nodename nor servname",
    "[errno -2]",
    "x-robots-tag",  # the site opted out
    "certificate verify failed",
    "invalid url",
    "url can't contain control characters",
    UNKNOWN_HOST_MARK,
)


def is_blocked(message: str | None) -> bool:
    """The egress proxy refused the address (first hop or a redirect)."""
    return GUARD_MARK in (message or "")


def is_transient(status: str, message: str | None) -> bool:
    """True when img2dataset's (status, error_message) for a row may succeed on another attempt."""
    if status == "success":
        return False
    if status == "failed_to_resize":
        return False  # the bytes arrived and are not an image
    text = (message or "").lower()
    if GUARD_MARK in text or UNKNOWN_HOST_MARK in text:
        return False  # the proxy's own refusals, whatever status code carried them
    m = _HTTP_CODE.search(message or "")
    if m:
        code = int(m.group(1) or m.group(2))
        return code >= 500 or code in TRANSIENT_HTTP
    return not any(p in text for p in _PERMANENT_TEXT)
