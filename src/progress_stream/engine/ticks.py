"""One future for the chunks of many streams: how a multiplexed message (a gateway's tick) is answered.

The stream table answers each chunk through what it was accepted with; for a single stream's message
that is an asyncio future, for a tick's entry a :class:`Part`, which stores the result in its
:class:`Tick` and resolves the tick's one future once every entry is answered. So a tick of a hundred
streams costs one future, not a hundred.

The usual tick (every entry continues an idle stream with the same number of frames) goes further: it is
one :class:`Block`, accepted, batched and answered as arrays over its rows, with no Python object per entry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

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
        """Answer entry ``index`` with what a pending chunk gets (a retry of it: from another message, or an
        earlier entry of this one)."""
        if isinstance(waiter, Part):
            waiter.follow(lambda value: self.settle(index, value))
            return
        waiter.add_done_callback(lambda f: self.settle(index, f.exception() or f.result()))


class Part:
    """One entry of a tick, as the stream table sees it: it is completed like a future. A retry of its chunk
    follows the entry itself, not its whole tick (which may be the retry's own: an entry sent twice)."""

    __slots__ = ("followers", "index", "settled", "tick")

    def __init__(self, tick: Tick, index: int):
        self.tick = tick
        self.index = index
        self.settled = False
        self.followers: list[Callable[[Any], None]] | None = None

    def done(self) -> bool:
        return self.settled

    def set_result(self, result: Estimates) -> None:
        self._settle(result)

    def set_exception(self, exc: BaseException) -> None:
        self._settle(exc)

    def _settle(self, value: Estimates | BaseException) -> None:
        self.settled = True
        self.tick.settle(self.index, value)
        for follower in self.followers or ():
            follower(value)

    def follow(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback`` with this entry's answer, now if it has one."""
        if self.settled:
            callback(self.tick.results[self.index])
        elif self.followers is None:
            self.followers = [callback]
        else:
            self.followers.append(callback)


class Block:
    """``k`` frames of each of many idle streams (one per row, each stream once), from one message: they
    enter a batch together, their answers are computed as one array, and ``future`` yields them, as the
    :class:`Estimates` of every row ``(rows, k)``, or (some row's stream deleted meanwhile, or frame rates that
    differ between rows) one :class:`Estimates` or exception per row."""

    __slots__ = ("frames", "future", "resets", "seqs", "slots", "streams")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        streams: list,
        slots: np.ndarray,
        seqs: np.ndarray,
        frames: np.ndarray,
        resets: np.ndarray,
    ):
        self.streams = streams
        self.slots = slots
        self.seqs = seqs.astype(np.int64)
        self.frames = frames  # (rows, k, D)
        self.resets = resets
        self.future: asyncio.Future[Estimates | list[Any]] = loop.create_future()

    def __len__(self) -> int:
        return len(self.streams)

    @property
    def steps(self) -> int:
        return self.frames.shape[1]

    def settle(self, value: Estimates | list[Any]) -> None:
        self.future.set_result(value)  # never cancelled: its message awaits it shielded

    def waiter(self, stream: Any) -> asyncio.Future:
        """What a retry of ``stream``'s row gets: a future of that row's answers."""
        row = self.streams.index(stream)
        future = self.future.get_loop().create_future()

        def answer(done: asyncio.Future) -> None:
            if future.done():
                return
            value = done.result()[row]
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

        self.future.add_done_callback(answer)
        return future
