"""Refuse request bodies over a size limit with 413, before any endpoint sees them.

An ASGI middleware rather than a check in each endpoint: a body announced too large (Content-Length) is refused
without reading it, and one sent without a length (chunked) is read up to the limit, then refused. What passes is
replayed to the app unchanged, so endpoints and pydantic never hold more than the limit.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                announced = int(length)
            except ValueError:
                await self._refuse(send, 400, "Content-Length is not a number")
                return
            if announced > self.max_bytes:
                await self._refuse(send, 413, self._too_large(announced))
                return
        buffered: list[Message] = []
        size = 0
        while True:  # read the whole body (at most max_bytes) before the app starts
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send, 413, self._too_large(size, at_least=True))
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return (f"request body of {'over ' if at_least else ''}{size:,} bytes is over the limit of "
                f"{self.max_bytes:,} (DERMAE_MAX_REQUEST_MB): send fewer items per request")

    @staticmethod
    async def _refuse(send: Send, code: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
