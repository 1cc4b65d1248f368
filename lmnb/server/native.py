"""SGLang's native HTTP API beside the OpenAI routes, so SGLang's own frontend
(`sgl.RuntimeEndpoint(url)`) and `lm.RuntimeEndpoint(url)` drive `lmnb serve`.

    POST /generate           text or input_ids, one or a batch; SSE with "stream": true
    GET  /get_model_info     (also /model_info)
    GET  /get_server_info    (also /server_info)
    POST /flush_cache        (GET too, as SGLang accepts)
    GET  /health_generate    a one-token generation: the engine answers, not only the socket

Responses are SGLang's: `{"text", "output_ids", "meta_info"}` (a list of them for a
batch), `meta_info` with `id`, `finish_reason` ({"type": "length", "length": n} /
{"type": "stop", "matched": token id or str} / {"type": "abort", ...}),
`prompt_tokens`, `completion_tokens`, `cached_tokens`, `e2e_latency` and, with
`return_logprob`, `input_token_logprobs` / `output_token_logprobs` as
`[logprob, token_id, text or null]` entries (the first prompt token's logprob is null)
and `input_top_logprobs` / `output_top_logprobs` with `top_logprobs_num`. Stream events
carry the text so far (SGLang's non-incremental shape); the last one has the finish
reason, the ids and the logprobs; then `data: [DONE]`. Errors are
`{"error": {"message", ...}}` with a 4xx status, as SGLang answers bad input.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from lmnb.server.errors import ApiError, error_body
from lmnb.server.native_protocol import GenerateRequest, Item, parse_generate


def add_native_routes(app: FastAPI, service) -> None:
    """Register the SGLang routes on `app`, served by the OpenAI app's `service`."""
    native = _Native(service)
    app.add_api_route("/generate", native.generate, methods=["POST", "PUT"])
    for path in ("/get_model_info", "/model_info"):
        app.add_api_route(path, native.model_info, methods=["GET"])
    for path in ("/get_server_info", "/server_info"):
        app.add_api_route(path, native.server_info, methods=["GET"])
    app.add_api_route("/flush_cache", native.flush_cache, methods=["POST", "GET"])
    app.add_api_route("/health_generate", native.health_generate, methods=["GET"])


