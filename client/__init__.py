"""Python client of progress-stream: HTTP and WebSocket sessions, sync and async, with safe replay."""

from client.core import ReplayLog, SeqError
from client.http import AsyncStreamSession, ServerError, StreamSession
from client.ws import SyncWsStreamSession, WsStreamSession

__all__ = [
    "AsyncStreamSession",
    "ReplayLog",
    "SeqError",
    "ServerError",
    "StreamSession",
    "SyncWsStreamSession",
    "WsStreamSession",
]
