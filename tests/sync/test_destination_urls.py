"""Destinations cannot be pointed into our network (docs/vendors.md#private-addresses): a URL
whose host is, or resolves to, a loopback, private, link-local, unique-local or unspecified
address is a 422 at its pointer when saved, and refused again when the worker connects,
unless SEGMENTS_ALLOW_PRIVATE_DESTINATIONS covers it (here, as in every test, 127.0.0.1 for
the fakes); a URL carrying user information is refused; redirects are not followed."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from segment_api.destinations import service as destinations_service
from segment_api.settings import ApiSettings
from segments_shared import netguard
from segments_shared.netguard import AllowList
from tests.fakes import webhook
from tests.fakes.server import serve
from tests.sync.conftest import Harness, people, row_counts, start_worker
from tests.sync.test_destinations_api import VALID, create, problem

PRIVATE = "SEGMENTS_ALLOW_PRIVATE_DESTINATIONS"

REFUSED: list[tuple[str, str, str, dict[str, Any]]] = [
    ("metadata service", "webhook", "url", {"url": "http://169.254.169.254/latest/meta-data"}),
    ("private ten", "mailchimp", "base_url", {"base_url": "http://10.0.0.1/3.0"}),
    ("private 192.168", "commerce", "base_url", {"base_url": "https://192.168.1.10/rest/v2"}),
    ("loopback outside the list", "webhook", "url", {"url": "http://127.0.0.2:9000/hook"}),
    ("ipv6 loopback", "sendgrid", "base_url", {"base_url": "http://[::1]:8080/v3"}),
    ("unspecified", "klaviyo", "base_url", {"base_url": "http://0.0.0.0/api"}),
    ("unique local", "webhook", "url", {"url": "http://[fd00::1]/hook"}),
    ("ipv4-mapped", "webhook", "url", {"url": "http://[::ffff:169.254.169.254]/hook"}),
    ("decimal ipv4", "webhook", "url", {"url": "http://2852039166/hook"}),
    ("user and password", "webhook", "url", {"url": "https://ops:pw@crm.example.com/h"}),
    ("user only", "mailchimp", "base_url", {"base_url": "https://ops@mc.example.com/3.0"}),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("case", "kind", "field", "change"), REFUSED, ids=[case[0] for case in REFUSED]
)
async def test_a_url_into_our_network_is_422_at_its_field_and_stores_nothing(
    api: httpx.AsyncClient,
    clean_db: AsyncEngine,
    case: str,
    kind: str,
    field: str,
    change: dict[str, Any],
) -> None:
    existing = await create(api, kind)
    before = await row_counts(clean_db)
    config = {**VALID[kind], **change}
    body = problem(
        await api.post("/v1/destinations", json={"name": "x", "type": kind, "config": config}),
        422,
    )
    assert [error["pointer"] for error in body["errors"]] == [f"/config/{field}"], body
    reason = body["errors"][0]["detail"]
    if "@" in change[field]:
        assert "user information" in reason
        assert "pw" not in body["detail"]
    else:
        assert "not a public address" in reason
        assert PRIVATE in reason
    # The same through PATCH: refused, nothing changed.
    path = f"/v1/destinations/{existing['id']}"
    body = problem(await api.patch(path, json={"config": change}), 422)
    assert [error["pointer"] for error in body["errors"]] == [f"/config/{field}"], body
    assert await row_counts(clean_db) == before
    assert (await api.get(path)).json()["version"] == 1


@pytest.mark.asyncio
async def test_public_unresolvable_and_allowed_urls_are_saved(api: httpx.AsyncClient) -> None:
    for url, saved in (
        ("http://93.184.216.34/hook", None),  # public
        ("https://hooks.vendor.invalid/in", None),  # unresolvable here: the worker checks
        ("http://127.0.0.1:9/hook", None),  # covered by the allow-list
        # The same address mapped into IPv6 (the URL is stored in its normal form).
        ("http://[::ffff:127.0.0.1]:9/hook", "http://[::ffff:7f00:1]:9/hook"),
    ):
        created = await create(api, "webhook", url=url)
        assert created["config"]["url"] == (saved or url)


@pytest.mark.asyncio
async def test_a_name_is_checked_by_what_it_resolves_to(
    api: httpx.AsyncClient, app: FastAPI, api_settings: ApiSettings
) -> None:
    def allowing(value: str) -> None:
        app.state.settings = api_settings.model_copy(update={"allow_private_destinations": value})

    try:
        # `localhost` resolves to loopback: refused with an empty allow-list...
        allowing("")
        body = problem(
            await api.post(
                "/v1/destinations",
                json={
                    "name": "x",
                    "type": "webhook",
                    "config": {**VALID["webhook"], "url": "http://localhost:9/hook"},
                },
            ),
            422,
        )
        assert "localhost resolves to" in body["errors"][0]["detail"]
        # ...and saved once the list names the host.
        allowing("localhost")
        await create(api, "webhook", url="http://localhost:9/hook")
    finally:
        app.state.settings = api_settings


@pytest.mark.asyncio
async def test_a_url_saved_before_with_user_information_is_shown_without_it(
    api: httpx.AsyncClient, clean_db: AsyncEngine
) -> None:
    created = await create(api, "webhook")
    async with clean_db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE destinations SET config = jsonb_set(config, '{url}', "
                """'"https://ops:hunter2@crm.example.com/hook"') WHERE id = :id"""
            ),
            {"id": created["id"]},
        )
    shown = (await api.get(f"/v1/destinations/{created['id']}")).json()
    assert shown["config"]["url"] == "https://****@crm.example.com/hook"
    listed = (await api.get("/v1/destinations")).json()["items"]
    assert "hunter2" not in str(listed)


@pytest.mark.asyncio
async def test_a_patch_checks_only_the_urls_it_sets(
    api: httpx.AsyncClient, app: FastAPI, api_settings: ApiSettings, clean_db: AsyncEngine
) -> None:
    """A URL saved while the allow-list covered it stays editable around once the list
    shrinks (the worker refuses to connect there); a 422 points only into the body."""
    saved = "http://127.0.0.1:9/rest/admin/v2"
    created = await create(api, "commerce", base_url=saved)
    path = f"/v1/destinations/{created['id']}"
    app.state.settings = api_settings.model_copy(update={"allow_private_destinations": ""})
    try:
        renamed = await api.patch(path, json={"name": "renamed"})
        assert renamed.status_code == 200, renamed.text
        changed = await api.patch(path, json={"config": {"report_name": "Other"}})
        assert changed.status_code == 200, changed.text
        assert changed.json()["version"] == 3
        assert changed.json()["config"]["base_url"] == saved

        before = await row_counts(clean_db)
        for base_url in ("http://10.0.0.1/rest/admin/v2", saved):
            body = problem(
                await api.patch(
                    path, json={"name": "moved", "config": {"base_url": base_url, "store_id": "9"}}
                ),
                422,
            )
            assert [error["pointer"] for error in body["errors"]] == ["/config/base_url"], body
            assert PRIVATE in body["errors"][0]["detail"]
        assert await row_counts(clean_db) == before
        shown = (await api.get(path)).json()
        assert (shown["name"], shown["version"]) == ("renamed", 3)
        assert (shown["config"]["base_url"], shown["config"]["store_id"]) == (saved, "10151")
    finally:
        app.state.settings = api_settings


@pytest.mark.asyncio
async def test_a_patch_resolves_its_urls_before_locking_the_destination(
    api: httpx.AsyncClient, clean_db: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS may take seconds: the destination's row is not locked while it answers."""
    created = await create(api, "webhook")
    seen: list[str] = []

    async def check_host(host: str, allow: AllowList) -> None:
        async with clean_db.connect() as other:
            try:
                await other.execute(
                    text("SELECT 1 FROM destinations WHERE id = :id FOR UPDATE NOWAIT"),
                    {"id": created["id"]},
                )
                seen.append("free")
            except DBAPIError as exc:  # 55P03 lock_not_available
                seen.append(str(exc.orig))
            await other.rollback()
        await netguard.check_host(host, allow)

    monkeypatch.setattr(destinations_service, "check_host", check_host)
    response = await api.patch(
        f"/v1/destinations/{created['id']}", json={"config": {"url": "http://93.184.216.34/in"}}
    )
    assert response.status_code == 200, response.text
    assert seen == ["free"]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[webhook.WebhookState, str]]:
    state = webhook.WebhookState()
    async with serve(webhook.create_app(state)) as url:
        yield state, url


