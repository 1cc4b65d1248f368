"""The output view of a `%%lm` cell: its prompt, generated text and captured values.

Prompt text, generated text, jump-forward (forced) text and constrained holes get
distinct styles; the header says how many prompt tokens came from the radix cache.
A view reads a snapshot of the state, so it can be drawn while the program runs.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from lmnb.lang.state import StateSnapshot
from lmnb.widgets.base import View, box, esc, table, td

_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>")
_PROMPT, _GEN, _FORCED = "color: #57606a", "background: #dafbe1; color: #116329", \
    "background: #fff1c2; color: #7d4e00; font-weight: 600"
_CONSTRAINED = "border-bottom: 2px dotted #8250df"
_MAX_VALUE = 80


Snapshot = StateSnapshot   # what a view reads: ProgramState.snapshot()


def snapshot(state) -> StateSnapshot:
    return state.snapshot()


def cache_counts(meta: dict) -> tuple[int, int]:
    """(prompt tokens, of them read from the cache) over every hole's request."""
    prompt = cached = 0
    for m in meta.values():
        for one in (m if isinstance(m, list) else [m]):
            if not isinstance(one, Mapping) or "prompt_tokens" not in one:
                continue
            p = int(one["prompt_tokens"])
            if "option_start" in one:   # select: the prefix computed = all computed - option tokens
                scored = sum(len(x) for x in one.get("input_token_logprobs") or [])
                c = p - max(0, int(one.get("computed_tokens", 0)) - scored)
            else:
                c = int(one.get("cached_tokens", 0))
            prompt, cached = prompt + p, cached + max(0, min(c, p))
    return prompt, cached


def _segments(chunks):
    """Merge consecutive pieces of the same variable: [(var, text)]."""
    out: list[list] = []
    for var, piece in chunks:
        if out and out[-1][0] == var:
            out[-1][1] += piece
        else:
            out.append([var, piece])
    return out


def _forced(meta, var):
    m = meta.get(var)
    if isinstance(m, Mapping):
        return [tuple(s) for s in m.get("forced_spans") or []]
    return []


def _clip(v) -> str:
    s = repr(v)
    return s if len(s) <= _MAX_VALUE else s[:_MAX_VALUE - 1] + "…"


class OutputView(View):
    """The view of one program's state; `holes` (from `template.holes`) tells which
    names are constrained. `status` is shown in the header ("running", "interrupted")."""

    def __init__(self, state, holes: list | tuple = (), status: str | None = None, title: str = "lm") -> None:
        self.state, self.status, self.title = state, status, title
        self.kinds = {h.name: h.kind for h in holes if h.name}
        self.nholes = len(holes)
        self.update()

    def update(self) -> None:
        self.snap = snapshot(self.state)

    def header(self) -> str:
        s = self.snap
        prompt, cached = cache_counts(s.meta)
        parts = [self.title]
        if self.status:
            parts.append(self.status)
        n = self.nholes or len(s.variables)
        parts.append(f"{n} hole{'s' if n != 1 else ''}")
        if prompt:
            parts.append(f"{cached} of {prompt} prompt tokens from cache ({100 * cached / prompt:.0f}%)")
        return " · ".join(parts)

    # -- text/plain ---------------------------------------------------------------
    def text(self) -> str:
        s = self.snap
        lines = [f"── {self.header()} ──", self._plain(s.chunks)]
        for i, b in enumerate(s.branches):
            lines.append(f"── branch {i} ──")
            lines.append(self._plain(b))
        if s.variables:
            lines.append("── variables ──")
            lines += [f"{k} = {_clip(v)}" for k, v in s.variables.items()]
        if s.error:
            lines.append(f"error: {s.error}")
        return "\n".join(lines)

    @staticmethod
    def _plain(chunks) -> str:
        return "".join(t if v is None else f"«{t}»" for v, t in _segments(chunks))

    # -- text/html ----------------------------------------------------------------
    def html(self) -> str:
        s = self.snap
        body = [self._html_text(s.chunks, s.meta)]
        for i, b in enumerate(s.branches):
            body.append(f'<div style="margin-top: 4px; color: #8250df">⑂ branch {i}</div>')
            body.append(self._html_text(b, {}))
        if s.variables:
            rows = "".join(f'<tr>{td(esc(k), "color: #0550ae")}{td(esc(_clip(v)))}'
                           f'{td(esc(self.kinds.get(k, "")), "color: #8c959f")}</tr>'
                           for k, v in s.variables.items())
            body.append(table(rows, "border-top: 1px solid #d0d7de"))
        if s.error:
            body.append(f'<div style="color: #cf222e">error: {esc(s.error)}</div>')
        return box(self.header(), "".join(body))

    def _html_text(self, chunks, meta) -> str:
        out = ['<div style="white-space: pre-wrap">']
        for var, t in _segments(chunks):
            if var is None:
                out.append(_prompt_html(t))
                continue
            kind = self.kinds.get(var, "gen")
            style = _GEN + ("; " + _CONSTRAINED if kind in ("regex", "json", "select") else "")
            title = f"{var} ({kind})"
            out.append(f'<span style="{style}" title="{esc(title)}">{_gen_html(t, _forced(meta, var))}</span>')
        out.append("</div>")
        return "".join(out)


def _prompt_html(t: str) -> str:
    out, i = [], 0
    for m in _SPECIAL.finditer(t):
        out.append(f'<span style="{_PROMPT}">{esc(t[i:m.start()])}</span>')
        out.append(f'<span style="color: #afb8c1">{esc(m.group())}</span>')
        i = m.end()
    out.append(f'<span style="{_PROMPT}">{esc(t[i:])}</span>')
    return "".join(out)


