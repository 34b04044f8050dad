"""Python client of progress-stream: HTTP and WebSocket sessions, sync and async, with safe replay."""

from progress_stream.client.core import ReplayLog, SeqError
from progress_stream.client.gateway import Gateway, SyncGateway, TickError
from progress_stream.client.http import AsyncStreamSession, ServerError, StreamSession
from progress_stream.client.ws import SyncWsStreamSession, WsStreamSession

__all__ = [
    "AsyncStreamSession",
    "Gateway",
    "ReplayLog",
    "SeqError",
    "ServerError",
    "StreamSession",
    "SyncGateway",
    "SyncWsStreamSession",
    "TickError",
    "WsStreamSession",
]
