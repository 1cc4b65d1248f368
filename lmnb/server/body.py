"""Reading a request body within the server's limits: size (413), time (408), depth (400).

The size is checked on the Content-Length header first, then while reading, since a
chunked body has no length and a declared one may lie. A client that declares more
than it sends would otherwise hold its connection and handler forever.
"""
from __future__ import annotations

import asyncio
import json

from fastapi import Request

from lmnb.server.errors import ApiError

# validation, templates and schema compilers recurse over the body: keep it shallow
MAX_DEPTH = 64


async def read_json(request: Request, limit: int, timeout: float) -> dict:
    """The body as a JSON object, or an ApiError saying what to change."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    try:
        raw = await asyncio.wait_for(_read(request, limit), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s; send the whole "
                            "body (with a Content-Length that matches it)",
                       code="request_timeout", close=True) from None
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    except RecursionError:   # the parser recurses once per level
        raise _too_deep() from None
    if _depth(body) > MAX_DEPTH:
        raise _too_deep()
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _depth(value) -> int:
    """Nesting depth of parsed JSON (iterative: the value may be deeper than Python recurses)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        v, d = todo.pop()
        deepest = max(deepest, d)
        if d <= MAX_DEPTH and isinstance(v, (dict, list)):
            todo.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


async def _read(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_deep() -> ApiError:
    return ApiError(400, f"the request body nests deeper than {MAX_DEPTH} levels; flatten it")


def _too_large(limit: int) -> ApiError:
    # the connection stays open: closing it while the client still sends would reset it,
    # and the client would never read this answer (the rest of the body is discarded)
    return ApiError(413, f"the request body exceeds the server's limit of {limit} bytes; "
                         "send a smaller one", code="request_too_large")
