"""Recovery's decisions, as pure functions over observed objects and backups."""
