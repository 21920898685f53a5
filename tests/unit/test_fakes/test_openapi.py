"""Request validation: the compiled checks agree with jsonschema, and missing specs are skipped."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import (
    OAS30Validator,
    OAS31Validator,
    oas30_format_checker,
    oas31_format_checker,
)

from tests.fakes import klaviyo, sendgrid
from tests.fakes.app import Vendor
from tests.fakes.openapi import SPECS_DIR_VARIABLE, VendorSpec, compile_operation, specs_dir
from tests.fakes.schema import SchemaCompiler, UnsupportedSchema, pointer
from tests.unit.test_fakes.running import KLAVIYO_REVISION, requires_specs, running

LIST_ID = "ca7a3796-e8a8-4029-9ccb-df8937940562"
PROFILE = {"type": "profile", "attributes": {"email": "a@example.com", "first_name": "A"}}

# A well-formed body for each operation the fakes serve that takes one.
BODIES: list[tuple[str, str, str, dict[str, Any]]] = [
    (
        "sendgrid-marketing-contacts.openapi.json",
        "PUT",
        "/v3/marketing/contacts",
        {"list_ids": [LIST_ID], "contacts": [{"email": "a@example.com", "first_name": "A"}]},
    ),
    (
        "sendgrid-marketing-contacts.openapi.json",
        "POST",
        "/v3/marketing/contacts/search/emails",
        {"emails": ["a@example.com"]},
    ),
    (
        "sendgrid-marketing-contacts.openapi.json",
        "POST",
        "/v3/marketing/contacts/exports",
        {"list_ids": [LIST_ID], "file_type": "json"},
    ),
    ("sendgrid-marketing-lists.openapi.json", "POST", "/v3/marketing/lists", {"name": "x"}),
    ("sendgrid-marketing-lists.openapi.json", "PATCH", "/v3/marketing/lists/{id}", {"name": "x"}),
    (
        "klaviyo-lists.openapi.json",
        "POST",
        "/api/lists",
        {"data": {"type": "list", "attributes": {"name": "x", "opt_in_process": "single_opt_in"}}},
    ),
    (
        "klaviyo-lists.openapi.json",
        "DELETE",
        "/api/lists/{id}/relationships/profiles",
        {"data": [{"type": "profile", "id": "01ABC"}]},
    ),
    (
        "klaviyo-profiles.openapi.json",
        "POST",
        "/api/profile-bulk-import-jobs",
        {
            "data": {
                "type": "profile-bulk-import-job",
                "attributes": {
                    "profiles": {
                        "data": [
                            {
                                **PROFILE,
                                "attributes": {
                                    "email": "a@example.com",
                                    "location": {"latitude": 1.5, "city": "Oslo"},
                                    "properties": {"vip": True},
                                },
                            }
                        ]
                    }
                },
                "relationships": {"lists": {"data": [{"type": "list", "id": "Y6nRLr"}]}},
            }
        },
    ),
]

ODD_VALUES: list[Any] = [None, 0, 2.5, True, "", "x" * 300, [], {}, "not-a-uuid"]


def mutations(value: Any) -> Iterator[tuple[list[Any], Any]]:
    """(path, replacement) for every place in `value`: odd values, and removed keys."""
    yield [], ODD_VALUES
    if isinstance(value, dict):
        for key, child in value.items():
            yield [key], "REMOVE"
            for path, replacement in mutations(child):
                yield [key, *path], replacement
    elif isinstance(value, list) and value:
        for path, replacement in mutations(value[0]):
            yield [0, *path], replacement


def variants(body: dict[str, Any]) -> Iterator[Any]:
    for path, replacement in mutations(body):
        options = replacement if isinstance(replacement, list) else [replacement]
        for option in options:
            copied = copy.deepcopy(body)
            if not path:
                yield option
                continue
            parent: Any = copied
            for step in path[:-1]:
                parent = parent[step]
            if option == "REMOVE":
                del parent[path[-1]]
            else:
                parent[path[-1]] = option
            yield copied


def reference_validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    root = {**schema, "components": document["components"]}
    if document["openapi"].startswith("3.0"):
        return OAS30Validator(root, format_checker=oas30_format_checker)
    return OAS31Validator(root, format_checker=oas31_format_checker)


@requires_specs
@pytest.mark.parametrize(("name", "method", "path", "body"), BODIES)
def test_compiled_checks_agree_with_jsonschema(
    name: str, method: str, path: str, body: dict[str, Any]
) -> None:
    file = specs_dir() / name
    document = json.loads(file.read_text())
    operation = compile_operation(file, method, path)
    assert operation is not None
    content_type, media = next(
        iter(document["paths"][path][method.lower()]["requestBody"]["content"].items())
    )
    reference = reference_validator(document, media["schema"])
    compiled = operation.media[content_type]

    assert compiled(body) is None
    verdicts = []
    for variant in variants(body):
        failure = compiled(variant)
        assert (failure is None) == reference.is_valid(variant), (variant, failure)
        verdicts.append(failure is None)
    assert len(verdicts) >= 10
    assert verdicts.count(False) >= 5  # the variants do exercise the checks


@requires_specs
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: sendgrid.SendGridFake(sendgrid.SendGridState()), id="sendgrid"),
        pytest.param(lambda: klaviyo.KlaviyoFake(klaviyo.KlaviyoState()), id="klaviyo"),
    ],
)
def test_every_served_endpoint_has_its_operation(make: Callable[[], Vendor]) -> None:
    vendor = make()
    missing = [
        f"{each.method} {each.path}"
        for each in vendor.endpoints()
        if vendor.operation(each) is None
    ]
    assert missing == []


def test_compiler_handles_nullable_refs_and_combinations() -> None:
    document = {
        "components": {
            "schemas": {
                "Tree": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "nullable": True, "maxLength": 3},
                        "size": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
                        "kind": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                        "children": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Tree"},
                        },
                    },
                }
            }
        }
    }
    check = SchemaCompiler(document, oas30=True).compile({"$ref": "#/components/schemas/Tree"})

    assert check({"name": None}) is None
    assert check({"name": "abc", "size": 1, "kind": 3, "children": [{"name": "x"}]}) is None
    failures = {
        "deep": check({"name": "a", "children": [{"name": "a", "children": [{"name": "long"}]}]}),
        "zero": check({"name": "a", "size": 0}),
        "extra": check({"name": "a", "colour": "red"}),
        "missing": check({"children": []}),
        "neither": check({"name": "a", "kind": 1.5}),
    }
    assert all(failure is not None for failure in failures.values())
    assert pointer(failures["deep"]) == "/children/0/children/0/name"  # type: ignore[arg-type]
    assert pointer(failures["zero"]) == "/size"  # type: ignore[arg-type]


def test_openapi_31_uses_type_lists_and_numeric_exclusive_bounds() -> None:
    check = SchemaCompiler({}, oas30=False).compile(
        {"type": ["integer", "null"], "exclusiveMinimum": 1}
    )
    assert check(None) is None
    assert check(2) is None
    assert check(1) is not None
    assert check("2") is not None


def test_unknown_keywords_fall_back_to_jsonschema(tmp_path: Path) -> None:
    document = {
        "openapi": "3.1.0",
        "paths": {
            "/things": {
                "post": {
                    "requestBody": {
                        "content": {
                            "application/json": {"schema": {"type": "array", "uniqueItems": True}}
                        }
                    }
                }
            }
        },
        "components": {},
    }
    with pytest.raises(UnsupportedSchema):
        SchemaCompiler(document, oas30=False).compile({"uniqueItems": True})
    file = tmp_path / "things.json"
    file.write_text(json.dumps(document))
    operation = compile_operation(file, "POST", "/things")
    assert operation is not None

    check = operation.media["application/json"]
    assert check([1, 2]) is None
    assert check([1, 1]) is not None


def test_missing_documents_are_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv(SPECS_DIR_VARIABLE, str(tmp_path / "absent"))
    with caplog.at_level(logging.WARNING, logger="tests.fakes"):
        spec = VendorSpec.load("klaviyo", klaviyo.SPEC_FILES)
    assert spec is None
    assert "skipped" in caplog.text
    assert str(tmp_path / "absent") in caplog.text


@pytest.mark.asyncio
async def test_a_fake_without_documents_still_serves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SPECS_DIR_VARIABLE, str(tmp_path / "absent"))
    state = klaviyo.KlaviyoState()
    headers = {"Authorization": f"Klaviyo-API-Key {state.api_key}", "revision": KLAVIYO_REVISION}
    async with running(klaviyo.create_app(state), state, "", headers) as fake:
        # Plain JSON would fail the document's content type; without it only the fake's own
        # rules apply.
        created = await fake.client.post(
            "/api/lists", json={"data": {"type": "list", "attributes": {"name": "x"}}}
        )
        unrevised = await fake.client.get("/api/lists", headers={"revision": "latest"})
    assert created.status_code == 201
    assert unrevised.status_code == 400  # the revision header is checked all the same
