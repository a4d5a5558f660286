"""The header: who and where responder is (attached: the guard that leads), Capsule's version, the mode, the
breaker, whether the namespace hold is armed ahead of the incident, the incident; and, first, any watch stream
that stopped (BLIND)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from responder.tui.state import TuiState, utc_clock
from responder.tui.widgets._text import set_text

BREAKER_STYLE = {"armed": "bold", "tripped": "bold", "verified": "bold reverse", "unavailable": "bold underline",
                 "unknown": "dim"}
# Not armed stands out like an unavailable breaker: the breaker's namespace hold then takes ~1 s to enforce, not
# milliseconds (the feed says why, and the fix: `responder protect --only hold`).
HOLD_STYLE = {"armed": "bold", "not armed": "bold underline", "unknown": "dim"}
HOLD_LABEL = {"armed": "ARMED", "not armed": "NOT ARMED", "unknown": "?"}
# The self-arming hold (`responder protect`), shown once installed: IN FORCE while the API server refuses tenant
# namespace deletes by itself (the Tenant CRD deleted, absent, or recreated and not re-adopted yet).
SELF_HOLD_STYLE = {"in force": "bold reverse", "dormant": ""}
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


Part = tuple[str, str] | Text


def _line(*parts: Part) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis", end="")
    for i, part in enumerate(parts):
        if i:
            text.append("  ")
        if isinstance(part, Text):
            text.append(part)
        else:
            text.append(*part)
    return text


def _labelled(label: str, value: str, style: str) -> Text:
    """"label VALUE", the value styled: one segment, one space."""
    return Text.assemble(label + " ", (value, style))


def _status(width: int, head: list[tuple[Part, int]], tail: list[Part]) -> Text:
    """The status line in `width` cells: `head` must show whole, so its parts with a priority above 0 are
    dropped (lowest first) while it does not fit; `tail` (the explanations) is cut at the line's end."""
    if width > 0:
        while _line(*(p for p, _ in head)).cell_len > width and any(prio for _, prio in head):
            drop = min((prio, i) for i, (_, prio) in enumerate(head) if prio)[1]
            head = head[:drop] + head[drop + 1:]
    return _line(*(p for p, _ in head), *tail)


class HeaderBar(Vertical):
    DEFAULT_CSS = """
    HeaderBar { height: 3; background: $panel; }
    HeaderBar > Static { height: 1; width: 1fr; padding: 0 1; }
    HeaderBar #banner { text-style: bold; }
    HeaderBar #banner.-incident { background: $error; color: $text; }
    HeaderBar #banner.-failed { background: $error; color: $text; text-style: bold reverse; }
    HeaderBar #banner.-contained { background: $success; color: $text; }
    """
    _model: TuiState | None = None  # the last one shown, shown again when the width changes

    def compose(self) -> ComposeResult:
        yield Static(id="ident")
        yield Static(id="status")
        yield Static(id="banner")

    def on_resize(self) -> None:
        if self._model is not None:  # what fits on the status line depends on the width
            self.show(self._model)

    def show(self, model: TuiState) -> None:
        self._model = model
        # Attached to a guard (it leads the cluster): said first after the name, before where and who.
        attached = [(f"ATTACHED to guard {model.attached_place or '(no leader)'}", "bold reverse")] \
            if model.attached else []
        if not model.attached and model.took_over_from:  # the Lease taken over from that guard: this TUI leads
            attached = [(f"LEADING (took over from guard {model.took_over_from})", "bold reverse")]
        set_text(self.query_one("#ident", Static), _line(
            ("responder", "bold"), *attached, (f"ctx {model.context or '-'}", ""), (f"as {model.identity or '?'}", ""),
            (model.server or "-", "dim")))
        breaker, why = model.breaker()
        hold, _ = model.hold()
        velero = model.velero()
        waiting = (f"awaiting your {'approval' if model.attached else 'confirmation'} ({model.waiting_confirmation})"
                   if model.waiting_confirmation else "")
        status = self.query_one("#status", Static)
        # Narrow terminals (80 columns) drop Capsule's version, then Velero's phase, before the mode, the breaker
        # or the hold would be cut.
        width = status.outer_size.width - status.styles.gutter.width  # kept while another screen is shown
        blind = [((f"BLIND: {', '.join(sorted(model.blind))}", "bold reverse"), 0)] if model.blind else []
        set_text(status, _status(width, [
            *blind,
            ((f"Capsule {model.capsule_version()}", ""), 1),
            ((f"mode {model.mode()}", "bold" if model.dry_run else ""), 0),
            ((f"velero: {velero}", VELERO_STYLE.get(velero, "bold underline")), 2),
            (_labelled("breaker", breaker.upper(), BREAKER_STYLE.get(breaker, "")), 0),
            (_labelled("hold", HOLD_LABEL.get(hold, hold.upper()), HOLD_STYLE.get(hold, "")), 0),
            # In force it is the incident's news (kept); dormant, the first thing a narrow terminal drops.
            *([(_labelled("self-hold", model.self_hold.upper(), SELF_HOLD_STYLE.get(model.self_hold, "")),
                0 if model.self_hold == "in force" else 0.5)] if model.self_hold else [])],
            [(why, "dim"), (waiting, "bold reverse")]))
        label, cls = PHASES.get(model.phase, (model.phase.upper(), "-watching"))
        banner = self.query_one("#banner", Static)
        for c in {c for _, c in PHASES.values()}:
            banner.set_class(c == cls, c)
        if model.incident is not None:
            inc = model.incident
            detail = model.phase_detail or f"{inc.kind}: {inc.reason}"
            text = _line((label, "bold"), (inc.id, ""), (f"at {utc_clock(inc.at, millis=False)}Z", ""), (detail, ""))
        else:
            idle = (f"no incident; the guard {model.attached_place} leads: its incident shows here, its steps are "
                    "approved here" if model.attached else "no incident; press d to toggle dry-run, p for the plan")
            detail = model.phase_detail or (idle if model.phase == "watching" else "listing the cluster")
            text = _line((label, "bold"), (detail, ""))
        set_text(banner, text)
