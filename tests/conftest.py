pytest_plugins = ["tests.fixtures.infra", "tests.fixtures.api"]
