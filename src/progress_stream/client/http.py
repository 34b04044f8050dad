"""HTTP sessions (sync and async) for one stream: seq bookkeeping, safe retries, replay after a 409."""

from __future__ import annotations

from typing import Any

import httpx

from progress_stream.client.core import (
    RETRY_DELAY,
    TIMEOUT,
    Chunk,
    Outcome,
    ServerError,
    SessionState,
    drive,
    drive_async,
    error_outcome,
    exchange,
    frames_json,
    json_bytes,
)
from progress_stream.contract.replies import Estimates

#: A proxy's own answers when its upstream replica failed (not the service's error JSON).
PROXY_GATEWAY_ERRORS = (502, 503, 504)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def frames_body(chunk: Chunk) -> dict[str, Any]:
    """A frames POST's body (JSON, see :func:`json_bytes`) and its content type, as ``httpx`` arguments."""
    return {"content": json_bytes(frames_json(chunk)), "headers": {"content-type": "application/json"}}


def response_body(response: httpx.Response) -> Any:
    """The JSON body, or the text of a body that is not JSON (a proxy's error page)."""
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def stream_gone(response: httpx.Response) -> bool:
    """A 404 for the stream itself (not a proxy's or a route's)."""
    if response.status_code != 404:
        return False
    body = response_body(response)
    return (
        isinstance(body, dict)
        and isinstance(body.get("error"), dict)
        and body["error"].get("code") == "stream_not_found"
    )


def outcome(response: httpx.Response) -> Outcome:
    if response.status_code == 200:
        return "ok", Estimates.read(response.json())
    body = response_body(response)
    action = error_outcome(body, response.headers.get("Retry-After"))
    if action is None and response.status_code in PROXY_GATEWAY_ERRORS:
        return "wait", RETRY_DELAY  # a proxy's page: its replica went away; the seq makes resending safe
    if action is None:
        raise ServerError(response.status_code, body)
    return action


class _Session(SessionState):
    """Creation is ``PUT /v1/streams/{id}`` (idempotent), so a proxy can route it by the id; with ``fps``
    (the stream's frame rate) every answer carries the time to finish in seconds too."""

    client_class: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(
        self,
        base_url: str,
        stream_id: str | None = None,
        api_key: str | None = None,
        history: int = 4096,
        timeout: float = TIMEOUT,
        fps: float | None = None,
    ):
        super().__init__(stream_id, history)
        self.fps = fps
        self.http = self.client_class(base_url=base_url, headers=auth_headers(api_key), timeout=timeout)

    def _created(self, response: httpx.Response) -> None:
        if response.status_code not in (200, 201):
            raise ServerError(response.status_code, response_body(response))
        self.stream_id, self.next_seq = response.json()["stream_id"], response.json()["next_seq"]

    def _reopened(self, response: httpx.Response) -> Outcome:
        """The outcome of opening the stream again after a 404 (a server restarted without its state, an idle
        stream evicted), as a WebSocket's handshake does: resend from where the server now stands."""
        if response.status_code in (200, 201):
            return "conflict", response.json()["next_seq"]
        return outcome(response)

    def _stream_path(self) -> str:
        return f"/v1/streams/{self.stream_id}"

    def _create_params(self) -> dict[str, float]:
        return {} if self.fps is None else {"fps": self.fps}

    def _path(self) -> str:
        return f"{self._stream_path()}/frames"


class StreamSession(_Session):
    """Synchronous: ``with StreamSession(url) as s: s.send(embeddings)`` → each frame's :class:`Estimates`."""

    client_class = httpx.Client

    def __init__(self, base_url: str, **kwargs: Any):
        super().__init__(base_url, **kwargs)
        self._created(self.http.put(self._stream_path(), params=self._create_params()))

    def send(self, embeddings: Any, reset: bool = False) -> Estimates:
        chunk = self.new_chunk(embeddings, reset)
        with self.sending(chunk):
            return drive(exchange(self.log, chunk), self._transact)

    def _transact(self, chunk: Chunk) -> Outcome:
        try:
            response = self.http.post(self._path(), **frames_body(chunk))
            if stream_gone(response):
                return self._reopened(self.http.put(self._stream_path(), params=self._create_params()))
            return outcome(response)
        except httpx.TransportError:
            return "wait", RETRY_DELAY

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStreamSession(_Session):
    """Asynchronous: ``s = await AsyncStreamSession.open(url)``; ``await s.send(embeddings)``."""

    client_class = httpx.AsyncClient

    @classmethod
    async def open(cls, base_url: str, **kwargs: Any) -> AsyncStreamSession:
        session = cls(base_url, **kwargs)
        session._created(await session.http.put(session._stream_path(), params=session._create_params()))
        return session

    async def send(self, embeddings: Any, reset: bool = False) -> Estimates:
        chunk = self.new_chunk(embeddings, reset)
        with self.sending(chunk):
            return await drive_async(exchange(self.log, chunk), self._transact)

    async def _transact(self, chunk: Chunk) -> Outcome:
        try:
            response = await self.http.post(self._path(), **frames_body(chunk))
            if stream_gone(response):
                return self._reopened(await self.http.put(self._stream_path(), params=self._create_params()))
            return outcome(response)
        except httpx.TransportError:
            return "wait", RETRY_DELAY

    async def aclose(self) -> None:
        await self.http.aclose()
