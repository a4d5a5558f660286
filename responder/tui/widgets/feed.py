"""The live event feed: CRD, Tenant, namespace, Deployment and webhook events, newest at the bottom.

A `Log` (plain lines, rendered lazily, only the visible ones) rather than a `RichLog` (which renders
every line as it is written): during a burst the feed takes hundreds of lines per frame. Alert lines
(deletions, a Terminating namespace, the CRD deleting, the breaker tripping) start with "!".
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.widgets import Log

from responder.tui.state import FeedLine

FEED_LINES = 500


class EventFeed(Log):
    DEFAULT_CSS = """
    EventFeed { border: round $panel-lighten-2; border-title-align: left; padding: 0 0;
                scrollbar-size-vertical: 1; overflow-x: hidden; }
    EventFeed:focus { border: round $accent; }
    """

    def __init__(self, *, max_lines: int = FEED_LINES, id: str | None = None) -> None:
        super().__init__(max_lines=max_lines, highlight=False, auto_scroll=True, id=id)
        self.border_title = "events"
        self.shown = 0  # model.feed_total already written

    def add_lines(self, lines: Iterable[FeedLine]) -> None:
        self.write_lines([("!" if line.alert else " ") + line.text for line in lines])
