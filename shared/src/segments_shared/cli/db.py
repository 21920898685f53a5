"""`segments-db`: create and migrate the database."""

import argparse
import sys

from alembic import command

from segments_shared.config import DatabaseSettings
from segments_shared.db.engine import session_url
from segments_shared.db.migrate import alembic_config, upgrade
from segments_shared.redaction import redact_urls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segments-db", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "upgrade", help="create the database if missing and migrate it to the newest revision"
    )
    up.add_argument("revision", nargs="?", default="head")
    commands.add_parser("current", help="show the database's revision")
    commands.add_parser("check", help="fail if the models differ from the migrations")
    args = parser.parse_args(argv)

    # The direct URL when there is one: creating the database goes through the `postgres`
    # database, which a PgBouncer seldom serves (docs/operations.md#behind-pgbouncer).
    url = session_url(DatabaseSettings())
    try:
        if args.command == "upgrade":
            upgrade(url, args.revision)
        elif args.command == "current":
            command.current(alembic_config(url), verbose=True)
        else:
            command.check(alembic_config(url))
    except OSError as exc:
        # Without the password: all user information masked, a password holding `@` too.
        where, reason = redact_urls(url), redact_urls(str(exc))
        sys.stderr.write(f"segments-db: cannot reach PostgreSQL at {where}: {reason}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
