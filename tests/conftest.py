from collections.abc import Generator

import pytest

pytest_plugins = [
    "tests.fixtures.infra",
    "tests.fixtures.api",
    "tests.fixtures.processes",
    "tests.fixtures.rabbit",
    "tests.fixtures.tables",
    "tests.fixtures.ordering",
]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test, so fixtures can tell whether it failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
