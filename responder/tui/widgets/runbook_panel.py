"""The runbook panel: each step's state and elapsed time, a progress bar on long steps, and the
incident journal's latest lines underneath.

Few widgets on purpose (the whole panel is repainted with every frame of a burst): the steps are
two Statics with the ProgressBar between them, right under the step it measures.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from responder.tui.state import StepView, TuiState
from responder.tui.widgets._text import set_text

ICONS = {"pending": "·", "running": "▶", "waiting": "?", "finished": "✓", "failed": "✗", "skipped": "–"}
STYLES = {"running": "bold", "waiting": "bold reverse", "failed": "bold underline"}


def _elapsed(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def step_detail(step: StepView) -> str:
    if step.status == "pending":
        return step.description
    if step.status in ("running", "waiting"):
        if step.done is not None and step.total:
            return f"{step.done} of {step.total}" + (f" · {step.note}" if step.note else "")
        return step.note or step.status
    return f"{step.status}: {step.summary}" if step.summary else step.status


def step_lines(steps: list[StepView], now: float, width: int, *, compact: bool) -> Text:
    """One line per step (icon, id, elapsed right-aligned) and, unless compact, its detail line;
    compact keeps the detail of running, waiting and failed steps only."""
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    for i, step in enumerate(steps):
        if i:
            text.append("\n")
        icon = ICONS.get(step.status, "·")
        elapsed = _elapsed(step.elapsed(now))
        head = f"{icon} {step.id}"
        text.append(head, STYLES.get(step.status, ""))
        text.append(" " * max(1, width - len(head) - len(elapsed)) + elapsed,
                    "" if step.status == "running" else "dim")
        if not compact or step.status in ("running", "waiting", "failed"):
            text.append("\n  " + step_detail(step), "dim")
    return text


class RunbookPanel(Vertical):
    DEFAULT_CSS = """
    RunbookPanel { border: round $panel-lighten-2; border-title-align: left; width: 34; }
    RunbookPanel > .steps { height: auto; width: 1fr; text-wrap: nowrap; text-overflow: ellipsis; }
    RunbookPanel > ProgressBar { height: 1; padding-left: 2; display: none; }
    RunbookPanel > ProgressBar.-shown { display: block; }
    RunbookPanel > ProgressBar Bar { width: 1fr; }
    RunbookPanel #journal-title { height: 1; color: $text-muted; text-style: bold; margin-top: 1; }
    RunbookPanel #journal { height: 1fr; width: 1fr; color: $text-muted; text-wrap: nowrap;
                            text-overflow: ellipsis; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._latest: tuple[TuiState, float] | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="steps-above", classes="steps")
        yield ProgressBar(id="step-progress", show_eta=False, show_percentage=True)
        yield Static(id="steps-below", classes="steps")
        yield Static("journal", id="journal-title")
        yield Static(id="journal")

    def on_mount(self) -> None:
        self.border_title = "runbook"

    def on_resize(self) -> None:
        if self._latest is not None:
            self.show(*self._latest)

    def show(self, model: TuiState, now: float) -> None:
        self._latest = (model, now)
        steps = list(model.steps.values())
        # The bar goes under the running step that reports progress (else the last one that did).
        measured = [i for i, s in enumerate(steps) if s.total]
        running = [i for i in measured if steps[i].status in ("running", "waiting")]
        at = running[0] if running else (measured[-1] if measured else None)
        width = max(10, self.content_region.width or 30)
        compact = self.screen.has_class("-short") if self.is_attached else False
        split = len(steps) if at is None else at + 1
        above, below = self.query_one("#steps-above", Static), self.query_one("#steps-below", Static)
        lines_above = step_lines(steps[:split], now, width, compact=compact)
        if self._set_steps(above, lines_above, steps[:split], compact):
            self.refresh(layout=True)
        if self._set_steps(below, step_lines(steps[split:], now, width, compact=compact), steps[split:], compact):
            self.refresh(layout=True)
        bar = self.query_one("#step-progress", ProgressBar)
        bar.set_class(at is not None, "-shown")
        if at is not None:
            bar.update(total=steps[at].total, progress=steps[at].done or 0)
        journal = self.query_one("#journal", Static)
        height = max(1, journal.size.height)
        lines = list(model.journal_tail)[-height:] if model.journal_tail else ["(no incident journal yet)"]
        set_text(journal, Text("\n".join(lines), no_wrap=True, overflow="ellipsis", end=""))

    @staticmethod
    def _set_steps(widget: Static, text: Text, steps: list[StepView], compact: bool) -> bool:
        """Update a steps Static; True when its height changed (the panel then needs a layout)."""
        height = sum(1 + (not compact or s.status in ("running", "waiting", "failed")) for s in steps)
        changed = getattr(widget, "_responder_lines", None) != height
        widget._responder_lines = height  # type: ignore[attr-defined]
        if changed:
            widget.styles.height = height
        set_text(widget, text)
        widget.display = height > 0
        return changed
