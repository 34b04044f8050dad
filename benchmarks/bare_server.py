"""The bare endpoint of the serving benchmark: same server settings, same parsers, no inference.

It parses each WebSocket message exactly as the service does (the same :class:`Wire`: pydantic's
strict JSON validation, or the binary header + frombuffer + checks) and answers a reply of the same shape with zeros.
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from service.protocol import Wire, binary_reply
from service.server import uvicorn_config
from service.settings import Settings


def bare_app(wire: Wire) -> FastAPI:
    app = FastAPI()

    @app.websocket("/v1/streams/{stream_id}/ws")
    async def bare(websocket: WebSocket, stream_id: str) -> None:
        await websocket.accept()
        await asyncio.create_task(answer(websocket))

    async def answer(websocket: WebSocket) -> None:
        next_seq = 0
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    seq, frames, _ = wire.parse_binary(message["bytes"])
                    next_seq = seq + len(frames)
                    await websocket.send_bytes(binary_reply(seq, next_seq, np.zeros(len(frames), np.float32)))
                else:
                    seq, frames, _ = wire.parse_frames(message["text"])
                    next_seq = seq + len(frames)
                    reply = {"seq": seq, "progress": np.zeros(len(frames), np.float32), "next_seq": next_seq}
                    await websocket.send_text(orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        except WebSocketDisconnect:
            return

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    settings = Settings(port=args.port)
    wire = Wire(args.dim, settings.max_frames_per_message, settings.max_frames_stateless)
    uvicorn.Server(uvicorn_config(bare_app(wire), settings, wire, "warning")).run()


if __name__ == "__main__":
    main()
