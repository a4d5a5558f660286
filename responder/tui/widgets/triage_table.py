"""The triage table: every namespace's state, grouped by tenant, with counts per state.

It is built for 10,000+ rows: rows are keyed (`ns:<name>`, `tenant:<name>`) and never rebuilt; the
app hands it the coalesced changes of the last frame (`TableChanges`) and it touches only the cells
that changed. Rows are re-sorted only when rows were added or moved to another tenant. The detail
line under the table is worded when a row is highlighted, from the model, not per change.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowDoesNotExist, RowKey

from responder.tui.state import NO_TENANT, URGENCY, Row, TableChanges, TuiState
from responder.tui.widgets._text import set_text

STATE_STYLE = {"at-risk": "bold reverse", "terminating": "bold", "gone": "bold strike", "detached": "",
               "safe": "", "protected": "dim", "restoring": "italic", "restored": "", "re-adopted": ""}
NAME_WIDTH, STATE_WIDTH, REASON_WIDTH = 23, 13, 200


class KeyedText(Text):
    """A cell that carries the row's place in the tenant grouping (DataTable.sort sees only cells)."""

    def __init__(self, text: str, sort_key: tuple, style: str = "") -> None:
        super().__init__(text, style=style, no_wrap=True, overflow="ellipsis", end="")
        self.sort_key = sort_key


def group_key(tenant: str) -> tuple:
    return (tenant == NO_TENANT, tenant)


def tenant_label(tenant: str) -> str:
    return tenant or "(no tenant)"