def _gen_html(t: str, spans) -> str:
    out, i = [], 0
    for a, b in sorted(spans):
        if a < i or b > len(t):
            continue
        out.append(esc(t[i:a]))
        out.append(f'<span style="{_FORCED}" title="jump-forward">{esc(t[a:b])}</span>')
        i = b
    out.append(esc(t[i:]))
    return "".join(out)


class BatchView(View):
    """A `--batch` result: one row per program with its captured values."""

    def __init__(self, states, holes=(), status: str | None = None, max_rows: int = 20) -> None:
        self.states, self.status, self.max_rows = list(states), status, max_rows
        self.holes = [h.name for h in holes if h.name]
        self.update()

    def update(self) -> None:
        self.snaps = [snapshot(s) if s is not None else None for s in self.states]

    def header(self) -> str:
        done = [s for s in self.snaps if s is not None]
        failed = sum(1 for s in done if s.error)
        prompt = cached = 0
        for s in done:
            p, c = cache_counts(s.meta)
            prompt, cached = prompt + p, cached + c
        parts = ["lm batch", f"{len(self.snaps)} programs", f"{failed} failed"]
        if self.status:
            parts.insert(1, self.status)
        if prompt:
            parts.append(f"{cached} of {prompt} prompt tokens from cache ({100 * cached / prompt:.0f}%)")
        return " · ".join(parts)

    def _rows(self):
        names = list(dict.fromkeys(self.holes))
        for i, s in enumerate(self.snaps[: self.max_rows]):
            if s is None:
                yield i, {"": "not run"}
            elif s.error:
                yield i, {"error": s.error}
            else:
                yield i, {k: s.variables[k] for k in (names or s.variables) if k in s.variables}

    def text(self) -> str:
        lines = [f"── {self.header()} ──"]
        for i, vals in self._rows():
            lines.append(f"[{i}] " + ", ".join(f"{k}={_clip(v)}" if k else str(v) for k, v in vals.items()))
        if len(self.snaps) > self.max_rows:
            lines.append(f"… {len(self.snaps) - self.max_rows} more")
        return "\n".join(lines)

    def html(self) -> str:
        rows = "".join(f'<tr>{td(str(i), "color: #8c959f")}' + "".join(
            td(f'<span style="color: #0550ae">{esc(k)}</span> {esc(_clip(v) if k else str(v))}')
            for k, v in vals.items()) + "</tr>" for i, vals in self._rows())
        more = (f"<div>… {len(self.snaps) - self.max_rows} more</div>"
                if len(self.snaps) > self.max_rows else "")
        return box(self.header(), f"{table(rows)}{more}")


class DryRunView(View):
    """`%%lm --dry-run`: the compiled prompt with its holes, nothing run."""

    def __init__(self, program, holes, chat_template=None) -> None:
        self.holes = list(holes)
        self.rows = _count_holes(self.holes)
        self.pieces = _dry_pieces(program, chat_template)

    def header(self) -> str:
        n = len(self.holes)
        return f"lm dry run · {n} hole{'s' if n != 1 else ''} · nothing was run"

    def text(self) -> str:
        body = "".join(t if kind == "text" else f"«{t}»" for kind, t in self.pieces)
        holes = [f"{name}: {kind}" + (f" {detail}" if detail else "") + (f" (×{n})" if n > 1 else "")
                 for (name, kind, detail), n in self.rows]
        return "\n".join([f"── {self.header()} ──", body, "── holes ──", *holes])

    def html(self) -> str:
        body = "".join(_prompt_html(t) if kind == "text" else
                       f'<span style="{_GEN}; {_CONSTRAINED}">{esc(t)}</span>' for kind, t in self.pieces)
        rows = "".join(f"<tr>{td(esc(name), 'color: #0550ae')}{td(esc(kind) + (f' ×{n}' if n > 1 else ''))}"
                       f"{td(esc(detail))}</tr>" for (name, kind, detail), n in self.rows)
        return box(self.header(), f'<div style="white-space: pre-wrap">{body}</div>{table(rows)}')


def _count_holes(holes) -> list[tuple[tuple[str, str, str], int]]:
    counts: dict[tuple[str, str, str], int] = {}
    for h in holes:
        key = (h.name or "(unnamed)", h.kind, h.detail)
        counts[key] = counts.get(key, 0) + 1
    return list(counts.items())


def _dry_pieces(program, tmpl) -> list[tuple[str, str]]:
    """The program as (text | hole, str) pieces; roles as the chat template writes them
    (or as `[role]` lines without one)."""
    from lmnb.lang import ir

    out: list[tuple[str, str]] = []
    first = [True]

    def walk(n, depth: str = "") -> None:
        if isinstance(n, ir.Seq):
            for it in n.items:
                walk(it, depth)
        elif isinstance(n, ir.Text):
            out.append(("text", n.value))
        elif isinstance(n, ir.RoleBegin):
            out.append(("text", tmpl.begin(n.role, first[0]) if tmpl else f"[{n.role}]\n"))
        elif isinstance(n, ir.RoleEnd):
            out.append(("text", tmpl.end(n.role) if tmpl else "\n"))
        elif isinstance(n, ir.Fork):
            for i, b in enumerate(n.branches):
                out.append(("text", f"\n⑂ branch {i}: "))
                walk(b)
            out.append(("text", "\n⑂ join\n"))
        elif isinstance(n, (ir.Gen, ir.Select)):
            out.append(("hole", repr(n) if isinstance(n, ir.Gen) else
                        f"select({n.name!r}, {list(n.choices)!r})"))
        elif isinstance(n, ir.Var):
            out.append(("hole", n.name))
        else:
            out.append(("hole", n.describe()))
        first[0] = first[0] and not out
    walk(program)
    return out