@pytest.mark.asyncio
async def test_the_worker_refuses_when_connecting_what_its_allow_list_does_not_cover(
    api: httpx.AsyncClient,
    app: FastAPI,
    api_settings: ApiSettings,
    service_env: dict[str, str],
    clean_db: AsyncEngine,
    receiver: tuple[webhook.WebhookState, str],
) -> None:
    """Saved while the API allowed it; the worker's own check, made on the address it
    connects to, refuses it: by address, and by a name that resolves to it."""
    state, url = receiver
    port = httpx.URL(url).port
    app.state.settings = api_settings.model_copy(
        update={"allow_private_destinations": "127.0.0.1,localhost"}
    )
    worker = await start_worker(service_env, allow_private_destinations="")
    harness = Harness(api, worker, clean_db)
    try:
        await harness.customers(*people(3))
        segment_id = await harness.segment("Inside", ["c0", "c1", "c2"])
        for hook in (f"{url}/hooks/segments", f"http://localhost:{port}/hooks/segments"):
            destination_id = await harness.destination(
                "webhook", {"url": hook, "secret": webhook.DEFAULT_SECRET}
            )
            run = await harness.sync(segment_id, destination_id)
            assert run["status"] == "failed", run
            assert "127.0.0.1" in run["error"], run
            assert "is not a public address" in run["error"]
            assert PRIVATE in run["error"]
            assert await harness.held(segment_id, destination_id) == set()
    finally:
        app.state.settings = api_settings
        await worker.stop()
    assert state.batches == []


@pytest.mark.asyncio
async def test_a_redirect_is_an_answer_never_followed(
    harness: Harness, receiver: tuple[webhook.WebhookState, str]
) -> None:
    """The receiver answers 302 to a server inside our network (127.0.0.2, outside the
    allow-list): the batch fails with the 302 and the inside server hears nothing."""
    inside: list[str] = []

    async def internal(scope: Scope, receive: Receive, send: Send) -> None:
        inside.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async with serve(internal, host="127.0.0.2") as inside_url:

        async def redirecting(scope: Scope, receive: Receive, send: Send) -> None:
            location = f"{inside_url}/admin".encode()
            await send(
                {"type": "http.response.start", "status": 302, "headers": [(b"location", location)]}
            )
            await send({"type": "http.response.body", "body": b"moved"})

        async with serve(redirecting) as url:
            await harness.customers(*people(2))
            segment_id = await harness.segment("Redirected", ["c0", "c1"])
            destination_id = await harness.destination(
                "webhook", {"url": f"{url}/hook", "secret": webhook.DEFAULT_SECRET}
            )
            run = await harness.sync(segment_id, destination_id)
    assert run["status"] == "partial", run
    assert run["stats"]["failed_records"] == 2
    assert {f["reason"] for f in run["failed_records"]} == {"the webhook answered 302: moved"}
    assert inside == []
