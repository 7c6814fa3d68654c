"""ASGI middlewares that refuse a request before anything parses or spools its body: the bearer
token (401) and the body size limit (413)."""
from __future__ import annotations

import json
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _TooLarge(BaseException):  # not Exception: body parsers must not turn it into a 400
    pass


class BodyLimit:
    """413 for a body over the limit of its path: at once from Content-Length, or as soon as a
    chunked body grows past it (the rest is never read)."""

    def __init__(self, app: ASGIApp, limits: dict[str, int], default_limit: int) -> None:
        self.app, self.limits, self.default_limit = app, limits, default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"].rstrip("/"), self.default_limit)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _reject(send, limit)
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _reject(send, limit)


class BearerToken:
    """401 for any /api request without `Authorization: Bearer <token>` (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str, prefix: str = "/api") -> None:
        self.app, self.token, self.prefix = app, token.encode(), prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] == self.prefix or scope["path"].startswith(self.prefix + "/")):
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.token):
                await _answer(send, 401, "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                              [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


async def _reject(send: Send, limit: int) -> None:
    await _answer(send, 413, f"request body is larger than the limit of {limit / 1024 / 1024:.3g} MB: "
                             "send a smaller photo")


async def _answer(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
