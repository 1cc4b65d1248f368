"""The `lmnb` command line: `lmnb serve --model smollm2 --port 0`."""
from __future__ import annotations

import argparse
import os
import sys

from lmnb.errors import LmnbError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmnb", description="lmnb command line")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve a model over an OpenAI-compatible HTTP API "
                                   "(/v1/models, /v1/completions, /v1/chat/completions).")
    s.add_argument("--model", default="smollm2", help="model spec (smollm2, hf:..., gguf:..., dummy:...)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; any other "
                        "address without an API key logs a warning)")
    s.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (default 8000)")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $LMNB_API_KEY, else none)")
    s.add_argument("--served-model-name", default=None, help="model id clients use (default: the spec)")
    s.add_argument("--max-body-bytes", type=int, default=4 * 2**20,
                   help="larger request bodies get 413 (default 4 MiB)")
    s.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive, then 408 (default 30)")
    s.add_argument("--max-tokens-limit", type=int, default=None,
                   help="most tokens one choice may generate; larger requests are clamped "
                        "(default: the context length)")
    s.add_argument("--max-n", type=int, default=16, help="largest n per request (default 16)")
    s.add_argument("--max-choices", type=int, default=256,
                   help="most generations per request, prompts x n (default 256)")
    s.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    s.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    s.add_argument("--quantization", default=None,
                   help="CPU weights: q8, q4 or none (default: q4 for a GGUF model on the CPU unless --dtype)")
    s.add_argument("--kv-memory-gb", type=float, default=None, help="KV pool size in GiB")
    s.add_argument("--context-length", type=int, default=None, help="cap the context length")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(run=_serve)
    return parser


def _serve(args: argparse.Namespace) -> None:
    from lmnb.runtime.runtime import Runtime
    from lmnb.server import serve
    from lmnb.server.launch import bind

    if args.port:
        bind(args.host, args.port).close()   # a busy port fails now, not after the model loads

    api_key = args.api_key or os.environ.get("LMNB_API_KEY") or None
    options = {k: v for k, v in (("dtype", args.dtype), ("kv_memory_gb", args.kv_memory_gb),
                                 ("context_length", args.context_length),
                                 ("quantization", args.quantization)) if v is not None}
    print(f"lmnb serve: loading {args.model} ...", file=sys.stderr, flush=True)
    runtime = Runtime(args.model, device=args.device, **options)
    print(f"lmnb serve: {runtime.describe()}", file=sys.stderr, flush=True)
    try:
        serve(runtime, args.host, args.port, api_key=api_key, model_name=args.served_model_name,
              log_level=args.log_level, max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout,
              max_tokens_limit=args.max_tokens_limit, max_n=args.max_n, max_choices=args.max_choices,
              on_ready=lambda url: print(f"lmnb serve: listening on {url}", flush=True))
    finally:
        runtime.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except LmnbError as e:
        print(f"lmnb {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
