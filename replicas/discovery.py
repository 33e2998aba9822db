"""LAN discovery with mDNS (zeroconf): find replicas of the same vault and dial them.

Each ``shoal serve --discover`` advertises ``_shoal._tcp.local.`` with two properties: a
*vault tag* (a keyed hash of the vault id, so the LAN learns neither the vault id nor who
shares it with whom across networks) and the replica id. Of two replicas that see each other,
only the one with the smaller id dials, so a pair holds one connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from typing import TYPE_CHECKING, Final

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

if TYPE_CHECKING:
    from replicas.node import Node

log = logging.getLogger("shoal.discovery")

SERVICE: Final = "_shoal._tcp.local."


def vault_tag(vault_id: bytes) -> str:
    return hashlib.blake2b(vault_id, key=b"shoal/v1/mdns", digest_size=8).hexdigest()


async def discover_peers(node: Node, bound: tuple[str, int] | None) -> None:
    """Advertise ourselves (if listening) and dial every same-vault replica we find."""
    from replicas.node import PeerLink

    me = node.replica.engine.me.hex()
    tag = vault_tag(node.replica.log.vault_id)
    azc = AsyncZeroconf(ip_version=IPVersion.V4Only)
    info = None
    if bound is not None:
        host = (
            bound[0]
            if bound[0] not in ("0.0.0.0", "")
            else socket.gethostbyname(socket.gethostname())
        )
        info = AsyncServiceInfo(
            SERVICE,
            f"{me[:16]}.{SERVICE}",
            addresses=[socket.inet_aton(host)],
            port=bound[1],
            properties={"vault": tag, "replica": me},
        )
        await azc.async_register_service(info)
    found: asyncio.Queue[str] = asyncio.Queue()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added:
            found.put_nowait(name)

    browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE], handlers=[on_change])
    dialled: set[str] = set()
    tasks = []
    try:
        while True:
            name = await found.get()
            peer = AsyncServiceInfo(SERVICE, name)
            if not await peer.async_request(azc.zeroconf, 3000):
                continue
            props = {k.decode(): (v or b"").decode() for k, v in peer.properties.items()}
            other = props.get("replica", "")
            if props.get("vault") != tag or not other or other == me or other in dialled:
                continue
            if me > other:
                continue  # the other side dials us
            addresses = peer.parsed_addresses()
            if not addresses:
                continue
            dialled.add(other)
            link = PeerLink(f"http://{addresses[0]}:{peer.port}")
            node.links.append(link)
            log.info("discovered %s at %s", other[:12], link.url)
            tasks.append(asyncio.create_task(node.dial_forever(link)))
    finally:
        for task in tasks:
            task.cancel()
        await browser.async_cancel()
        if info is not None:
            await azc.async_unregister_service(info)
        await azc.async_close()
