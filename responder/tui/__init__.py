"""The Textual front end of `responder watch`: it subscribes to a session's events, shows them and
answers the engine's confirmation requests. No incident logic lives here."""
