"""Worker processes: the outbox relays and the event consumers of both services."""
