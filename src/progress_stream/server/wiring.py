"""The one wiring point: :func:`build` makes every component of a server exactly once, in order, and
hands them over as one typed :class:`Services` to the ASGI app and the native WebSocket plane.

Everything that can refuse the start (a model or state file this server cannot use, a shared store
that cannot be reached) is met here, before anything listens, so ``progress serve`` exits with one line.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from progress_stream.contract.wire import Wire
from progress_stream.engine.durability.store import RedisStore, StoreUnavailable
from progress_stream.engine.engine import Engine
from progress_stream.engine.runtime import CellRuntime
from progress_stream.engine.streams import StreamTable
from progress_stream.server.answers import Answers
from progress_stream.server.board import Board
from progress_stream.server.edge import Admission
from progress_stream.server.settings import Settings, is_loopback

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Services:
    """A server's components. ``ready``: started and warmed up; ``stopping``: a stop has begun (long-lived
    responses such as the board's event stream end at once instead of holding the graceful shutdown)."""

    settings: Settings
    runtime: CellRuntime
    wire: Wire
    engine: Engine
    admission: Admission
    answers: Answers
    board: Board
    ready: bool = False
    stopping: bool = False


def build(settings: Settings) -> Services:
    """Load the model (once), warm it up, restore the state file, reach the shared store; raises
    ``ModelError``, ``SnapshotError`` or ``StoreUnavailable`` for a start that must not go on."""
    if not is_loopback(settings.host) and not settings.tenants():
        log.warning(
            "serving on %s with no API key: anyone who can reach it may use every stream "
            "(set PROGRESS_API_KEY or PROGRESS_API_KEYS)",
            settings.host,
        )
    runtime = CellRuntime(settings.model_path, settings.providers, settings.threads)
    warm_up(runtime, settings.max_batch)
    store = make_store(settings, runtime)
    engine = Engine(runtime, settings.engine_config(), store=store)
    if settings.state_file is not None:
        engine.restore(settings.state_file)
    if store is not None:
        reach(store, settings.state_required)
    return Services(
        settings=settings,
        runtime=runtime,
        wire=Wire(
            runtime.embedding_dim,
            settings.max_frames_per_message,
            settings.max_frames_stateless,
            settings.max_frames_per_tick,
        ),
        engine=engine,
        admission=Admission(settings.tenants(), settings.allowed_origins, settings.hosts),
        answers=Answers(engine.metrics.errors),
        board=Board(engine.table, settings.board_max_subscribers, engine.metrics.registry),
    )


def make_store(settings: Settings, runtime: CellRuntime) -> RedisStore | None:
    """The shared state store the settings name, if any (its layout follows the model's state width)."""
    if settings.redis_url is None:
        return None
    layout = StreamTable.layout(runtime.hidden_dim, settings.retained_window)
    return RedisStore(
        settings.redis_url,
        settings.state_password,
        runtime.checkpoint,
        layout,
        settings.idle_ttl_s,
        settings.state_prefix,
    )


def reach(store: RedisStore, required: bool) -> None:
    """Ask the store once before serving; unreachable fails the start unless ``required`` is false (the
    server then starts with durability degraded). Its connections are closed again: the server's loop
    opens its own."""

    async def probe() -> None:
        try:
            await store.check()
        finally:
            await store.disconnect()

    try:
        asyncio.run(probe())
    except StoreUnavailable as exc:
        if required:
            raise
        log.warning("%s; starting anyway (PROGRESS_STATE_REQUIRED=false), durability degraded", exc)


def warm_up(runtime: CellRuntime, max_batch: int) -> None:
    """Run the cell once at a few batch sizes so the first requests don't pay for allocation."""
    for batch in sorted({1, min(16, max_batch), max_batch}):
        runtime.step(
            np.zeros((batch, runtime.embedding_dim), np.float32),
            np.zeros(batch, np.int64),
            np.zeros((batch, runtime.hidden_dim), np.float32),
        )
