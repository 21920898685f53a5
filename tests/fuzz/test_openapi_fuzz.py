"""Schema-driven fuzzing of segment-api (Schemathesis): for generated valid and invalid
requests to every operation, the real service process never answers 5xx, refuses what the
schema forbids, and every answer matches the OpenAPI document (status codes declared, bodies
and content types as declared)."""

import itertools
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CheckFunction
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.processes import ServiceProcess, free_port

EXAMPLES = int(os.environ.get("SEGMENTS_FUZZ_EXAMPLES", "15"))
# "Schema-valid input is accepted" cannot hold for this API: SPEC answers 422 for what no
# JSON Schema can express (an unknown customer on an order, an external id repeated across
# bulk items, an opaque cursor that was never issued). Every other check stays: no 5xx,
# declared status codes and content types, response bodies matching their schemas, and
# schema-invalid input refused with a 4xx.
EXCLUDED: list[CheckFunction] = [positive_data_acceptance]


@pytest_asyncio.fixture(scope="module")
async def api_url(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    port = free_port()
    env = {
        **os.environ,
        **service_env,
        "SEGMENTS_API_PORT": str(port),
        "SEGMENTS_LOG_LEVEL": "WARNING",
    }
    api = ServiceProcess("segment-api", port, env, tmp_path_factory.mktemp("fuzz") / "api.log")
    try:
        await api.start()
        yield api.url
    finally:
        await api.stop()


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> OpenApiSchema:
    # The admin key for the document's `bearer` scheme, on every request: invalid cases spend
    # their examples on parameters and bodies, not on a missing key (401 is tested elsewhere).
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"bearer": {"bearer": ADMIN_KEY}}},
            "generation": {"with-security-parameters": False},
        }
    )
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json", config=config)


def test_no_server_errors_and_answers_match_the_schema(api_schema: OpenApiSchema) -> None:
    """Every operation in turn, with valid then invalid input; the first failing example is
    reported with a curl command reproducing it."""
    operations = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert len(operations) > 15

    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def exercise(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(excluded_checks=EXCLUDED)

        try:
            exercise()
        except Unsatisfiable:
            # Nothing in this operation can be made invalid (no parameters, no body).
            assert mode is GenerationMode.NEGATIVE, operation.label
