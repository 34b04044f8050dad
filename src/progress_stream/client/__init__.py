"""Python client of progress-stream: HTTP and WebSocket sessions, sync and async, with safe replay."""

from progress_stream.client.core import ReplayLog, SeqError
from progress_stream.client.http import AsyncStreamSession, ServerError, StreamSession
from progress_stream.client.ws import SyncWsStreamSession, WsStreamSession

__all__ = [
    "AsyncStreamSession",
    "ReplayLog",
    "SeqError",
    "ServerError",
    "StreamSession",
    "SyncWsStreamSession",
    "WsStreamSession",
]
