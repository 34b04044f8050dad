"""A server that stalls (SIGSTOP: the kernel still accepts the bytes, nothing answers) costs a WebSocket
client its connection, not its chunk: the wait for a reply is bounded, and the chunk goes again on a new
connection once the server is back."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from progress_stream.client import SyncGateway, SyncWsStreamSession, WsStreamSession
from progress_stream.server.process import ServerProcess
from tests.conftest import frames, offline

#: Seconds the server is stopped; several of the clients' timeouts.
STALL = 1.5
TIMEOUT = 0.3


@pytest.fixture(scope="module")
def stallable(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_model, tmp_path_factory.mktemp("stall") / "server.log") as srv:
        yield srv


def stall(srv: ServerProcess) -> threading.Timer:
    """Stop the server now and let it go on after :data:`STALL` seconds."""
    srv.proc.send_signal(signal.SIGSTOP)
    timer = threading.Timer(STALL, srv.proc.send_signal, (signal.SIGCONT,))
    timer.start()
    return timer


def test_a_session_drops_a_stalled_connection_and_sends_the_chunk_again(stallable, runtime):
    x = frames(np.random.default_rng(31), 8)
    with SyncWsStreamSession(stallable.ws_url, timeout=TIMEOUT) as session:
        first = session.send(x[:4])
        stalled = session.conn
        stall(stallable)
        second = session.send(x[4:])
        assert session.conn is not stalled  # the reply was not waited for on the stalled connection
    np.testing.assert_allclose(np.concatenate([first.progress, second.progress]), offline(runtime, x), atol=1e-5)


def test_the_asyncio_session_bounds_its_wait_too(stallable, runtime):
    x = frames(np.random.default_rng(32), 8)

    async def run() -> tuple[np.ndarray, bool]:
        session = await WsStreamSession.open(stallable.ws_url, timeout=TIMEOUT)
        try:
            first = await session.send(x[:4])
            stalled = session.conn
            stall(stallable)
            second = await session.send(x[4:])
            return np.concatenate([first.progress, second.progress]), session.conn is not stalled
        finally:
            await session.aclose()

    progress, replaced = asyncio.run(run())
    assert replaced
    np.testing.assert_allclose(progress, offline(runtime, x), atol=1e-5)


def test_a_gateway_drops_a_stalled_connection_and_sends_the_tick_again(stallable, runtime):
    rng = np.random.default_rng(33)
    x = {sid: frames(rng, 6) for sid in ("a", "b")}
    with SyncGateway(stallable.ws_url, timeout=TIMEOUT) as gw:
        first = gw.tick({sid: v[:3] for sid, v in x.items()})
        stalled = gw.conn
        stall(stallable)
        second = gw.tick({sid: v[3:] for sid, v in x.items()})
        assert gw.conn is not stalled
    for sid, v in x.items():
        got = np.concatenate([first[sid].progress, second[sid].progress])
        np.testing.assert_allclose(got, offline(runtime, v), atol=1e-5)


def test_an_attach_that_times_out_leaves_no_late_reply_for_the_next_tick(stallable, runtime):
    x = frames(np.random.default_rng(34), 6)
    with SyncGateway(stallable.ws_url, timeout=TIMEOUT) as gw:
        gw.attach("c")
        timer = stall(stallable)
        with pytest.raises(TimeoutError):
            gw.attach("d")  # its reply comes once the server goes on, on a connection that must be gone
        stalled_at = gw.conn
        timer.join()
        answers = gw.tick({"c": x[:3], "d": x[3:]})
    assert stalled_at is None
    np.testing.assert_allclose(answers["c"].progress, offline(runtime, x[:3]), atol=1e-5)
    np.testing.assert_allclose(answers["d"].progress, offline(runtime, x[3:]), atol=1e-5)
