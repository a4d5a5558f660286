"""The runbook panel: each step's state and elapsed time, a progress bar on long steps, and the
incident journal's latest lines underneath."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static

from responder.tui.state import StepView, TuiState

ICONS = {"pending": "·", "running": "▶", "waiting": "?", "finished": "✓", "failed": "✗", "skipped": "–"}


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class StepRow(Vertical):
    DEFAULT_CSS = """
    StepRow { height: auto; }
    StepRow > Static, StepRow > Horizontal { height: 1; }
    StepRow .line { width: 1fr; }
    StepRow .elapsed { width: auto; padding-right: 1; }
    StepRow .detail { color: $text-muted; padding-left: 2; }
    StepRow ProgressBar { height: 1; padding-left: 2; display: none; }
    StepRow ProgressBar.-shown { display: block; }
    StepRow ProgressBar Bar { width: 1fr; }
    """

    def __init__(self, step_id: str) -> None:
        super().__init__(id=f"step-{step_id}")
        self.step_id = step_id
        self._latest: tuple[StepView, float] | None = None

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static(classes="line")
            yield Static(classes="elapsed")
        yield Static(classes="detail")
        yield ProgressBar(show_eta=False, show_percentage=True)

    def on_mount(self) -> None:
        if self._latest is not None:
            self.show(*self._latest)

    def show(self, step: StepView, now: float) -> None:
        self._latest = (step, now)
        if not self.children:  # not composed yet: on_mount shows the latest
            return
        line = Text(no_wrap=True, overflow="ellipsis", end="")
        icon = ICONS.get(step.status, "·")
        style = {"running": "bold", "waiting": "bold reverse", "failed": "bold underline"}.get(step.status, "")
        line.append(f"{icon} {step.id}", style)
        self.query_one(".line", Static).update(line)
        self.query_one(".elapsed", Static).update(_elapsed(step.elapsed(now)))
        if step.status == "pending":
            detail = step.description
        elif step.status in ("running", "waiting"):
            detail = step.note or step.status
            if step.done is not None and step.total:
                detail = f"{step.done} of {step.total}" + (f" · {step.note}" if step.note else "")
        else:
            detail = f"{step.status}: {step.summary}" if step.summary else step.status
        self.query_one(".detail", Static).update(Text(detail, no_wrap=True, overflow="ellipsis", end=""))
        bar = self.query_one(ProgressBar)
        show_bar = bool(step.total) and step.status in ("running", "waiting", "finished", "failed")
        bar.set_class(show_bar, "-shown")
        if show_bar:
            bar.update(total=step.total, progress=step.done or 0)
        self.set_class(step.status in ("running", "waiting"), "-current")
        self.set_class(step.status == "pending", "-pending")
        self.set_class(step.status in ("finished", "skipped"), "-done")


class RunbookPanel(Vertical):
    DEFAULT_CSS = """
    RunbookPanel { border: round $panel-lighten-2; border-title-align: left; width: 34; }
    RunbookPanel #steps { height: auto; }
    RunbookPanel #journal-title { height: 1; color: $text-muted; text-style: bold; margin-top: 1; }
    RunbookPanel #journal { height: 1fr; color: $text-muted; text-wrap: nowrap; text-overflow: ellipsis; }
    StepRow Static { text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def compose(self) -> ComposeResult:
        yield Vertical(id="steps")
        yield Static("journal", id="journal-title")
        yield Static(id="journal")

    def on_mount(self) -> None:
        self.border_title = "runbook"

    def show(self, model: TuiState, now: float) -> None:
        steps = self.query_one("#steps", Vertical)
        rows = {row.step_id: row for row in steps.query(StepRow)}
        missing = [StepRow(sid) for sid in model.steps if sid not in rows]
        if missing:
            steps.mount(*missing)
            rows.update((row.step_id, row) for row in missing)
        for sid, step in model.steps.items():
            rows[sid].show(step, now)  # a row not mounted yet shows it from its on_mount
        journal = self.query_one("#journal", Static)
        height = max(1, journal.size.height)
        lines = list(model.journal_tail)[-height:] if model.journal_tail else ["(no incident journal yet)"]
        journal.update(Text("\n".join(lines), no_wrap=True, overflow="ellipsis", end=""))
