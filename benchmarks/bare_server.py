"""The bare endpoints of the serving benchmark: same parsers and replies as the service, no inference.

Each parses a WebSocket message exactly as the service does (the same :class:`Wire`: pydantic's strict
JSON validation, or the binary header + frombuffer + checks) and answers a reply of the same shape
with zeros. ``--plane asgi``: uvicorn + FastAPI with the service's server settings; ``--plane
native``: a picows server (what :mod:`progress_stream.server.sockets.native` builds on), also answering ``GET /readyz``.
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import uvicorn
import uvloop
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)
from prometheus_client import CollectorRegistry, Counter

from progress_stream.contract.binary import binary_reply
from progress_stream.contract.replies import Estimates, SocketReply
from progress_stream.contract.wire import Wire
from progress_stream.server.answers import Answers
from progress_stream.server.serve import uvicorn_config
from progress_stream.server.settings import Settings


def answer(wire: Wire, data: bytes | str, binary: bool) -> bytes:
    """Parse like the service, answer zeros in the service's reply shape (a band and the time to finish)."""
    if binary:
        seq, frames, _ = wire.parse_binary(data)
        return binary_reply(seq, seq + len(frames), zeros(len(frames)))
    seq, frames, _ = wire.parse_frames(data)
    return SocketReply.encode(seq, zeros(len(frames)), seq + len(frames))


def zeros(n: int) -> Estimates:
    return Estimates.at(np.zeros(n, np.float32), np.zeros((n, 2), np.float32), np.ones(n))


def bare_app(wire: Wire) -> FastAPI:
    app = FastAPI()
    app.get("/readyz")(lambda: "ok")

    @app.websocket("/v1/streams/{stream_id}/ws")
    async def bare(websocket: WebSocket, stream_id: str) -> None:
        await websocket.accept()
        await asyncio.create_task(serve(websocket))

    async def serve(websocket: WebSocket) -> None:
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    await websocket.send_bytes(answer(wire, message["bytes"], True))
                else:
                    await websocket.send_text(answer(wire, message["text"], False).decode())
        except WebSocketDisconnect:
            return

    return app


class BareSocket(WSListener):
    def __init__(self, wire: Wire):
        self.wire = wire

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.BINARY:
            transport.send(WSMsgType.BINARY, answer(self.wire, frame.get_payload_as_bytes(), True))
        elif kind is WSMsgType.TEXT:
            transport.send(WSMsgType.TEXT, answer(self.wire, frame.get_payload_as_bytes().decode(), False))
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


async def serve_native(wire: Wire, host: str, port: int) -> None:
    def route(request: WSUpgradeRequest) -> BareSocket | WSUpgradeResponseWithListener | None:
        if request.path == b"/readyz":
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok"), None)
        return BareSocket(wire)

    server = await ws_create_server(route, host, port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--plane", choices=["asgi", "native"], default="asgi")
    args = parser.parse_args()
    settings = Settings(port=args.port)
    wire = Wire(args.dim, settings.max_frames_per_message, settings.max_frames_stateless)
    if args.plane == "native":
        uvloop.run(serve_native(wire, settings.host, args.port))
    else:
        max_size = wire.max_body_bytes(settings.max_frames_per_message)
        answers = Answers(Counter("errors", "refusals at the edge", ["code"], registry=CollectorRegistry()))
        config = uvicorn_config(bare_app(wire), settings, (max_size, max_size), answers, log_level="warning")
        uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
