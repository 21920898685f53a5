import pytest

from tests.unit.sync.memory_limiter import MemoryLimiter


@pytest.fixture
def limiter() -> MemoryLimiter:
    return MemoryLimiter()
