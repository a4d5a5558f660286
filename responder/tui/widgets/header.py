"""The header: who and where responder is, Capsule's version, the mode, the breaker, the incident."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from responder.tui.state import TuiState, utc_clock
from responder.tui.widgets._text import set_text

BREAKER_STYLE = {"armed": "bold", "tripped": "bold", "verified": "bold reverse", "unavailable": "bold underline",
                 "unknown": "dim"}
# The backup storage location's phase; anything but Available once there is one is a problem for recovery.
VELERO_STYLE = {"Available": "", "none": "dim", "?": "dim"}
PHASES = {
    "starting": ("STARTING", "-watching"),
    "watching": ("WATCHING", "-watching"),
    "containing": ("INCIDENT", "-incident"),
    "contained": ("CONTAINED", "-contained"),
    "not-contained": ("NOT CONTAINED", "-failed"),
    "recovering": ("RECOVERING", "-incident"),
    "recovered": ("RECOVERED", "-contained"),
    "not-recovered": ("NOT RECOVERED", "-failed"),
    "dry-run-done": ("DRY RUN DONE", "-contained"),
    "error": ("ERROR", "-failed"),
}


def _line(*parts: tuple[str, str]) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    for i, (value, style) in enumerate(parts):
        if i:
            text.append("  ")
        text.append(value, style)
    return text


class HeaderBar(Vertical):
    DEFAULT_CSS = """
    HeaderBar { height: 3; background: $panel; }
    HeaderBar > Static { height: 1; width: 1fr; padding: 0 1; }
    HeaderBar #banner { text-style: bold; }
    HeaderBar #banner.-incident { background: $error; color: $text; }
    HeaderBar #banner.-failed { background: $error; color: $text; text-style: bold reverse; }
    HeaderBar #banner.-contained { background: $success; color: $text; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="ident")
        yield Static(id="status")
        yield Static(id="banner")

    def show(self, model: TuiState) -> None:
        set_text(self.query_one("#ident", Static), _line(
            ("responder", "bold"), (f"ctx {model.context or '-'}", ""), (f"as {model.identity or '?'}", ""),
            (model.server or "-", "dim")))
        breaker, why = model.breaker()
        velero = model.velero()
        waiting = f"awaiting your confirmation ({model.waiting_confirmation})" if model.waiting_confirmation else ""
        set_text(self.query_one("#status", Static), _line(
            (f"Capsule {model.capsule_version()}", ""), (f"mode {model.mode()}", "bold" if model.dry_run else ""),
            (f"velero: {velero}", VELERO_STYLE.get(velero, "bold underline")), ("breaker", ""), (breaker.upper(), BREAKER_STYLE.get(breaker, "")), (why, "dim"),
            (waiting, "bold reverse")))
        label, cls = PHASES.get(model.phase, (model.phase.upper(), "-watching"))
        banner = self.query_one("#banner", Static)
        for c in {c for _, c in PHASES.values()}:
            banner.set_class(c == cls, c)
        if model.incident is not None:
            inc = model.incident
            detail = model.phase_detail or f"{inc.kind}: {inc.reason}"
            text = _line((label, "bold"), (inc.id, ""), (f"at {utc_clock(inc.at, millis=False)}Z", ""), (detail, ""))
        else:
            detail = model.phase_detail or ("no incident; press d to toggle dry-run, p for the plan"
                                            if model.phase == "watching" else "listing the cluster")
            text = _line((label, "bold"), (detail, ""))
        set_text(banner, text)
