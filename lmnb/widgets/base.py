"""`View`: what every lmnb widget shares.

A view renders itself twice, from the same data: `text()` is a deterministic
`text/plain` (no addresses, no timings, so nbval can compare it) and `html()` is
self-contained HTML (inline styles and SVG, no scripts). `_repr_mimebundle_` offers
exactly those two and nothing else.

Live views are display outputs, not widgets: `show()` displays a view with a display
id and `refresh()` re-renders it in place (`update_display_data`), which JupyterLab,
classic Notebook and VS Code apply while the kernel runs and which nbclient applies to
the stored output. A saved notebook therefore holds each view's last state as plain
HTML, which every viewer renders without a kernel. (An output that carried a widget
view as well would show "Error displaying widget: model not found" in JupyterLab once
the kernel is gone: JupyterLab prefers the widget mimetype over the HTML beside it.)
"""
from __future__ import annotations

import html as _html

# overflow-wrap: an unbroken word (a path, JSON, base64) wraps inside the view instead of
# widening it past the output area (as a widget, the view would grow the page sideways)
STYLE = ("font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; "
         "line-height: 1.45; border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 8px; "
         "background: #fbfbfc; color: #1f2328; white-space: normal; overflow-wrap: anywhere")
# JupyterLab's and nbconvert's CSS for rendered HTML right-align, pad and fix the layout of
# tables; views' tables say what they want instead
_TABLE = "border-collapse: collapse; table-layout: auto; margin: 6px 0 0 0"
_CELL = "text-align: left; vertical-align: top; padding: 1px 10px 1px 0"


def esc(s: str) -> str:
    return _html.escape(s, quote=True)


def pre(s: str) -> str:
    """Escaped text that keeps its line breaks and spaces."""
    return f'<span style="white-space: pre-wrap">{esc(s)}</span>'


def td(content: str, style: str = "") -> str:
    """A table cell (already escaped content) that reads left to right in any notebook."""
    return f'<td style="{_CELL}{"; " + style if style else ""}">{content}</td>'


def table(rows: str, style: str = "") -> str:
    return f'<table style="{_TABLE}{"; " + style if style else ""}">{rows}</table>'


def box(title: str, body: str) -> str:
    return (f'<div class="lmnb-view" style="{STYLE}"><div style="font-weight: 600; color: #57606a; '
            f'margin-bottom: 4px">{esc(title)}</div>{body}</div>')


class View:
    """Base of the lmnb views; subclasses implement `text()` and `html()`."""

    live = False

    def text(self) -> str:
        raise NotImplementedError

    def html(self) -> str:
        raise NotImplementedError

    def update(self) -> None:
        """Re-read the data the view shows (views of live objects override it)."""

    def show(self):
        """Display the view with a display id, so `refresh()` can redraw it in place."""
        from IPython.display import display

        self._handle = display(self, display_id=True)
        return self._handle

    def refresh(self) -> None:
        """Re-read the data and redraw the displayed output in place, if it was shown."""
        self.update()
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.update(self)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/plain": self.text(), "text/html": self.html()}

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        return self.text()
