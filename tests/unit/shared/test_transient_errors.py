"""Which errors retrying can cure (the database away, slow, restarting, or aborting a
transaction for a concurrent one) and which fail again the same way, as the consumers tell
them apart (segments_shared/db/errors.py). The chains are built the way SQLAlchemy's asyncpg
dialect raises them: a DBAPIError whose `orig` is the dialect's error, caused by asyncpg's.
Of the transient ones, timeouts (`is_timeout`) may be the work's own slowness."""

import errno
import socket

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from segments_shared.db.errors import is_closed_connection, is_timeout, is_transient

DIALECT_ERROR = AsyncAdapt_asyncpg_dbapi.Error


def through_sqlalchemy(
    error: Exception, *, invalidated: bool = False, wrapper: type[DBAPIError] = DBAPIError
) -> DBAPIError:
    """`error` as a handler sees it: asyncpg's, adapted by the dialect, wrapped by SQLAlchemy."""
    adapted = DIALECT_ERROR(str(error))  # type: ignore[no-untyped-call]
    adapted.__cause__ = error
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate:
        adapted.sqlstate = adapted.pgcode = sqlstate
    wrapped = wrapper("SELECT 1", {}, adapted, connection_invalidated=invalidated)
    wrapped.__cause__ = adapted
    return wrapped


def chained(error: Exception, cause: BaseException) -> Exception:
    """`raise error from cause`, without raising."""
    error.__cause__ = cause
    return error


def postgres(sqlstate: str) -> asyncpg.PostgresError:
    """asyncpg's error for a SQLSTATE, as it raises it for a server's error response."""
    error_class = asyncpg.PostgresError.get_message_class_for_sqlstate(sqlstate)
    return error_class(f"server says {sqlstate}")


TRANSIENT = {
    "connection refused": ConnectionRefusedError(111, "Connect call failed"),
    "connection reset": ConnectionResetError(104, "reset by peer"),
    "server still starting (asyncpg, at connect)": ConnectionError("error during SSL exchange"),
    "asyncpg command or connect timeout": TimeoutError(),
    "no pooled connection in time": PoolTimeout("QueuePool limit reached"),
    "connection lost mid-transaction": through_sqlalchemy(
        asyncpg.ConnectionDoesNotExistError("connection was closed"), invalidated=True
    ),
    "connection closed, seen by SQLAlchemy": through_sqlalchemy(
        asyncpg.InterfaceError("connection is closed"), invalidated=True
    ),
    "a statement on a connection lost before it (asyncpg)": asyncpg.InterfaceError(
        "cannot call Connection.fetchrow(): connection is closed"
    ),
    "a statement on a connection lost before it, through SQLAlchemy": through_sqlalchemy(
        asyncpg.InterfaceError("cannot perform operation: connection is closed")
    ),
    "connection aborted": ConnectionAbortedError(errno.ECONNABORTED, "aborted"),
    "broken pipe": BrokenPipeError(errno.EPIPE, "Broken pipe"),
    "host unreachable": OSError(errno.EHOSTUNREACH, "No route to host"),
    "network unreachable": OSError(errno.ENETUNREACH, "Network is unreachable"),
    "network down": OSError(errno.ENETDOWN, "Network is down"),
    "host down": OSError(errno.EHOSTDOWN, "Host is down"),
    "a socket's ETIMEDOUT": OSError(errno.ETIMEDOUT, "Connection timed out"),
    "a name that did not resolve": socket.gaierror(socket.EAI_NONAME, "Name not known"),
    "every address of a name failing differently (asyncio)": OSError(
        "Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', 5432), "
        "[Errno 99] Cannot assign requested address"
    ),
    "operational error (other drivers)": OperationalError("SELECT 1", {}, Exception("gone")),
    "asyncpg's own connection error": asyncpg.ConnectionDoesNotExistError("closed"),
    **{
        f"sqlstate {state}": through_sqlalchemy(postgres(state))
        for state in (
            "08006",  # connection_failure
            "08001",  # sqlclient_unable_to_establish_sqlconnection
            "40001",  # serialization_failure
            "40P01",  # deadlock_detected
            "53300",  # too_many_connections
            "55P03",  # lock_not_available
            "57014",  # query_canceled
            "57P01",  # admin_shutdown
            "57P02",  # crash_shutdown
            "57P03",  # cannot_connect_now
        )
    },
    "sqlstate 40001, asyncpg's own": postgres("40001"),
    "every error of a group transient": ExceptionGroup(
        "task group", [ConnectionResetError(), TimeoutError()]
    ),
}

