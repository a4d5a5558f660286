"""Key help (`?`)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

KEYS = [
    ("q", "quit (asks first while an incident is open)"),
    ("d", "toggle dry-run (only before an incident opens)"),
    ("p", "plan: what responder sees now and what it would do"),
    ("u", "undo the reversible writes of this incident (asks first)"),
    ("a", "attached to a guard: approve the step it waits on (asks first)"),
    ("T", "attached to a guard: take its writer Lease over and lead its incident from this terminal (asks first; "
          "the guard replicas stand by until this TUI quits)"),
    ("?", "this help"),
    ("ctrl+p", "command palette: every action by name"),
    ("tab", "move focus between the table and the event feed"),
    ("↑ ↓ pgup pgdn", "scroll the focused table or feed"),
]
NOTES = [
    ("states", "at-risk: a dying or gone Tenant still owns it (it will be deleted); detached: responder "
               "removed the Tenant reference; terminating: already being deleted; gone: deleted; "
               "protected: never touched."),
    ("breaker", "armed: Capsule runs; tripped: Capsule scaled to 0; verified: Capsule's webhook refuses "
                "namespace deletes for everyone but responder; unavailable: no fail-closed webhook, "
                "containment relies on speed."),
    ("hold", "ARMED: `responder protect --only hold` installed the namespace hold ahead of the incident, so "
             "the breaker's first write has tenant namespace deletes refused within milliseconds; NOT ARMED: "
             "the breaker creates it during the incident and it holds only after ~1 s (the feed says why; "
             "fix: `responder protect --only hold`)."),
    ("mode", "auto: containment steps run without asking; confirm: every step asks; dry-run: every "
             "write is sent with dryRun=All."),
    ("BLIND", "a watch stream stopped after its first list (credentials refused, permissions changed) and is "
              "being restarted: until it is back, what happens to that resource is not seen (the feed says why)."),
]


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #dialog { width: 80; max-width: 100%; height: auto; max-height: 100%;
                         border: thick $accent; background: $surface; padding: 0 1; }
    HelpScreen #title { text-style: bold; }
    """
    BINDINGS = [Binding("escape", "close", "Close"), Binding("question_mark", "close", show=False),
                Binding("q", "close", show=False)]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold", no_wrap=True)
        keys.add_column()
        for key, what in KEYS:
            keys.add_row(key, what)
        notes = Table.grid(padding=(0, 2))
        notes.add_column(style="bold", no_wrap=True)
        notes.add_column()
        for key, what in NOTES:
            notes.add_row(key, what)
        with Vertical(id="dialog"):
            yield Label("responder keys (Escape closes)", id="title")
            with VerticalScroll():
                yield Static(keys)
                yield Static(Text(""))
                yield Static(notes)

    def action_close(self) -> None:
        self.dismiss(None)
