"""``transport.ws.drive`` over real aiohttp WebSockets on 127.0.0.1: what only a driver does."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from replicas.relay import RelayPort
from replicas.vault import Replica
from tests.test_adversarial import in_process_relay, relay_session, sync_endpoint
from tests.test_session import session
from transport import ws as ws_module
from transport.session import ACK_DELAY_S
from transport.ws import MAX_INBOX, MAX_INBOX_BYTES, connect, drive, server_socket, sync_url


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


def test_the_reader_stops_once_the_inbox_holds_its_bytes() -> None:
    """A peer streams 4 MiB frames faster than the session takes them: the reader leaves the
    socket unread once ``MAX_INBOX_BYTES`` wait (long before ``MAX_INBOX`` frames), and reads
    on when the loop has made room."""
    frame, count = os.urandom(4 * 1024 * 1024), 10
    assert count < MAX_INBOX and count * len(frame) > 2 * MAX_INBOX_BYTES

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = server_socket()
        await ws.prepare(request)
        for _ in range(count):
            await ws.send_bytes(frame)
        await ws.receive()  # until the client closes
        return ws

    async def run() -> None:
        async with sync_endpoint(handle) as url, aiohttp.ClientSession() as http:
            ws = await connect(http, sync_url(url, bytes(32)))
            inbox: deque[aiohttp.WSMessage] = deque()
            wake, room = asyncio.Event(), asyncio.Event()
            reader = asyncio.ensure_future(ws_module._read(ws, inbox, wake, room))
            await until(lambda: len(inbox) * len(frame) >= MAX_INBOX_BYTES, 10)
            await asyncio.sleep(0.3)  # time enough to read every frame, were it allowed to
            assert len(inbox) * len(frame) == MAX_INBOX_BYTES  # 4 frames, then it waits
            received = 0
            while received < count:  # the loop's part: drain, then make room
                await until(lambda: bool(inbox), 10)
                received += len(inbox)
                assert all(m.data == frame for m in inbox)
                inbox.clear()
                room.set()
            assert received == count
            reader.cancel()
            await ws.close()

    asyncio.run(run())
