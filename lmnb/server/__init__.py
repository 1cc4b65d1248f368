"""`lmnb serve`: an OpenAI-compatible HTTP server over a Runtime.

    handle = lmnb.server.start_server(rt)          # background thread, free port
    client = openai.OpenAI(base_url=handle.url, api_key="-")
    handle.stop()

Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (both with
SSE streaming), GET /health. The served model answers to its name and to `default`.
SGLang's native API beside them (native.py): POST /generate, GET /get_model_info,
GET /get_server_info, POST /flush_cache, GET /health_generate, so SGLang's own
frontend (`sgl.RuntimeEndpoint("http://HOST:PORT")`) and `lm.RuntimeEndpoint` drive it.
"""
from __future__ import annotations

from lmnb.server.app import create_app
from lmnb.server.config import ServerConfig
from lmnb.server.launch import ServerHandle, serve, start_server

__all__ = ["ServerConfig", "ServerHandle", "create_app", "serve", "start_server"]
