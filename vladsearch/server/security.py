"""Bearer-token check for the API, and the request-body limit enforced while the body arrives."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vladsearch.server.errors import ServiceError

_bearer = HTTPBearer(auto_error=False, description="the token given to `vladsearch serve --token`")
# Before a 413, read and drop at most this much more of the body, for at most this long, so
# that a client still sending gets to read the answer: closing a socket with unread data
# resets the connection, and a client that sends the whole body before reading (Python's
# urllib) then sees "Connection reset by peer" or "Broken pipe" instead of the 413. The
# server (uvicorn) stops reading the body once a response is complete, so the drain must
# come first. nginx does the same ("lingering close", lingering_time 30 s).
DRAIN_LIMIT = 128 * 1024 * 1024
DRAIN_SECONDS = 30.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_token(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the app has no token or the request carries `Authorization: Bearer <token>`."""
    token = request.app.state.token
    if token is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ServiceError(401, "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'")


class BodyTooLarge(Exception):
    """Raised by receive() once the body passes the limit."""


class BodyLimitMiddleware:
    """413 with a JSON error for request bodies over `limit` bytes, counted as they arrive.

    A declared Content-Length over the limit is refused before the app runs; a body that
    turns out longer (chunked, or a client that lies) is cut at the limit: the app's receive()
    raises, nothing past the limit is kept, and any response the app had begun is replaced.
    Either way the rest of the body is read and dropped (up to DRAIN_LIMIT bytes and
    DRAIN_SECONDS) before the answer, unless the client waits for "100 Continue" and so has
    sent none of it.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            if headers.get(b"expect", b"").lower() != b"100-continue":
                await drain(receive)
            await self._refuse(send)
            return
        received, more, exceeded, started = 0, True, False, False

        async def limited_receive():
            nonlocal received, more, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = message.get("more_body", False)
                if received > self.limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message):
            nonlocal started
            if exceeded:
                return  # whatever the app answers to a body it could not read, the answer is 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:  # BodyTooLarge itself, or the error FastAPI wraps it in
            if not exceeded or started:
                raise
        if exceeded and not started:
            if more:
                await drain(receive)
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": f"request body larger than the limit of {self.limit} bytes "
                                    "(serve --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


async def drain(receive, limit: int = DRAIN_LIMIT, seconds: float = DRAIN_SECONDS) -> int:
    """Read and drop the rest of a request body: at most `limit` bytes, for at most `seconds`; bytes read."""
    loop = asyncio.get_running_loop()
    deadline, drained = loop.time() + seconds, 0
    while drained < limit:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            break
        if message["type"] != "http.request":
            break
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return drained


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if token is None and not is_loopback(host):
        raise ValueError(f"--host {host} makes the index reachable from other machines: give a bearer "
                                "token with --token T (or VLADSEARCH_TOKEN), or bind 127.0.0.1")
