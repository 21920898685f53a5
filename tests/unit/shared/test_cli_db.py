"""`segments-db` says which PostgreSQL it cannot reach without printing the password of
SEGMENTS_DATABASE_URL (nothing listens at the address: no database is needed)."""

import socket

import pytest

from segments_shared.cli.db import main


def closed_port() -> int:
    """A loopback port nothing listens on: a connection there is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_database_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    monkeypatch.setenv(
        "SEGMENTS_DATABASE_URL", f"postgresql+asyncpg://app:hunter2@127.0.0.1:{port}/segments"
    )
    for name in ("POOLING", "DIRECT_URL"):
        monkeypatch.delenv(f"SEGMENTS_DATABASE_{name}", raising=False)
    assert main(["upgrade"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"segments-db: cannot reach PostgreSQL at postgresql+asyncpg://****@127.0.0.1:{port}"
        "/segments: "
    ), err
    assert "hunter2" not in err
