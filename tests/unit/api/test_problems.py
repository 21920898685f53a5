"""Which error answers which status: every answer an RFC 9457 problem, database trouble that
is not the server's fault a 503 saying when to retry (or a 422 for a value PostgreSQL cannot
store), and pydantic's errors one entry per place in the body."""

import json
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.responses import Response

from segment_api.problems import (
    PROBLEM_BASE,
    PROBLEM_MEDIA_TYPE,
    ProblemException,
    database_problem,
    field_error,
    install_problem_handlers,
    not_found,
    parameter_error,
    problem_response,
    validation_problem,
)


def body_of(response: Response) -> dict[str, Any]:
    assert response.media_type == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = json.loads(bytes(response.body))
    assert body["status"] == response.status_code
    return body


def test_a_problem_names_its_type_title_and_place() -> None:
    body = body_of(problem_response(404, "segment x does not exist", instance="/v1/segments/x"))
    assert body == {
        "type": PROBLEM_BASE + "not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "segment x does not exist",
        "instance": "/v1/segments/x",
    }
    assert body_of(problem_response(418))["type"] == PROBLEM_BASE + "error"


def test_raised_problems_carry_their_status_and_errors() -> None:
    assert (not_found("segment", 7).status, not_found("segment", 7).detail) == (
        404,
        "segment 7 does not exist",
    )
    assert field_error("/name", "too long").errors == [{"pointer": "/name", "detail": "too long"}]
    assert parameter_error("limit", "at most 1000").errors == [
        {"parameter": "limit", "detail": "at most 1000"}
    ]


def dbapi(orig: BaseException, *, invalidated: bool = False) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, orig, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("error", "status", "retry_after", "words"),
    [
        (asyncpg.exceptions.DeadlockDetectedError("d"), 503, "1", "concurrent change"),
        (dbapi(asyncpg.exceptions.SerializationError("s")), 503, "1", "concurrent change"),
        (dbapi(ConnectionResetError(), invalidated=True), 503, "1", "connection was lost"),
        (dbapi(OSError("gone")), 503, "1", "connection was lost"),
        (TimeoutError(), 503, "5", "did not answer in time"),
        (ConnectionRefusedError(), 503, "5", "unreachable"),
        (dbapi(asyncpg.exceptions.CharacterNotInRepertoireError("nul")), 422, None, "NUL"),
        (asyncpg.exceptions.CharacterNotInRepertoireError("nul"), 422, None, "NUL"),
    ],
)
def test_database_trouble_that_is_not_the_servers_fault(
    error: BaseException, status: int, retry_after: str | None, words: str
) -> None:
    response = database_problem(error, "/v1/customers")
    assert response is not None
    assert response.status_code == status
    assert response.headers.get("retry-after") == retry_after
    assert words in body_of(response)["detail"]


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.UniqueViolationError("dup"),
        dbapi(asyncpg.exceptions.UndefinedColumnError("typo")),
        ValueError("a bug"),
    ],
)
def test_anything_else_is_left_to_the_500(error: BaseException) -> None:
    assert database_problem(error, "/v1/customers") is None


def test_union_member_names_never_reach_a_pointer() -> None:
    """Any union pydantic reports per member (`bool`, `list[int]`, a model's name) gives one
    entry at the place in the body, even where a key is spelled like a member."""

    class Part(BaseModel):
        size: int

    class Body(BaseModel):
        value: bool | list[int] | Part
        by_key: dict[str, int | str]

    body = {"value": {"size": "x"}, "by_key": {"int": [1], "str": 2}}
    with pytest.raises(ValidationError) as caught:
        Body.model_validate(body)
    errors = [{**error, "loc": ("body", *error["loc"])} for error in caught.value.errors()]
    assert len(errors) > 2  # one per union member
    problem = json.loads(bytes(validation_problem(errors, "/test", body).body))
    assert [error["pointer"] for error in problem["errors"]] == [
        "/value",
        "/value/size",
        "/by_key/int",
    ]
    by_key = problem["errors"][2]["detail"]
    assert "valid integer" in by_key
    assert "valid string" in by_key


class Item(BaseModel):
    name: str
    size: int


def problem_app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/items")
    async def create(item: Item) -> Item:
        return item

    @app.get("/items/{name}")
    async def read(name: str, limit: int = 10) -> dict[str, str]:
        if name == "conflict":
            raise ProblemException(409, "taken", headers={"X-Why": "taken"})
        if name == "deadlock":
            raise dbapi(asyncpg.exceptions.DeadlockDetectedError("d"))
        return {"name": name}

    return app


@pytest.mark.asyncio
async def test_the_handlers_answer_problems_for_every_failure() -> None:
    transport = httpx.ASGITransport(app=problem_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://problems.test") as client:
        answers = {
            "raised": await client.get("/items/conflict"),
            "database": await client.get("/items/deadlock"),
            "unknown path": await client.get("/nothing"),
            "wrong method": await client.delete("/items/x"),
            "bad JSON": await client.post(
                "/items", content=b"{", headers={"Content-Type": "application/json"}
            ),
            "bad body": await client.post("/items", json={"name": "a", "size": "big"}),
            "bad query": await client.get("/items/x", params={"limit": "many"}),
        }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "raised": 409,
        "database": 503,
        "unknown path": 404,
        "wrong method": 405,
        "bad JSON": 400,
        "bad body": 422,
        "bad query": 422,
    }
    for answer in answers.values():
        assert answer.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    assert answers["raised"].headers["x-why"] == "taken"
    assert answers["database"].headers["retry-after"] == "1"
    assert answers["wrong method"].headers["allow"] == "GET, HEAD"  # HEAD wherever GET
    assert answers["bad JSON"].json()["type"] == PROBLEM_BASE + "malformed-json"
    (invalid,) = answers["bad body"].json()["errors"]
    assert invalid["pointer"] == "/size"
    assert "valid integer" in invalid["detail"]
    assert answers["bad query"].json()["errors"][0]["parameter"] == "limit"
