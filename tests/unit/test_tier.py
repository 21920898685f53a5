"""The unit tier refuses every fixture that needs PostgreSQL, RabbitMQ or a service process
(tests/unit/conftest.py)."""

import pytest

INFRASTRUCTURE = (
    "database_url",
    "bus_prefix",
    "service_env",
    "engine",
    "clean_db",
    "broker",
    "api_settings",
    "app",
    "api",
    "suite",
    "private_broker",
    "row_counts",
)


@pytest.mark.parametrize("name", INFRASTRUCTURE)
def test_infrastructure_fixtures_are_refused(request: pytest.FixtureRequest, name: str) -> None:
    with pytest.raises(pytest.fail.Exception, match=f"`{name}` belongs in the integration tier"):
        request.getfixturevalue(name)
