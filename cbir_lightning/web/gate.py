"""A bound on the searches running at once, so memory stays bounded under many concurrent uploads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import HTTPException


class Gate:
    """At most ``limit`` holders at once; up to ``queue`` more wait (at most ``wait_s`` seconds each).

    A request arriving when ``queue`` are already waiting, or one that waited ``wait_s`` in vain, gets
    503 with ``Retry-After`` at once, so waiting requests (each holding its parsed body) stay bounded too.
    """

    def __init__(self, limit: int, queue: int, wait_s: float = 30.0) -> None:
        if limit < 1 or queue < 0:
            raise ValueError(f"a gate needs limit >= 1 and queue >= 0, got {limit} and {queue}")
        self.semaphore = asyncio.Semaphore(limit)
        self.queue = queue
        self.wait_s = wait_s
        self.waiting = 0

    @staticmethod
    def busy(why: str) -> HTTPException:
        return HTTPException(503, f"server busy ({why}); retry in a moment", headers={"Retry-After": "1"})

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.semaphore.locked() and self.waiting >= self.queue:
            raise self.busy(f"{self.waiting} searches already waiting")
        self.waiting += 1
        try:
            await asyncio.wait_for(self.semaphore.acquire(), self.wait_s)
        except TimeoutError:
            raise self.busy(f"no search slot freed within {self.wait_s:g} s") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.semaphore.release()
