"""The job engine: leased jobs in PostgreSQL (`store`) and the loop that runs them
(`runner`). docs/architecture.md#jobs describes it."""
