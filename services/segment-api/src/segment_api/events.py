"""The `source` of every event segment-api writes to the outbox."""

SOURCE = "segment-api"
