"""What both WebSocket data planes must do alike beyond the message-by-message protocol: messages
sent ahead, fragmented messages, one stream over HTTP and the socket in turn, a stop (1012), broken
framing (each with its RFC 6455 close code) and the bounds of binary values."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from progress_stream.contract.binary import binary_request, parse_binary_reply
from progress_stream.contract.wire import WS_SUBPROTOCOL
from progress_stream.server.process import ServerProcess
from tests.conftest import frames, offline


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
    np.testing.assert_allclose(binary[2], runtime.run_action(x)[0], atol=1e-5)


def test_one_stream_over_http_and_the_socket_in_turn(ws_server, runtime):
    x = frames(np.random.default_rng(23), 12)
    http = httpx.Client(base_url=ws_server.url)
    assert http.put("/v1/streams/turns").status_code == 201
    out = http.post("/v1/streams/turns/frames", json={"seq": 0, "embeddings": x[:4].tolist()}).json()["progress"]

    async def socket_part() -> np.ndarray:
        async with connect(f"{ws_server.ws_url}/v1/streams/turns/ws", subprotocols=[WS_SUBPROTOCOL]) as ws:
            assert ws.subprotocol == WS_SUBPROTOCOL  # a browser needs the one it offered selected
            await ws.send(binary_request(4, x[4:8]))
            return parse_binary_reply(await ws.recv())[2].progress

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


class Recorder(WSListener):
    """A raw client (picows) that can send what the websockets client never would; keeps the close code."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.close_code: int | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            self.close_code = frame.get_close_code().value
            transport.disconnect()
        else:
            self.messages.append(frame.get_payload_as_bytes())


BROKEN_FRAMING = {
    "text that is not UTF-8": (1007, [(WSMsgType.TEXT, b'{"seq": 1, "embeddings": "\xff\xfe"}', True)]),
    "a continuation of nothing": (1002, [(WSMsgType.CONTINUATION, b"[0.0]}", True)]),
    "a new message inside a fragmented one": (
        1002,
        [(WSMsgType.TEXT, b'{"seq": 1, ', False), (WSMsgType.BINARY, b"\0" * 16, True)],
    ),
    # the shared servers take 16 frames of 16 numbers: a message of at most 7,744 bytes
    "fragments adding up past the message limit": (
        1009,
        [(WSMsgType.BINARY, b"\0" * 4000, False), *[(WSMsgType.CONTINUATION, b"\0" * 4000, False)] * 2],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_FRAMING))
def test_broken_framing_closes_with_its_code_and_leaves_every_stream_as_it_was(ws_server, case):
    code, sends = BROKEN_FRAMING[case]
    x = frames(np.random.default_rng(25), 2)
    http = httpx.Client(base_url=ws_server.url)
    sid = f"framing-{sorted(BROKEN_FRAMING).index(case)}"
    http.put("/v1/streams/bystander")
    assert http.post("/v1/streams/bystander/frames", json={"seq": 0, "embeddings": x.tolist()}).status_code == 200
    before = {k: http.get("/v1/streams/bystander").json()[k] for k in ("next_seq", "processed_seq", "step")}

    async def main() -> Recorder:
        transport, recorder = await ws_connect(Recorder, f"{ws_server.ws_url}/v1/streams/{sid}/ws")
        transport.send(WSMsgType.BINARY, binary_request(0, x[:1]))  # one message accepted first
        while not recorder.messages:
            await asyncio.sleep(0.01)
        for kind, data, fin in sends:
            transport.send(kind, data, fin)
        await asyncio.wait_for(transport.wait_disconnected(), 10)
        return recorder

    recorder = asyncio.run(main())
    assert recorder.close_code == code
    assert parse_binary_reply(recorder.messages[0])[:2] == (0, 1) and len(recorder.messages) == 1
    assert http.get(f"/v1/streams/{sid}").json()["next_seq"] == 1  # nothing of the broken message accepted
    after = {k: http.get("/v1/streams/bystander").json()[k] for k in ("next_seq", "processed_seq", "step")}
    assert after == before
    http.delete(f"/v1/streams/{sid}")
    http.delete("/v1/streams/bystander")


def test_binary_values_are_bounded_exactly_and_a_refusal_accepts_nothing(ws_server, runtime):
    """Large but valid values pass (the sum-of-squares shortcut falls back to the exact check);
    NaN, beyond ±1e6 and values whose squares overflow are refused, naming the row."""
    big = np.full((1, 16), 9e5, np.float32)  # within the bound, sum of squares far beyond 1e12
    beyond = np.zeros((2, 16), np.float32)
    beyond[1, 3] = 1.5e6
    overflowing = np.full((1, 16), 3e38, np.float32)

    async def main() -> list:
        async with connect(f"{ws_server.ws_url}/v1/streams/bounds/ws", compression=None) as ws:
            answers = []
            for seq, chunk in ((0, big), (1, beyond), (1, overflowing)):
                await ws.send(binary_request(seq, chunk))
                answers.append(await ws.recv())
            return answers

    accepted, refused_row, refused_overflow = asyncio.run(main())
    np.testing.assert_allclose(parse_binary_reply(accepted)[2], runtime.run_action(big)[0], atol=1e-5)
    for answer, field in ((refused_row, "embeddings[1]"), (refused_overflow, "embeddings[0]")):
        error = orjson.loads(answer)["error"]
        assert error["code"] == "not_finite" and error["field"] == field
    assert httpx.get(f"{ws_server.url}/v1/streams/bounds").json()["next_seq"] == 1
    httpx.delete(f"{ws_server.url}/v1/streams/bounds")
