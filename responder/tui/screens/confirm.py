"""Confirmation modals: a destructive step (type the answer to enable Confirm) and quitting."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from responder.incident.engine import ConfirmationRequest

MAX_LISTED = 8


class ConfirmScreen(ModalScreen[bool]):
    """Says exactly what will be written and enables Confirm only once the operator typed
    `request.answer` (an object count or a name). Escape refuses."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen #dialog { width: 76; max-width: 100%; height: auto; max-height: 100%;
                            border: thick $error; background: $surface; padding: 0 1; }
    ConfirmScreen #title { text-style: bold; width: 100%; }
    ConfirmScreen #mode { text-style: bold reverse; margin-bottom: 1; }
    ConfirmScreen #writes { height: auto; max-height: 8; }
    ConfirmScreen #prompt { margin-top: 1; }
    ConfirmScreen Input { width: 100%; }
    ConfirmScreen #buttons { height: auto; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 1; }
    """
    BINDINGS = [Binding("escape", "refuse", "Refuse")]

    def __init__(self, request: ConfirmationRequest, *, dry_run: bool = False, blink: bool = True) -> None:
        super().__init__()
        self.request = request
        self.dry_run = dry_run
        self.blink = blink

    def compose(self) -> ComposeResult:
        r = self.request
        with Vertical(id="dialog"):
            yield Label(f"Confirm step {r.step} ({r.action})", id="title")
            yield Label("DRY RUN: writes are sent with dryRun=All, nothing persists" if self.dry_run
                        else "LIVE: these writes change the cluster", id="mode")
            yield Static(Text(r.summary), id="summary")
            count = len(r.writes)
            if count:
                listed = "\n".join(f"  {w}" for w in r.writes[:MAX_LISTED])
                more = f"\n  … and {count - MAX_LISTED} more" if count > MAX_LISTED else ""
                writes = Text(f"{count} write{'s' if count != 1 else ''}:\n{listed}{more}")
            else:
                writes = Text("writes: decided by the step when it runs (every one is journaled; "
                              "see the plan with p)")
            with VerticalScroll(id="writes"):
                yield Static(writes)
            yield Label(Text.assemble("Type ", (r.answer, "bold reverse"), " to confirm, Escape to refuse:"),
                        id="prompt")
            yield Input(placeholder=f"type {r.answer}", id="answer")
            with Horizontal(id="buttons"):
                yield Button("Confirm", id="confirm", variant="error", disabled=True)
                yield Button("Refuse (Esc)", id="refuse")

    def on_mount(self) -> None:
        field = self.query_one("#answer", Input)
        if not self.blink:
            field.cursor_blink = False
        field.focus()

    def _matches(self) -> bool:
        return self.query_one("#answer", Input).value.strip() == self.request.answer

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_one("#confirm", Button).disabled = not self._matches()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self._matches():
            self.dismiss(True)
        else:
            self.app.bell()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm" and self._matches():
            self.dismiss(True)
        elif event.button.id == "refuse":
            self.dismiss(False)

    def action_refuse(self) -> None:
        self.dismiss(False)


class QuitScreen(ModalScreen[bool]):
    """Quit while an incident is open? y / n (Escape = stay)."""

    DEFAULT_CSS = """
    QuitScreen { align: center middle; }
    QuitScreen #dialog { width: 64; max-width: 100%; height: auto; border: thick $warning;
                         background: $surface; padding: 0 1; }
    QuitScreen #question { text-style: bold; }
    QuitScreen #buttons { height: auto; align-horizontal: right; margin-top: 1; }
    QuitScreen Button { margin-left: 1; }
    """
    BINDINGS = [Binding("y", "answer(True)", "Quit", show=True), Binding("n", "answer(False)", "Stay"),
                Binding("escape", "answer(False)", "Stay", show=False)]

    def __init__(self, detail: str) -> None:
        super().__init__()
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Quit responder with an incident open? (y/n)", id="question")
            yield Static(Text(self.detail), id="detail")
            with Horizontal(id="buttons"):
                yield Button("Quit (y)", id="yes", variant="warning")
                yield Button("Stay (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
