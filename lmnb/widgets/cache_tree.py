"""The live radix cache as a tree: token counts, text snippets, hits, locked state.

`tree_snapshot(rt)` copies the tree on the engine thread (where the cache lives) into
plain dicts; the view decodes snippets and draws them. Children are ordered by their
first token, so the same cells give the same picture.
"""
from __future__ import annotations

from lmnb.widgets.base import View, box, esc

_SNIPPET = 48
_CODE = "background: #eef1f4; white-space: pre-wrap"   # a snippet's leading space is part of its tokens


def tree_snapshot(rt, max_nodes: int = 200) -> dict:
    """{"stats": cache_stats, "root": {children: [...]}, "shown": n, "total": m}."""
    count = [0]

    def copy(node) -> dict:
        kids = []
        for k in sorted(node.children):
            if count[0] >= max_nodes:
                break
            count[0] += 1
            kids.append(copy(node.children[k]))
        return {"key": list(node.key), "hits": node.hits, "lock_ref": node.lock_ref, "children": kids}

    def grab():
        return copy(rt.cache.root), len(rt.cache.nodes())
    root, total = rt.engine.call(grab)
    return {"stats": rt.cache_stats(), "root": root, "shown": count[0], "total": total}


def _snippet(rt, key: list[int]) -> str:
    s = rt.decode(key[:_SNIPPET * 2]).replace("\n", "⏎")
    return s if len(s) <= _SNIPPET else s[:_SNIPPET - 1] + "…"


class CacheTreeView(View):
    """`%lm cache`: the runtime's radix tree; `refresh()` redraws it in place."""

    live = True

    def __init__(self, runtime, max_nodes: int = 200) -> None:
        self.rt, self.max_nodes = runtime, max_nodes
        self.update()

    def update(self) -> None:
        self.snap = tree_snapshot(self.rt, self.max_nodes)

    def header(self) -> str:
        st = self.snap["stats"]
        used = st["pool_size"] - st["free_slots"]
        return (f"radix cache · {st['nodes']} nodes · {st['cached_tokens']} tokens cached "
                f"({st['evictable_tokens']} evictable, {st['protected_tokens']} locked) · "
                f"KV pool {used}/{st['pool_size']} slots used")

    def _lines(self):
        """(depth, node dict) in drawing order."""
        def walk(node, depth):
            for c in node["children"]:
                yield depth, c
                yield from walk(c, depth + 1)
        return list(walk(self.snap["root"], 0))

    @staticmethod
    def _state(n: dict) -> str:
        return f"locked×{n['lock_ref']}" if n["lock_ref"] else "evictable"

    def text(self) -> str:
        lines = [f"── {self.header()} ──"]
        for depth, n in self._lines():
            lines.append(f"{'  ' * depth}└ {len(n['key'])} tok · {n['hits']} hits · {self._state(n)} · "
                         f"{_snippet(self.rt, n['key'])!r}")
        if not self.snap["root"]["children"]:
            lines.append("(empty)")
        if self.snap["shown"] < self.snap["total"]:
            lines.append(f"… {self.snap['total'] - self.snap['shown']} more nodes")
        return "\n".join(lines)

    def html(self) -> str:
        def item(n: dict) -> str:
            color = "#cf222e" if n["lock_ref"] else "#1a7f37"
            kids = "".join(item(c) for c in n["children"])
            sub = f'<ul style="margin: 0; padding-left: 18px">{kids}</ul>' if kids else ""
            return (f'<li><b>{len(n["key"])}</b> tok · {n["hits"]} hits · '
                    f'<span style="color: {color}">{self._state(n)}</span> · '
                    f'<code style="{_CODE}">{esc(_snippet(self.rt, n["key"]))}</code>{sub}</li>')
        root = self.snap["root"]
        body = "".join(item(c) for c in root["children"]) or "<li>(empty)</li>"
        more = (f"<div>… {self.snap['total'] - self.snap['shown']} more nodes</div>"
                if self.snap["shown"] < self.snap["total"] else "")
        return box(self.header(), f'<ul style="margin: 0; padding-left: 16px">{body}</ul>{more}')
