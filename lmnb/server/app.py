"""The FastAPI application: /v1/models, /v1/completions, /v1/chat/completions."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmnb.server.body import read_json
from lmnb.server.bridge import Bridge, abort_unfinished
from lmnb.server.config import ServerConfig
from lmnb.server.errors import ApiError, ApiKeyGuard, error_body, install_handlers
from lmnb.server.formats import ChatFormat, CompletionFormat, usage_of, visible_logprobs
from lmnb.server.protocol import ChatCompletionRequest, CompletionRequest, parse


def create_app(runtime, config: ServerConfig | None = None) -> FastAPI:
    """An OpenAI-compatible app over `runtime` (which it does not own: stopping the
    app leaves the runtime running)."""
    config = config or ServerConfig(model_name=runtime.spec)
    service = _Service(runtime, config)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.bridge.close()

    app = FastAPI(title="lmnb", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    install_handlers(app)
    app.add_middleware(ApiKeyGuard, api_key=config.api_key)
    app.add_api_route("/health", service.health, methods=["GET"])
    app.add_api_route("/v1/models", service.models, methods=["GET"])
    app.add_api_route("/v1/models/{model}", service.model, methods=["GET"])
    app.add_api_route("/v1/completions", service.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", service.chat_completions, methods=["POST"])
    return app


class _Service:
    def __init__(self, runtime, config: ServerConfig) -> None:
        self.rt, self.cfg, self.bridge = runtime, config, Bridge(runtime)
        self.created = int(time.time())
        self._active: set = set()            # handles of requests in flight
        self._lock = threading.Lock()

    def abort_all(self) -> None:
        """Abort every request in flight (any thread): on shutdown, streams end at once."""
        with self._lock:
            handles = list(self._active)
        abort_unfinished(handles)

    def _release(self, handles: list) -> None:
        abort_unfinished(handles)
        self._track(handles, False)

    def _track(self, handles: list, on: bool) -> None:
        with self._lock:
            if on:
                self._active.update(handles)
            else:
                self._active.difference_update(handles)

    # -- models ----------------------------------------------------------------
    def in_flight(self) -> int:
        """Requests submitted by this server and not yet answered or aborted."""
        with self._lock:
            return len(self._active)

    async def health(self) -> dict:
        return {"status": "ok" if self.rt.alive() else "engine stopped",
                "requests_in_flight": self.in_flight()}

    def _model_card(self, name: str) -> dict:
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "lmnb",
                "root": self.rt.spec, "max_model_len": self.rt.context_len}
        if name == "default":
            card["parent"] = self.cfg.model_name   # an alias of the served model
        return card

    async def models(self) -> dict:
        return {"object": "list",
                "data": [self._model_card(self.cfg.model_name), self._model_card("default")]}

    async def model(self, model: str) -> dict:
        if not self.cfg.accepts(model):
            raise ApiError(404, f"model {model!r} is not served here", code="model_not_found")
        return self._model_card(model)

    # -- generation ---------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        req = parse(CompletionRequest, await self._body(request))
        req.check(self.cfg)
        if req.stream and req.echo and req.logprobs is not None:
            raise ApiError(400, "echo with logprobs is not supported when streaming", param="echo")
        sampling = req.sampling(self.cfg, self.rt.context_len)
        fmt = CompletionFormat(self.rt.tokenizer, self._name(req.model), req)
        return await self._answer(request, req, fmt, req.prompts(), sampling)

    async def chat_completions(self, request: Request) -> Response:
        req = parse(ChatCompletionRequest, await self._body(request))
        req.check(self.cfg)
        sampling = req.sampling(self.cfg, self.rt.context_len)
        prompt = self._chat_prompt([m.for_template() for m in req.messages],
                                   req.add_generation_prompt, req.continue_final_message)
        fmt = ChatFormat(self.rt.tokenizer, self._name(req.model), req)
        return await self._answer(request, req, fmt, [prompt], sampling)

    async def _body(self, request: Request) -> dict:
        return await read_json(request, self.cfg.max_body_bytes, self.cfg.body_timeout)

    def _name(self, model: str | None) -> str:
        return self.cfg.model_name if model in (None, "default") else model

    def _chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True,
                     continue_final_message: bool = False) -> list[int]:
        tok = self.rt.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ApiError(400, "this model has no chat template; use /v1/completions")
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                           continue_final_message=continue_final_message,
                                           tokenize=False)
        except Exception as e:  # noqa: BLE001 - template errors (jinja) are about the input
            raise ApiError(400, f"the chat template rejected the messages: {e}", param="messages") from None
        # the template writes the special tokens itself (BOS included)
        return list(tok.encode(text, add_special_tokens=False))

    async def _answer(self, request: Request, req, fmt, prompts: list, sampling: dict) -> Response:
        jobs = [(p, _seeded(sampling, req.seed, j)) for p in prompts for j in range(req.n)]
        handles = await self.bridge.submit(jobs, stream=req.stream)
        self._track(handles, True)
        if req.stream:
            return _AbortingStream(self._stream(handles, fmt, req), lambda: self._release(handles),
                                   media_type="text/event-stream",
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            results = await self._collect(request, handles)
        finally:
            self._track(handles, False)
        if results is None:   # the client went away; its requests are aborted
            return Response(status_code=499)
        return JSONResponse(fmt.response(results, handles))

    async def _collect(self, request: Request, handles: list) -> list[dict] | None:
        results: list = [None] * len(handles)

        async def gather() -> list:
            async for ev in self.bridge.events(handles):
                if ev.kind == "error":
                    raise ev.value
                if ev.kind == "done":
                    results[ev.index] = ev.value
            return results

        work, gone = asyncio.ensure_future(gather()), asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                abort_unfinished(handles)
                work.cancel()   # only requested: the task is not cancelled yet
        return work.result() if work.done() and not work.cancelled() else None

    async def _stream(self, handles: list, fmt, req):
        """SSE chunks (the response releases the requests: see _AbortingStream)."""
        sent, results = [0] * len(handles), [None] * len(handles)
        for chunk in fmt.start_chunks(handles):
            yield _sse(chunk)
        async for ev in self.bridge.events(handles):
            if ev.kind == "error":
                yield _sse(error_body(503, str(ev.value), code="engine_unavailable"))
                return
            entries = None
            if ev.kind == "delta":
                if fmt.wants_logprobs:
                    entries = (list(ev.value.logprobs), list(ev.value.top_logprobs))
                    sent[ev.index] += len(ev.value.logprobs)
                yield _sse(fmt.chunk(ev.index, ev.text, entries))
                continue
            results[ev.index] = ev.value
            if fmt.wants_logprobs:
                lps, tops = visible_logprobs(ev.value)
                entries = (lps[sent[ev.index]:], tops[sent[ev.index]:])
            yield _sse(fmt.chunk(ev.index, "", entries, ev.value["meta"]["finish_reason"]))
        if req.include_usage():
            yield _sse(fmt.envelope(fmt.chunk_object, [], usage=usage_of(results, req.n)))
        yield "data: [DONE]\n\n"


class _AbortingStream(StreamingResponse):
    """Releases the stream's requests however the response ends: Starlette cancels the
    body task when the client leaves, and a body generator that never started (the
    client left before the first byte) would not run its `finally`."""

    def __init__(self, content, on_close: Callable[[], None], **kw) -> None:
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            await self.body_iterator.aclose()


def _seeded(sampling: dict, seed: int | None, j: int) -> dict:
    """The j-th of n choices: with a seed, choice j samples with seed + j (else n
    identical seeds would give n identical choices)."""
    return sampling if seed is None else {**sampling, "seed": seed + j}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
