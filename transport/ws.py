"""aiohttp WebSocket adapter: moves frames between a socket and a ``Session``.

The same loop runs on both ends (client or server side, replica or relay): read a frame,
feed it to the session, send what comes back; when the local log grows, let the session
push; every second, let it check its timeouts. A ``ProtocolError`` becomes an ERROR frame
and a WebSocket close with the matching code; the reason is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import WSMsgType, web

from transport.messages import MAX_FRAME_BYTES, CloseCode, ProtocolError
from transport.session import ACK_TIMEOUT_S, Session

log = logging.getLogger("shoal.transport")

SYNC_PATH: Final = "/v1/vaults/{vault}/sync"
HEARTBEAT_S: Final = 20.0
TICK_S: Final = 1.0
SEND_TIMEOUT_S: Final = ACK_TIMEOUT_S
"""A frame the peer's socket has not taken in this long: the peer stalls (code TIMEOUT)."""
CLOSE_TIMEOUT_S: Final = 5.0
MAX_INBOX: Final = 16
"""Frames read ahead of the session at most (then the socket is left unread)..."""
MAX_INBOX_BYTES: Final = 16 * 1024 * 1024
"""...and bytes: 16 batches of big events would be 64 MiB per connection (one frame of
``MAX_FRAME_BYTES`` is still taken whole)."""
_LAST_MESSAGES: Final = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)

WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


@dataclass
class Ending:
    """How a connection ended: our close code (or the peer's) and why."""

    code: int
    reason: str
    by_peer: bool


def sync_url(base: str, vault: bytes) -> str:
    """``http://host:port`` (or ws://, https://) -> the vault's sync endpoint."""
    base = base.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    elif base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif not base.startswith(("ws://", "wss://")):
        base = "ws://" + base
    return base + SYNC_PATH.format(vault=vault.hex())


async def drive(
    ws: WebSocket,
    session: Session,
    changed: asyncio.Event | None = None,
    on_stored: Callable[[int], None] | None = None,
    until_settled: bool = False,
) -> Ending:
    """Run ``session`` over ``ws`` until either side closes (or, optionally, it settles)."""
    try:
        for frame in session.start():
            await ws.send_bytes(frame)
        return await _loop(ws, session, changed, on_stored, until_settled)
    except ProtocolError as exc:
        by_peer = exc.reason.startswith("peer closed")
        (log.info if by_peer else log.warning)("connection to %s ends: %s", _peer(session), exc)
        if not ws.closed:
            # A peer that stopped reading takes neither of these: give up on them in time.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.send_bytes(session.error_frame(exc.code, exc.reason))
                    await ws.close(code=int(exc.code), message=exc.reason[:120].encode())
        return Ending(int(exc.code), exc.reason, by_peer=by_peer)
    except (ConnectionError, aiohttp.ClientError) as exc:
        return Ending(int(CloseCode.GOING_AWAY), f"connection lost: {exc}", by_peer=True)


async def _loop(
    ws: WebSocket,
    session: Session,
    changed: asyncio.Event | None,
    on_stored: Callable[[int], None] | None,
    until_settled: bool,
) -> Ending:
    """One wake-up event for everything: a frame arrived, the local log grew, a tick passed.

    A reader task queues frames and sets ``wake`` (the caller's ``changed``: the loop owns
    it), so waiting costs one ``Event.wait`` per round instead of an ``asyncio.wait`` over
    fresh tasks — on a relay with dozens of connections that bookkeeping was most of the
    time spent per delivered event. The queue is bounded: the reader stops reading (and TCP
    pushes back on the peer) while ``MAX_INBOX`` frames or ``MAX_INBOX_BYTES`` wait.
    """
    wake = changed if changed is not None else asyncio.Event()
    inbox: deque[aiohttp.WSMessage] = deque()
    room = asyncio.Event()
    loop = asyncio.get_running_loop()

    timer: list[asyncio.TimerHandle] = []
    ack_timer = _AckTimer(loop, wake)
    sender = _Sender(ws, loop)

    def tick() -> None:
        wake.set()
        sender.check_stall()
        timer[:] = [loop.call_later(TICK_S, tick)]

    lost, send = sender.lost, sender.send
    tick()
    reader = asyncio.ensure_future(_read(ws, inbox, wake, room))
    try:
        while True:
            await wake.wait()
            wake.clear()
            while inbox:
                message = inbox.popleft()
                if message.type != WSMsgType.BINARY:
                    return _ending(ws, message)
                before = session.stats.events_stored
                await send(session.receive(message.data))
                if on_stored is not None and session.stats.events_stored > before:
                    on_stored(session.stats.events_stored - before)
            room.set()
            if lost:
                raise lost[0]
            if reader.done():
                reader.result()  # the reader failed (a lost connection): raise it here
                raise ConnectionError("the socket reader stopped")
            await send(session.local_changed())
            await send(session.due_acks())
            if lost:
                raise lost[0]
            ack_timer.wake_in(session.ack_wait())
            session.check_timeouts()
            if until_settled and session.settled:
                await send(session.due_acks(now=True))  # the peer learns all is stored
                await ws.close(code=int(CloseCode.NORMAL), message=b"settled")
                return Ending(int(CloseCode.NORMAL), "settled", by_peer=False)
    finally:
        timer[0].cancel()
        ack_timer.wake_in(None)
        reader.cancel()


