"""Which browser pages count as this server's own: the loopback names of one machine.

A browser treats ``http://localhost:8000`` and ``http://127.0.0.1:8000`` as two
origins, so a page opened under one name that talks to the other is
cross-origin, and a WebSocket it opens is refused as a foreign site's would be.
On a loopback address both names reach the same listening socket, so Pylight
counts them as one host: a page whose Origin and the request's Host are both
loopback names (``localhost``, ``127.0.0.0/8``, ``[::1]``) with the same port is
the server's own. Any other origin needs ``[realtime] allowed_origins`` (feeds)
or ``[api] cors_origins`` (REST).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters of an Origin header shown in a log line or an error message.
SHOWN = 200


def _is_loopback(hostname: str | None) -> bool:
    if not hostname:
        return False
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def loopback_alias(origin: str, host: str, scheme: str) -> bool:
    """Whether a page at ``origin`` is this server under another loopback name.

    ``host`` is the request's Host header and ``scheme`` its protocol (``http``
    or ``https``), which gives the port when the Host names none. Both names
    must be loopback and the ports equal: another port on the same machine is
    another program (a development server, say) and stays foreign.
    """
    try:
        page = urlsplit(origin.strip())
        target = urlsplit("//" + host.strip())
        page_port = page.port or DEFAULT_PORTS.get(page.scheme.lower())
        target_port = target.port or DEFAULT_PORTS.get(scheme.lower())
    except ValueError:  # a port that is no number: no origin of ours
        return False
    return (page.scheme.lower() in DEFAULT_PORTS and page_port is not None
            and page_port == target_port
            and _is_loopback(page.hostname) and _is_loopback(target.hostname))


def feed_refusal(origin: str) -> str:
    """What a refused WebSocket upgrade is told, and logged: the Origin and the setting."""
    shown = origin[:SHOWN]
    return (f"WebSocket refused for a page at origin {shown!r}: feeds accept this server's "
            "own pages (under any loopback name, on the same port) and the origins in "
            f"[realtime] allowed_origins; to allow this one, add {shown} to [realtime] "
            "allowed_origins (or PYLIGHT_REALTIME_ALLOWED_ORIGINS)")
