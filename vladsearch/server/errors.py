"""Errors the service answers with a status and a JSON body `{"error": "..."}`."""

from __future__ import annotations


class ServiceError(Exception):
    """A request that cannot be served; `status` is the HTTP status, the message says why and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
