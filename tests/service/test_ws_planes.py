"""What both WebSocket data planes must do alike beyond the message-by-message protocol: messages
sent ahead, fragmented messages, one stream over HTTP and the socket in turn, and a stop (1012)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.process import ServerProcess
from service.protocol import WS_SUBPROTOCOL, binary_request, parse_binary_reply
from tests.service.conftest import frames, offline


def test_messages_sent_ahead_are_answered_in_order(ws_server, runtime):
    x = frames(np.random.default_rng(21), 40)

    async def main() -> list:
        async with connect(f"{ws_server.ws_url}/v1/streams/ahead/ws", compression=None) as ws:
            for i in range(0, 40, 2):  # all twenty before reading any answer
                await ws.send(binary_request(i, x[i : i + 2]))
            return [parse_binary_reply(await ws.recv()) for _ in range(20)]

    replies = asyncio.run(main())
    assert [(seq, next_seq) for seq, next_seq, _ in replies] == [(i, i + 2) for i in range(0, 40, 2)]
    np.testing.assert_allclose(np.concatenate([p for _, _, p in replies]), offline(runtime, x), atol=1e-5)


def test_a_fragmented_message_is_one_message(ws_server, runtime):
    x = frames(np.random.default_rng(22), 3)

    async def main() -> tuple:
        async with connect(f"{ws_server.ws_url}/v1/streams/fragments/ws", compression=None) as ws:
            data = binary_request(0, x)
            await ws.send([data[:7], data[7:100], data[100:]])  # one message in three frames
            binary = parse_binary_reply(await ws.recv())
            text = orjson.dumps({"seq": 3, "embeddings": x.tolist()}).decode()
            await ws.send([text[:10], text[10:]])
            return binary, orjson.loads(await ws.recv())

    binary, text = asyncio.run(main())
    assert binary[:2] == (0, 3) and text["seq"] == 3 and text["next_seq"] == 6
    np.testing.assert_allclose(binary[2], runtime.run_action(x), atol=1e-5)


def test_one_stream_over_http_and_the_socket_in_turn(ws_server, runtime):
    x = frames(np.random.default_rng(23), 12)
    http = httpx.Client(base_url=ws_server.url)
    assert http.put("/v1/streams/turns").status_code == 201
    out = http.post("/v1/streams/turns/frames", json={"seq": 0, "embeddings": x[:4].tolist()}).json()["progress"]

    async def socket_part() -> np.ndarray:
        async with connect(f"{ws_server.ws_url}/v1/streams/turns/ws", subprotocols=[WS_SUBPROTOCOL]) as ws:
            assert ws.subprotocol == WS_SUBPROTOCOL  # a browser needs the one it offered selected
            await ws.send(binary_request(4, x[4:8]))
            return parse_binary_reply(await ws.recv())[2]

    out += asyncio.run(socket_part()).tolist()
    out += http.post("/v1/streams/turns/frames", json={"seq": 8, "embeddings": x[8:].tolist()}).json()["progress"]
    np.testing.assert_allclose(out, offline(runtime, x), atol=1e-5)
    http.delete("/v1/streams/turns")


def test_a_stop_closes_open_sockets_with_1012_after_answering(tiny_model, tmp_path, plane):
    srv = ServerProcess(tiny_model, tmp_path / "log", ws_plane=plane).start()
    x = frames(np.random.default_rng(24), 2)

    async def main() -> int:
        async with connect(f"{srv.ws_url}/v1/streams/stopping/ws", compression=None) as ws:
            await ws.send(binary_request(0, x))
            assert parse_binary_reply(await ws.recv())[:2] == (0, 2)
            srv.proc.terminate()
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 15)
            return closed.value.rcvd.code

    assert asyncio.run(main()) == 1012
    srv.proc.wait(timeout=30)
    assert "stopped: every accepted frame processed" in srv.log.read_text()