def _cell(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis", end="")


# One State cell per state, shared by every row in it (DataTable renders cells, never changes them).
STATE_CELLS = {state: _cell(state, style) for state, style in STATE_STYLE.items()}


def state_cell(state: str) -> Text:
    cell = STATE_CELLS.get(state)
    return cell if cell is not None else _cell(state)


class TriageTable(DataTable):
    """A DataTable tuned for many rows whose cells change often.

    DataTable keys all its caches on one counter that every `update_cell` bumps, so with 10,000
    rows each frame with a changed cell rebuilt two 10,000-entry lists (row order, line offsets) and
    re-rendered every visible cell, changed or not. Here:
    - row order and line offsets are cached until rows are added, removed, sorted or cleared (all
      rows are one line high);
    - `update_cell` marks the row stale instead of bumping the counter; a render drops the cached
      renders of the stale rows that are on screen, and only theirs (an off-screen change costs
      nothing until it is scrolled into view, an on-screen one re-renders one row, not the screen);
    - the `refresh()` of each `update_cell` in a frame is folded into one, and skipped when none of
      the frame's changes is on screen.
    """

    DEFAULT_CSS = """
    TriageTable { height: 1fr; scrollbar-size-vertical: 1; scrollbar-size-horizontal: 0; }
    """

    _batching = False  # class defaults: DataTable.__init__ already refreshes
    _refresh_wanted = False
    _structure = 0
    _stale_rows: set = set()

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_row_labels=False)
        self._groups: dict[str, int] = {}  # tenant -> namespace rows in it
        self._group_cells: dict[str, tuple] = {}  # tenant -> what its group row shows (skip unchanged)
        self._model: TuiState | None = None  # the model of the last apply (row_info words rows from it)
        self._ns_keys: dict[str, RowKey] = {}  # namespace -> its RowKey (built once, not per update)
        self._columns: dict[str, ColumnKey] = {}
        self._structure = 0  # bumped whenever rows are added, removed or reordered
        self._stale_rows: set[RowKey] = set()  # rows changed since their cached render
        self._order_cache: tuple[int, int, list] | None = None
        self._offsets_cache: tuple[int, int, list] | None = None

    # -- caches keyed on the row structure, not on every cell update ------------------------------

    _order_cache: tuple[int, int, list] | None = None
    _offsets_cache: tuple[int, int, list] | None = None

    @property
    def ordered_rows(self) -> list:
        key = (self._structure, self.row_count)
        if self._order_cache is None or self._order_cache[:2] != key:
            get_key, rows = self._row_locations.get_key, self.rows
            self._order_cache = (*key, [rows[get_key(i)] for i in range(self.row_count)])
        return self._order_cache[2]

    @property
    def _y_offsets(self) -> list:
        key = (self._structure, self.row_count)
        if self._offsets_cache is None or self._offsets_cache[:2] != key:
            offsets = []
            for row in self.ordered_rows:
                offsets += [(row.key, y) for y in range(row.height)]
            self._offsets_cache = (*key, offsets)
        return self._offsets_cache[2]

    # Each of these bumps DataTable's counter (every cache is invalid after it): no row is stale.

    def add_row(self, *cells, height: int | None = 1, key: str | None = None, label=None):
        self._structure += 1
        row_key = super().add_row(*cells, height=height, key=key, label=label)
        self._stale_rows.clear()
        return row_key

    def remove_row(self, row_key) -> None:
        self._structure += 1
        super().remove_row(row_key)
        self._stale_rows.clear()

    def sort(self, *columns, key=None, reverse: bool = False):
        self._structure += 1
        result = super().sort(*columns, key=key, reverse=reverse)
        self._stale_rows.clear()
        return result

    def clear(self, columns: bool = False):
        self._structure += 1
        result = super().clear(columns)
        self._stale_rows.clear()
        return result

    def update_cell(self, row_key, column_key, value, *, update_width: bool = False) -> None:
        if update_width:
            super().update_cell(row_key, column_key, value, update_width=True)
            self._stale_rows.clear()
            return
        row_key = RowKey(row_key) if isinstance(row_key, str) else row_key
        column_key = ColumnKey(column_key) if isinstance(column_key, str) else column_key
        if row_key not in self._row_locations or column_key not in self._column_locations:
            raise CellDoesNotExist(f"No cell exists for row_key={row_key!r}, column_key={column_key!r}.")
        self._set_cell(row_key, column_key, value)

    def _set_cell(self, row_key: RowKey, column_key: ColumnKey, value: object) -> None:
        """`update_cell` for keys known to exist (the burst path: no key building, no lookups)."""
        self._data[row_key][column_key] = value
        self._stale_rows.add(row_key)
        if self._batching:
            self._refresh_wanted = True
        else:
            self.refresh()

    def _window(self) -> range:
        """Row indexes on screen (one more each side)."""
        top = int(self.scroll_y)
        return range(max(0, top - 1), min(self.row_count, top + self.size.height + 1))

    def render_lines(self, crop):
        if self._stale_rows:
            get_key, stale = self._row_locations.get_key, self._stale_rows
            shown = {key: i for i in self._window() if (key := get_key(i)) in stale}
            if shown:
                self._forget(shown)
                stale.difference_update(shown)
        return super().render_lines(crop)

    def _forget(self, rows: dict) -> None:
        """Drop DataTable's cached renders of these rows ({row key: row index}), keep all others.
        (Keys as DataTable builds them: row key first for rows and cells, the absolute line for
        lines, the row index second for renderables; every row is one line high.)"""
        header = self.header_height if self.show_header else 0
        lines = {i + header for i in rows.values()}
        indexes = set(rows.values())
        for cache, position, wanted in ((self._row_render_cache, 0, rows), (self._cell_render_cache, 0, rows),
                                        (self._line_cache, 0, lines), (self._row_renderable_cache, 1, indexes)):
            for key in [k for k in cache.keys() if k[position] in wanted]:
                cache.discard(key)

    def refresh(self, *regions, repaint: bool = True, layout: bool = False, recompose: bool = False):
        if self._batching and not regions and not layout and not recompose:
            self._refresh_wanted = True
            return self
        return super().refresh(*regions, repaint=repaint, layout=layout, recompose=recompose)

    def on_mount(self) -> None:
        self.add_column("Namespace", width=NAME_WIDTH, key="name")
        self.add_column("State", width=STATE_WIDTH, key="state")
        self.add_column("Reason", width=REASON_WIDTH, key="reason")
        self._columns = {name: ColumnKey(name) for name in ("name", "state", "reason")}

    def apply(self, changes: TableChanges, model: TuiState) -> None:
        """Apply one frame's changes: add, update (only the cells that changed), remove, re-count."""
        self._model = model
        self._batching, self._refresh_wanted = True, False
        structure = self._structure
        changed: list[RowKey] = []
        try:
            self._apply(changes, model, changed)
        finally:
            self._batching = False
            if self._refresh_wanted and (structure != self._structure or self._on_screen(changed)):
                self.refresh()

    def _on_screen(self, changed: list[RowKey]) -> bool:
        get_key, rows = self._row_locations.get_key, self.row_count
        shown = {get_key(i) for i in self._window() if i < rows}
        return any(key in shown for key in changed)

    def _apply(self, changes: TableChanges, model: TuiState, changed: list[RowKey]) -> None:
        resort = False
        keys, set_cell = self._ns_keys, self._set_cell
        name_col, state_col, reason_col = self._columns["name"], self._columns["state"], self._columns["reason"]
        for row in changes.added:
            self._join(row.tenant)
            keys[row.name] = self.add_row(*self._cells(row), key=f"ns:{row.name}")
            resort = True
        for before, after in changes.updated:
            key = keys[after.name]
            if before.tenant != after.tenant:
                self._leave(before.tenant, model)
                self._join(after.tenant)
                set_cell(key, name_col, self._cells(after)[0])
                resort = True
            if before.state != after.state:
                set_cell(key, state_col, state_cell(after.state))
            if before.reason != after.reason:
                set_cell(key, reason_col, _cell(after.reason))
            changed.append(key)
        for row in changes.removed:
            try:
                self.remove_row(f"ns:{row.name}")
            except RowDoesNotExist:
                pass
            keys.pop(row.name, None)
            self._leave(row.tenant, model)
        for tenant in changes.tenants:
            if tenant in self._groups:
                self._update_group(tenant, model, changed)
        if resort:
            self._resort()

    # -- grouping ----------------------------------------------------------------------------------

    def _cells(self, row: Row) -> tuple[Text, Text, Text]:
        return (KeyedText(f"  {row.name}", (*group_key(row.tenant), 1, row.name)),
                state_cell(row.state), _cell(row.reason))

    def _join(self, tenant: str) -> None:
        if tenant not in self._groups:
            self._groups[tenant] = 0
            self.add_row(KeyedText(f"▾ {tenant_label(tenant)}", (*group_key(tenant), 0, ""), "bold"),
                         _cell(""), _cell(""), key=f"tenant:{tenant}")
        self._groups[tenant] += 1

    def row_info(self, row_key: str) -> str:
        """A line about a row (for the detail line under the table), worded from the model now."""
        model = self._model
        if model is None:
            return ""
        kind, _, name = row_key.partition(":")
        if kind == "ns":
            row = model.rows.get(name)
            return f"{row.name} ({row.state}): {row.reason}" if row is not None else ""
        if kind == "tenant" and name in self._groups:
            return (f"Tenant {tenant_label(name)}: {self._groups[name]} namespaces: "
                    f"{model.tenant_summary(name)}")
        return ""

    def _leave(self, tenant: str, model: TuiState) -> None:
        left = self._groups.get(tenant, 0) - 1
        if left > 0:
            self._groups[tenant] = left
            return
        self._groups.pop(tenant, None)
        self._group_cells.pop(tenant, None)
        try:
            self.remove_row(f"tenant:{tenant}")
        except RowDoesNotExist:
            pass

    def _update_group(self, tenant: str, model: TuiState, changed: list[RowKey]) -> None:
        counts = model.tenant_counts.get(tenant) or {}
        total = self._groups[tenant]
        urgent = next((s for s in URGENCY if counts.get(s)), "")
        shown = (total, f"{counts[urgent]} {urgent}" if urgent else "", model.tenant_summary(tenant))
        before = self._group_cells.get(tenant, (None, None, None))
        if shown == before:
            return
        self._group_cells[tenant] = shown
        key = RowKey(f"tenant:{tenant}")
        if shown[0] != before[0]:
            self._set_cell(key, self._columns["name"], KeyedText(f"▾ {tenant_label(tenant)} ({total})",
                                                                 (*group_key(tenant), 0, ""), "bold"))
        if shown[1] != before[1]:
            self._set_cell(key, self._columns["state"], _cell(shown[1], "bold " + STATE_STYLE.get(urgent, "")))
        if shown[2] != before[2]:
            self._set_cell(key, self._columns["reason"], _cell(shown[2], "bold"))
        changed.append(key)

    def _resort(self) -> None:
        current = None
        if self.row_count and self.cursor_row > 0:
            try:
                current = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
            except Exception:
                current = None
        self.sort("name", key=lambda cell: cell.sort_key)
        if current is not None:
            try:
                self.move_cursor(row=self.get_row_index(current), animate=False)
            except RowDoesNotExist:
                pass


