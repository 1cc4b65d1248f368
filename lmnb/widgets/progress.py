"""Progress views shown while something runs: model load phases and `--batch` programs.

Both are plain display outputs (text/plain + text/html) that the magic redraws in place
through a display handle; no widget, so nothing in them depends on a live kernel.
"""
from __future__ import annotations

import time

from lmnb.widgets.base import View, box, esc

PHASES = ("convert", "load", "warm")
_MARK = {"waiting": ("○", "#8c959f"), "running": ("●", "#bf8700"), "done": ("✓", "#1a7f37"),
         "skipped": ("–", "#8c959f"), "failed": ("✗", "#cf222e")}


class LoadProgress(View):
    """The phases of loading one model: convert (a GGUF file, once), load (weights into
    the runtime), warm (the vocabulary table constraints and token healing use)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.status = {p: "waiting" for p in PHASES}
        self.notes: dict[str, str] = {}
        self.started: dict[str, float] = {}

    def __call__(self, phase: str, status: str, note: str = "") -> None:
        """The callback `KernelSession.load` reports to: (phase, status, note)."""
        if status == "running":
            self.started[phase] = time.monotonic()
        elif phase in self.started and status == "done" and not note:
            note = f"{time.monotonic() - self.started[phase]:.1f}s"
        self.status[phase] = status
        if note:
            self.notes[phase] = note
        self.refresh()

    def done(self) -> bool:
        return all(s in ("done", "skipped") for s in self.status.values())

    def header(self) -> str:
        return f"model {self.spec} " + ("ready" if self.done() else "loading…")

    def text(self) -> str:
        parts = [f"{p}: {self.status[p]}" + (f" ({self.notes[p]})" if p in self.notes else "")
                 for p in PHASES]
        return f"{self.header()} · " + " · ".join(parts)

    def html(self) -> str:
        items = []
        for p in PHASES:
            glyph, color = _MARK[self.status[p]]
            note = f' <span style="color: #8c959f">{esc(self.notes[p])}</span>' if p in self.notes else ""
            items.append(f'<span style="margin-right: 14px"><span style="color: {color}">{glyph}</span> '
                         f'{esc(p)}{note}</span>')
        finished = sum(self.status[p] in ("done", "skipped") for p in PHASES)
        return box(self.header(), "".join(items) + _bar(finished, len(PHASES)))


class BatchProgress(View):
    """`%%lm --batch`: how many of the programs have finished."""

    def __init__(self, total: int) -> None:
        self.total, self.finished = total, 0

    def __call__(self, finished: int, total: int) -> None:
        self.finished, self.total = finished, total
        self.refresh()

    def text(self) -> str:
        return f"lm batch · {self.finished} of {self.total} programs done"

    def html(self) -> str:
        return box(self.text(), _bar(self.finished, self.total))


def _bar(done: int, total: int) -> str:
    pct = 100 * done / total if total else 100
    return (f'<div style="margin-top: 4px; height: 6px; width: 320px; background: #eaeef2; '
            f'border-radius: 3px"><div style="height: 6px; width: {pct:.0f}%; background: #1a7f37; '
            f'border-radius: 3px"></div></div>')