class _AckTimer:
    """Wakes the loop when a delayed ACK falls due (``Session.ack_wait``), at most once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        self.loop, self.wake = loop, wake
        self.handle: asyncio.TimerHandle | None = None

    def wake_in(self, seconds: float | None) -> None:
        """Arm for ``seconds`` unless armed; None disarms (the ACK went out with company)."""
        if seconds is None:
            if self.handle is not None:
                self.handle.cancel()
                self.handle = None
        elif self.handle is None:
            self.handle = self.loop.call_later(seconds, self._fire)

    def _fire(self) -> None:
        self.handle = None
        self.wake.set()


class _Sender:
    """Sends frames for one connection's loop, and bounds how long one send may wait.

    A send waits while the peer's socket takes nothing; the session's ack timeout cannot run
    meanwhile, so a stalled send ends the connection with TIMEOUT after ``SEND_TIMEOUT_S``.
    That is checked by the loop's once-a-second tick (``check_stall``): a timeout armed per
    frame cost a busy relay ~7 % of its time.
    """

    def __init__(self, ws: WebSocket, loop: asyncio.AbstractEventLoop) -> None:
        self.ws, self.loop = ws, loop
        self.task = asyncio.current_task()
        self.lost: list[ConnectionError] = []
        self.since: float | None = None  # when the send in progress began
        self.stalled = False

    async def send(self, frames: list[bytes]) -> None:
        """Send, but on a lost connection keep reading: the frames the peer sent before it
        closed (an ERROR saying why, say) are still in the inbox and tell the real story."""
        for frame in frames:
            if self.lost:
                return
            self.since = self.loop.time()
            try:
                await self.ws.send_bytes(frame)
            except ConnectionError as exc:
                self.lost.append(exc)
            except asyncio.CancelledError:
                if not self.stalled or self.task is None:
                    raise
                self.task.uncancel()
                raise ProtocolError(CloseCode.TIMEOUT, "peer stopped reading") from None
            finally:
                self.since = None

    def check_stall(self) -> None:
        waited = 0.0 if self.since is None else self.loop.time() - self.since
        if waited > SEND_TIMEOUT_S and self.task is not None and not self.stalled:
            self.stalled = True
            self.task.cancel()


def _ending(ws: WebSocket, message: aiohttp.WSMessage) -> Ending:
    """What a non-binary frame means: the peer closed, the socket failed, or a protocol error."""
    if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
        code = ws.close_code or int(CloseCode.GOING_AWAY)
        return Ending(code, str(message.extra or "closed by peer"), by_peer=True)
    if message.type == WSMsgType.ERROR:
        return Ending(int(CloseCode.GOING_AWAY), f"socket error: {ws.exception()}", by_peer=True)
    raise ProtocolError(CloseCode.MALFORMED, "text frames are not spoken")


async def _read(
    ws: WebSocket, inbox: deque[aiohttp.WSMessage], wake: asyncio.Event, room: asyncio.Event
) -> None:
    """Queue every frame for the loop until the socket closes; always wake it at the end."""
    try:
        while True:
            message = await ws.receive()
            inbox.append(message)
            wake.set()
            if message.type in _LAST_MESSAGES:
                return
            if len(inbox) >= MAX_INBOX or _queued_bytes(inbox) >= MAX_INBOX_BYTES:
                room.clear()
                await room.wait()
    finally:
        wake.set()


def _queued_bytes(inbox: deque[aiohttp.WSMessage]) -> int:
    return sum(len(m.data) for m in inbox if type(m.data) is bytes)


def _peer(session: Session) -> str:
    return session.peer.hex()[:12] if session.peer else "unauthenticated peer"


async def connect(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    """Open a sync WebSocket with our frame limit and heartbeat."""
    return await http.ws_connect(
        url,
        max_msg_size=MAX_FRAME_BYTES,
        heartbeat=HEARTBEAT_S,
        autoping=True,
        compress=0,  # ciphertext does not compress: deflate would only burn CPU both ways
    )


def server_socket() -> web.WebSocketResponse:
    return web.WebSocketResponse(
        max_msg_size=MAX_FRAME_BYTES, heartbeat=HEARTBEAT_S, compress=False
    )
