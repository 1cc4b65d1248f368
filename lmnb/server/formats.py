"""Runtime results as OpenAI response objects: completions and chat completions, whole
or as stream chunks, with logprobs and usage."""
from __future__ import annotations

import time
import uuid

from lmnb.server.protocol import ChatCompletionRequest, CompletionRequest


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def usage_of(results: list[dict], n: int) -> dict:
    """Each prompt counts once (its `n` choices share it); its cached tokens are the
    fewest any of its choices got, i.e. what computing the prompt once cost."""
    metas = [r["meta"] for r in results]
    per_prompt = [metas[i : i + n] for i in range(0, len(metas), n)]
    return usage(sum(g[0]["prompt_tokens"] for g in per_prompt),
                 sum(m["completion_tokens"] for m in metas),
                 sum(min(m["cached_tokens"] for m in g) for g in per_prompt))


def visible_logprobs(result: dict) -> tuple[list, list]:
    """Output (id, logprob) entries and their top-k lists, without a final EOS / stop
    token that the text does not show."""
    meta = result["meta"]
    lps = list(meta.get("output_token_logprobs") or [])
    tops = list(meta.get("output_top_logprobs") or [])
    ids = result["output_ids"]
    if (meta["finish_reason"] == "stop" and isinstance(meta.get("matched_stop"), int)
            and ids and ids[-1] == meta["matched_stop"] and lps and lps[-1][0] == ids[-1]):
        lps, tops = lps[:-1], tops[: len(lps) - 1]
    return lps, tops


class _Format:
    """Shared by both endpoints: id, timestamps, token text pieces, the envelope."""

    id_prefix = chunk_object = ""

    def __init__(self, tokenizer, model: str, n: int) -> None:
        self.tok, self.model, self.n = tokenizer, model, n
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self._pieces: dict[int, str] = {}

    def piece(self, token_id: int) -> str:
        s = self._pieces.get(token_id)
        if s is None:
            s = self._pieces[token_id] = self.tok.decode([token_id])
        return s

    def envelope(self, object_name: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created,
                "model": self.model, "choices": choices, **extra}


class CompletionFormat(_Format):
    id_prefix, chunk_object = "cmpl", "text_completion"

    def __init__(self, tokenizer, model: str, req: CompletionRequest) -> None:
        super().__init__(tokenizer, model, req.n)
        self.req, self.wants_logprobs = req, req.logprobs is not None
        self.offsets: dict[int, int] = {}

    def response(self, results: list[dict], handles: list) -> dict:
        choices = []
        for i, (r, h) in enumerate(zip(results, handles)):
            text, lps = r["text"], None
            prefix = self.echo_text(i) if self.req.echo else ""
            if self.req.logprobs is not None:
                lps = self.logprobs(self._entries(r, h), 0)
            choices.append({"index": i, "text": prefix + text, "logprobs": lps,
                            "finish_reason": r["meta"]["finish_reason"]})
        return self.envelope("text_completion", choices, usage=usage_of(results, self.n))

    def echo_text(self, choice: int) -> str:
        prompt = self.req.prompts()[choice // self.n]
        return prompt if isinstance(prompt, str) else self.tok.decode(prompt)

    def _entries(self, r: dict, h) -> tuple[list, list]:
        lps, tops = visible_logprobs(r)
        if not self.req.echo:
            return lps, tops
        ids = h.prompt_ids
        prompt = [(ids[0], None)] + list(r["meta"].get("input_token_logprobs") or [])
        return prompt + lps, [None] * len(prompt) + tops

    def logprobs(self, entries: tuple[list, list], offset: int) -> dict:
        lps, tops = entries
        tokens = [self.piece(t) for t, _ in lps]
        offsets = []
        for s in tokens:
            offsets.append(offset)
            offset += len(s)
        top = [None if k is None else {self.piece(t): lp for t, lp in k} for k in tops]
        if self.req.logprobs == 0 or len(top) < len(tokens):
            top = top + [None] * (len(tokens) - len(top))
        return {"tokens": tokens, "token_logprobs": [lp for _, lp in lps],
                "top_logprobs": top, "text_offset": offsets}

    # -- streaming ------------------------------------------------------------
    def start_chunks(self, handles: list) -> list[dict]:
        if not self.req.echo:
            return []
        return [self.chunk(i, self.echo_text(i)) for i in range(len(handles))]

    def chunk(self, index: int, text: str, entries=None, finish_reason=None) -> dict:
        start = self.offsets.get(index, 0)
        self.offsets[index] = start + len(text)
        lps = self.logprobs(entries, start) if entries and entries[0] else None
        return self.envelope("text_completion", [{"index": index, "text": text, "logprobs": lps,
                                                  "finish_reason": finish_reason}])


class ChatFormat(_Format):
    id_prefix, chunk_object = "chatcmpl", "chat.completion.chunk"

    def __init__(self, tokenizer, model: str, req: ChatCompletionRequest) -> None:
        super().__init__(tokenizer, model, req.n)
        self.req, self.wants_logprobs = req, req.logprobs

    def response(self, results: list[dict], handles: list) -> dict:
        choices = []
        for i, r in enumerate(results):
            lps = {"content": self.logprobs(visible_logprobs(r)), "refusal": None} if self.req.logprobs else None
            choices.append({"index": i, "message": {"role": "assistant", "content": r["text"],
                                                    "refusal": None},
                            "logprobs": lps, "finish_reason": r["meta"]["finish_reason"]})
        return self.envelope("chat.completion", choices, usage=usage_of(results, self.n))

    def _token(self, t: int, lp: float) -> dict:
        s = self.piece(t)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    def logprobs(self, entries: tuple[list, list]) -> list[dict]:
        lps, tops = entries
        out = []
        for k, (t, lp) in enumerate(lps):
            d = self._token(t, lp)
            d["top_logprobs"] = [self._token(a, b) for a, b in tops[k]] if k < len(tops) else []
            out.append(d)
        return out

    # -- streaming ------------------------------------------------------------
    def start_chunks(self, handles: list) -> list[dict]:
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(len(handles))]

    def chunk(self, index: int, text: str, entries=None, finish_reason=None) -> dict:
        delta = {"content": text} if text else {}
        return self._chunk(index, delta, entries, finish_reason)

    def _chunk(self, index: int, delta: dict, entries=None, finish_reason=None) -> dict:
        lps = {"content": self.logprobs(entries), "refusal": None} if entries and entries[0] else None
        return self.envelope("chat.completion.chunk", [{"index": index, "delta": delta, "logprobs": lps,
                                                        "finish_reason": finish_reason}])