POISON = {
    "a handler's ValueError": ValueError("bad customer id"),
    "a handler's RuntimeError": RuntimeError("handler keeps failing"),
    "a KeyError on the payload": KeyError("segment_id"),
    "unique violation": through_sqlalchemy(postgres("23505"), wrapper=IntegrityError),
    "foreign key violation": through_sqlalchemy(postgres("23503"), wrapper=IntegrityError),
    "division by zero": through_sqlalchemy(postgres("22012")),
    "invalid text representation": through_sqlalchemy(postgres("22P02")),
    "unstorable NUL": through_sqlalchemy(postgres("22021")),
    "syntax error": through_sqlalchemy(postgres("42601")),
    "undefined column": through_sqlalchemy(postgres("42703")),
    "an interface error on a live connection": through_sqlalchemy(
        asyncpg.InterfaceError("another operation is in progress")
    ),
    "one error of a group poison": ExceptionGroup(
        "task group", [ConnectionResetError(), ValueError("bad")]
    ),
    # OSErrors that are not the network's: a bug or a configuration error, retried in vain.
    "a file missing": FileNotFoundError(errno.ENOENT, "No such file or directory"),
    "a permission denied": PermissionError(errno.EACCES, "Permission denied"),
    "a directory where a file was expected": IsADirectoryError(errno.EISDIR, "Is a directory"),
    "a plain OSError of a file": OSError(errno.ENOSPC, "No space left on device"),
    "a plain OSError without errno": OSError("something else"),
    "a file missing, chained": chained(RuntimeError("could not load"), FileNotFoundError()),
}

# Transient, and possibly the work's own slowness: retried a few times only.
TIMEOUTS = {
    "statement_timeout (57014)": through_sqlalchemy(postgres("57014")),
    "lock_timeout (55P03)": through_sqlalchemy(postgres("55P03")),
    "statement_timeout, asyncpg's own": postgres("57014"),
    "asyncpg command timeout": TimeoutError(),
    "a handler's error caused by a command timeout": chained(
        RuntimeError("could not save"), TimeoutError()
    ),
    "a group with one timeout": ExceptionGroup(
        "task group", [ConnectionResetError(), TimeoutError()]
    ),
}

# Transient and never the work's doing: retried until it passes (or the consumer's hold limit).
NOT_TIMEOUTS = {
    "connection refused": ConnectionRefusedError(111, "Connect call failed"),
    "connection reset": ConnectionResetError(104, "reset by peer"),
    "no pooled connection in time": PoolTimeout("QueuePool limit reached"),
    "a socket's ETIMEDOUT": OSError(errno.ETIMEDOUT, "Connection timed out"),
    "connection lost after a socket's ETIMEDOUT": chained(
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        OSError(errno.ETIMEDOUT, "Connection timed out"),
    ),
    "a statement on a closed connection": asyncpg.InterfaceError(
        "cannot call Connection.execute(): connection is closed"
    ),
    **{
        f"sqlstate {state}": through_sqlalchemy(postgres(state))
        for state in ("08006", "40001", "40P01", "53300", "57P01", "57P03")
    },
}


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", POISON.values(), ids=POISON.keys())
def test_not_transient(error: BaseException) -> None:
    assert not is_transient(error)


@pytest.mark.parametrize("error", TIMEOUTS.values(), ids=TIMEOUTS.keys())
def test_timeouts_are_transient_and_told_apart(error: BaseException) -> None:
    assert is_transient(error)
    assert is_timeout(error)


@pytest.mark.parametrize("error", NOT_TIMEOUTS.values(), ids=NOT_TIMEOUTS.keys())
def test_the_database_away_is_no_timeout(error: BaseException) -> None:
    assert is_transient(error)
    assert not is_timeout(error)


@pytest.mark.parametrize("error", POISON.values(), ids=POISON.keys())
def test_poison_is_no_timeout(error: BaseException) -> None:
    assert not is_timeout(error)


def test_a_closed_connection_is_told_by_asyncpg_s_message() -> None:
    """asyncpg's InterfaceError for a statement on a connection lost before it, and no other
    (segment-api answers 503 for it, problems.py)."""
    assert is_closed_connection(
        asyncpg.InterfaceError("cannot call Connection.fetchrow(): connection is closed")
    )
    assert not is_closed_connection(
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress")
    )
    assert not is_closed_connection(ConnectionResetError("connection is closed"))


def save_while_handling(lost: Exception, *, chained: bool) -> None:
    try:
        raise lost
    except OSError as exc:
        if chained:
            raise RuntimeError("could not save") from exc
        raise ValueError("bad customer id")  # noqa: B904 - the handler's own failure


def test_an_error_raised_while_handling_a_transient_one_is_its_own() -> None:
    """Only explicit causes count: a ValueError raised in an `except OSError:` block is the
    handler's own failure; one raised `from` the lost connection is that loss."""
    with pytest.raises(ValueError, match="bad customer id") as own:
        save_while_handling(ConnectionResetError(), chained=False)
    assert not is_transient(own.value)
    with pytest.raises(RuntimeError, match="could not save") as caused:
        save_while_handling(ConnectionResetError(), chained=True)
    assert is_transient(caused.value)


def test_a_cycle_of_causes_ends() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert not is_transient(first)
