"""Telling machine opens from people's. Pure.

An "open" is an image fetch, and many are not a person reading: Apple Mail Privacy Protection fetches
every image of every message through Apple's proxies when the message arrives; security gateways
(Barracuda, Mimecast, Proofpoint, Microsoft's Safe Links) fetch images and links to scan them; scripts
and link checkers fetch anything. Rates computed on such opens are inflated (listmonk's users report
open rates they cannot trust), so Herald flags them and the analytics count human and machine opens
apart. Gmail's and Yahoo's image proxies fetch when the person opens the message: those stay human.

The signals, in the order checked:
- the provider says so (SendGrid's ``sg_machine_open``: Apple MPP);
- the fetcher's user agent names a scanner, a crawler or an HTTP library, or is Apple's proxy's bare
  ``Mozilla/5.0`` (Apple's proxy sends no more than that);
- the address is in a range known to belong to privacy proxies (Apple's 17.0.0.0/8);
- the open came within ``MACHINE_SECONDS`` of the message being sent (no one reads that fast: prefetch).
"""

from __future__ import annotations

import ipaddress
import re

MACHINE_SECONDS = 2.0

_AGENT = re.compile(
    r"barracuda|mimecast|proofpoint|symantec|messagelabs|trend ?micro|forcepoint|ironport|fireeye|"
    r"safelinks|microsoft office protection|bot\b|crawler|spider|preview|scanner|headless|phantomjs|"
    r"python-requests|python-urllib|aiohttp|httpx|curl/|wget/|go-http-client|java/|okhttp|libwww|apache-httpclient",
    re.IGNORECASE,
)
_APPLE_PROXY_AGENT = "Mozilla/5.0"
PROXY_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("17.0.0.0/8", "2620:149::/32", "2a01:b740::/32"))


def machine_agent(user_agent: str) -> bool:
    agent = user_agent.strip()
    return agent == _APPLE_PROXY_AGENT or bool(_AGENT.search(agent))


def proxy_address(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return False
    return any(address in network for network in PROXY_NETWORKS)


def machine_open(user_agent: str, ip: str, provider_flag: bool = False, since_sent_s: float | None = None) -> bool:
    """Whether an open looks automated (see the module docstring)."""
    if provider_flag or machine_agent(user_agent) or proxy_address(ip):
        return True
    return since_sent_s is not None and 0 <= since_sent_s < MACHINE_SECONDS
