"""Schema-driven fuzzing of segment-api (Schemathesis): for generated valid and invalid
requests to every operation, the real service process never answers 5xx, refuses what the
schema forbids, and every answer matches the OpenAPI document (status codes declared, bodies
and content types as declared)."""

import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CheckFunction
from schemathesis.core.result import Ok
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.fixtures.infra import ADMIN_KEY
from tests.fixtures.processes import BIN, free_port

EXAMPLES = int(os.environ.get("SEGMENTS_FUZZ_EXAMPLES", "15"))
# "Schema-valid input is accepted" cannot hold for this API: SPEC answers 422 for what no
# JSON Schema can express (an unknown customer on an order, an external id repeated across
# bulk items, an opaque cursor that was never issued). Every other check stays: no 5xx,
# declared status codes and content types, response bodies matching their schemas, and
# schema-invalid input refused with a 4xx.
EXCLUDED: list[CheckFunction] = [positive_data_acceptance]


@pytest.fixture(scope="module")
def api_url(service_env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        **service_env,
        "SEGMENTS_API_PORT": str(port),
        "SEGMENTS_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([str(BIN / "segment-api")], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("segment-api did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> OpenApiSchema:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


def test_no_server_errors_and_answers_match_the_schema(api_schema: OpenApiSchema) -> None:
    """Every operation in turn, with valid then invalid input; the first failing example is
    reported with a curl command reproducing it."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
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
            case.call_and_validate(headers=headers, excluded_checks=EXCLUDED)

        try:
            exercise()
        except Unsatisfiable:
            # Nothing in this operation can be made invalid (no parameters, no body).
            assert mode is GenerationMode.NEGATIVE, operation.label
