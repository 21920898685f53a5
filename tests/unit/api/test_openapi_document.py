"""The OpenAPI document as code generators read it (SPEC section 3): a `bearer` scheme every
`/v1` operation declares with its scope, readable operation ids, every body a named schema
(a segment's definition the tagged union with the rule grammar), the response headers the
API sets, 304 where `If-None-Match` is answered. Built from the app without starting it."""

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

from segment_api.main import create_app
from segment_api.settings import ApiSettings

Operation = tuple[str, str, dict[str, Any]]
READ_ONLY_SCOPE = "segments:read"


@cache
def document() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(ApiSettings()).openapi()
    return schema


def operations() -> Iterator[Operation]:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def by_id(operation_id: str) -> dict[str, Any]:
    found = [op for _, _, op in operations() if op["operationId"] == operation_id]
    assert len(found) == 1, operation_id
    return found[0]


def test_every_v1_operation_declares_the_bearer_scheme_with_its_scope() -> None:
    schemes = document()["components"]["securitySchemes"]
    assert schemes == {"bearer": {**schemes["bearer"], "type": "http", "scheme": "bearer"}}
    scopes = {READ_ONLY_SCOPE, "segments:write", "syncs:write", "admin"}
    v1 = [(path, method, op) for path, method, op in operations() if path.startswith("/v1/")]
    assert len(v1) > 40
    for path, method, operation in v1:
        assert len(operation.get("security", [])) == 1, (method, path)
        [(scheme, needed)] = operation["security"][0].items()
        assert scheme == "bearer", (method, path)
        assert len(needed) == 1, (method, path, needed)
        assert needed[0] in scopes, (method, path, needed)
    # A screen's destination picker needs no admin key; changing a destination does.
    assert by_id("listDestinations")["security"] == [{"bearer": [READ_ONLY_SCOPE]}]
    assert by_id("getDestination")["security"] == [{"bearer": [READ_ONLY_SCOPE]}]
    for changes in ("createDestination", "updateDestination", "deleteDestination"):
        assert by_id(changes)["security"] == [{"bearer": ["admin"]}]


def test_operation_ids_are_readable_and_unique() -> None:
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    for operation_id in ids:
        # camelCase words, not FastAPI's create_segment_v1_segments_post.
        assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", operation_id), operation_id
    for path, method, operation_id in (
        ("/v1/segments", "post", "createSegment"),
        ("/v1/segments/{segment_id}/members", "post", "addSegmentMembers"),
        ("/v1/segments/{segment_id}/members/remove", "post", "removeSegmentMembers"),
        ("/v1/segments/{segment_id}/export.csv", "get", "exportSegmentCsv"),
        ("/v1/segments/{segment_id}/syncs", "post", "requestSync"),
    ):
        assert document()["paths"][path][method]["operationId"] == operation_id


def body_schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    for path, method, operation in operations():
        request = operation.get("requestBody", {}).get("content", {})
        for media_type, content in request.items():
            yield f"{method} {path} request {media_type}", content["schema"]
        for status, response in operation["responses"].items():
            for media_type, content in response.get("content", {}).items():
                yield f"{method} {path} {status} {media_type}", content["schema"]


def test_every_json_body_is_a_named_schema_and_names_are_identifiers() -> None:
    schemas = document()["components"]["schemas"]
    for name in schemas:
        # No `Page_Segment_`, no `Segment-Input` and `Segment-Output`.
        assert re.fullmatch(r"[A-Z][A-Za-z]+", name), name
    for where, schema in body_schemas():
        if " text/csv" in where:
            # Text: `format: binary` made generated clients wrap the text in BytesIO.
            assert schema == {"type": "string"}, where
            continue
        # The optional body of a duplication may be JSON null.
        refs = [choice for choice in schema.get("anyOf", [schema]) if choice != {"type": "null"}]
        assert len(refs) == 1, (where, schema)
        assert set(refs[0]) == {"$ref"}, (where, schema)
        assert refs[0]["$ref"].removeprefix("#/components/schemas/") in schemas, where
    for name in ("SegmentPage", "CustomerPage", "DestinationPage", "MemberPage"):
        assert schemas[name]["properties"]["items"]["type"] == "array"


def test_a_definition_is_a_tagged_union_with_the_rule_grammar() -> None:
    schemas = document()["components"]["schemas"]
    ref = "#/components/schemas/"
    for model in ("Segment", "SegmentCreate"):
        assert schemas[model]["properties"]["definition"]["$ref"] == ref + "SegmentDefinition"
    assert schemas["SegmentUpdate"]["properties"]["definition"]["$ref"] == ref + "SegmentDefinition"
    definition = schemas["SegmentDefinition"]
    assert definition["discriminator"] == {
        "propertyName": "type",
        "mapping": {"manual": ref + "ManualDefinition", "rule": ref + "RuleDefinition"},
    }
    assert schemas["RuleDefinition"]["properties"]["rule"] == {"$ref": ref + "RuleNode"}
    assert schemas["PreviewRequest"]["properties"]["rule"]["$ref"] == ref + "RuleNode"
    nodes = ("AllNode", "AnyNode", "NotNode", "FieldCondition", "SegmentCondition")
    assert [choice["$ref"] for choice in schemas["RuleNode"]["oneOf"]] == [
        ref + node for node in nodes
    ]
    assert schemas["AllNode"]["properties"]["all"]["items"] == {"$ref": ref + "RuleNode"}
    assert schemas["NotNode"]["properties"]["not"] == {"$ref": ref + "RuleNode"}
    # Each member of a union an object generators can tell apart (arrays without `items`
    # made openapi-python-client skip the members endpoints).
    for union in ("SegmentDefinition", "RuleNode", "MembersRequest"):
        for choice in schemas[union]["oneOf"]:
            member = schemas[choice["$ref"].removeprefix(ref)]
            assert member["type"] == "object", choice
            assert member["additionalProperties"] is False, choice


def headers_of(operation_id: str, status: str) -> set[str]:
    return set(by_id(operation_id)["responses"][status].get("headers", {}))


def test_response_headers_are_declared() -> None:
    headers = document()["components"]["headers"]
    assert {"ETag", "Location", "Idempotent-Replayed", "X-Correlation-ID"} <= set(headers)
    for path, method, operation in operations():
        if not path.startswith("/v1/"):
            continue
        for status, response in operation["responses"].items():
            declared = set(response.get("headers", {}))
            assert "X-Correlation-ID" in declared, (method, path, status)
            replayable = method == "post" and not status.startswith("5")
            assert ("Idempotent-Replayed" in declared) == replayable, (method, path, status)
    assert {"ETag", "Location"} <= headers_of("createSegment", "201")
    assert {"ETag", "Location"} <= headers_of("createDestination", "201")
    assert "ETag" in headers_of("updateSegment", "200")
    assert "ETag" in headers_of("updateSegment", "412")
    assert "Retry-After" in headers_of("listSegments", "503")


@pytest.mark.parametrize("operation_id", ["getSegment", "getDestination", "getSubscription"])
def test_a_conditional_read_may_answer_304(operation_id: str) -> None:
    operation = by_id(operation_id)
    assert "if-none-match" in {p["name"].lower() for p in operation["parameters"]}
    assert headers_of(operation_id, "304") >= {"ETag", "X-Correlation-ID"}
    assert "content" not in operation["responses"]["304"]
    assert headers_of(operation_id, "200") >= {"ETag"}


def test_the_document_names_a_server_and_a_licence() -> None:
    # Relative: Swagger UI's "Try it out" calls the server that served the page.
    assert [server["url"] for server in document()["servers"]] == ["/"]
    assert document()["info"]["license"]["name"]
