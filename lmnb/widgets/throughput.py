"""Throughput meter: prefill and decode tokens/s, cache hit rate, KV pool use and a
small plot of recent engine steps (inline SVG).

The HTML shows measured speeds; `text()` shows only counts (no timings), so it is
stable under nbval.
"""
from __future__ import annotations

from lmnb.widgets.base import View, box, esc

_W, _H, _STEPS = 360, 60, 120


def throughput_snapshot(rt) -> dict:
    """Engine counters, cache stats and the recent per-step history, copied."""
    def grab():
        eng = rt.engine
        counters = {**eng.counters, **(eng.drafter.stats() if getattr(eng, "drafter", None) else {})}
        return counters, list(eng.history)[-_STEPS * 4:]
    counters, history = rt.engine.call(grab)
    return {"counters": counters, "history": history, "stats": rt.cache_stats()}


def spec_line(c: dict) -> str:
    """Speculative decoding's counts: draft tokens verified and accepted."""
    return (f"speculative: {c['spec_accepted']} of {c['spec_drafted']} draft tokens accepted "
            f"({100 * c['spec_acceptance_rate']:.0f}%), {c['spec_tokens_per_verify_step']:.2f} tokens "
            f"per verify step over {c['spec_verify_steps']} steps")


def rates(history) -> dict:
    """Tokens/s of extend (prefill) and decode steps over the given history."""
    out = {}
    for mode in ("extend", "decode"):
        steps = [(n, dt) for _, m, n, dt, _ in history if m == mode]
        tok, sec = sum(n for n, _ in steps), sum(dt for _, dt in steps)
        out[mode] = tok / sec if sec > 0 else 0.0
    return out


class ThroughputMeter(View):
    live = True

    def __init__(self, runtime) -> None:
        self.rt = runtime
        self.update()

    def update(self) -> None:
        self.snap = throughput_snapshot(self.rt)

    def _summary(self) -> str:
        c, st = self.snap["counters"], self.snap["stats"]
        used = st["pool_size"] - st["free_slots"]
        return (f"cache hit rate {100 * st['hit_rate']:.0f}% ({st['hit_tokens']} of {st['prompt_tokens']} "
                f"prompt tokens) · KV pool {100 * used / max(st['pool_size'], 1):.1f}% used · "
                f"{c['finished_requests']} requests")

    def text(self) -> str:
        c = self.snap["counters"]
        return "\n".join([
            "── throughput ──",
            f"prefill: {c['prefill_tokens']} tokens in {c['extend_steps']} steps",
            f"decode: {c['decode_tokens']} tokens in {c['decode_steps']} steps",
            *([spec_line(c)] if c.get("spec_drafted") else []),
            self._summary()])

    def html(self) -> str:
        r = rates(self.snap["history"])
        c = self.snap["counters"]
        tiles = "".join(
            f'<div style="display: inline-block; margin-right: 18px"><div style="font-size: 18px; '
            f'font-weight: 600; color: {color}">{val}</div><div style="color: #57606a">{esc(label)}</div></div>'
            for val, label, color in [
                (f"{r['extend']:,.0f}", f"prefill tok/s ({c['prefill_tokens']} tokens)", "#0969da"),
                (f"{r['decode']:,.0f}", f"decode tok/s ({c['decode_tokens']} tokens)", "#1a7f37")])
        spec = f"<div>{esc(spec_line(c))}</div>" if c.get("spec_drafted") else ""
        return box("throughput", f"<div>{tiles}</div>{self._svg()}{spec}<div>{esc(self._summary())}</div>")

    def _svg(self) -> str:
        hist = self.snap["history"][-_STEPS:]
        if not hist:
            return '<div style="color: #8c959f">no engine steps yet</div>'
        speeds = [n / dt if dt > 0 else 0.0 for _, _, n, dt, _ in hist]
        top = max(speeds) or 1.0
        bw = _W / _STEPS
        bars = "".join(
            f'<rect x="{i * bw:.1f}" y="{_H - _H * s / top:.1f}" width="{max(bw - 0.5, 0.5):.1f}" '
            f'height="{_H * s / top:.1f}" fill="{"#0969da" if m == "extend" else "#1a7f37"}"/>'
            for i, ((_, m, _, _, _), s) in enumerate(zip(hist, speeds)))
        return (f'<svg width="{_W}" height="{_H + 12}" style="margin: 4px 0">{bars}'
                f'<text x="0" y="{_H + 11}" font-size="9" fill="#57606a">last {len(hist)} steps · '
                f'peak {top:,.0f} tok/s · blue prefill, green decode</text></svg>')
