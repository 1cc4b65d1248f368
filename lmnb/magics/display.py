"""Rich display of ProgramStates in cells: `st` (or `sts[0]`) shows its output view."""
from __future__ import annotations


def _show_state(state) -> None:
    from IPython.display import display

    from lmnb.widgets import OutputView

    display(OutputView(state))


def register_formatters(ipython) -> None:
    from lmnb.lang.state import ProgramState

    ipython.display_formatter.ipython_display_formatter.for_type(ProgramState, _show_state)
