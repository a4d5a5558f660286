"""The plan view (`p`): `build_plan`'s output, what responder sees now and what it would do."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static


class PlanScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    PlanScreen { align: center middle; }
    PlanScreen #dialog { width: 100%; height: 100%; border: thick $accent; background: $surface; padding: 0 1; }
    PlanScreen #title { text-style: bold; }
    PlanScreen #summary { height: auto; }
    PlanScreen #steps { height: auto; margin-bottom: 1; }
    PlanScreen DataTable { height: 1fr; }
    """
    BINDINGS = [Binding("escape", "close", "Close"), Binding("p", "close", show=False),
                Binding("q", "close", show=False)]

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__()
        self.plan = plan

    def compose(self) -> ComposeResult:
        p = self.plan
        counts = ", ".join(f"{k} {v}" for k, v in (p.get("counts") or {}).items() if v) or "none"
        summary = Text.assemble(
            ("context ", "dim"), str(p.get("context")), ("  identity ", "dim"), str(p.get("identity")),
            ("\nTenant CRD ", "dim"), str(p.get("tenant_crd")), ("  Tenants ", "dim"), str(p.get("tenants")),
            ("  Capsule replicas ", "dim"), str(p.get("capsule_replicas")),
            ("\nbreaker webhooks ", "dim"), ", ".join(p.get("breaker_webhooks") or []) or "none (breaker unavailable)",
            ("\nnamespaces ", "dim"), counts)
        steps = Table.grid(padding=(0, 2))
        steps.add_column(style="bold", no_wrap=True)
        steps.add_column()
        for s in p.get("steps") or []:
            steps.add_row(s.get("id", ""), str(s.get("would", "")))
        with Vertical(id="dialog"):
            yield Label("plan: what responder sees now and would do (never writes; Escape closes)", id="title")
            yield Static(summary, id="summary")
            yield Static(steps, id="steps")
            yield DataTable(id="plan-namespaces", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("Namespace", key="name")
        table.add_column("Tenant", key="tenant")
        table.add_column("State", key="state")
        table.add_column("Reason", key="reason")
        for row in self.plan.get("namespaces") or []:
            table.add_row(*(Text(str(row.get(k) or "-"), no_wrap=True, end="")
                            for k in ("name", "tenant", "state", "reason")))
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
