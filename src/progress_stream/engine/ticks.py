"""One future for the chunks of many streams: how a multiplexed message (a gateway's tick) is answered.

The stream table answers each chunk through what it was accepted with; for a single stream's message
that is an asyncio future, for a tick's entry a :class:`Part`, which stores the result in its
:class:`Tick` and resolves the tick's one future once every entry is answered. So a tick of a hundred
streams costs one future, not a hundred.
"""

from __future__ import annotations

import asyncio
from typing import Any

from progress_stream.contract.replies import Estimates


class Tick:
    """The answers to ``n`` entries: each its :class:`Estimates` or the exception that refused it."""

    __slots__ = ("future", "left", "results")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int):
        self.future: asyncio.Future[list[Any]] = loop.create_future()
        self.results: list[Any] = [None] * n
        self.left = n
        if n == 0:
            self.future.set_result(self.results)

    def part(self, index: int) -> Part:
        return Part(self, index)

    def settle(self, index: int, value: Estimates | BaseException) -> None:
        self.results[index] = value
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(self.results)

    def follow(self, index: int, waiter: asyncio.Future | Part) -> None:
        """Answer entry ``index`` with what another message's pending chunk gets (a retry of it)."""
        if isinstance(waiter, Part):
            waiter.tick.future.add_done_callback(lambda _: self.settle(index, waiter.tick.results[waiter.index]))
            return
        waiter.add_done_callback(lambda f: self.settle(index, f.exception() or f.result()))


class Part:
    """One entry of a tick, as the stream table sees it: it is completed like a future."""

    __slots__ = ("index", "settled", "tick")

    def __init__(self, tick: Tick, index: int):
        self.tick = tick
        self.index = index
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, result: Estimates) -> None:
        self.settled = True
        self.tick.settle(self.index, result)

    def set_exception(self, exc: BaseException) -> None:
        self.settled = True
        self.tick.settle(self.index, exc)
