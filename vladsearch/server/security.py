"""Bearer-token check for the API, and the request-body limit enforced while the body arrives."""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vladsearch.server.errors import ServiceError

_bearer = HTTPBearer(auto_error=False, description="the token given to `vladsearch serve --token`")
# After a 413, read and drop at most this much more of the body so that the client, still
# sending, gets to read the answer (closing on unread data resets the connection first).
DRAIN_LIMIT = 128 * 1024 * 1024


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

    A declared Content-Length over the limit is refused before reading; a body that turns
    out longer (chunked, or a client that lies) is cut at the limit: the app's receive()
    raises, nothing past the limit is kept, and any response the app had begun is replaced.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, receive, 0)
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
            await self._refuse(send, receive, received if more else None)

    async def _refuse(self, send, receive, received: int | None) -> None:
        body = json.dumps({"error": f"request body larger than the limit of {self.limit} bytes "
                                    "(serve --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
        drained = received
        while drained is not None and drained < self.limit + DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                break
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                break


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if token is None and not is_loopback(host):
        raise ValueError(f"--host {host} makes the index reachable from other machines: give a bearer "
                                "token with --token T (or VLADSEARCH_TOKEN), or bind 127.0.0.1")
