"""The unit tier: no PostgreSQL, no RabbitMQ, none of our services. Every fixture that needs
them is refused here, so a unit test that asks for one fails at once, naming it, instead of
quietly creating a database (tests/fixtures/infra.py and its neighbours stay registered for
the integration tier)."""

from typing import NoReturn

import pytest


def _refuse(name: str) -> NoReturn:
    pytest.fail(
        f"the unit tier runs without PostgreSQL and RabbitMQ: `{name}` belongs in the "
        "integration tier (a folder of tests/ outside tests/unit)",
        pytrace=False,
    )


@pytest.fixture
def database_url() -> NoReturn:
    _refuse("database_url")


@pytest.fixture
def bus_prefix() -> NoReturn:
    _refuse("bus_prefix")


@pytest.fixture
def service_env() -> NoReturn:
    _refuse("service_env")


@pytest.fixture
def engine() -> NoReturn:
    _refuse("engine")


@pytest.fixture
def clean_db() -> NoReturn:
    _refuse("clean_db")


@pytest.fixture
def broker() -> NoReturn:
    _refuse("broker")


@pytest.fixture
def api_settings() -> NoReturn:
    _refuse("api_settings")


@pytest.fixture
def app() -> NoReturn:
    _refuse("app")


@pytest.fixture
def api() -> NoReturn:
    _refuse("api")


@pytest.fixture
def suite() -> NoReturn:
    _refuse("suite")


@pytest.fixture
def private_broker() -> NoReturn:
    _refuse("private_broker")


@pytest.fixture
def row_counts() -> NoReturn:
    _refuse("row_counts")
