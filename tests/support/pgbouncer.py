"""A PgBouncer of a test's own: Debian's package (`make test-integration` installs it when it
is missing and runs as root), its own configuration in the test's folder, a free port, and
transaction pooling before the test's database (docs/operations.md#behind-pgbouncer)."""

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from segments_shared.db.engine import asyncpg_dsn
from tests.fixtures.processes import free_port

# Debian installs it in /usr/sbin, which a user's PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
# PgBouncer refuses to run as root; as root it switches to this user once its files are read.
UNPRIVILEGED_USER = "nobody"
# Pooled server connections report their client's address in `application_name`
# (`application_name_add_host`): how a test tells them from direct connections.
POOLED_MARK = " - 127.0.0.1:"


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer", path=SEARCH_PATH)


def write_configuration(folder: Path, database_url: str, port: int, pool_size: int) -> None:
    url = make_url(database_url)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.txt").write_text(f'"{url.username or "postgres"}" ""\n')
    (folder / "pgbouncer.ini").write_text(f"""\
[databases]
{url.database} = host={url.host} port={url.port or 5432} dbname={url.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
application_name_add_host = 1
""")


def read_log(folder: Path) -> str:
    return (folder / "pgbouncer.log").read_text(errors="replace")


@contextlib.asynccontextmanager
async def running_pgbouncer(
    binary: str, database_url: str, folder: Path, *, pool_size: int = 2
) -> AsyncIterator[str]:
    """PgBouncer before the database of `database_url` (same user, same database name),
    `pool_size` server connections; yields the URL that goes through it."""
    port = free_port()
    write_configuration(folder, database_url, port, pool_size)
    switch_user = ["-u", UNPRIVILEGED_USER] if os.geteuid() == 0 else []
    with (folder / "pgbouncer.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            *switch_user,
            "pgbouncer.ini",
            cwd=folder,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    url = make_url(database_url).set(host="127.0.0.1", port=port)
    try:
        await _wait_until_it_answers(process, asyncpg_dsn(url), folder)
        yield url.render_as_string(hide_password=False)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_until_it_answers(
    process: asyncio.subprocess.Process, dsn: str, folder: Path
) -> None:
    for _ in range(100):
        if process.returncode is not None:
            raise RuntimeError(f"pgbouncer exited: {read_log(folder)}")
        try:
            conn = await asyncpg.connect(dsn, statement_cache_size=0, timeout=2)
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.1)
            continue
        await conn.close()
        return
    raise TimeoutError(f"pgbouncer does not answer: {read_log(folder)}")