class TriagePanel(Vertical):
    """Counts per state over the table."""

    DEFAULT_CSS = """
    TriagePanel { border: round $panel-lighten-2; border-title-align: left; height: 1fr; }
    TriagePanel:focus-within { border: round $accent; }
    TriagePanel #counts { height: 1; width: 1fr; padding: 0 1; }
    TriagePanel #row-detail { height: 2; width: 1fr; padding: 0 1; color: $text-muted;
                              border-top: hkey $panel-lighten-2; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="counts")
        yield TriageTable(id="triage")
        yield Static(id="row-detail")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        # The row under the cursor now, not the event's: rows added and re-sorted since the event was
        # posted move another row under an unmoved cursor, and a stale key would word the wrong row.
        self.show_detail()

    def show_detail(self, row_key: str | None = None) -> None:
        table = self.table
        if row_key is None:
            if not table.row_count:
                return
            try:
                row_key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value or ""
            except Exception:
                return
        set_text(self.query_one("#row-detail", Static), Text(table.row_info(row_key), overflow="ellipsis"))

    def on_mount(self) -> None:
        self.border_title = "namespaces by tenant"

    @property
    def table(self) -> TriageTable:
        return self.query_one(TriageTable)

    def show_counts(self, model: TuiState) -> None:
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        if not model.ready:
            text.append("waiting for the initial lists…", "dim")
        else:
            text.append(f"{sum(model.counts.values())} ns", "bold")
            for state in URGENCY:
                n = model.counts.get(state)
                if n:
                    text.append("  ")
                    text.append(f"{state} {n}", STATE_STYLE.get(state, ""))
            if model.pending:
                text.append(f"  (triaging {model.pending}…)", "dim")
        set_text(self.query_one("#counts", Static), text)