class _Native:
    def __init__(self, service) -> None:
        self.svc = service
        self.rt, self.cfg = service.rt, service.cfg
        self._pieces: dict[int, str] = {}
        self._template: dict | None | bool = False

    # -- info -------------------------------------------------------------------------
    async def model_info(self) -> dict:
        cfg = self.rt.model_config
        return {"model_path": self.cfg.model_name, "tokenizer_path": self.cfg.model_name,
                "served_model_name": self.cfg.model_name, "is_generation": True,
                "preferred_sampling_params": None, "weight_version": "default",
                "has_image_understanding": False, "has_audio_understanding": False,
                "model_type": getattr(cfg, "model_type", None) or getattr(cfg, "arch", None),
                "architectures": getattr(cfg, "architectures", None), "context_length": self.rt.context_len,
                "max_total_num_tokens": self.rt.pool.size if self.rt.pool is not None else None,
                "lmnb_chat_template": self._chat_template()}

    def _chat_template(self) -> dict | None:
        """The model's roles as text (lmnb's extension: `lm.RuntimeEndpoint` reads it;
        SGLang's frontend ignores it and uses its own named templates)."""
        if self._template is False:
            from lmnb.lang.chat_template import ChatTemplate
            from lmnb.lang.chat_templates import template_to_json

            t = ChatTemplate.from_tokenizer(self.rt.tokenizer)
            self._template = None if t is None else template_to_json(t)
        return self._template

    async def server_info(self) -> dict:
        rc = self.rt.config
        info = {"model_path": self.cfg.model_name, "served_model_name": self.cfg.model_name,
                "version": _version(), "backend": "lmnb", "context_length": self.rt.context_len,
                "max_total_num_tokens": self.rt.pool.size if self.rt.pool is not None else None,
                "attention_backend": getattr(self.rt, "attention_backend", None),
                "disable_radix_cache": not rc.enable_radix_cache,
                "max_running_requests": rc.max_running_requests, "chunked_prefill_size": rc.chunked_prefill_size,
                "schedule_policy": rc.schedule_policy, "device": rc.device, "random_seed": rc.seed,
                "runtime_config": {k: v for k, v in asdict(rc).items()},
                "requests_in_flight": self.svc.in_flight()}
        loop = asyncio.get_running_loop()
        info["cache_stats"] = await loop.run_in_executor(self.svc.bridge.pool, self.rt.cache_stats)
        return info

    async def flush_cache(self) -> Response:
        loop = asyncio.get_running_loop()
        freed = await loop.run_in_executor(self.svc.bridge.pool, self.rt.flush_cache)
        return Response(f"Cache flushed: {freed} cached tokens freed (prefixes held by running "
                        "requests stay).\n", media_type="text/plain")

    async def health_generate(self) -> Response:
        if not self.rt.alive():
            raise ApiError(503, "the engine has stopped", code="engine_unavailable")
        handles = await self.svc.bridge.submit([([self._probe_token()], {"max_new_tokens": 1})], stream=False)
        self.svc._track(handles, True)
        try:
            async for ev in self.svc.bridge.events(handles):
                if ev.kind == "error":
                    raise ApiError(503, str(ev.value), code="engine_unavailable")
        finally:
            self.svc._release(handles)
        return Response(status_code=200)

    def _probe_token(self) -> int:
        bos = getattr(self.rt.tokenizer, "bos_token_id", None)
        return bos if isinstance(bos, int) else 0

    # -- generate ---------------------------------------------------------------------
    async def generate(self, request: Request) -> Response:
        body = await self.svc._body(request)
        req = parse_generate(body, self.cfg, self.rt.context_len)
        loop = asyncio.get_running_loop()
        prompts = await loop.run_in_executor(self.svc.bridge.pool, self._token_ids, req)
        jobs = [(ids, self._sampling(it, len(ids))) for it, ids in zip(req.items, prompts)]
        handles = await self.svc.bridge.submit(jobs, stream=req.stream)
        self.svc._track(handles, True)
        started = time.perf_counter()
        if req.stream:
            from lmnb.server.app import _AbortingStream

            return _AbortingStream(self._stream(req, handles, prompts, started),
                                   lambda: self.svc._release(handles), media_type="text/event-stream",
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            results = await self.svc._collect(request, handles)
        finally:
            self.svc._track(handles, False)
        if results is None:
            return Response(status_code=499)
        outs = [self._output(req, it, ids, r, started) for it, ids, r in zip(req.items, prompts, results)]
        return JSONResponse(outs if req.batch else outs[0])

    def _token_ids(self, req: GenerateRequest) -> list[list[int]]:
        """Tokenize once here: logprob positions and errors need the prompt length."""
        cache: dict[int, list[int]] = {}
        out = []
        for it in req.items:
            p = it.prompt
            if isinstance(p, str):
                if not p:
                    raise ApiError(400, "text is empty; give at least one character", param="text")
                key = id(p)
                if key not in cache:
                    cache[key] = self.rt.encode(p)
                out.append(cache[key])
            else:
                out.append(p)
        for ids in out:
            if len(ids) >= self.rt.context_len:
                raise ApiError(400, f"the input has {len(ids)} tokens but the context holds "
                                    f"{self.rt.context_len}; shorten it", param="text")
        return out

    def _sampling(self, it: Item, prompt_len: int) -> dict:
        kw = dict(it.sampling)
        if it.wants_logprobs:
            kw["return_logprob"] = True
            if it.top:
                kw["top_logprobs_num"] = it.top
            start = it.start
            if start > prompt_len:
                raise ApiError(400, f"logprob_start_len={start} is higher than the number of input "
                                    f"tokens ({prompt_len}); use a smaller logprob_start_len",
                               param="logprob_start_len")
            if 0 <= start < prompt_len:
                kw["logprob_start_len"] = start
        return kw

    # -- response shapes -------------------------------------------------------------------
    def _piece(self, token_id: int) -> str:
        s = self._pieces.get(token_id)
        if s is None:
            if len(self._pieces) > 200_000:
                self._pieces.clear()
            s = self._pieces[token_id] = self.rt.tokenizer.decode([token_id])
        return s

    def _entries(self, pairs, with_text: bool) -> list:
        return [[lp, t, self._piece(t) if with_text else None] for t, lp in pairs]

    def _meta(self, it: Item, ids: list[int], result: dict | None, started: float) -> dict:
        meta = result["meta"] if result else {}
        out = {"id": it.rid or meta.get("id"), "finish_reason": _finish(meta) if result else None,
               "prompt_tokens": len(ids), "completion_tokens": meta.get("completion_tokens", 0),
               "cached_tokens": meta.get("cached_tokens", 0),
               "e2e_latency": meta.get("e2e_latency", time.perf_counter() - started)}
        return out

    def _output(self, req: GenerateRequest, it: Item, ids: list[int], result: dict, started: float) -> dict:
        meta = self._meta(it, ids, result, started)
        if it.wants_logprobs:
            meta.update(self._logprobs(req, it, ids, result["meta"]))
        return {"text": result["text"], "output_ids": list(result["output_ids"]), "meta_info": meta}

    def _logprobs(self, req: GenerateRequest, it: Item, ids: list[int], m: dict) -> dict:
        text = req.return_text_in_logprobs
        start = it.start
        inputs: list = []
        if 0 <= start < len(ids):
            pairs = list(m.get("input_token_logprobs") or [])
            if start == 0:   # nothing precedes the first token: SGLang reports null
                pairs = [(ids[0], None)] + pairs
            inputs = self._entries(pairs, text)
        outputs = self._entries(m.get("output_token_logprobs") or [], text)
        out = {"input_token_logprobs": inputs, "output_token_logprobs": outputs}
        if it.top:
            # lmnb computes top-k lists for generated tokens only
            out["input_top_logprobs"] = [None] * len(inputs)
            out["output_top_logprobs"] = [self._entries(k, text) if k is not None else None
                                          for k in (m.get("output_top_logprobs") or [])]
        return out

    # -- streaming ---------------------------------------------------------------------------
    async def _stream(self, req: GenerateRequest, handles: list, prompts: list, started: float):
        texts = [""] * len(handles)
        async for ev in self.svc.bridge.events(handles):
            if ev.kind == "error":
                yield _sse(error_body(503, str(ev.value), code="engine_unavailable"))
                break
            it, ids = req.items[ev.index], prompts[ev.index]
            if ev.kind == "delta":
                texts[ev.index] += ev.text
                out = {"text": texts[ev.index], "meta_info": self._meta(it, ids, None, started)}
            else:
                out = self._output(req, it, ids, ev.value, started)
            if req.batch:
                out["index"] = ev.index
            yield _sse(out)
        yield "data: [DONE]\n\n"


def _finish(meta: dict) -> dict:
    kind = meta.get("finish_reason")
    if kind == "length":
        return {"type": "length", "length": meta.get("completion_tokens", 0)}
    if kind == "stop":
        return {"type": "stop", "matched": meta.get("matched_stop")}
    return {"type": "abort", "message": "the request was aborted"}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lmnb")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "0"
