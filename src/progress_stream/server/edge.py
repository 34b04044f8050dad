"""Guards at the edge: everything that can be refused without the body is refused before it is read.

An ASGI middleware in front of every route and the WebSocket. In order: the ``Host`` the request names
(a page whose name was rebound by DNS to this server names its own), the ``Origin`` of a browser (a
cross-site page must not drive the API on a user's machine), the API key on ``/v1``, then for a
request with a body its encoding and type, its declared length, and finally the body itself, read
here with a byte count (chunked bodies included) and a deadline. A refusal is answered at once in
the error shape with ``Connection: close``, so an unread body is never buffered. The handlers then
get the body already read. Incomplete request headers are :mod:`progress_stream.server.http_protocol`'s job.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from progress_stream.contract.errors import (
    ForbiddenOrigin,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
    WrongHost,
)
from progress_stream.contract.wire import bearer_subprotocol
from progress_stream.engine.streams import OPEN, Tenant
from progress_stream.server.answers import Answers, ErrorAnswer

#: Where the edge leaves the tenant of a ``/v1`` request in its ASGI scope (routes read it).
TENANT = "progress.tenant"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Disconnected(Exception):
    """The client went away while its body was being read: nothing to answer."""


#: A ``Host`` header: a name or an address (IPv6 in brackets), then perhaps a port.
HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?")


def host_name(host: str) -> str | None:
    """The name of a ``Host`` value or setting entry, lower-cased, without its port or a final dot; None if
    it is not one."""
    match = HOST.fullmatch(host.strip().lower())
    return match.group(1).rstrip(".") if match else None


def netloc(origin: str) -> str | None:
    """The host and port of an ``Origin``; None if it is not a URL (``http://[``: never the server's own)."""
    try:
        return urlsplit(origin).netloc
    except ValueError:
        return None


class Admission:
    """Who may use the API: the ``Host`` it names, a browser's ``Origin``, and on ``/v1`` the API key, which
    says which tenant asks. The edge asks it of every request; the native WebSocket plane (which the ASGI
    stack never sees) asks it of every handshake.

    ``keys``: every key and its tenant (none: no key is asked for, and everyone is :data:`OPEN`).
    ``allowed_hosts``: comma-separated names (any port); ``.example.com`` is it and its subdomains; ``*`` any.
    """

    def __init__(self, keys: list[tuple[str, Tenant]], allowed_origins: str, allowed_hosts: str = "*"):
        self.bearers = [(f"Bearer {key}".encode(), tenant) for key, tenant in keys]
        self.ws_tokens = [(bearer_subprotocol(key).encode(), tenant) for key, tenant in keys]
        self.origins = {o.strip().rstrip("/").lower() for o in allowed_origins.split(",") if o.strip()}
        entries = [h.strip().lower() for h in allowed_hosts.split(",") if h.strip()]
        self.any_host = "*" in entries
        self.hosts = {name for h in entries if not h.startswith(".") and (name := host_name(h))}
        self.domains = tuple(h.rstrip(".") for h in entries if h.startswith(".") and len(h) > 1)

    def check(self, headers: dict[bytes, bytes], path: str, websocket: bool) -> Tenant | None:
        """The tenant asking (None off ``/v1``, where no key is asked for); raises the refusal of a request
        with these (lower-cased) headers, if it is refused. In order: host, origin, key."""
        self.check_host(headers)
        self.check_origin(headers)
        if path.startswith("/v1/"):
            return self.tenant(headers, websocket)
        return None

    def check_host(self, headers: dict[bytes, bytes]) -> None:
        """The ``Host`` must be one of ``allowed_hosts`` (any port). A request without one (HTTP/1.0) passes:
        a browser always sends it, and a browser is what a rebound name can drive."""
        host = headers.get(b"host")
        if self.any_host or host is None:
            return
        name = host_name(host.decode("latin-1"))
        if name is not None and (name in self.hosts or any(name.endswith(d) or name == d[1:] for d in self.domains)):
            return
        raise WrongHost("this server does not answer for that Host: add it to PROGRESS_ALLOWED_HOSTS")

    def check_origin(self, headers: dict[bytes, bytes]) -> None:
        """A request without ``Origin`` (every non-browser client) passes; a browser's must be the
        server's own origin (same host and port) or one of ``allowed_origins``."""
        origin = headers.get(b"origin")
        if origin is None or "*" in self.origins:
            return
        text = origin.decode("latin-1").strip().rstrip("/").lower()
        if text in self.origins or netloc(text) == headers.get(b"host", b"").decode("latin-1").lower():
            return
        raise ForbiddenOrigin("this Origin may not use the API: add it to PROGRESS_ALLOWED_ORIGINS")

    def tenant(self, headers: dict[bytes, bytes], websocket: bool) -> Tenant:
        """``Authorization: Bearer KEY``; a browser's WebSocket may offer the key as a subprotocol instead."""
        if not self.bearers:
            return OPEN
        found = matching(headers.get(b"authorization", b""), self.bearers)
        if found is None and websocket:
            for offered in headers.get(b"sec-websocket-protocol", b"").split(b","):
                found = found or matching(offered.strip(), self.ws_tokens)
        if found is None:
            raise Unauthorized("send 'Authorization: Bearer <API key>'")
        return found


def matching(value: bytes, tokens: list[tuple[bytes, Tenant]]) -> Tenant | None:
    """The tenant whose token ``value`` is, each compared in constant time."""
    found = None
    for token, tenant in tokens:
        if hmac.compare_digest(value, token):
            found = tenant
    return found


class EdgeGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        admission: Admission,
        answers: Answers,
        body_limit: Callable[[str], int],
        body_timeout_s: float,
    ):
        self.app = app
        self.admission = admission
        self.answers = answers
        self.body_limit = body_limit
        self.body_timeout = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        try:
            scope[TENANT] = self.admission.check(headers, scope["path"], scope["type"] == "websocket")
            if scope["type"] == "http":
                receive = await self.read_body(headers, receive, self.body_limit(scope["path"]))
        except Disconnected:
            return
        except Exception as exc:  # a refusal, or a bug of the guards: answered in the error shape either way
            await refuse(scope, send, self.answers.error(exc))
            return
        await self.app(scope, receive, send)

    async def read_body(self, headers: dict[bytes, bytes], receive: Receive, limit: int) -> Receive:
        """The whole body, bounded in size and time; returns the ``receive`` the app will see."""
        declared = headers.get(b"content-length")
        if (declared is None and b"transfer-encoding" not in headers) or declared == b"0":
            return receive
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding != b"identity":
            name = encoding.decode("latin-1")[:20]
            raise UnsupportedMediaType(f"Content-Encoding {name!r} is not accepted: send the body uncompressed")
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            raise UnsupportedMediaType("a body must be sent with Content-Type: application/json")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise PayloadTooLarge("body", f"body of {declared.decode('latin-1')[:20]} bytes exceeds {limit}")
        parts, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise Disconnected
                    size += len(message.get("body", b""))
                    if size > limit:
                        raise PayloadTooLarge("body", f"body exceeds {limit} bytes")
                    parts.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise RequestTimeout(f"the body did not arrive within {self.body_timeout:g} s") from None
        return replay(b"".join(parts), receive)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then waits on the real one (disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def refuse(scope: Scope, send: Send, answer: ErrorAnswer) -> None:
    """Send ``answer``; a WebSocket handshake is refused with the same HTTP answer."""
    headers = answer.raw_headers()
    prefix = ""
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": answer.error.message[:120]})
            return
        prefix = "websocket."
    else:
        headers.append((b"connection", b"close"))  # the unread rest of the body is never read
    await send({"type": f"{prefix}http.response.start", "status": answer.status, "headers": headers})
    await send({"type": f"{prefix}http.response.body", "body": answer.body})
