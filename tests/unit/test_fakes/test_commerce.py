"""The fake HCL Commerce store over HTTP: member groups and memberships."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fakes.commerce import CommerceState
from tests.unit.test_fakes.running import Running

Fake = Running[CommerceState]


async def create_group(fake: Fake, name: str, store_id: str = "1") -> int:
    answer = await fake.client.post(
        "/member-groups",
        params={"storeId": store_id},
        json={"name": name, "storeId": store_id, "usage": ["CustomerSegment"]},
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["Location"].endswith(
        f"/rest/admin/v2/member-groups/{answer.json()['id']}"
    )
    group_id: int = answer.json()["id"]
    return group_id


async def add(fake: Fake, group_id: int, member_id: str, exclude: str = "0") -> httpx.Response:
    return await fake.client.post(
        "/member-group-memberships",
        json={"memberId": member_id, "memberGroupId": group_id, "exclude": exclude},
    )


def assert_errors(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    error: dict[str, Any] = answer.json()["errors"][0]
    assert set(error) == {"errorKey", "errorCode", "errorMessage"}
    return error


@pytest.mark.asyncio
async def test_token_is_required(commerce_fake: Fake) -> None:
    async with httpx.AsyncClient(base_url=commerce_fake.url + "/rest/admin/v2") as anonymous:
        answer = await anonymous.get("/member-groups/1")
    assert assert_errors(answer, 401)["errorKey"] == "_ERR_AUTHENTICATION_ERROR"


@pytest.mark.asyncio
async def test_segments_are_found_by_name_and_usage(commerce_fake: Fake) -> None:
    group_id = await create_group(commerce_fake, "Repeat buyers")
    await create_group(commerce_fake, "Repeat buyers", store_id="2")

    found = await commerce_fake.client.get(
        "/member-groups/by-name-and-usage",
        params={"storeId": "1", "usage": "CustomerSegment", "memberGroupName": "Repeat buyers"},
    )
    missing = await commerce_fake.client.get(
        "/member-groups/by-name-and-usage",
        params={"storeId": "1", "usage": "CustomerSegment", "memberGroupName": "Nobody"},
    )

    assert found.json()["count"] == 1
    assert found.json()["items"][0]["id"] == group_id
    assert found.json()["items"][0]["usage"] == ["CustomerSegment"]
    assert missing.json() == {"count": 0, "items": []}
    duplicate = await commerce_fake.client.post(
        "/member-groups", params={"storeId": "1"}, json={"name": "Repeat buyers", "usage": []}
    )
    assert assert_errors(duplicate, 409)["errorKey"] == "_ERR_DUPLICATE_NAME"


@pytest.mark.asyncio
async def test_memberships_include_exclude_list_and_delete(commerce_fake: Fake) -> None:
    group_id = await create_group(commerce_fake, "Segment")
    for member_id in ("c1", "c2", "c3"):
        assert (await add(commerce_fake, group_id, member_id)).status_code == 201
    assert (await add(commerce_fake, group_id, "c4", exclude="1")).status_code == 201

    group = commerce_fake.state.groups[group_id]
    assert group.included() == {"c1", "c2", "c3"}
    assert group.excluded() == {"c4"}
    first = await commerce_fake.client.get(
        "/member-group-memberships", params={"memberGroupId": group_id, "offset": 0, "limit": 3}
    )
    rest = await commerce_fake.client.get(
        "/member-group-memberships", params={"memberGroupId": group_id, "offset": 3, "limit": 3}
    )
    assert first.json()["count"] == 4
    items = first.json()["items"] + rest.json()["items"]
    assert {(each["memberId"], each["exclude"]) for each in items} == {
        ("c1", "0"),
        ("c2", "0"),
        ("c3", "0"),
        ("c4", "1"),
    }
    excluded = await commerce_fake.client.get(
        "/member-group-memberships", params={"memberGroupId": group_id, "exclude": "1"}
    )
    assert [each["memberId"] for each in excluded.json()["items"]] == ["c4"]

    deleted = await commerce_fake.client.delete(
        f"/member-group-memberships/memberId:c2,memberGroupId:{group_id}"
    )
    again = await commerce_fake.client.delete(
        f"/member-group-memberships/memberId:c2,memberGroupId:{group_id}"
    )
    assert deleted.status_code == 204
    assert_errors(again, 404)
    assert group.included() == {"c1", "c3"}


@pytest.mark.asyncio
async def test_membership_errors(commerce_fake: Fake) -> None:
    group_id = await create_group(commerce_fake, "Strict")
    commerce_fake.state.add_customers("c1", "c2")
    commerce_fake.state.reject("c2", message="member is locked")

    assert (await add(commerce_fake, group_id, "c1")).status_code == 201
    twice = await add(commerce_fake, group_id, "c1")
    rejected = await add(commerce_fake, group_id, "c2")
    stranger = await add(commerce_fake, group_id, "c9")
    bad_flag = await add(commerce_fake, group_id, "c1", exclude="2")
    no_group = await add(commerce_fake, 999, "c1")

    assert assert_errors(twice, 409)["errorKey"] == "_ERR_MEMBERSHIP_EXISTS"
    assert assert_errors(rejected, 400)["errorMessage"] == "member is locked"
    assert assert_errors(stranger, 400)["errorKey"] == "_ERR_MEMBER_NOT_FOUND"
    assert_errors(bad_flag, 400)
    assert_errors(no_group, 400)
    assert commerce_fake.state.groups[group_id].memberships == {"c1": "0"}


@pytest.mark.asyncio
async def test_groups_are_read_renamed_and_deleted(commerce_fake: Fake) -> None:
    group_id = await create_group(commerce_fake, "Old name")

    renamed = await commerce_fake.client.patch(
        f"/member-groups/{group_id}", json={"name": "New name"}
    )
    read = await commerce_fake.client.get(f"/member-groups/{group_id}")
    deleted = await commerce_fake.client.delete(f"/member-groups/{group_id}")
    gone = await commerce_fake.client.get(f"/member-groups/{group_id}")

    assert renamed.json()["name"] == "New name"
    assert read.json()["storeId"] == 1
    assert deleted.status_code == 204
    assert_errors(gone, 404)
    assert commerce_fake.state.groups == {}
