"""Async subscription to applied events: what sync and processors listen to.

A subscriber does not get a queue that can overflow; it gets a cursor (the last local rowid
it has seen) and a wake-up. On each wake-up it reads what was applied after its cursor from
the store, so a slow subscriber never loses an event and a new one can start from any point.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from engine.views import LogRow, changes_after

if TYPE_CHECKING:
    from engine.engine import Engine


class Subscription:
    """``async for row in engine.subscribe(): ...`` — every applied event after ``after``."""

    def __init__(self, engine: Engine, after: int) -> None:
        self._engine = engine
        self.cursor = after
        self._wakeup = asyncio.Event()
        self._buffer: deque[LogRow] = deque()
        self._closed = False
        engine.add_wakeup(self._wakeup)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> LogRow:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            rows = changes_after(self._engine.store, self.cursor)
            if rows:
                self._buffer.extend(rows)
                break
            await self._wakeup.wait()
            self._wakeup.clear()
        row = self._buffer.popleft()
        self.cursor = row.rowid
        return row

    def close(self) -> None:
        self._closed = True
        self._engine.remove_wakeup(self._wakeup)
        self._wakeup.set()
