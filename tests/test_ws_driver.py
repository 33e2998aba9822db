"""``transport.ws.drive`` over real aiohttp WebSockets on 127.0.0.1: what only a driver does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from replicas.relay import RelayPort
from replicas.vault import Replica
from tests.test_adversarial import in_process_relay, relay_session, sync_endpoint
from tests.test_session import session
from transport.session import ACK_DELAY_S
from transport.ws import connect, drive, server_socket, sync_url


async def until(condition: Callable[[], bool], within: float) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


def test_a_lone_live_batch_is_acknowledged_once_the_ack_delay_passed(
    trio: list[Replica], tmp_path: Path
) -> None:
    """A receiver holds the ACK of a lone batch back for company (ACK_DELAY_S). Nothing else
    comes, so only the driver can send it (its ACK timer, or at the latest its 1 s tick): the
    sender must see the batch acknowledged, not hold it in its window until the ack timeout."""
    a = trio[0]
    relay, vault = in_process_relay(tmp_path, a)

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_socket()
        await ws.prepare(request)
        await drive(ws, relay_session(RelayPort(vault), relay))
        return ws

    async def run() -> None:
        async with sync_endpoint(handle) as url, aiohttp.ClientSession() as http:
            ws = await connect(http, sync_url(url, a.log.vault_id))
            changed = asyncio.Event()
            ours = session(a, True)
            driving = asyncio.ensure_future(drive(ws, ours, changed))
            await until(lambda: ours.settled, 10)
            sent = ours.stats.events_sent
            a.engine.append_record({"t": "test.live", "n": 1})
            changed.set()
            await until(lambda: ours.stats.events_sent > sent, 10)
            assert not ours.settled  # in flight: the relay's ACK waits for company
            await until(lambda: ours.settled, 10 * ACK_DELAY_S + 5)
            assert vault.log.store.event_count() == a.store.event_count()
            await ws.close()
            await driving

    asyncio.run(run())
