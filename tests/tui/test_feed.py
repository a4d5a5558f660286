"""The event feed keeps showing the newest lines once it is full.

Found running `responder drill` in a terminal: the feed starts full (see EventFeed), and Textual's
`Log.write_lines` then refreshes the rows where the lines were appended *before* pruning shifted them,
while the view is already at the end and does not scroll; the visible rows kept their old (blank)
rendering and the feed looked empty for the whole incident.
"""

from __future__ import annotations

import time

from textual.app import App, ComposeResult

from responder.tui.state import FeedLine
from responder.tui.widgets.feed import EventFeed


class FeedApp(App):
    def compose(self) -> ComposeResult:
        yield EventFeed(max_lines=50, id="feed")


def visible(app: App) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def test_lines_written_one_at_a_time_show_up_at_the_bottom():
    app = FeedApp()
    async with app.run_test(size=(100, 12)) as pilot:
        feed = app.query_one(EventFeed)
        await pilot.pause()
        for i in range(8):
            feed.add_lines([FeedLine(time.time(), "namespaces", "MODIFIED", "", f"line-{i:02d} detached")])
            await pilot.pause()
            screen = visible(app)
            assert f"line-{i:02d} detached" in screen, screen
        rows = [row for row in visible(app).splitlines() if "detached" in row]
        assert [row.split("line-")[1][:2] for row in rows] == [f"{i:02d}" for i in range(8)]
