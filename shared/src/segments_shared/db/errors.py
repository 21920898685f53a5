"""Which errors are the database's (or the network's) passing trouble rather than the work's own.

A transient error says nothing about what was being done: the database is away, restarting,
out of connections, slow, or aborted the transaction for a concurrent one. The same work
succeeds once it passes, so it is worth waiting and retrying. Anything else (a constraint
violated, bad data, a bug) fails again the same way. The event consumers retry the first and
dead-letter the second: bus/consumer.py,
docs/architecture.md#events-the-outbox-relay-and-consumers.

Timeouts are both: a statement cancelled by `statement_timeout`, a lock not granted within
`lock_timeout`, asyncpg's command timeout. A busy database causes them, but so does work that
is too slow on its own (a statement that always overruns), which fails again every time.
`is_timeout` singles them out, so that a loop retries them a few times only.
"""

import errno
import socket

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
# Of those, the ones the work can cause by itself being slow.
TIMEOUT_SQLSTATES = frozenset({"55P03", "57014"})

# An OSError with one of these is the network's (or the server's end of it); any other errno
# (a file missing, a permission denied) is a bug or a configuration error, and stays.
NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
    }
)


def is_transient(exc: BaseException) -> bool:
    """True for an error that retrying the same work later can cure (for a timeout, perhaps:
    see `is_timeout`)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_transient(inner) for inner in exc.exceptions)
    return any(_transient_itself(link) for link in _causes(exc))


def is_timeout(exc: BaseException) -> bool:
    """True for a transient error that slow work causes as well as a busy database: a
    statement or lock timeout (57014, 55P03) or asyncpg's command timeout (`TimeoutError`).
    Retried without end, work that always overruns would never fail; retry it a few times.

    asyncpg raises the same `TimeoutError` for a connection it could not open in time (the
    database unreachable), which only the caller can tell apart: the event consumer counts
    failures before it holds a connection as the database's."""
    if isinstance(exc, BaseExceptionGroup):
        return any(is_timeout(inner) for inner in exc.exceptions)
    return any(_timeout_itself(link) for link in _causes(exc))


def is_closed_connection(exc: BaseException) -> bool:
    """asyncpg's answer to a statement sent on a connection that was lost before it:
    `InterfaceError("cannot call Connection.fetchrow(): connection is closed")`. Any other
    InterfaceError is a misuse of a live connection, not trouble that passes."""
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


def _causes(exc: BaseException) -> list[BaseException]:
    """The error and its explicit causes (`raise ... from`), as SQLAlchemy and asyncpg chain
    them: an error raised while handling another is its own."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.orig if isinstance(current, DBAPIError) else current.__cause__
    return chain


def _transient_itself(exc: BaseException) -> bool:
    # A connection lost or refused, whichever layer says so. OperationalError is the DBAPI's
    # class for it (other drivers; asyncpg's come as sqlstates, invalidated connections, or
    # an InterfaceError on a connection already closed).
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError | asyncpg.PostgresConnectionError):
        return True
    if is_closed_connection(exc):
        return True
    # The pool had no connection free in time: the service is busy, not the work wrong.
    if isinstance(exc, PoolTimeout):
        return True
    if _network_error(exc) or _timeout_itself(exc):
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and (
        state in TRANSIENT_SQLSTATES or state[:2] in TRANSIENT_SQLSTATE_CLASSES
    )


def _timeout_itself(exc: BaseException) -> bool:
    # asyncio's timeouts are the builtin TimeoutError (Python 3.11); SQLAlchemy's pool
    # timeout is its own class, and not one of these. A socket's ETIMEDOUT (also a
    # TimeoutError) is the network's: the peer stopped answering, whatever was sent.
    if isinstance(exc, TimeoutError):
        return exc.errno != errno.ETIMEDOUT
    return getattr(exc, "sqlstate", None) in TIMEOUT_SQLSTATES


def _network_error(exc: BaseException) -> bool:
    """A connection refused, reset, aborted or broken, a host or network unreachable, a name
    that did not resolve; not any OSError (a file missing is a bug, retried it fails again)."""
    if isinstance(exc, ConnectionError | socket.gaierror):
        return True
    if not isinstance(exc, OSError):
        return False
    if exc.errno in NETWORK_ERRNOS:
        return True
    # asyncio's connect to a name of several addresses that all failed differently
    # (`::1` refused, `127.0.0.1` unreachable): a plain OSError without errno.
    return (
        type(exc) is OSError and exc.errno is None and str(exc).startswith("Multiple exceptions: ")
    )
