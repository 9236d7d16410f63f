"""Reading request bodies within a time bound: the one way handlers read what a client sends."""

from __future__ import annotations

import asyncio

from aiohttp import web

from engine.errors import OverloadedError, RequestTimeoutError
from engine.web.keys import CONFIG, RUNTIME


async def read_body(request: web.Request) -> bytes:
    """Read a request body within the configured time: a client trickling bytes cannot hold a handler forever.

    aiohttp bounds the size (``client_max_size``) and the idle time between requests, but not how long one
    body may take to arrive once its headers are in (slowloris on the body).
    """
    if request.content.is_eof():  # the whole body is buffered already (the usual case): nothing to time out
        return await request.read()
    timeout = request.app[CONFIG].body_timeout_s
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        if request.app[RUNTIME].shutting_down:  # aiohttp stops reading while it drains: not the client's fault
            raise OverloadedError("the engine is shutting down; retry", 5.0) from None
        raise RequestTimeoutError(f"request body not received within {timeout:g} s") from None
