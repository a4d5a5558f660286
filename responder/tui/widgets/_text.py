"""Updating fixed-size text without a relayout."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def set_text(widget: Static, text: Text | str) -> None:
    """Show `text` in a Static whose size CSS fixes: skip it if unchanged, never relayout (a Static
    update relayouts the whole screen by default, which at 20 frames a second costs more than the
    frame itself)."""
    key = (text.plain, tuple(text.spans), str(text.style)) if isinstance(text, Text) else text
    if getattr(widget, "_responder_shown", None) == key:
        return
    widget._responder_shown = key  # type: ignore[attr-defined]
    widget.update(text, layout=False)
