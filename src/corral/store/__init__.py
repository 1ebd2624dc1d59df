"""corral.store: SQLite metadata (WAL), the one source of truth for what exists."""
