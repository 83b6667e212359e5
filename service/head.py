"""HEAD on every route: answered as the GET it stands for, without the body (RFC 9110 9.3.2).

FastAPI routes only the methods a route declares, and declaring HEAD on each would double the
operations of the OpenAPI schema; this middleware serves them all, outside the schema. The status
and headers are the GET's, content-type and content-length included; a route without GET answers
HEAD as it answers GET (405 with its Allow header).
"""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEAD_FLAG = "cnnfilterdb.head"  # in the scope of a GET that stands for a HEAD


class HeadAsGet:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # HEAD_FLAG lets a route skip work whose only product is a body (an export's stream).
        await self.app({**scope, "method": "GET", HEAD_FLAG: True}, receive, send_without_body)
