"""The live event feed: CRD, Tenant, namespace, Deployment and webhook events, newest at the bottom.

A `Log` (plain lines, rendered lazily, only the visible ones) rather than a `RichLog` (which renders
every line as it is written): during a burst the feed takes hundreds of lines per frame. Alert lines
(deletions, a Terminating namespace, the CRD deleting, the breaker tripping) start with "!".

The feed starts full of blank lines, like a terminal, as wide as a line may be: its virtual size then
never changes, and a change of virtual size relayouts the whole screen (it did on each frame until
500 lines were in).
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.widgets import Log

from responder.tui.state import FeedLine

FEED_LINES = 500
LINE_WIDTH = 240  # longer feed lines are cut


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
        self._max = max_lines

    def on_mount(self) -> None:
        self.write_lines([" " * LINE_WIDTH] + [" "] * (self._max - 1))
        self.call_after_refresh(self.scroll_end, animate=False)  # follow new lines from the start

    def add_lines(self, lines: Iterable[FeedLine]) -> None:
        self.write_lines([(("!" if line.alert else " ") + line.text)[:LINE_WIDTH] for line in lines])
        # The feed is always full, so every write prunes: Log.write_lines then refreshes the rows the
        # lines had before the pruning shifted them and, already at the end, does not scroll. Without
        # this the visible rows keep their old rendering (found in `responder drill`: an empty feed).
        self.refresh()
