"""Widgets of the main screen; each renders a part of `responder.tui.state.TuiState`."""
