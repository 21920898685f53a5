"""Which errors are the database's (or the network's) passing trouble rather than the work's own.

A transient error says nothing about what was being done: the database is away, restarting,
out of connections, slow, or aborted the transaction for a concurrent one. The same work
succeeds once it passes, so it is worth waiting and retrying. Anything else (a constraint
violated, bad data, a bug) fails again the same way. The event consumers retry the first and
dead-letter the second: bus/consumer.py,
docs/architecture.md#events-the-outbox-relay-and-consumers.
"""

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# SQLSTATE classes and codes of passing trouble (PostgreSQL, appendix A).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08"})  # connection exception
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53000",  # insufficient_resources
        "53100",  # disk_full
        "53200",  # out_of_memory
        "53300",  # too_many_connections
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout, or cancelled by an operator)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down, in recovery)
    }
)


def is_transient(exc: BaseException) -> bool:
    """True for an error that retrying the same work later can cure."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(inner) for inner in exc.exceptions)
    # Only explicit causes (`raise ... from`), as SQLAlchemy and asyncpg chain them: an error
    # raised while handling another is its own.
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_itself(current):
            return True
        current = current.orig if isinstance(current, DBAPIError) else current.__cause__
    return False


def _transient_itself(exc: BaseException) -> bool:
    # A connection lost or refused, whichever layer says so. OperationalError is the DBAPI's
    # class for it (other drivers; asyncpg's come as sqlstates or invalidated connections).
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError | asyncpg.PostgresConnectionError):
        return True
    # The pool had no connection free in time; OSError covers ConnectionError (refused,
    # reset, a server still starting) and TimeoutError (asyncpg's command and connect
    # timeouts).
    if isinstance(exc, PoolTimeout | OSError):
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and (
        state in TRANSIENT_SQLSTATES or state[:2] in TRANSIENT_SQLSTATE_CLASSES
    )
