"""The API through a client that openapi-python-client generates from the live document, as
a frontend or another team would use it (SPEC section 3): the generator must take every
operation without a warning, and the client must drive a short flow against a running
server: customers, a manual and a rule segment, members by id and by email, a conditional
read, the CSV download, an idempotent retry, and a sync to the webhook fake."""

import asyncio
import importlib
import re
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI

from tests.fakes import webhook
from tests.fakes.server import serve
from tests.fixtures.infra import ADMIN_KEY
from tests.support.waiting import eventually
from tests.sync.conftest import FINISHED, start_worker

GENERATOR = Path(sys.executable).parent / "openapi-python-client"


@pytest_asyncio.fixture
async def served(app: FastAPI) -> AsyncIterator[str]:
    async with serve(app) as url:
        yield url


async def generate(url: str, folder: Path, package: str) -> str:
    """Generate a client package from the served document; the generator's output."""
    config = folder / "config.yaml"
    # No post hooks: formatting the client (ruff) is not what is tested.
    config.write_text(f"package_name_override: {package}\npost_hooks: []\n")
    process = await asyncio.create_subprocess_exec(
        str(GENERATOR),
        "generate",
        "--url",
        f"{url}/openapi.json",
        "--meta",
        "none",
        "--output-path",
        str(folder / package),
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    return text


@pytest.fixture
def import_path(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))


class Client:
    """The generated package: its models and operations by name, and a client holding the
    admin key."""

    def __init__(self, package: str, url: str) -> None:
        self.package = package
        self.models = importlib.import_module(f"{package}.models")
        self.http = importlib.import_module(package).AuthenticatedClient(
            base_url=url, token=ADMIN_KEY
        )

    def operation(self, tag: str, name: str) -> ModuleType:
        return importlib.import_module(f"{self.package}.api.{tag}.{name}")

    def model(self, name: str, body: dict[str, Any]) -> Any:
        return getattr(self.models, name).from_dict(body)

    async def call(self, tag: str, name: str, **arguments: Any) -> Any:
        """The operation's detailed response: status, headers and the parsed body."""
        operation = self.operation(tag, name)
        return await operation.asyncio_detailed(client=self.http, **arguments)

    async def ok(self, tag: str, name: str, status: int = 200, **arguments: Any) -> Any:
        response = await self.call(tag, name, **arguments)
        assert response.status_code == status, (name, response.content)
        return response.parsed


@pytest.mark.asyncio
async def test_a_generated_client_drives_the_api(
    served: str, import_path: Path, service_env: dict[str, str]
) -> None:
    package = f"segments_client_{uuid.uuid4().hex[:8]}"
    output = await generate(served, import_path, package)
    assert not re.search("warning", output, re.IGNORECASE), output
    client = Client(package, served)
    segments = "segments"

    result = await client.ok(
        "customers",
        "bulk_upsert_customers",
        body=client.model(
            "CustomersBulk",
            {
                "customers": [
                    {"external_id": "ada", "email": "ada@example.com", "first_name": "Ada"},
                    {"external_id": "bob", "email": "=bob@example.com", "first_name": "Bob"},
                    {"external_id": "cy", "email": "cy@example.com", "email_status": "subscribed"},
                ]
            },
        ),
    )
    assert (result.created, result.updated) == (3, 0)
    customer = await client.ok("customers", "get_customer", external_id="ada")
    assert customer.email == "ada@example.com"

    created = await client.call(
        segments,
        "create_segment",
        body=client.model("SegmentCreate", {"name": "Generated"}),
        idempotency_key="create-generated",
    )
    assert created.status_code == 201, created.content
    segment = created.parsed
    assert isinstance(segment.definition, client.models.ManualDefinition)
    assert created.headers["location"].endswith(f"/v1/segments/{segment.id}")
    assert created.headers["etag"] == '"1"'
    again = await client.call(
        segments,
        "create_segment",
        body=client.model("SegmentCreate", {"name": "Generated"}),
        idempotency_key="create-generated",
    )
    assert (again.status_code, again.parsed.id) == (201, segment.id)
    assert again.headers["idempotent-replayed"] == "true"

    rule = {"all": [{"field": "email_status", "op": "eq", "value": "subscribed"}]}
    ruled = await client.ok(
        segments,
        "create_segment",
        status=201,
        body=client.model(
            "SegmentCreate", {"name": "Subscribed", "definition": {"type": "rule", "rule": rule}}
        ),
    )
    assert isinstance(ruled.definition, client.models.RuleDefinition)
    assert isinstance(ruled.definition.rule, client.models.AllNode)
    assert isinstance(ruled.definition.rule.all_[0], client.models.FieldCondition)
    assert ruled.definition.to_dict() == {"type": "rule", "rule": rule}

    added = await client.ok(
        segments,
        "add_segment_members",
        segment_id=segment.id,
        body=client.model("MembersByExternalId", {"external_ids": ["ada", "bob", "cy", "nobody"]}),
    )
    assert (added.added, added.already_members, added.not_found) == (3, 0, ["nobody"])
    removed = await client.ok(
        segments,
        "remove_segment_members",
        segment_id=segment.id,
        body=client.model("MembersByEmail", {"emails": ["CY@example.com"]}),
    )
    assert (removed.removed, removed.not_members) == (1, 0)
    members = await client.ok(segments, "list_segment_members", segment_id=segment.id)
    assert sorted(member.external_id for member in members.items) == ["ada", "bob"]
    assert members.next_cursor is None

    read = await client.call(segments, "get_segment", segment_id=segment.id)
    assert read.parsed.member_count == 2
    unchanged = await client.call(
        segments, "get_segment", segment_id=segment.id, if_none_match=read.headers["etag"]
    )
    assert (unchanged.status_code, unchanged.content) == (304, b"")

    csv = await client.ok(
        segments, "export_segment_csv", segment_id=segment.id, include="first_name"
    )
    assert csv == "email,first_name\r\n'=bob@example.com,Bob\r\nada@example.com,Ada\r\n"

    state = webhook.WebhookState()
    worker = await start_worker(service_env)
    try:
        async with serve(webhook.create_app(state)) as hook:
            destination = await client.ok(
                "destinations",
                "create_destination",
                status=201,
                body=client.model(
                    "DestinationCreate",
                    {
                        "name": "Generated hook",
                        "type": "webhook",
                        "config": {
                            "url": f"{hook}/hooks/segments",
                            "secret": webhook.DEFAULT_SECRET,
                        },
                    },
                ),
            )
            listed = await client.ok("destinations", "list_destinations")
            assert [item.id for item in listed.items] == [destination.id]
            run = await client.ok(
                "syncs",
                "request_sync",
                status=202,
                segment_id=segment.id,
                body=client.model("SyncCreate", {"destination_id": str(destination.id)}),
            )
            worker.runner.wake()

            async def current() -> Any:
                return await client.ok("syncs", "get_sync", sync_id=run.id)

            finished = await eventually(current, lambda got: got.status in FINISHED, 60)
            assert finished.status == "succeeded", finished.to_dict()
            assert state.external_ids(str(segment.id)) == {"ada", "bob"}
    finally:
        await worker.stop()
        await client.http.get_async_httpx_client().aclose()
