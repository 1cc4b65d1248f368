"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`."""
from __future__ import annotations

import hmac
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from lmnb.errors import EngineError, LmnbError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
          500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An error answered to the client with its HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.close = close   # answered with `Connection: close` (the body was not read to its end)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    message = " ".join(message.split())   # one line, even when quoting a multi-line library message
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(error_body(e.status, e.message, e.param, e.code), status_code=e.status,
                        headers={"connection": "close"} if e.close else None)


def install_handlers(app: FastAPI) -> None:
    """Every error leaves the server as an OpenAI-style body."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError):
        return error_response(e)

    @app.exception_handler(LmnbError)
    async def _bad_input(_: Request, e: LmnbError):
        return error_response(ApiError(400, str(e)))

    @app.exception_handler(EngineError)
    async def _engine(_: Request, e: EngineError):
        return error_response(ApiError(503, str(e), code="engine_unavailable"))

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, e: ClientDisconnect):
        return Response(status_code=499)   # nobody reads it; not a server error to log

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException):
        msg = (f"unknown endpoint {request.method} {request.url.path}" if e.status_code == 404
               else f"{request.method} {request.url.path}: {e.detail}")
        return error_response(ApiError(e.status_code, msg))

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception):
        return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}"))


class ApiKeyGuard:
    """ASGI middleware: with a key set, requests need `Authorization: Bearer <key>`
    (compared in constant time). `/health` stays open for probes."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.key = app, (api_key.encode() if api_key else None)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        if self._authorized(scope):
            return await self.app(scope, receive, send)
        body = json.dumps(error_body(401, "invalid or missing API key; send 'Authorization: Bearer <key>'",
                                     code="invalid_api_key")).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False
